package pagestore

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/snapfaas/snapfaas/catalog"
)

// Sentinel errors. Catalog sentinels (catalog.ErrNotFound, ErrExists,
// ErrInUse, ErrInvalidName) pass through wrapped.
var (
	// ErrCorrupt: stored data does not match its checksum or address, or
	// the catalog contradicts the chunk files. Never returned with data.
	ErrCorrupt = errors.New("store is corrupt")
	// ErrLocked: another process holds the store.
	ErrLocked = errors.New("store is locked")
	// ErrReadOnly: a write on a store opened read-only.
	ErrReadOnly = errors.New("store is open read-only")
	// ErrNoStore: the directory holds no store (and Create was not set).
	ErrNoStore = errors.New("no store here")
	// ErrBadInput: the file to import is unusable as given.
	ErrBadInput = errors.New("bad input")
)

// Store is an open snapshot store: a directory holding catalog.db and the
// chunk packs. Its methods are safe for concurrent use; write operations
// (imports, removals, gc) run one at a time.
type Store struct {
	dir      string
	readOnly bool
	opts     options
	lock     *storeLock
	cat      *catalog.DB
	codecs   *codecs
	cache    *cache

	packMu sync.RWMutex
	packs  map[uint32]*os.File // read handles

	inflightMu sync.Mutex
	inflight   map[catalog.Hash]*inflight

	writeMu sync.Mutex  // one write operation at a time
	pw      *packWriter // active pack; guarded by writeMu

	background sync.WaitGroup // prefetches; Close waits for them
}

type inflight struct {
	done chan struct{}
	data []byte
	err  error
}

type options struct {
	readOnly    bool
	create      bool
	cacheBytes  int64
	codec       Codec
	verifyHash  bool
	maxPack     int64
	noSync      bool
	lockTimeout bool
}

// Option configures Open.
type Option func(*options)

// ReadOnly opens the store for reading: a shared lock that many readers can
// hold at once, while a writer is refused.
func ReadOnly() Option { return func(o *options) { o.readOnly = true } }

// Create makes the store if the directory holds none.
func Create() Option { return func(o *options) { o.create = true } }

// CacheSize bounds the decompressed-chunk cache (default 256 MiB).
func CacheSize(bytes int64) Option { return func(o *options) { o.cacheBytes = bytes } }

// DefaultCodec sets the codec for new chunks (default zstd).
func DefaultCodec(c Codec) Option { return func(o *options) { o.codec = c } }

// VerifyHash makes every read also check the SHA-256 of the decompressed
// bytes against the chunk's address, on top of the record's CRC-32C. It
// costs ~2 µs per 4 KiB page; verify always does it.
func VerifyHash(on bool) Option { return func(o *options) { o.verifyHash = on } }

// MaxPackSize sets the size at which a new pack file is started (default 1 GiB).
func MaxPackSize(bytes int64) Option { return func(o *options) { o.maxPack = bytes } }

// NoSync skips fsync. Only for benchmarks that measure without durability.
func NoSync() Option { return func(o *options) { o.noSync = true } }

// DefaultDir is where a store lives when none is named: /var/lib for root,
// else the user's XDG data directory.
func DefaultDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/snapfaas/store"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "snapfaas", "store")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".snapfaas-store"
	}
	return filepath.Join(home, ".local", "share", "snapfaas", "store")
}

// Open opens the store in dir.
func Open(dir string, opts ...Option) (*Store, error) {
	o := options{cacheBytes: 256 << 20, codec: CodecZstd, maxPack: 1 << 30}
	for _, f := range opts {
		f(&o)
	}
	catPath := filepath.Join(dir, "catalog.db")
	if _, err := os.Stat(catPath); errors.Is(err, fs.ErrNotExist) {
		if !o.create {
			return nil, fmt.Errorf("%s: %w (create one by importing something)", dir, ErrNoStore)
		}
		if o.readOnly {
			return nil, fmt.Errorf("%s: %w", dir, ErrNoStore)
		}
	}
	if !o.readOnly {
		if err := os.MkdirAll(filepath.Join(dir, chunksSubdir), 0o755); err != nil {
			return nil, fmt.Errorf("store %s: %w", dir, err)
		}
	}
	lock, err := lockStore(dir, !o.readOnly)
	if err != nil {
		return nil, err
	}
	cat, err := catalog.Open(catPath, catalog.Options{ReadOnly: o.readOnly, NoSync: o.noSync})
	if err != nil {
		lock.release()
		if errors.Is(err, catalog.ErrCorrupt) {
			return nil, fmt.Errorf("store %s: %w: %w", dir, err, ErrCorrupt)
		}
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	cs, err := newCodecs()
	if err != nil {
		cat.Close()
		lock.release()
		return nil, err
	}
	return &Store{
		dir:      dir,
		readOnly: o.readOnly,
		opts:     o,
		lock:     lock,
		cat:      cat,
		codecs:   cs,
		cache:    newCache(o.cacheBytes),
		packs:    map[uint32]*os.File{},
		inflight: map[catalog.Hash]*inflight{},
	}, nil
}

// Close releases the store. Pending writes must have finished.
func (s *Store) Close() error {
	s.background.Wait() // a prefetch still decoding uses the codecs and packs
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	var err error
	if s.pw != nil {
		err = s.pw.close()
		s.pw = nil
	}
	s.packMu.Lock()
	for id, f := range s.packs {
		f.Close()
		delete(s.packs, id)
	}
	s.packMu.Unlock()
	if cerr := s.cat.Close(); err == nil {
		err = cerr
	}
	s.codecs.close()
	s.lock.release()
	return err
}

// Dir returns the store directory.
func (s *Store) Dir() string { return s.dir }

// Catalog gives read access to the catalog.
func (s *Store) Catalog() *catalog.DB { return s.cat }

// CacheStats reports the read cache's use.
func (s *Store) CacheStats() CacheStats { return s.cache.stats() }

func (s *Store) packPath(id uint32) string {
	return filepath.Join(s.dir, chunksSubdir, packName(id))
}

func (s *Store) packFile(id uint32) (*os.File, error) {
	s.packMu.RLock()
	f := s.packs[id]
	s.packMu.RUnlock()
	if f != nil {
		return f, nil
	}
	s.packMu.Lock()
	defer s.packMu.Unlock()
	if f := s.packs[id]; f != nil {
		return f, nil
	}
	f, err := os.Open(s.packPath(id))
	if err != nil {
		return nil, err
	}
	s.packs[id] = f
	return f, nil
}

// forgetPack closes the read handle of a pack that gc removed.
func (s *Store) forgetPack(id uint32) {
	s.packMu.Lock()
	defer s.packMu.Unlock()
	if f := s.packs[id]; f != nil {
		f.Close()
		delete(s.packs, id)
	}
}

// readRecord reads and checks the record of chunk h at loc.
func (s *Store) readRecord(h catalog.Hash, loc catalog.Loc) ([]byte, error) {
	f, err := s.packFile(loc.Pack)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: pack %d: %w: %w", h.Short(), loc.Pack, err, ErrCorrupt)
	}
	rec := make([]byte, headerSize+int(loc.CLen))
	if n, err := f.ReadAt(rec, loc.Offset); n != len(rec) {
		return nil, fmt.Errorf("chunk %s: pack %d offset %d: short read (%v): %w", h.Short(), loc.Pack, loc.Offset, err, ErrCorrupt)
	}
	if err := checkRecord(rec, h, loc); err != nil {
		return nil, fmt.Errorf("chunk %s: pack %d offset %d: %v: %w", h.Short(), loc.Pack, loc.Offset, err, ErrCorrupt)
	}
	return rec, nil
}

