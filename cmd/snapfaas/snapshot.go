package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/catalog"
	"github.com/snapfaas/snapfaas/internal/progress"
	"github.com/snapfaas/snapfaas/pagestore"
)

// snapfaas snapshot export/import move a memory snapshot between the store
// and a directory, for backup and for Firecracker-style tooling. The
// directory holds:
//
//	DIR/memory         flat guest memory (offset = guest physical address,
//	                   Firecracker's mem-file format), parents resolved, zero
//	                   pages left as holes
//	DIR/vmstate.json   the VM state blob (vCPUs, devices); absent if the
//	                   snapshot has none
//	DIR/snapshot.json  the manifest (snapshotManifest), written last
//
// Export builds the directory as DIR.tmp-XXXX next to DIR and renames it
// into place at the end, so a crash never leaves a half-written DIR that
// looks complete. Import checks the manifest (version, sizes, SHA-256s)
// before it stores anything and makes a base snapshot, restoring the
// working set if the manifest has one.

// snapshotFormatVersion is the manifest version export writes and import
// reads.
const snapshotFormatVersion = 1

const (
	manifestFile = "snapshot.json"
	memoryFile   = "memory"
	vmstateFile  = "vmstate.json"
)

// snapshotManifest is DIR/snapshot.json. Name, Kind, Parent and Created
// describe the exported snapshot for information; import makes a base
// snapshot under the name it is given.
type snapshotManifest struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Parent  string `json:"parent,omitempty"`
	// Created is when the snapshot was stored; Exported when the directory
	// was written.
	Created  time.Time `json:"created"`
	Exported time.Time `json:"exported"`
	// MemorySize is the size of DIR/memory in bytes (a multiple of 4 KiB).
	MemorySize   int64  `json:"memory_size"`
	MemorySHA256 string `json:"memory_sha256"`
	// VMStateSize and VMStateSHA256 describe DIR/vmstate.json; both are
	// absent when the snapshot has no VM state.
	VMStateSize   int64  `json:"vmstate_size,omitempty"`
	VMStateSHA256 string `json:"vmstate_sha256,omitempty"`
	// WorkingSet lists guest page indices (4 KiB pages) in first-touch
	// order, the pages prefetched on restore; absent if none was recorded.
	WorkingSet []uint32 `json:"working_set,omitempty"`
}

const snapshotDirLayout = `The directory holds:

   DIR/memory         flat guest memory: offset = guest physical address
                      (Firecracker's mem-file format), parents resolved,
                      zero pages left as holes (a sparse file)
   DIR/vmstate.json   the VM state (vCPUs, devices); absent if the snapshot
                      has none
   DIR/snapshot.json  the manifest, written last: format version (1), name,
                      kind, parent and created time (for information),
                      memory size, the SHA-256 of memory and vmstate.json,
                      and the working set (page indices in first-touch
                      order) if one was recorded`

func snapshotStoreFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "store", EnvVars: []string{"SNAPSTORE_DIR"}, Value: pagestore.DefaultDir(), Usage: "store `DIR`"},
		&cli.StringFlag{Name: "snapstore", Usage: "the snapstore `BINARY` (default: next to snapfaas, then PATH)"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress lines on stderr"},
	}
}

