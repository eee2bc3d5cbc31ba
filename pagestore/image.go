package pagestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/snapfaas/snapfaas/catalog"
)

// DefaultImageChunk is the default chunk size of disk images: large enough
// to compress well and to cover the kernel's 128 KiB readahead in two
// decodes, small enough that a random 4 KiB read decodes little.
const DefaultImageChunk = 64 << 10

// ImportOptions are the options common to imports.
type ImportOptions struct {
	// ChunkSize is the image chunk size, or the memory granularity (the
	// largest run of pages cut into one chunk). A multiple of 4 KiB.
	ChunkSize int
	// Codec names the codec for new chunks: "zstd" (default), "s2", "raw".
	Codec  string
	Labels map[string]string
	// Progress, if set, is called with the number of input bytes done.
	Progress func(done int64)
}

func (o *ImportOptions) resolve(defChunk int, s *Store) (Codec, error) {
	if o.ChunkSize == 0 {
		o.ChunkSize = defChunk
	}
	if o.ChunkSize < catalog.PageSize || o.ChunkSize%catalog.PageSize != 0 || o.ChunkSize > maxChunk {
		return 0, fmt.Errorf("chunk size %d: want a multiple of 4 KiB up to %d MiB: %w", o.ChunkSize, maxChunk>>20, ErrBadInput)
	}
	if o.Codec == "" {
		return s.opts.codec, nil
	}
	c, err := ParseCodec(o.Codec)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", err, ErrBadInput)
	}
	return c, nil
}

// ImportResult reports an import.
type ImportResult struct {
	Name     string
	Size     int64
	Stats    WriteStats
	Duration time.Duration
}

// checkFree fails early if name is invalid or taken.
func (s *Store) checkFree(name string) error {
	if s.readOnly {
		return ErrReadOnly
	}
	if err := catalog.ValidName(name); err != nil {
		return err
	}
	return s.cat.View(func(tx *catalog.Tx) error {
		if kind := tx.Exists(name); kind != "" {
			return fmt.Errorf("%s %q: %w", kind, name, catalog.ErrExists)
		}
		return nil
	})
}

var zeroChunk = make([]byte, maxChunk)

func isZero(b []byte) bool { return bytes.Equal(b, zeroChunk[:len(b)]) }

