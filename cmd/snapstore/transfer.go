package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/internal/progress"
	"github.com/snapfaas/snapfaas/pagestore"
)

var (
	chunkSizeFlag = &cli.StringFlag{Name: "chunk-size", Usage: "chunk `SIZE` (e.g. 64K); a multiple of 4K"}
	codecFlag     = &cli.StringFlag{Name: "codec", Value: "zstd", Usage: "compression for new chunks: zstd, s2 or raw"}
	forceFlag     = &cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "overwrite FILE if it exists"}
)

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "import and export disk images (rootfs, appfs)",
		Subcommands: []*cli.Command{{
			Name:      "import",
			Usage:     "store FILE as image NAME",
			ArgsUsage: "NAME FILE",
			Description: `Cuts FILE into fixed-size chunks (default 64K); chunks already in the store
are referenced, zero chunks are recorded and not stored. FILE may be - for
standard input.`,
			Flags: []cli.Flag{chunkSizeFlag, codecFlag},
			Action: func(c *cli.Context) error {
				a, err := args(c, "NAME", "FILE")
				if err != nil {
					return err
				}
				chunk, err := parseSize(c.String("chunk-size"))
				if err != nil {
					return usagef("--chunk-size: %v", err)
				}
				if a[1] == "-" && inSidecar(c) != nil {
					return fmt.Errorf("image import: reading standard input is not possible while the sidecar owns the store; give a file")
				}
				in, size, err := openInput(resolvePath(c, a[1]))
				if err != nil {
					return err
				}
				defer in.Close()
				return runImport(c, "image", a[0], size, func(s *pagestore.Store, progress func(int64)) (*pagestore.ImportResult, error) {
					return s.ImportImage(c.Context, a[0], in, pagestore.ImportOptions{ChunkSize: int(chunk), Codec: c.String("codec"), Progress: progress})
				})
			},
		}, {
			Name:        "export",
			Usage:       "write image NAME to FILE, byte for byte",
			ArgsUsage:   "NAME FILE",
			Description: "FILE may be - for standard output. Zero chunks become holes in FILE.",
			Flags:       []cli.Flag{forceFlag},
			Action: func(c *cli.Context) error {
				return export(c, "image", func(ctx context.Context, s *pagestore.Store, name string, w io.Writer, p func(int64)) (int64, error) {
					return s.ExportImage(ctx, name, w, p)
				}, func(s *pagestore.Store, name string) (int64, error) {
					img, err := s.OpenImage(name)
					if err != nil {
						return 0, err
					}
					return img.Size(), nil
				})
			},
		}},
	}
}