func snapshotCommand() *cli.Command {
	return &cli.Command{
		Name:  "snapshot",
		Usage: "export a memory snapshot to a directory, or import one from it",
		Description: `Moves memory snapshots between the store and a plain directory, for
backup and for Firecracker-style tooling.

` + snapshotDirLayout,
		HideHelpCommand: true,
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return usageError{"snapshot needs a command: export or import (see --help)"}
			}
			return usageError{fmt.Sprintf("snapshot: no command %q; use export or import (see --help)", c.Args().First())}
		},
		Subcommands: []*cli.Command{{
			Name:      "export",
			Usage:     "write snapshot NAME from the store to directory DIR",
			ArgsUsage: "NAME DIR",
			Description: `Writes snapshot NAME (its parents resolved) into DIR. DIR must not exist
or be empty, unless --force replaces it. The files are written into
DIR.tmp-XXXX next to DIR, which is renamed to DIR at the end: a crash or an
interrupt never leaves a DIR that looks complete.

` + snapshotDirLayout,
			Flags:  append(snapshotStoreFlags(), &cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "replace DIR if it exists and is not empty"}),
			Action: snapshotExport,
		}, {
			Name:      "import",
			Usage:     "store the snapshot in directory DIR as snapshot NAME",
			ArgsUsage: "DIR NAME",
			Description: `Checks DIR's manifest (format version, sizes, SHA-256 of memory and
vmstate.json) before storing anything, then stores DIR/memory as NAME, a
base snapshot (complete, with no parent: the parent named in the manifest
is for information only), with the VM state and the working set, if any.
NAME must not exist in the store yet.

` + snapshotDirLayout,
			Flags:  snapshotStoreFlags(),
			Action: snapshotImport,
		}},
	}
}

// snapshotInfo is what export needs from `snapstore inspect --json`.
type snapshotInfo struct {
	Name            string    `json:"name"`
	Type            string    `json:"type"`
	Kind            string    `json:"kind"`
	Parent          string    `json:"parent"`
	Created         time.Time `json:"created"`
	LogicalBytes    int64     `json:"logical_bytes"`
	ZeroPages       int64     `json:"zero_pages"`
	WorkingSetPages int       `json:"working_set_pages"`
}

