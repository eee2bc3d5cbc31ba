package fusefs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"github.com/snapfaas/snapfaas/internal/testutil"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/catalog"
	"github.com/snapfaas/snapfaas/pagestore"
)

type mountedStore struct {
	s    *pagestore.Store
	dir  string
	mnt  string
	logs *syncBuf
}

// syncBuf is a log sink the test can read while the server's handler
// writes to it.
type syncBuf = testutil.Buffer

func mountStore(t *testing.T) *mountedStore {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse on this machine")
	}
	if os.Geteuid() != 0 {
		t.Skip("DirectMount needs root (no fusermount here)")
	}
	m := &mountedStore{dir: t.TempDir(), logs: &syncBuf{}}
	var err error
	m.s, err = pagestore.Open(filepath.Join(m.dir, "store"), pagestore.Create())
	if err != nil {
		t.Fatal(err)
	}
	m.mnt = filepath.Join(m.dir, "mnt")
	os.Mkdir(m.mnt, 0o755)
	mt, err := New(m.mnt, m.s, Options{Log: slog.New(slog.NewTextHandler(m.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := mt.Unmount(); err != nil {
			t.Error(err)
		}
		m.s.Close()
	})
	return m
}

func (m *mountedStore) importImage(t *testing.T, name string, data []byte) {
	t.Helper()
	if _, err := m.s.ImportImage(context.Background(), name, bytes.NewReader(data), pagestore.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestImagesByteIdenticalAndRandomReads(t *testing.T) {
	m := mountStore(t)
	img := append(corpus.Generate(1, 6<<20), make([]byte, 300<<10)...)
	img = append(img, "tail"...)
	m.importImage(t, "rootfs", img)
	p := filepath.Join(m.mnt, "images", "rootfs")
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(len(img)) || st.Mode().Perm() != 0o444 {
		t.Fatalf("stat: size %d mode %v", st.Size(), st.Mode())
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(img) {
		t.Fatal("image read through the mount differs")
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(3, 3))
	for i := 0; i < 300; i++ {
		off := rng.Int64N(int64(len(img)))
		buf := make([]byte, 1+rng.IntN(200<<10))
		n, err := f.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], img[off:off+int64(n)]) || n != min(len(buf), len(img)-int(off)) {
			t.Fatalf("ReadAt(%d, %d) = %d bytes, wrong", off, len(buf), n)
		}
	}
}

func TestCatalogTreeIsLive(t *testing.T) {
	m := mountStore(t)
	ents, err := os.ReadDir(m.mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "functions,images,snapshots" {
		t.Fatalf("root: %v", names)
	}
	// Imported after mounting: appears without a remount.
	m.importImage(t, "later", []byte("hello"))
	if b, err := os.ReadFile(filepath.Join(m.mnt, "images", "later")); err != nil || string(b) != "hello" {
		t.Fatalf("new image: %q %v", b, err)
	}
	mem := corpus.Generate(2, 2<<20)
	ctx := context.Background()
	if _, err := m.s.ImportMemory(ctx, "base", bytes.NewReader(mem), int64(len(mem)), pagestore.MemoryOptions{}); err != nil {
		t.Fatal(err)
	}
	mod := bytes.Clone(mem)
	copy(mod[4096*7:], "changed")
	if _, err := m.s.ImportMemory(ctx, "fn", bytes.NewReader(mod), int64(len(mod)), pagestore.MemoryOptions{Parent: "base"}); err != nil {
		t.Fatal(err)
	}
	if err := m.s.SetWorkingSet("fn", []uint32{7, 3, 9}); err != nil {
		t.Fatal(err)
	}
	err = m.s.Catalog().Update(func(tx *catalog.Tx) error {
		return tx.PutFunction(&catalog.Function{Name: "hello", Runtime: "later", Snapshot: "fn", Created: time.Now()})
	})
	if err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(m.mnt, "snapshots", "fn")
	ents, err = os.ReadDir(snap)
	if err != nil {
		t.Fatal(err)
	}
	names = names[:0]
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "info.json,memory,parent,working-set" {
		t.Fatalf("snapshot dir: %v", names)
	}
	var info pagestore.ObjectInfo
	b, err := os.ReadFile(filepath.Join(snap, "info.json"))
	if err != nil || json.Unmarshal(b, &info) != nil || info.Parent != "base" || info.LayerPages != 1 {
		t.Fatalf("info.json: %s %v", b, err)
	}
	if b, _ := os.ReadFile(filepath.Join(snap, "working-set")); string(b) != "7\n3\n9\n" {
		t.Fatalf("working-set: %q", b)
	}
	if l, err := os.Readlink(filepath.Join(snap, "parent")); err != nil || l != "../base" {
		t.Fatalf("parent link: %q %v", l, err)
	}
	if _, err := os.Stat(filepath.Join(snap, "parent", "memory")); err != nil {
		t.Fatalf("following parent: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(snap, "memory"))
	if err != nil || !bytes.Equal(got, mod) {
		t.Fatalf("memory differs (%v)", err)
	}
	// Zero pages are holes.
	f, _ := os.Open(filepath.Join(snap, "memory"))
	defer f.Close()
	hole, err := f.Seek(0, 4) // SEEK_HOLE
	if err != nil || hole%4096 != 0 || hole >= int64(len(mod)) || !bytes.Equal(mod[hole:hole+4096], make([]byte, 4096)) {
		t.Fatalf("SEEK_HOLE: %d %v", hole, err)
	}
	fn := filepath.Join(m.mnt, "functions", "hello")
	if l, _ := os.Readlink(filepath.Join(fn, "runtime")); l != "../../images/later" {
		t.Fatalf("runtime link %q", l)
	}
	if b, err := os.ReadFile(filepath.Join(fn, "snapshot", "working-set")); err != nil || len(b) == 0 {
		t.Fatalf("through the function's snapshot link: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(fn, "config.json")); err != nil || !strings.Contains(string(b), `"runtime": "later"`) {
		t.Fatalf("config.json: %s %v", b, err)
	}
	// Removed objects disappear (after the entry timeout).
	if err := m.s.Catalog().Update(func(tx *catalog.Tx) error { return tx.DeleteFunction("hello") }); err != nil {
		t.Fatal(err)
	}
	if _, err := m.s.Remove("fn"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(snap); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited 5s for removed snapshot %s to disappear from the mount", snap)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestReadOnly(t *testing.T) {
	m := mountStore(t)
	m.importImage(t, "img", []byte("data"))
	p := filepath.Join(m.mnt, "images", "img")
	for what, err := range map[string]error{
		"write":  func() error { _, err := os.OpenFile(p, os.O_WRONLY, 0); return err }(),
		"create": os.WriteFile(filepath.Join(m.mnt, "images", "new"), []byte("x"), 0o644),
		"mkdir":  os.Mkdir(filepath.Join(m.mnt, "images", "d"), 0o755),
		"rename": os.Rename(p, filepath.Join(m.mnt, "images", "img2")),
		"remove": os.Remove(p),
		"chmod":  os.Chmod(p, 0o777),
	} {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", what, err)
		}
	}
}

func TestCorruptChunkGivesEIO(t *testing.T) {
	m := mountStore(t)
	img := corpus.Generate(4, 1<<20)
	m.importImage(t, "img", img)
	packs, _ := filepath.Glob(filepath.Join(m.dir, "store", "chunks", "pack-*"))
	raw, err := os.ReadFile(packs[0])
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-100] ^= 0xff // inside the last chunk's payload
	if err := os.WriteFile(packs[0], raw, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(m.mnt, "images", "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatalf("intact chunk: %v", err)
	}
	if _, err := f.ReadAt(buf, int64(len(img)-4096)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("corrupt chunk: %v, want EIO", err)
	}
	// The server logs before it replies EIO, so the line is there now.
	if logs := m.logs.String(); !strings.Contains(logs, "chunk") || !strings.Contains(logs, "checksum mismatch") {
		t.Fatalf("no log line naming the chunk: %q", logs)
	}
}

func TestMountErrors(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse on this machine")
	}
	m := mountStore(t)
	if _, err := New(filepath.Join(m.dir, "missing"), m.s, Options{}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing dir: %v", err)
	}
	if _, err := New(m.mnt, m.s, Options{}); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("busy dir: %v", err)
	}
}