func memoryCommand() *cli.Command {
	return &cli.Command{
		Name:  "memory",
		Usage: "import and export guest-memory snapshots",
		Subcommands: []*cli.Command{{
			Name:      "import",
			Usage:     "store raw guest memory FILE as snapshot NAME",
			ArgsUsage: "NAME FILE",
			Description: `FILE is a flat guest-memory file as Firecracker writes it: offset = guest
physical address, size a multiple of 4 KiB. Runs of non-zero pages are
stored as chunks of up to --chunk-size (default 16K); zero pages are
recorded, not stored. With --parent, only the pages that differ from the
parent snapshot are recorded (a diff snapshot); the rest resolve through
the parent. With --changed-only as well, FILE is sparse: only its written
regions can differ from the parent, and its holes are the parent's pages
(a VMM with dirty-page tracking writes just the dirty pages).`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "parent", Usage: "make a diff snapshot on top of snapshot `NAME`"},
				&cli.BoolFlag{Name: "changed-only", Usage: "with --parent: FILE's holes are unchanged pages (not read), only written regions may differ"},
				&cli.BoolFlag{Name: "full", Usage: "with --parent: store every page, naming the parent for information only"},
				&cli.StringFlag{Name: "vmstate", Usage: "attach vCPU/device state from `FILE`"},
				&cli.StringFlag{Name: "vmconfig", Usage: "attach VM configuration from `FILE`"},
				chunkSizeFlag, codecFlag,
			},
			Action: func(c *cli.Context) error {
				a, err := args(c, "NAME", "FILE")
				if err != nil {
					return err
				}
				chunk, err := parseSize(c.String("chunk-size"))
				if err != nil {
					return usagef("--chunk-size: %v", err)
				}
				if c.Bool("full") && c.String("parent") == "" {
					return usagef("--full needs --parent")
				}
				if c.Bool("changed-only") && (c.String("parent") == "" || c.Bool("full")) {
					return usagef("--changed-only needs --parent (and not --full)")
				}
				o := pagestore.MemoryOptions{
					ImportOptions: pagestore.ImportOptions{ChunkSize: int(chunk), Codec: c.String("codec")},
					Parent:        c.String("parent"),
				}
				if c.Bool("full") {
					o.Kind = "full"
				}
				for _, blob := range []struct {
					flag string
					dst  *[]byte
				}{{"vmstate", &o.VMState}, {"vmconfig", &o.VMConfig}} {
					if p := c.String(blob.flag); p != "" {
						if *blob.dst, err = os.ReadFile(resolvePath(c, p)); err != nil {
							return fmt.Errorf("--%s: %w", blob.flag, err)
						}
					}
				}
				f, err := os.Open(resolvePath(c, a[1]))
				if err != nil {
					return fmt.Errorf("memory import: %w", err)
				}
				defer f.Close()
				st, err := f.Stat()
				if err != nil {
					return err
				}
				if !st.Mode().IsRegular() {
					return fmt.Errorf("memory import: %s is not a regular file", a[1])
				}
				if st.Size() == 0 || st.Size()%4096 != 0 {
					return fmt.Errorf("memory import: %s is %d bytes, not a positive multiple of 4 KiB; is it a raw guest-memory file?", a[1], st.Size())
				}
				if c.Bool("changed-only") {
					written, err := writtenPages(f, st.Size())
					if err != nil {
						return fmt.Errorf("memory import: %w", err)
					}
					o.Changed = func(p uint64) bool { return written[p] }
				}
				return runImport(c, "snapshot", a[0], st.Size(), func(s *pagestore.Store, progress func(int64)) (*pagestore.ImportResult, error) {
					o.Progress = progress
					return s.ImportMemory(c.Context, a[0], f, st.Size(), o)
				})
			},
		}, {
			Name:        "export",
			Usage:       "write snapshot NAME's guest memory to FILE (parents resolved)",
			ArgsUsage:   "NAME FILE",
			Description: "FILE gets the full memory size; zero pages become holes. FILE may be - for standard output.",
			Flags:       []cli.Flag{forceFlag},
			Action: func(c *cli.Context) error {
				return export(c, "memory", func(ctx context.Context, s *pagestore.Store, name string, w io.Writer, p func(int64)) (int64, error) {
					return s.ExportMemory(ctx, name, w, p)
				}, func(s *pagestore.Store, name string) (int64, error) {
					m, err := s.OpenMemory(name)
					if err != nil {
						return 0, err
					}
					return m.Size(), nil
				})
			},
		}, {
			Name:      "vmstate",
			Usage:     "write snapshot NAME's saved VM state (vCPUs, devices) to FILE",
			ArgsUsage: "NAME FILE",
			Action: func(c *cli.Context) error {
				a, err := args(c, "NAME", "FILE")
				if err != nil {
					return err
				}
				s, release, err := openStore(c, false, false)
				if err != nil {
					return err
				}
				defer release()
				m, err := s.OpenMemory(a[0])
				if err != nil {
					return fmt.Errorf("memory vmstate: %w", err)
				}
				if len(m.VMState) == 0 {
					return fmt.Errorf("memory vmstate: snapshot %q has no VM state (imported from a memory file alone)", a[0])
				}
				return os.WriteFile(resolvePath(c, a[1]), m.VMState, 0o644)
			},
		}},
	}
}

