package catalog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"regexp"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Sentinel errors. Callers branch on these with errors.Is.
var (
	ErrNotFound    = errors.New("not found")
	ErrExists      = errors.New("already exists")
	ErrInUse       = errors.New("in use")
	ErrCorrupt     = errors.New("catalog is corrupt")
	ErrSchema      = errors.New("unsupported catalog schema")
	ErrInvalidName = errors.New("invalid name")
	ErrLocked      = errors.New("catalog is locked by another process")
)

// SchemaVersion is the schema this code reads and writes.
const SchemaVersion = 1

// schemaVersion is the version Open migrates to: SchemaVersion, a variable
// so that a test can play a program one schema ahead and run a migration.
var schemaVersion uint32 = SchemaVersion

// migrations[v] upgrades a catalog from schema v to v+1.
var migrations = map[uint32]func(*bolt.Tx) error{}

var (
	bktMeta      = []byte("meta")
	bktChunks    = []byte("chunks")
	bktPacks     = []byte("packs")
	bktImages    = []byte("images")
	bktSnapshots = []byte("snapshots")
	bktFunctions = []byte("functions")
	bktLeases    = []byte("leases")

	keyVersion    = []byte("version")
	keyCreated    = []byte("created")
	keyInfo       = []byte("info")
	keyChunks     = []byte("chunks")
	keyExtents    = []byte("extents")
	keyVMConfig   = []byte("vmconfig")
	keyVMState    = []byte("vmstate")
	keyWorkingSet = []byte("workingset")
	keyObjects    = []byte("objects")
)

var topBuckets = [][]byte{bktMeta, bktChunks, bktPacks, bktImages, bktSnapshots, bktFunctions, bktLeases}

// DB is an open catalog.
type DB struct {
	bolt     *bolt.DB
	readOnly bool
}

// Options configure Open.
type Options struct {
	// ReadOnly opens the catalog for reading; the file must exist.
	ReadOnly bool
	// Timeout bounds the wait for bbolt's file lock (default 1s). The caller
	// is expected to hold the store lock already, so waiting long means
	// something is wrong.
	Timeout time.Duration
	// NoSync skips fsync on commit. Only for tests and benchmarks that do
	// not care about crashes.
	NoSync bool
}

// Open opens (creating if needed, unless read-only) the catalog file at
// path and migrates it to SchemaVersion.
func Open(path string, o Options) (*DB, error) {
	if o.Timeout == 0 {
		o.Timeout = time.Second
	}
	if o.ReadOnly {
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("catalog %s: %w", path, err)
		}
	}
	b, err := openBolt(path, o)
	if err != nil {
		return nil, err
	}
	db := &DB{bolt: b, readOnly: o.ReadOnly}
	if err := db.init(); err != nil {
		b.Close()
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	return db, nil
}

func openBolt(path string, o Options) (b *bolt.DB, err error) {
	// bbolt panics on some malformed files instead of returning an error;
	// a corrupt catalog must be reported, not crash the command.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("catalog %s: %v: %w", path, r, ErrCorrupt)
		}
	}()
	b, err = bolt.Open(path, 0o644, &bolt.Options{Timeout: o.Timeout, ReadOnly: o.ReadOnly, NoSync: o.NoSync})
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("catalog %s: %w", path, ErrLocked)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrVersionMismatch), errors.Is(err, bolterrors.ErrChecksum):
		return nil, fmt.Errorf("catalog %s: %w: %w", path, err, ErrCorrupt)
	case err != nil:
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	return b, nil
}

func (db *DB) init() error {
	var version uint32
	err := db.bolt.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bktMeta)
		if m == nil {
			return nil
		}
		v := m.Get(keyVersion)
		if len(v) != 4 {
			return fmt.Errorf("schema version missing: %w", ErrCorrupt)
		}
		version = binary.BigEndian.Uint32(v)
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case version == schemaVersion:
		return nil
	case version > schemaVersion:
		return fmt.Errorf("schema version %d is newer than this program's %d: %w", version, schemaVersion, ErrSchema)
	case db.readOnly && version == 0:
		return fmt.Errorf("not initialized: %w", ErrNotFound)
	case db.readOnly:
		return fmt.Errorf("schema version %d needs migration to %d; run any write command first: %w", version, schemaVersion, ErrSchema)
	}
	return db.bolt.Update(func(tx *bolt.Tx) error {
		if version == 0 {
			for _, name := range topBuckets {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			if err := tx.Bucket(bktMeta).Put(keyCreated, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
				return err
			}
			version = schemaVersion
		}
		for ; version < schemaVersion; version++ {
			m, ok := migrations[version]
			if !ok {
				return fmt.Errorf("no migration from schema %d: %w", version, ErrSchema)
			}
			if err := m(tx); err != nil {
				return fmt.Errorf("migrating schema %d to %d: %w", version, version+1, err)
			}
		}
		return tx.Bucket(bktMeta).Put(keyVersion, binary.BigEndian.AppendUint32(nil, version))
	})
}

// Close closes the database.
func (db *DB) Close() error { return db.bolt.Close() }

// ReadOnly reports whether the catalog was opened read-only.
func (db *DB) ReadOnly() bool { return db.readOnly }

// Path returns the catalog file's path.
func (db *DB) Path() string { return db.bolt.Path() }

// View runs fn in a read transaction.
func (db *DB) View(fn func(*Tx) error) error {
	return db.bolt.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Update runs fn in a write transaction, committed (and fsynced) when fn
// returns nil.
func (db *DB) Update(fn func(*Tx) error) error {
	return db.bolt.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidName checks an object name: 1–128 characters of letters, digits,
// '.', '_' and '-', starting with a letter or digit. Names become FUSE path
// components, so '/' is never allowed.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("name %q: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit: %w", name, ErrInvalidName)
	}
	return nil
}
