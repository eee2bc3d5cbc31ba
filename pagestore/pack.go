package pagestore

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/snapfaas/snapfaas/catalog"
)

// A pack file is an append-only sequence of chunk records:
//
//	offset size
//	0      4    magic "SFC1"
//	4      1    codec
//	5      3    zero
//	8      4    uncompressed length (BE)
//	12     4    payload length (BE)
//	16     32   SHA-256 of the uncompressed bytes (the chunk's address)
//	48     4    CRC-32C (Castagnoli) of bytes 0..47 and the payload (BE)
//	52     n    payload
//
// Records are self-describing so that verify and recovery can walk a pack
// without the catalog.
const (
	recordMagic  = "SFC1"
	headerSize   = 52
	packPrefix   = "pack-"
	packSuffix   = ".sfp"
	chunksSubdir = "chunks"
	// maxChunk bounds a chunk's uncompressed size.
	maxChunk = 4 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func packName(id uint32) string { return fmt.Sprintf("%s%08d%s", packPrefix, id, packSuffix) }

func parsePackName(name string) (uint32, bool) {
	if !strings.HasPrefix(name, packPrefix) || !strings.HasSuffix(name, packSuffix) {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, packPrefix), packSuffix), 10, 32)
	return uint32(n), err == nil
}

// appendRecord appends the record for a chunk to dst.
func appendRecord(dst []byte, h catalog.Hash, codec Codec, ulen int, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, recordMagic...)
	dst = append(dst, byte(codec), 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, uint32(ulen))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	dst = append(dst, h[:]...)
	crc := crc32.Update(crc32.Checksum(dst[start:start+48], crcTable), crcTable, payload)
	dst = binary.BigEndian.AppendUint32(dst, crc)
	return append(dst, payload...)
}

// recordHeader is a decoded record header.
type recordHeader struct {
	codec Codec
	ulen  uint32
	clen  uint32
	hash  catalog.Hash
	crc   uint32
}

func parseHeader(b []byte) (recordHeader, error) {
	var r recordHeader
	if len(b) < headerSize || string(b[:4]) != recordMagic {
		return r, fmt.Errorf("bad record magic")
	}
	r.codec = Codec(b[4])
	r.ulen = binary.BigEndian.Uint32(b[8:])
	r.clen = binary.BigEndian.Uint32(b[12:])
	copy(r.hash[:], b[16:48])
	r.crc = binary.BigEndian.Uint32(b[48:])
	if r.ulen > maxChunk || r.clen > maxChunk+1024 {
		return r, fmt.Errorf("record lengths %d/%d out of range", r.ulen, r.clen)
	}
	return r, nil
}

// checkRecord verifies a whole record (header and payload) read from disk
// against the location the catalog gave for chunk h.
func checkRecord(rec []byte, h catalog.Hash, loc catalog.Loc) error {
	hdr, err := parseHeader(rec)
	if err != nil {
		return err
	}
	switch {
	case hdr.hash != h:
		return fmt.Errorf("record holds chunk %s", hdr.hash.Short())
	case hdr.clen != loc.CLen || hdr.ulen != loc.ULen || uint8(hdr.codec) != loc.Codec:
		return fmt.Errorf("record header disagrees with catalog")
	case len(rec) != headerSize+int(hdr.clen):
		return fmt.Errorf("record truncated")
	}
	crc := crc32.Update(crc32.Checksum(rec[:48], crcTable), crcTable, rec[headerSize:])
	if crc != hdr.crc {
		return fmt.Errorf("checksum mismatch")
	}
	return nil
}

// packWriter appends records to one pack file.
type packWriter struct {
	id   uint32
	f    *os.File
	bw   *bufio.Writer
	size int64 // logical end, including buffered bytes
}

func openPackWriter(dir string, id uint32, truncateTo int64) (*packWriter, error) {
	path := filepath.Join(dir, chunksSubdir, packName(id))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pack %d: %w", id, err)
	}
	// Bytes past the committed length were written by a writer that
	// crashed before its catalog commit: nothing refers to them.
	if err := f.Truncate(truncateTo); err != nil {
		f.Close()
		return nil, fmt.Errorf("pack %d: %w", id, err)
	}
	crashPoint("pack/opened")
	if err := syncDir(filepath.Join(dir, chunksSubdir)); err != nil {
		f.Close()
		return nil, err
	}
	crashPoint("pack/dir-synced")
	if _, err := f.Seek(truncateTo, 0); err != nil {
		f.Close()
		return nil, err
	}
	return &packWriter{id: id, f: f, bw: bufio.NewWriterSize(f, 1<<20), size: truncateTo}, nil
}

// append writes rec and returns its offset.
func (w *packWriter) append(rec []byte) (int64, error) {
	off := w.size
	if _, err := w.bw.Write(rec); err != nil {
		return 0, fmt.Errorf("pack %d: %w", w.id, err)
	}
	w.size += int64(len(rec))
	return off, nil
}

// sync makes everything appended so far durable.
func (w *packWriter) sync() error {
	if err := w.bw.Flush(); err != nil {
		return fmt.Errorf("pack %d: %w", w.id, err)
	}
	if err := syncFile(w.f); err != nil {
		return fmt.Errorf("pack %d: fsync: %w", w.id, err)
	}
	return nil
}

func (w *packWriter) close() error {
	err := w.bw.Flush()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := syncFile(d); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
