package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"
)

// snapstore workingset get|set reads and replaces a snapshot's recorded
// working set (what `snapfaas run --dump_ws` records and the sidecar
// prefetches): guest page indices (4 KiB pages) in first-touch order, as a
// JSON array in a file.
func workingSetCommand() *cli.Command {
	return &cli.Command{
		Name:  "workingset",
		Usage: "read or replace a snapshot's working set (pages to prefetch on restore)",
		Description: `A snapshot's working set is the list of guest pages (4 KiB page indices)
its function touched after a restore, in first-touch order; the sidecar
prefetches them in that order when a VM restores with the working set.
Files hold it as a JSON array of page indices, e.g. [12, 13, 7, 4096].`,
		Subcommands: []*cli.Command{{
			Name:        "get",
			Usage:       "write snapshot NAME's working set to FILE (default: standard output)",
			ArgsUsage:   "NAME [FILE]",
			Description: "Prints [] when the snapshot has no working set.",
			Flags:       []cli.Flag{forceFlag},
			Action: func(c *cli.Context) error {
				if c.NArg() < 1 || c.NArg() > 2 {
					return usagef("workingset get: needs NAME [FILE] (see --help)")
				}
				name, path := c.Args().Get(0), "-"
				if c.NArg() == 2 {
					path = resolvePath(c, c.Args().Get(1))
				}
				if path != "-" && !c.Bool("force") {
					if _, err := os.Lstat(path); err == nil {
						return fmt.Errorf("workingset get: %s exists (use --force to overwrite)", path)
					} else if !errors.Is(err, fs.ErrNotExist) {
						return fmt.Errorf("workingset get: %w", err)
					}
				}
				s, release, err := openStore(c, false, false)
				if err != nil {
					return err
				}
				defer release()
				m, err := s.OpenMemory(name)
				if err != nil {
					return fmt.Errorf("workingset get: %w", err)
				}
				pages := m.WorkingSet
				if pages == nil {
					pages = []uint32{}
				}
				b, err := json.Marshal(pages)
				if err != nil {
					return err
				}
				b = append(b, '\n')
				if path == "-" {
					_, err := c.App.Writer.Write(b)
					return err
				}
				return writeWorkingSetFile(path, b)
			},
		}, {
			Name:      "set",
			Usage:     "replace snapshot NAME's working set with the pages in FILE",
			ArgsUsage: "NAME FILE",
			Description: `FILE holds a JSON array of page indices in first-touch order (- for
standard input); every page must lie within the snapshot's memory. An empty
array [] removes the working set.`,
			Action: func(c *cli.Context) error {
				a, err := args(c, "NAME", "FILE")
				if err != nil {
					return err
				}
				var b []byte
				if a[1] == "-" {
					if inSidecar(c) != nil {
						return fmt.Errorf("workingset set: reading standard input is not possible while the sidecar owns the store; give a file")
					}
					b, err = io.ReadAll(os.Stdin)
				} else {
					b, err = os.ReadFile(resolvePath(c, a[1]))
				}
				if err != nil {
					return fmt.Errorf("workingset set: %w", err)
				}
				var pages []uint32
				if err := json.Unmarshal(b, &pages); err != nil {
					return fmt.Errorf("workingset set: %s: not a JSON array of page indices: %v", a[1], err)
				}
				s, release, err := openStore(c, true, false)
				if err != nil {
					return err
				}
				defer release()
				if err := s.SetWorkingSet(a[0], pages); err != nil {
					return fmt.Errorf("workingset set: %w", err)
				}
				fmt.Fprintf(c.App.Writer, "working set of %q: %d pages\n", a[0], len(pages))
				return nil
			},
		}},
	}
}

// writeWorkingSetFile writes b to path through a temporary file renamed into
// place, so that path is never left half written.
func writeWorkingSetFile(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	return err
}