func snapshotExport(c *cli.Context) error {
	if c.NArg() != 2 {
		return usageError{"snapshot export: needs NAME DIR (see --help)"}
	}
	name, dir := c.Args().Get(0), filepath.Clean(c.Args().Get(1))
	fail := func(format string, a ...any) error {
		if c.Context.Err() != nil {
			return fmt.Errorf("snapshot export: interrupted; %s was not written", dir)
		}
		return fmt.Errorf("snapshot export: "+format, a...)
	}
	if err := checkExportDir(dir, c.Bool("force")); err != nil {
		return fail("%v", err)
	}
	if err := checkSnapstore(c); err != nil {
		return fail("%v", err)
	}
	logf := progressf(c)
	start := time.Now()

	out, err := snapstore(c, "inspect", "--json", name)
	if err != nil {
		return fail("%v", err)
	}
	var info snapshotInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return fail("snapstore inspect --json %s: %v", name, err)
	}
	if info.Type != "snapshot" {
		return fail("%q is a disk image, not a memory snapshot (use `snapstore image export` for images)", name)
	}

	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".tmp-")
	if errors.Is(err, fs.ErrNotExist) {
		return fail("%s: no such directory to create %s in", filepath.Dir(dir), filepath.Base(dir))
	}
	if err != nil {
		return fail("%v", err)
	}
	done := false
	defer func() {
		if !done {
			os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fail("%v", err)
	}

	// Memory, through snapstore (sparse, synced).
	logf("exporting snapshot %q (%s, %s) to %s", name, info.Kind, progress.Bytes(info.LogicalBytes), dir)
	t0 := time.Now()
	memPath := absPath(filepath.Join(tmp, memoryFile))
	if _, err := snapstore(c, "memory", "export", name, memPath); err != nil {
		return fail("%v", err)
	}
	m := snapshotManifest{Version: snapshotFormatVersion, Name: info.Name, Kind: info.Kind, Parent: info.Parent,
		Created: info.Created, Exported: time.Now().UTC()}
	st, err := os.Stat(memPath)
	if err != nil {
		return fail("%v", err)
	}
	if st.Size() != info.LogicalBytes {
		return fail("snapstore wrote %d bytes of memory, the snapshot has %d", st.Size(), info.LogicalBytes)
	}
	m.MemorySize = st.Size()
	logf("memory: %s written in %s (%s on disk)", progress.Bytes(st.Size()), time.Since(t0).Round(time.Millisecond), progress.Bytes(diskUsage(st)))

	// VM state, if the snapshot has one.
	statePath := absPath(filepath.Join(tmp, vmstateFile))
	hasState := true
	if _, err := snapstore(c, "memory", "vmstate", name, statePath); err != nil {
		// transfer.go's `memory vmstate` says so when there is none.
		if !strings.Contains(err.Error(), "has no VM state") {
			return fail("%v", err)
		}
		hasState = false
		os.Remove(statePath)
	}

	// Working set, if one was recorded.
	if info.WorkingSetPages > 0 {
		out, err := snapstore(c, "workingset", "get", name)
		if err != nil {
			return fail("%v", err)
		}
		if err := json.Unmarshal(out, &m.WorkingSet); err != nil {
			return fail("snapstore workingset get %s: %v", name, err)
		}
	}

	t0 = time.Now()
	logf("computing SHA-256 of %s", memoryFile)
	if m.MemorySHA256, _, err = fileSHA256(c.Context, memPath); err != nil {
		return fail("%v", err)
	}
	if hasState {
		if err := syncFile(statePath); err != nil {
			return fail("%v", err)
		}
		if m.VMStateSHA256, m.VMStateSize, err = fileSHA256(c.Context, statePath); err != nil {
			return fail("%v", err)
		}
	}
	logf("checksums in %s", time.Since(t0).Round(time.Millisecond))

	// The manifest last, then the directory into place.
	b, err := marshalManifest(m)
	if err != nil {
		return fail("%v", err)
	}
	if err := writeSynced(filepath.Join(tmp, manifestFile), b); err != nil {
		return fail("%v", err)
	}
	if err := syncDir(tmp); err != nil {
		return fail("%v", err)
	}
	if err := c.Context.Err(); err != nil {
		return fail("%v", err)
	}
	if err := replaceDir(tmp, dir, c.Bool("force")); err != nil {
		return fail("%v", err)
	}
	done = true
	ws := ""
	if len(m.WorkingSet) > 0 {
		ws = fmt.Sprintf(", working set of %d pages", len(m.WorkingSet))
	}
	state := "no VM state"
	if hasState {
		state = "VM state " + progress.Bytes(m.VMStateSize)
	}
	fmt.Fprintf(c.App.Writer, "exported snapshot %q to %s: memory %s, %s%s; %s\n", name, dir, progress.Bytes(m.MemorySize), state, ws, time.Since(start).Round(time.Millisecond))
	return nil
}

// checkExportDir refuses a DIR that is not a directory, or (without
// force) one that is not empty.
func checkExportDir(dir string, force bool) error {
	st, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s exists and is not a directory", dir)
	}
	if force {
		return nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if names, _ := f.Readdirnames(1); len(names) > 0 {
		return fmt.Errorf("%s exists and is not empty (use --force to replace it)", dir)
	}
	return nil
}

// replaceDir renames directory tmp to dir. An empty dir is replaced by the
// rename itself; a non-empty one, with force, is first moved aside, then
// removed.
func replaceDir(tmp, dir string, force bool) error {
	// syscall.Rename: os.Rename refuses to replace any directory.
	err := syscall.Rename(tmp, dir)
	if err == nil {
		return syncDir(filepath.Dir(dir))
	}
	if !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		return &os.LinkError{Op: "rename", Old: tmp, New: dir, Err: err}
	}
	if !force {
		return fmt.Errorf("%s was filled while the export ran (use --force to replace it)", dir)
	}
	old, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".old-")
	if err != nil {
		return err
	}
	old = filepath.Join(old, filepath.Base(dir))
	if err := os.Rename(dir, old); err != nil {
		os.Remove(filepath.Dir(old))
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.Rename(old, dir)
		os.Remove(filepath.Dir(old))
		return err
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Dir(old))
}

