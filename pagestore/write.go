package pagestore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/snapfaas/snapfaas/catalog"
)

// commitEvery bounds the uncommitted chunk data of one import: every this
// many new compressed bytes the pack is fsynced and the chunks committed
// under the import's lease, so a huge import holds bounded state. A
// variable so that tests can make imports commit often.
var commitEvery int64 = 64 << 20

// leaseTTL is how long an import's lease protects its chunks without being
// refreshed; each commit refreshes it.
const leaseTTL = time.Hour

// WriteStats counts what an import did.
type WriteStats struct {
	InputBytes  int64 // bytes read
	Chunks      int   // chunk references made (not counting zeros)
	NewChunks   int   // chunks stored by this import
	NewBytes    int64 // compressed bytes (with record headers) added to packs
	NewRaw      int64 // uncompressed bytes of the new chunks
	DedupChunks int   // references to chunks that were already stored
	ZeroBytes   int64 // bytes recorded as zero, not stored
	// UnchangedBytes are a diff snapshot's bytes equal to its parent's.
	UnchangedBytes int64
}

// chunkWriter stores the new chunks of one write operation. It holds
// Store.writeMu from begin to end.
type chunkWriter struct {
	s     *Store
	codec Codec
	lease string
	// stored locates every chunk this write stored, committed or not;
	// order lists those not committed yet. A chunk that recurs after its
	// commit is not stored again: the workers may have looked it up in
	// the catalog before the commit.
	stored map[catalog.Hash]catalog.Loc
	order  []catalog.Hash
	since  int64
	stats  WriteStats
	rec    []byte
}

func (s *Store) beginWrite(owner string, codec Codec) (*chunkWriter, error) {
	if s.readOnly {
		return nil, ErrReadOnly
	}
	s.writeMu.Lock()
	var b [8]byte
	_, _ = rand.Read(b[:])
	w := &chunkWriter{s: s, codec: codec, lease: "import-" + hex.EncodeToString(b[:]), stored: map[catalog.Hash]catalog.Loc{}}
	now := time.Now().UTC()
	err := s.cat.Update(func(tx *catalog.Tx) error {
		return tx.PutLease(catalog.LeaseInfo{ID: w.lease, Owner: owner, PID: os.Getpid(), Created: now, Expires: now.Add(leaseTTL)})
	})
	if err != nil {
		s.writeMu.Unlock()
		return nil, fmt.Errorf("lease: %w", err)
	}
	crashPoint("write/lease-committed")
	return w, nil
}

// packWriter returns the active pack, opening or rotating it as needed.
// Called with writeMu held.
func (s *Store) packWriter() (*packWriter, error) {
	if s.pw != nil && s.pw.size < s.opts.maxPack {
		return s.pw, nil
	}
	var packs map[uint32]int64
	if err := s.cat.View(func(tx *catalog.Tx) (err error) {
		packs, err = tx.Packs()
		return err
	}); err != nil {
		return nil, err
	}
	var maxID uint32
	for id := range packs {
		maxID = max(maxID, id)
	}
	if s.pw == nil && maxID > 0 && packs[maxID] < s.opts.maxPack {
		pw, err := openPackWriter(s.dir, maxID, packs[maxID])
		if err != nil {
			return nil, err
		}
		s.pw = pw
		return pw, nil
	}
	return s.newPack()
}

// newPack closes the active pack and starts a new one, with an id above
// every pack the catalog or the directory knows (debris included).
func (s *Store) newPack() (*packWriter, error) {
	var maxID uint32
	if err := s.cat.View(func(tx *catalog.Tx) error {
		packs, err := tx.Packs()
		for id := range packs {
			maxID = max(maxID, id)
		}
		return err
	}); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, chunksSubdir))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if id, ok := parsePackName(e.Name()); ok {
			maxID = max(maxID, id)
		}
	}
	if s.pw != nil {
		if err := s.pw.close(); err != nil {
			return nil, err
		}
		s.pw = nil
	}
	pw, err := openPackWriter(s.dir, maxID+1, 0)
	if err != nil {
		return nil, err
	}
	s.pw = pw
	return pw, nil
}

