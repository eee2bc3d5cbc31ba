package catalog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openTest(t *testing.T) (*DB, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "catalog.db")
	db, err := Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, p
}

func h(b byte) Hash {
	var x Hash
	x[0], x[31] = b, b
	return x
}

func TestExtentsRoundTrip(t *testing.T) {
	es := []Extent{{Page: 0, Count: 4, Chunk: 0}, {Page: 4, Count: 1, Chunk: ZeroChunk}, {Page: 1000, Count: 3, Chunk: 1, Off: 2}, {Page: 1 << 33, Count: 1, Chunk: 7}}
	got, err := unmarshalExtents(marshalExtents(es))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, es) {
		t.Fatalf("got %+v", got)
	}
	if _, err := unmarshalExtents([]byte{5, 1}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("truncated extents: %v", err)
	}
}

func TestSnapshotsAndNamespace(t *testing.T) {
	db, _ := openTest(t)
	base := &Snapshot{SnapshotInfo: SnapshotInfo{Name: "base", Kind: KindBase, MemSize: 16 * PageSize, Granularity: PageSize},
		Chunks: []Hash{h(1)}, Extents: []Extent{{Page: 2, Count: 1, Chunk: 0}}, VMState: []byte("state"), WorkingSet: []uint32{2}}
	diff := &Snapshot{SnapshotInfo: SnapshotInfo{Name: "diff", Kind: KindDiff, Parent: "base", MemSize: 16 * PageSize, Granularity: PageSize},
		Extents: []Extent{{Page: 2, Count: 1, Chunk: ZeroChunk}}}
	err := db.Update(func(tx *Tx) error {
		if err := tx.PutChunk(h(1), Loc{Pack: 1, Offset: 0, CLen: 10, ULen: PageSize, Codec: 1}); err != nil {
			return err
		}
		if err := tx.PutSnapshot(base); err != nil {
			return err
		}
		return tx.PutSnapshot(diff)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *Tx) error {
		got, err := tx.Snapshot("base")
		if err != nil {
			return err
		}
		got.Created = base.Created
		if !reflect.DeepEqual(got, base) {
			t.Errorf("snapshot round trip: %+v", got)
		}
		chain, err := tx.Chain("diff")
		if err != nil || len(chain) != 2 || chain[1].Name != "base" {
			t.Errorf("chain: %v %v", chain, err)
		}
		if err := tx.PutImage(&Image{ImageInfo: ImageInfo{Name: "base", Size: 1, ChunkSize: PageSize}, Chunks: []Hash{h(1)}}); !errors.Is(err, ErrExists) {
			t.Errorf("image over snapshot name: %v", err)
		}
		if err := tx.PutSnapshot(&Snapshot{SnapshotInfo: SnapshotInfo{Name: "x", Kind: KindDiff, Parent: "base", MemSize: 8 * PageSize}}); err == nil {
			t.Error("diff with a different memory size was accepted")
		}
		if err := tx.PutSnapshot(&Snapshot{SnapshotInfo: SnapshotInfo{Name: "y", Kind: KindBase, MemSize: 16 * PageSize},
			Extents: []Extent{{Page: 15, Count: 2, Chunk: ZeroChunk}}}); !errors.Is(err, ErrCorrupt) {
			t.Errorf("extent beyond memory: %v", err)
		}
		if err := tx.DeleteSnapshot("base"); !errors.Is(err, ErrInUse) {
			t.Errorf("delete parent: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLeasesAndFunctionsBlockRemoval(t *testing.T) {
	db, _ := openTest(t)
	err := db.Update(func(tx *Tx) error {
		if err := tx.PutImage(&Image{ImageInfo: ImageInfo{Name: "rootfs", Size: 10, ChunkSize: PageSize}, Chunks: []Hash{ZeroHash}}); err != nil {
			return err
		}
		if err := tx.PutImage(&Image{ImageInfo: ImageInfo{Name: "app", Size: 10, ChunkSize: PageSize}, Chunks: []Hash{ZeroHash}}); err != nil {
			return err
		}
		if err := tx.PutFunction(&Function{Name: "hello", Runtime: "rootfs"}); err != nil {
			return err
		}
		if err := tx.PutFunction(&Function{Name: "bad", Runtime: "missing"}); !errors.Is(err, ErrNotFound) {
			t.Errorf("function naming a missing image: %v", err)
		}
		if err := tx.DeleteImage("rootfs"); !errors.Is(err, ErrInUse) {
			t.Errorf("delete image used by a function: %v", err)
		}
		if err := tx.PutLease(LeaseInfo{ID: "l1", Owner: "test", Created: time.Now()}); err != nil {
			return err
		}
		if err := tx.LeaseObject("l1", ImageRef("app")); err != nil {
			return err
		}
		if err := tx.DeleteImage("app"); !errors.Is(err, ErrInUse) {
			t.Errorf("delete leased image: %v", err)
		}
		// An expired lease holds nothing.
		l, _ := tx.Lease("l1")
		l.Expires = time.Now().Add(-time.Second)
		if err := tx.PutLease(l.LeaseInfo); err != nil {
			return err
		}
		if err := tx.DeleteImage("app"); err != nil {
			t.Errorf("delete image held by an expired lease: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLeaseLiveness(t *testing.T) {
	now := time.Now()
	if !(LeaseInfo{}).Live(now) {
		t.Error("a lease without expiry or pid is live")
	}
	if (LeaseInfo{Expires: now.Add(-time.Minute)}).Live(now) {
		t.Error("an expired lease is live")
	}
	if (LeaseInfo{PID: 1 << 22}).Live(now) { // above pid_max's default
		t.Error("a lease of a dead process is live")
	}
}

// storedVersion reads the schema version a catalog file records, without
// letting Open migrate it.
func storedVersion(t *testing.T, p string) uint32 {
	t.Helper()
	b, err := bolt.Open(p, 0o644, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var v []byte
	_ = b.View(func(tx *bolt.Tx) error {
		if m := tx.Bucket(bktMeta); m != nil {
			v = bytes.Clone(m.Get(keyVersion))
		}
		return nil
	})
	if len(v) != 4 {
		t.Fatalf("%s: schema version %x", p, v)
	}
	return binary.BigEndian.Uint32(v)
}

func TestSchemaVersions(t *testing.T) {
	db, p := openTest(t)
	db.Close()
	if v := storedVersion(t, p); v != SchemaVersion {
		t.Fatalf("new catalog records schema %d, want %d", v, SchemaVersion)
	}
	// A newer schema is refused, not misread.
	b, err := bolt.Open(p, 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bktMeta).Put(keyVersion, binary.BigEndian.AppendUint32(nil, SchemaVersion+1))
	})
	b.Close()
	if _, err := Open(p, Options{}); !errors.Is(err, ErrSchema) {
		t.Fatalf("newer schema: %v", err)
	}
	// Version 0 is a catalog never initialized: a reader finds nothing.
	b, _ = bolt.Open(p, 0o644, nil)
	_ = b.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bktMeta).Put(keyVersion, binary.BigEndian.AppendUint32(nil, 0))
	})
	b.Close()
	if _, err := Open(p, Options{ReadOnly: true}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read-only open of an uninitialized catalog: %v", err)
	}
}

// testdata/catalog-v1.db was written by schema 1 (an image, a snapshot, a
// function, a chunk and its pack). Opening it must run every migration
// from 1 to the current schema once and record the new version. Until a
// schema 2 exists the test plays a program one schema ahead, with a
// migration that leaves a mark.
func TestSchemaMigration(t *testing.T) {
	raw, err := os.ReadFile("testdata/catalog-v1.db")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "catalog.db")
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if v := storedVersion(t, p); v != 1 {
		t.Fatalf("fixture records schema %d, want 1", v)
	}
	ran := 0
	if SchemaVersion == 1 {
		schemaVersion = 2
		migrations[1] = func(tx *bolt.Tx) error {
			ran++
			return tx.Bucket(bktMeta).Put([]byte("migrated"), []byte("1->2"))
		}
		defer func() { schemaVersion = SchemaVersion; delete(migrations, 1) }()
	}
	if _, err := Open(p, Options{ReadOnly: true}); !errors.Is(err, ErrSchema) {
		t.Fatalf("read-only open of an old schema: %v, want ErrSchema", err)
	}
	if v := storedVersion(t, p); v != 1 {
		t.Fatalf("a read-only open changed the schema to %d", v)
	}
	db, err := Open(p, Options{})
	if err != nil {
		t.Fatalf("migrating open: %v", err)
	}
	err = db.View(func(tx *Tx) error {
		if _, err := tx.Image("rootfs"); err != nil {
			return err
		}
		if _, err := tx.Chain("base"); err != nil {
			return err
		}
		if !tx.HasChunk(h(1)) {
			return errors.New("chunk lost")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after migration: %v", err)
	}
	db.Close()
	if v := storedVersion(t, p); v != schemaVersion {
		t.Fatalf("after migration the catalog records schema %d, want %d", v, schemaVersion)
	}
	if SchemaVersion == 1 && ran != 1 {
		t.Fatalf("migration 1->2 ran %d times, want 1", ran)
	}
	// Migrated once: opening again runs nothing.
	db, err = Open(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	if SchemaVersion == 1 && ran != 1 {
		t.Fatalf("migration ran again on a migrated catalog (%d runs)", ran)
	}
}

func TestValidName(t *testing.T) {
	for _, n := range []string{"a", "python3.11-base", "fn_1"} {
		if err := ValidName(n); err != nil {
			t.Errorf("%q: %v", n, err)
		}
	}
	for _, n := range []string{"", ".hidden", "a/b", "a b", "-x", string(make([]byte, 200))} {
		if err := ValidName(n); !errors.Is(err, ErrInvalidName) {
			t.Errorf("%q accepted", n)
		}
	}
}