func snapshotImport(c *cli.Context) error {
	if c.NArg() != 2 {
		return usageError{"snapshot import: needs DIR NAME (see --help)"}
	}
	dir, name := filepath.Clean(c.Args().Get(0)), c.Args().Get(1)
	fail := func(format string, a ...any) error {
		return fmt.Errorf("snapshot import: "+format, a...)
	}
	if err := catalog.ValidName(name); err != nil {
		return usageError{fmt.Sprintf("snapshot import: %v", err)}
	}
	logf := progressf(c)
	start := time.Now()
	m, err := readManifest(dir)
	if err != nil {
		return fail("%v", err)
	}
	if err := checkSnapstore(c); err != nil {
		return fail("%v", err)
	}

	// A name already taken fails now rather than after reading DIR.
	if out, err := snapstore(c, "inspect", "--json", name); err == nil {
		var info snapshotInfo
		if json.Unmarshal(out, &info) == nil && info.Type == "snapshot" {
			return fail("snapshot %q already exists in the store; choose another name or remove it (snapstore rm %s)", name, name)
		}
	}

	memPath, statePath := filepath.Join(dir, memoryFile), filepath.Join(dir, vmstateFile)
	if err := checkFile(c.Context, memPath, m.MemorySize, m.MemorySHA256, logf); err != nil {
		return fail("%v", err)
	}
	args := []string{"memory", "import"}
	if m.VMStateSHA256 != "" {
		if err := checkFile(c.Context, statePath, m.VMStateSize, m.VMStateSHA256, nil); err != nil {
			return fail("%v", err)
		}
		args = append(args, "--vmstate", absPath(statePath))
	} else if _, err := os.Lstat(statePath); err == nil {
		return fail("%s: not listed in %s", statePath, filepath.Join(dir, manifestFile))
	}

	logf("importing %s (%s) as snapshot %q", memPath, progress.Bytes(m.MemorySize), name)
	t0 := time.Now()
	if _, err := snapstore(c, append(args, name, absPath(memPath))...); err != nil {
		return fail("%v", err)
	}
	logf("memory: %s stored in %s", progress.Bytes(m.MemorySize), time.Since(t0).Round(time.Millisecond))

	ws := ""
	if len(m.WorkingSet) > 0 {
		if err := setWorkingSet(c, name, m.WorkingSet); err != nil {
			// Leave no snapshot that lacks what the directory holds.
			if _, rmErr := snapstoreCtx(context.Background(), c, "rm", name); rmErr != nil {
				return fail("restore the working set: %v (and removing %q again failed: %v)", err, name, rmErr)
			}
			return fail("restore the working set: %v; %q was removed again", err, name)
		}
		ws = fmt.Sprintf(", working set of %d pages", len(m.WorkingSet))
	}
	state := "no VM state"
	if m.VMStateSHA256 != "" {
		state = "VM state " + progress.Bytes(m.VMStateSize)
	}
	fmt.Fprintf(c.App.Writer, "imported snapshot %q from %s: base snapshot, memory %s, %s%s; %s\n", name, dir, progress.Bytes(m.MemorySize), state, ws, time.Since(start).Round(time.Millisecond))
	return nil
}

