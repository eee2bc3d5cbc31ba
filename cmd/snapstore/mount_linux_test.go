package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/catalog"
	"github.com/snapfaas/snapfaas/pagestore"
)

func skipWithoutFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse on this machine")
	}
	if os.Geteuid() != 0 {
		t.Skip("snapstore mounts with DirectMount, which needs root (no fusermount here)")
	}
}

// mountpoint makes an empty directory to mount on. Its cleanup, which runs
// after the snapstore process's (registered later, run earlier), detaches a
// mount that a failed test left behind.
func mountpoint(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if mounted(t, dir) {
			unix.Unmount(dir, unix.MNT_DETACH)
			if !t.Failed() {
				t.Errorf("%s was still mounted after the test; detached it", dir)
			}
		}
	})
	return dir
}

// mounted reports whether dir is a mount point in /proc/self/mountinfo.
func mounted(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	return false
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// diffAt describes where got first differs from want.
func diffAt(got, want []byte) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("byte %d is %#x, want %#x", i, got[i], want[i])
		}
	}
	return fmt.Sprintf("%d bytes, want %d", len(got), len(want))
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// viewStore is a store with an image (data, a zero chunk, a partial last
// chunk), a base and a diff snapshot, and a function naming them.
type viewStore struct {
	dir            string
	img, base, mod []byte
}

func newViewStore(t *testing.T) *viewStore {
	t.Helper()
	v := &viewStore{dir: filepath.Join(t.TempDir(), "store")}
	v.img = append(corpus.Generate(11, 1<<20), make([]byte, 128<<10)...)
	v.img = append(v.img, "partial last chunk"...)
	v.base = corpus.Generate(12, 1<<20)
	v.mod = bytes.Clone(v.base)
	copy(v.mod[5*4096:], "changed page")
	ok(t, v.dir, "image", "import", "rootfs", writeTemp(t, "rootfs.ext4", v.img))
	ok(t, v.dir, "memory", "import", "base", writeTemp(t, "base.raw", v.base))
	ok(t, v.dir, "memory", "import", "--parent", "base", "fn", writeTemp(t, "fn.raw", v.mod))
	// No snapstore command makes functions (snapfaas does): write one.
	s, err := pagestore.Open(v.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Catalog().Update(func(tx *catalog.Tx) error {
		return tx.PutFunction(&catalog.Function{Name: "hello", Runtime: "rootfs", Snapshot: "fn", Created: time.Now()})
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// check reads the store's objects through the mount at mnt.
func (v *viewStore) check(t *testing.T, mnt string) {
	t.Helper()
	if got := names(t, mnt); !slices.Equal(got, []string{"functions", "images", "snapshots"}) {
		t.Fatalf("mount root lists %v, want functions images snapshots", got)
	}
	if got := names(t, filepath.Join(mnt, "images")); !slices.Equal(got, []string{"rootfs"}) {
		t.Fatalf("images/ lists %v, want rootfs", got)
	}
	if got := names(t, filepath.Join(mnt, "snapshots")); !slices.Equal(got, []string{"base", "fn"}) {
		t.Fatalf("snapshots/ lists %v, want base fn", got)
	}
	if got := names(t, filepath.Join(mnt, "functions")); !slices.Equal(got, []string{"hello"}) {
		t.Fatalf("functions/ lists %v, want hello", got)
	}
	if got := readFile(t, filepath.Join(mnt, "images", "rootfs")); !bytes.Equal(got, v.img) {
		t.Fatalf("images/rootfs read through the mount differs from the imported file: %s", diffAt(got, v.img))
	}
	if got := readFile(t, filepath.Join(mnt, "snapshots", "fn", "memory")); !bytes.Equal(got, v.mod) {
		t.Fatal("snapshots/fn/memory through the mount differs from the imported memory")
	}
	if got := readFile(t, filepath.Join(mnt, "functions", "hello", "snapshot", "memory")); !bytes.Equal(got, v.mod) {
		t.Fatal("functions/hello/snapshot/memory differs from snapshot fn's memory")
	}
}

// TestMountCommand mounts the store with `snapstore mount`, reads it, and
// unmounts it with each of the signals the command documents.
func TestMountCommand(t *testing.T) {
	skipWithoutFUSE(t)
	v := newViewStore(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			mnt := mountpoint(t)
			d := startDaemon(t, v.dir, "mount", mnt)
			d.waitLog(t, "msg=mounted", 10*time.Second)
			if !mounted(t, mnt) {
				t.Fatalf("snapstore logged mounted but %s is not in mountinfo", mnt)
			}
			v.check(t, mnt)
			d.stop(t, sig)
			if mounted(t, mnt) {
				t.Fatalf("%s still mounted after snapstore mount exited on %v", mnt, sig)
			}
			if got := names(t, mnt); len(got) != 0 {
				t.Fatalf("%s after unmount lists %v, want the empty directory", mnt, got)
			}
			if !strings.Contains(d.stderr.String(), "msg=unmounted") {
				t.Fatalf("no unmount logged:\n%s", d.stderr.String())
			}
		})
	}
}

// TestServeMount mounts the store from the sidecar and sees an import made
// through it while it runs.
func TestServeMount(t *testing.T) {
	skipWithoutFUSE(t)
	v := newViewStore(t)
	mnt := mountpoint(t)
	sock := filepath.Join(t.TempDir(), "s.sock")
	d := startDaemon(t, v.dir, "serve", "--socket", sock, "--mount", mnt)
	d.waitLog(t, `msg="snapstore serving"`, 10*time.Second)
	if !mounted(t, mnt) {
		t.Fatalf("serve --mount logged serving but %s is not in mountinfo", mnt)
	}
	v.check(t, mnt)

	// Imports run inside the sidecar and show in its mount.
	later := append(corpus.Generate(13, 256<<10), "later"...)
	out := ok(t, v.dir, "image", "import", "later", writeTemp(t, "later.img", later))
	if !strings.Contains(out, `imported image "later"`) {
		t.Fatalf("image import while serve runs: %q", out)
	}
	mem := corpus.Generate(14, 512<<10)
	ok(t, v.dir, "memory", "import", "m2", writeTemp(t, "m2.raw", mem))
	if got := names(t, filepath.Join(mnt, "images")); !slices.Equal(got, []string{"later", "rootfs"}) {
		t.Fatalf("images/ after an import through the sidecar lists %v, want later rootfs", got)
	}
	if got := readFile(t, filepath.Join(mnt, "images", "later")); !bytes.Equal(got, later) {
		t.Fatal("image imported through the sidecar reads differently through its mount")
	}
	if got := readFile(t, filepath.Join(mnt, "snapshots", "m2", "memory")); !bytes.Equal(got, mem) {
		t.Fatal("snapshot imported through the sidecar reads differently through its mount")
	}

	d.stop(t, syscall.SIGTERM)
	if mounted(t, mnt) {
		t.Fatalf("%s still mounted after serve exited", mnt)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Fatalf("serve left its socket %s behind", sock)
	}
}