// decodeChunk reads, checks and decompresses chunk h from disk, bypassing
// the cache. With verifyHash it also checks the SHA-256 of the result.
func (s *Store) decodeChunk(h catalog.Hash, loc catalog.Loc, verifyHash bool) ([]byte, error) {
	rec, err := s.readRecord(h, loc)
	if err != nil {
		return nil, err
	}
	// Slack past the decoded length lets zstd use its fast path, which
	// may write a little beyond the output (measured ~10% faster).
	data, err := s.codecs.decompress(make([]byte, 0, loc.ULen+64), rec[headerSize:], Codec(loc.Codec), int(loc.ULen))
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %s: %v: %w", h.Short(), Codec(loc.Codec), err, ErrCorrupt)
	}
	if len(data) != int(loc.ULen) {
		return nil, fmt.Errorf("chunk %s: decodes to %d bytes, want %d: %w", h.Short(), len(data), loc.ULen, ErrCorrupt)
	}
	if verifyHash && sha256.Sum256(data) != h {
		return nil, fmt.Errorf("chunk %s: content does not match its hash: %w", h.Short(), ErrCorrupt)
	}
	return data, nil
}

// Chunk returns the decompressed bytes of chunk h at loc, from the cache
// when it can. The slice is shared: do not modify it. Concurrent misses on
// one chunk decode it once.
func (s *Store) Chunk(h catalog.Hash, loc catalog.Loc) ([]byte, error) {
	data, _, err := s.chunk(h, loc)
	return data, err
}

// chunk is Chunk that also reports whether this call decoded the chunk
// (a cache miss) rather than finding it cached or decoded by another.
func (s *Store) chunk(h catalog.Hash, loc catalog.Loc) ([]byte, bool, error) {
	if data, ok := s.cache.get(h); ok {
		return data, false, nil
	}
	s.inflightMu.Lock()
	if in := s.inflight[h]; in != nil {
		s.inflightMu.Unlock()
		<-in.done
		return in.data, false, in.err
	}
	in := &inflight{done: make(chan struct{})}
	s.inflight[h] = in
	s.inflightMu.Unlock()

	in.data, in.err = s.decodeChunk(h, loc, s.opts.verifyHash)
	if errors.Is(in.err, ErrCorrupt) {
		// gc may have moved the chunk to another pack since loc was read.
		if cur, err := s.chunkLoc(h); err == nil && cur != loc {
			in.data, in.err = s.decodeChunk(h, cur, s.opts.verifyHash)
		}
	}
	if in.err == nil {
		s.cache.add(h, in.data)
	}
	s.inflightMu.Lock()
	delete(s.inflight, h)
	s.inflightMu.Unlock()
	close(in.done)
	return in.data, in.err == nil, in.err
}

// cached reports whether chunk h is in the cache (without touching its
// recency).
func (s *Store) cached(h catalog.Hash) bool { return s.cache.has(h) }

// ChunkByHash looks chunk h up in the catalog and returns its bytes.
func (s *Store) ChunkByHash(h catalog.Hash) ([]byte, error) {
	if data, ok := s.cache.get(h); ok {
		return data, nil
	}
	loc, err := s.chunkLoc(h)
	if err != nil {
		return nil, err
	}
	return s.Chunk(h, loc)
}

func (s *Store) chunkLoc(h catalog.Hash) (loc catalog.Loc, err error) {
	err = s.cat.View(func(tx *catalog.Tx) error {
		loc, err = tx.Chunk(h)
		return err
	})
	return loc, err
}
