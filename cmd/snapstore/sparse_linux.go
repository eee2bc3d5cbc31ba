package main

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// writtenPages returns, per 4 KiB page of f, whether any of it is data
// rather than a hole (SEEK_DATA/SEEK_HOLE). On a file system that does not
// report holes every page is data, so the file's unwritten pages read as
// zeros and are recorded as zero pages, not as the parent's: --changed-only
// needs a file system that reports holes (tmpfs, ext4, xfs and btrfs do).
func writtenPages(f *os.File, size int64) ([]bool, error) {
	pages := make([]bool, size/4096)
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only holes from off on
		}
		if err != nil {
			return nil, fmt.Errorf("find data in %s: %w", f.Name(), err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("find holes in %s: %w", f.Name(), err)
		}
		for p := data / 4096; p < (hole+4095)/4096 && p < int64(len(pages)); p++ {
			pages[p] = true
		}
		off = hole
	}
	return pages, nil
}