// ImportImage stores the bytes of r as image name, cut into fixed-size
// chunks; zero chunks are recorded, not stored, and chunks already in the
// store are referenced, not stored again.
func (s *Store) ImportImage(ctx context.Context, name string, r io.Reader, o ImportOptions) (*ImportResult, error) {
	start := time.Now()
	codec, err := o.resolve(DefaultImageChunk, s)
	if err != nil {
		return nil, err
	}
	if err := s.checkFree(name); err != nil {
		return nil, err
	}
	w, err := s.beginWrite("image import "+name, codec)
	if err != nil {
		return nil, err
	}
	var chunks []catalog.Hash
	var size int64
	err = s.runPipeline(ctx, codec, func(ctx context.Context, emit func(*job) error) error {
		for {
			buf := make([]byte, o.ChunkSize)
			n, err := io.ReadFull(r, buf)
			if n > 0 {
				j := &job{data: buf[:n], size: n}
				if isZero(j.data) {
					j.data, j.zero = nil, true
				}
				if err := emit(j); err != nil {
					return err
				}
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read: %w", err)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}, func(j *job) error {
		size += int64(j.size)
		w.stats.InputBytes += int64(j.size)
		if j.zero {
			chunks = append(chunks, catalog.ZeroHash)
			w.stats.ZeroBytes += int64(j.size)
		} else {
			if err := w.add(j); err != nil {
				return err
			}
			chunks = append(chunks, j.h)
		}
		if o.Progress != nil {
			o.Progress(size)
		}
		return nil
	})
	img := &catalog.Image{
		ImageInfo: catalog.ImageInfo{Name: name, Size: size, ChunkSize: o.ChunkSize, Created: time.Now().UTC(), Labels: o.Labels},
		Chunks:    chunks,
	}
	err = w.end(err, func(tx *catalog.Tx) error { return tx.PutImage(img) })
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	return &ImportResult{Name: name, Size: size, Stats: w.stats, Duration: time.Since(start)}, nil
}

// chunkRef is a chunk and where it was when looked up.
type chunkRef struct {
	h   catalog.Hash
	loc catalog.Loc
}

// Image is a read-only view of a stored image. ReadAt decompresses only
// the chunks a read covers.
type Image struct {
	s      *Store
	Info   catalog.ImageInfo
	chunks []chunkRef // zero hash: zero chunk
}

var _ io.ReaderAt = (*Image)(nil)

// OpenImage returns a view of image name.
func (s *Store) OpenImage(name string) (*Image, error) {
	img := &Image{s: s}
	err := s.cat.View(func(tx *catalog.Tx) error {
		ci, err := tx.Image(name)
		if err != nil {
			return err
		}
		img.Info = ci.ImageInfo
		img.chunks = make([]chunkRef, len(ci.Chunks))
		for i, h := range ci.Chunks {
			img.chunks[i].h = h
			if h.IsZero() {
				continue
			}
			if img.chunks[i].loc, err = tx.Chunk(h); err != nil {
				return fmt.Errorf("image %q: chunk %d: %w: %w", name, i, err, ErrCorrupt)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return img, nil
}

// Size returns the image size in bytes.
func (img *Image) Size() int64 { return img.Info.Size }

// ReadAt reads len(p) bytes at off. It returns io.EOF at the end.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("image %q: negative offset", img.Info.Name)
	}
	cs := int64(img.Info.ChunkSize)
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		if pos >= img.Info.Size {
			return n, io.EOF
		}
		i := pos / cs
		within := pos - i*cs
		want := min(int64(len(p)-n), cs-within, img.Info.Size-pos)
		c := img.chunks[i]
		if c.h.IsZero() {
			clear(p[n : n+int(want)])
		} else {
			data, err := img.s.Chunk(c.h, c.loc)
			if err != nil {
				return n, fmt.Errorf("image %q at %d: %w", img.Info.Name, pos, err)
			}
			copy(p[n:n+int(want)], data[within:])
		}
		n += int(want)
	}
	return n, nil
}

// Prefetch decodes, in the background, the chunks covering [off, off+n)
// that are not cached yet, so that a sequential reader finds them ready.
func (img *Image) Prefetch(off, n int64) {
	cs := int64(img.Info.ChunkSize)
	first, last := off/cs, (min(off+n, img.Info.Size)-1)/cs
	var todo []chunkRef
	for i := max(first, 0); i <= last && i < int64(len(img.chunks)); i++ {
		c := img.chunks[i]
		if !c.h.IsZero() && !img.s.cached(c.h) {
			todo = append(todo, c)
		}
	}
	if len(todo) == 0 {
		return
	}
	img.s.background.Go(func() {
		for _, c := range todo {
			_, _ = img.s.Chunk(c.h, c.loc)
		}
	})
}

// ZeroChunk reports whether the chunk holding offset off is a zero chunk.
func (img *Image) ZeroChunk(off int64) bool {
	i := off / int64(img.Info.ChunkSize)
	return i < int64(len(img.chunks)) && img.chunks[i].h.IsZero()
}

// ExportImage writes image name to w, byte for byte as it was imported.
// Zero chunks become holes when w is a file.
func (s *Store) ExportImage(ctx context.Context, name string, w io.Writer, progress func(int64)) (int64, error) {
	img, err := s.OpenImage(name)
	if err != nil {
		return 0, err
	}
	sw := newSparseWriter(w)
	buf := make([]byte, img.Info.ChunkSize)
	for off := int64(0); off < img.Info.Size; {
		if err := ctx.Err(); err != nil {
			return off, err
		}
		n := int(min(int64(len(buf)), img.Info.Size-off))
		if img.ZeroChunk(off) {
			err = sw.skip(int64(n))
		} else if _, err = img.ReadAt(buf[:n], off); err == nil || errors.Is(err, io.EOF) {
			err = sw.write(buf[:n])
		}
		if err != nil {
			return off, err
		}
		off += int64(n)
		if progress != nil {
			progress(off)
		}
	}
	return img.Info.Size, sw.finish(img.Info.Size)
}