// add stores j's chunk unless the store or this write has it already.
func (w *chunkWriter) add(j *job) error {
	w.stats.Chunks++
	if j.exists {
		w.stats.DedupChunks++
		return nil
	}
	if _, ok := w.stored[j.h]; ok {
		w.stats.DedupChunks++
		return nil
	}
	pw, err := w.s.packWriter()
	if err != nil {
		return err
	}
	w.rec = appendRecord(w.rec[:0], j.h, j.codec, len(j.data), j.payload)
	off, err := pw.append(w.rec)
	if err != nil {
		return err
	}
	crashPoint("write/record-appended")
	w.stored[j.h] = catalog.Loc{Pack: pw.id, Offset: off, CLen: uint32(len(j.payload)), ULen: uint32(len(j.data)), Codec: uint8(j.codec)}
	w.order = append(w.order, j.h)
	w.stats.NewChunks++
	w.stats.NewBytes += int64(len(w.rec))
	w.stats.NewRaw += int64(len(j.data))
	w.since += int64(len(w.rec))
	if w.since >= commitEvery || pw.size >= w.s.opts.maxPack {
		return w.commit(nil)
	}
	return nil
}

// commit makes the pending chunks durable, then records them in the
// catalog together with final (the object that references them) if given,
// else under the lease.
func (w *chunkWriter) commit(final func(*catalog.Tx) error) error {
	pw := w.s.pw
	if pw != nil && len(w.order) > 0 {
		if !w.s.opts.noSync {
			if err := pw.sync(); err != nil {
				return err
			}
		} else if err := pw.bw.Flush(); err != nil {
			return err
		}
	}
	crashPoint("write/data-synced")
	err := w.s.cat.Update(func(tx *catalog.Tx) error {
		for _, h := range w.order {
			if err := tx.PutChunk(h, w.stored[h]); err != nil {
				return err
			}
		}
		if pw != nil && len(w.order) > 0 {
			if err := tx.SetPack(pw.id, pw.size); err != nil {
				return err
			}
		}
		if final != nil {
			if err := final(tx); err != nil {
				return err
			}
			return tx.DeleteLease(w.lease)
		}
		l, err := tx.Lease(w.lease)
		if err != nil {
			return err
		}
		l.Expires = time.Now().UTC().Add(leaseTTL)
		if err := tx.PutLease(l.LeaseInfo); err != nil {
			return err
		}
		return tx.LeaseChunks(w.lease, w.order)
	})
	if err != nil {
		return err
	}
	if final != nil {
		crashPoint("write/object-committed")
	} else {
		crashPoint("write/chunks-committed")
	}
	w.order = w.order[:0]
	w.since = 0
	return nil
}

// end finishes the write: on success it commits with final; on failure it
// drops what was not committed and the lease, leaving debris for gc.
func (w *chunkWriter) end(err error, final func(*catalog.Tx) error) error {
	defer w.s.writeMu.Unlock()
	if err == nil {
		err = w.commit(final)
	}
	if err != nil {
		if pw := w.s.pw; pw != nil {
			// Forget the buffered, uncommitted tail; the next writer
			// truncates the file to the committed length.
			pw.close()
			w.s.pw = nil
		}
		_ = w.s.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteLease(w.lease) })
	}
	return err
}

// job is one candidate chunk travelling through the import pipeline.
type job struct {
	data  []byte // nil when zero
	zero  bool
	page  uint64 // memory: first guest page; image: chunk index
	count uint32 // memory: pages
	size  int    // bytes the job stands for

	h       catalog.Hash
	exists  bool
	payload []byte
	codec   Codec
	done    chan struct{}
}

// process hashes a job's data, checks whether the chunk is stored, and
// compresses it if not. It runs on pipeline workers.
func (s *Store) process(j *job, codec Codec) {
	if j.zero {
		return
	}
	j.h = sha256.Sum256(j.data)
	if err := s.cat.View(func(tx *catalog.Tx) error {
		j.exists = tx.HasChunk(j.h)
		return nil
	}); err == nil && j.exists {
		return
	}
	j.payload, j.codec = s.codecs.compress(make([]byte, 0, len(j.data)/2), j.data, codec)
}

// runPipeline runs produce in its own goroutine, processes the jobs it
// emits on GOMAXPROCS workers and hands them to consume in emission order.
func (s *Store) runPipeline(ctx context.Context, codec Codec, produce func(ctx context.Context, emit func(*job) error) error, consume func(*job) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers := runtime.GOMAXPROCS(0)
	todo := make(chan *job, 4*workers)
	order := make(chan *job, 8*workers)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range todo {
				s.process(j, codec)
				close(j.done)
			}
		}()
	}
	perr := make(chan error, 1)
	go func() {
		defer close(todo)
		defer close(order)
		perr <- produce(ctx, func(j *job) error {
			j.done = make(chan struct{})
			select {
			case order <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
			todo <- j
			return nil
		})
	}()
	var cerr error
	for j := range order {
		<-j.done
		if cerr == nil {
			if cerr = consume(j); cerr != nil {
				cancel()
			}
		}
	}
	wg.Wait()
	if cerr != nil {
		return cerr
	}
	return <-perr
}