// runImport opens the store for writing, runs do with a progress bar and
// prints the result.
func runImport(c *cli.Context, what, name string, size int64, do func(*pagestore.Store, func(int64)) (*pagestore.ImportResult, error)) error {
	s, release, err := openStore(c, true, true)
	if err != nil {
		return err
	}
	defer release()
	bar := newBar(c, "import "+name, size)
	res, err := do(s, bar.Set)
	bar.Finish()
	if err != nil {
		cmd := "image"
		if what == "snapshot" {
			cmd = "memory"
		}
		return fmt.Errorf("%s import %s: %w", cmd, name, err)
	}
	printImport(c, what, res)
	return nil
}

func newBar(c *cli.Context, label string, total int64) *progress.Bar {
	if c.Bool("quiet") {
		return nil
	}
	return progress.New(c.App.ErrWriter, label, total)
}

// openInput opens FILE or standard input and returns its size (-1 if
// unknown).
func openInput(path string) (io.ReadCloser, int64, error) {
	if path == "-" {
		return io.NopCloser(os.Stdin), -1, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if st.IsDir() {
		f.Close()
		return nil, 0, fmt.Errorf("%s is a directory", path)
	}
	return f, st.Size(), nil
}

type exportFunc func(ctx context.Context, s *pagestore.Store, name string, w io.Writer, progress func(int64)) (int64, error)

// export writes an object to FILE through a temporary file renamed into
// place on success, so that FILE is never left half written.
func export(c *cli.Context, what string, fn exportFunc, size func(*pagestore.Store, string) (int64, error)) error {
	a, err := args(c, "NAME", "FILE")
	if err != nil {
		return err
	}
	name, path := a[0], resolvePath(c, a[1])
	if path != "-" && !c.Bool("force") {
		if _, err := os.Lstat(path); err == nil {
			return fmt.Errorf("%s export: %s exists (use --force to overwrite)", what, path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s export: %w", what, err)
		}
	}
	s, release, err := openStore(c, false, false)
	if err != nil {
		return err
	}
	defer release()
	total, err := size(s, name)
	if err != nil {
		return fmt.Errorf("%s export: %w", what, err)
	}
	start := time.Now()
	if path == "-" {
		_, err := fn(c.Context, s, name, c.App.Writer, nil)
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("%s export: %w", what, err)
	}
	defer os.Remove(tmp.Name())
	bar := newBar(c, "export "+name, total)
	n, err := fn(c.Context, s, name, tmp, bar.Set)
	bar.Finish()
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("%s export %s: %w", what, name, err)
	}
	if !c.Bool("quiet") {
		d := time.Since(start)
		fmt.Fprintf(c.App.ErrWriter, "exported %s %q to %s: %s in %s (%s/s)\n", what, name, path, progress.Bytes(n), d.Round(time.Millisecond), progress.Bytes(int64(float64(n)/d.Seconds())))
	}
	return nil
}

func printImport(c *cli.Context, what string, r *pagestore.ImportResult) {
	st := r.Stats
	ratio := 0.0
	if st.NewBytes > 0 {
		ratio = float64(st.NewRaw) / float64(st.NewBytes)
	}
	detail := progress.Bytes(st.ZeroBytes) + " zero"
	if st.UnchangedBytes > 0 {
		detail = fmt.Sprintf("%s unchanged from parent, %s", progress.Bytes(st.UnchangedBytes), detail)
	}
	fmt.Fprintf(c.App.Writer, "imported %s %q: %s (%s); %d chunks, %d new (%s stored, %.1fx compressed), %d deduplicated; %s (%s/s)\n",
		what, r.Name, progress.Bytes(r.Size), detail, st.Chunks, st.NewChunks,
		progress.Bytes(st.NewBytes), ratio, st.DedupChunks, r.Duration.Round(time.Millisecond),
		progress.Bytes(int64(float64(st.InputBytes)/max(r.Duration.Seconds(), 1e-9))))
}
