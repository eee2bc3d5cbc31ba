// Package cpio writes initramfs archives in the "newc" format the Linux
// kernel unpacks (Documentation/driver-api/early-userspace/buffer-format.rst).
//
// Each entry is a 110-byte ASCII header ("070701" and thirteen 8-digit hex
// fields: inode, mode, uid, gid, nlink, mtime, size, dev major/minor, rdev
// major/minor, name size, checksum), the NUL-terminated name, padding to 4
// bytes, the data, padding to 4 bytes. The archive ends with an entry named
// "TRAILER!!!". Entries are owned by root, dated 0 and written in the order
// given, so the same calls give the same bytes.
package cpio

import (
	"bufio"
	"fmt"
	"io"
)

// File type bits of the mode field.
const (
	typeDir     = 0o040000
	typeFile    = 0o100000
	typeCharDev = 0o020000
)

// Writer writes one archive. Errors are sticky: the first one is returned
// by every later call and by Close.
type Writer struct {
	w   *bufio.Writer
	n   int64 // bytes written, for padding
	ino int
	err error
}

// NewWriter starts an archive on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: bufio.NewWriter(w), ino: 1} }

// Dir adds a directory (perm such as 0o755).
func (w *Writer) Dir(name string, perm uint32) error {
	return w.entry(name, typeDir|perm, nil, 0, 0)
}

// File adds a regular file.
func (w *Writer) File(name string, perm uint32, data []byte) error {
	return w.entry(name, typeFile|perm, data, 0, 0)
}

// CharDev adds a character device node, such as dev/console (5, 1).
func (w *Writer) CharDev(name string, perm uint32, major, minor int) error {
	return w.entry(name, typeCharDev|perm, nil, major, minor)
}

// Close writes the trailer and flushes; it does not close the underlying
// writer.
func (w *Writer) Close() error {
	if err := w.entry("TRAILER!!!", 0, nil, 0, 0); err != nil {
		return err
	}
	return w.w.Flush()
}

func (w *Writer) entry(name string, mode uint32, data []byte, major, minor int) error {
	if w.err != nil {
		return w.err
	}
	w.write([]byte(fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		w.ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(name)+1, 0)))
	w.ino++
	w.write(append([]byte(name), 0))
	w.pad()
	w.write(data)
	w.pad()
	if w.err != nil {
		w.err = fmt.Errorf("cpio %s: %w", name, w.err)
	}
	return w.err
}

func (w *Writer) write(b []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(b)
	w.n += int64(n)
	w.err = err
}

func (w *Writer) pad() {
	if r := w.n % 4; r != 0 {
		w.write(make([]byte, 4-r))
	}
}
