package pagestore

import (
	"fmt"
	"io"
	"os"
)

// sparseWriter writes a stream in which long runs of zeros become holes
// when the destination is a regular file, and real zeros otherwise.
type sparseWriter struct {
	w       io.Writer
	f       *os.File // set when w is a regular file
	pending int64    // zero bytes not yet written or skipped
}

func newSparseWriter(w io.Writer) *sparseWriter {
	sw := &sparseWriter{w: w}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			sw.f = f
		}
	}
	return sw
}

func (sw *sparseWriter) skip(n int64) error {
	if sw.f != nil {
		sw.pending += n
		return nil
	}
	for n > 0 {
		k := min(n, int64(len(zeroChunk)))
		if _, err := sw.w.Write(zeroChunk[:k]); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		n -= k
	}
	return nil
}

func (sw *sparseWriter) write(b []byte) error {
	if sw.pending > 0 {
		if _, err := sw.f.Seek(sw.pending, io.SeekCurrent); err != nil {
			return fmt.Errorf("seek: %w", err)
		}
		sw.pending = 0
	}
	if _, err := sw.w.Write(b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// finish gives a file its full size (a trailing hole has no bytes written).
func (sw *sparseWriter) finish(size int64) error {
	if sw.f == nil {
		return nil
	}
	if err := sw.f.Truncate(size); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	return nil
}