// readManifest reads and checks DIR/snapshot.json (not yet the files it
// describes).
func readManifest(dir string) (*snapshotManifest, error) {
	p := filepath.Join(dir, manifestFile)
	if st, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: no such directory", dir)
	} else if err != nil {
		return nil, err
	} else if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s has no %s: not a snapshot directory (made by `snapfaas snapshot export`), or its export did not finish", dir, manifestFile)
	}
	if err != nil {
		return nil, err
	}
	var m snapshotManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: not a valid manifest: %v", p, err)
	}
	switch {
	case m.Version == 0:
		return nil, fmt.Errorf("%s: no format version: not a snapshot manifest", p)
	case m.Version != snapshotFormatVersion:
		return nil, fmt.Errorf("%s: format version %d, this snapfaas reads version %d", p, m.Version, snapshotFormatVersion)
	case m.MemorySize <= 0 || m.MemorySize%4096 != 0:
		return nil, fmt.Errorf("%s: memory_size %d is not a positive multiple of 4 KiB", p, m.MemorySize)
	case !isSHA256(m.MemorySHA256):
		return nil, fmt.Errorf("%s: memory_sha256 %q is not a SHA-256 in hex", p, m.MemorySHA256)
	case m.VMStateSHA256 != "" && !isSHA256(m.VMStateSHA256):
		return nil, fmt.Errorf("%s: vmstate_sha256 %q is not a SHA-256 in hex", p, m.VMStateSHA256)
	case m.VMStateSHA256 == "" && m.VMStateSize != 0:
		return nil, fmt.Errorf("%s: vmstate_size without vmstate_sha256", p)
	}
	pages := m.MemorySize / 4096
	for _, pg := range m.WorkingSet {
		if int64(pg) >= pages {
			return nil, fmt.Errorf("%s: working-set page %d beyond memory (%d pages)", p, pg, pages)
		}
	}
	return &m, nil
}

func isSHA256(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == sha256.Size && s == strings.ToLower(s)
}

// checkFile checks that path is a regular file of size bytes whose SHA-256
// is sum (hex).
func checkFile(ctx context.Context, path string, size int64, sum string, logf func(string, ...any)) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is missing (the manifest lists it)", path)
	}
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() != size {
		return fmt.Errorf("%s: %d bytes, the manifest says %d: the file was changed or truncated after export", path, st.Size(), size)
	}
	if logf != nil {
		logf("checking SHA-256 of %s (%s)", path, progress.Bytes(size))
	}
	got, _, err := fileSHA256(ctx, path)
	if err != nil {
		return err
	}
	if got != sum {
		return fmt.Errorf("%s: SHA-256 mismatch (manifest %.12s…, file %.12s…): the file was changed or damaged after export", path, sum, got)
	}
	return nil
}

// checkSnapstore checks that the snapstore binary is there before any work
// is done.
func checkSnapstore(c *cli.Context) error {
	bin, err := snapstoreBinary(c)
	if err != nil {
		return err
	}
	if st, err := os.Stat(bin); err != nil {
		return fmt.Errorf("--snapstore: %w", err)
	} else if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("--snapstore: %s is not an executable file", bin)
	}
	return nil
}

// setWorkingSet stores pages as snapshot name's working set.
func setWorkingSet(c *cli.Context, name string, pages []uint32) error {
	f, err := os.CreateTemp("", "snapfaas-ws-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	err = json.NewEncoder(f).Encode(pages)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	_, err = snapstore(c, "workingset", "set", name, f.Name())
	return err
}

// progressf returns a printf for progress lines on stderr (none with
// --quiet).
func progressf(c *cli.Context) func(string, ...any) {
	if c.Bool("quiet") {
		return func(string, ...any) {}
	}
	return func(format string, a ...any) { fmt.Fprintf(c.App.ErrWriter, format+"\n", a...) }
}

// marshalManifest writes the manifest as indented JSON with the working set
// (possibly many thousands of pages) on one line, last.
func marshalManifest(m snapshotManifest) ([]byte, error) {
	ws := m.WorkingSet
	m.WorkingSet = nil
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if len(ws) > 0 {
		wb, err := json.Marshal(ws)
		if err != nil {
			return nil, err
		}
		b = append(bytes.TrimSuffix(b, []byte("\n}")), ",\n  \"working_set\": "...)
		b = append(append(b, wb...), "\n}"...)
	}
	return append(b, '\n'), nil
}

// fileSHA256 returns the hex SHA-256 and size of a file.
func fileSHA256(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return "", 0, errors.New("interrupted")
		}
		k, err := f.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", 0, err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// diskUsage is the space a (sparse) file occupies.
func diskUsage(st fs.FileInfo) int64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Blocks * 512
	}
	return st.Size()
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
