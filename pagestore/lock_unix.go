//go:build unix

package pagestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// storeLock is an flock on DIR/LOCK: exclusive for a writer, shared for
// readers. The exclusive holder writes its pid and command into the file so
// that a refused process can say who holds the store.
type storeLock struct {
	f         *os.File
	exclusive bool
}

func lockStore(dir string, exclusive bool) (*storeLock, error) {
	path := filepath.Join(dir, "LOCK")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", dir, err)
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
		holder := readHolder(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("store %s is locked by %s: %w", dir, holder, ErrLocked)
		}
		return nil, fmt.Errorf("store %s: lock: %w", dir, err)
	}
	if exclusive {
		exe := filepath.Base(os.Args[0])
		args := strings.Join(append([]string{exe}, firstArgs(os.Args[1:], 3)...), " ")
		_ = f.Truncate(0)
		_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d (%s)\n", os.Getpid(), args)), 0)
	}
	return &storeLock{f: f, exclusive: exclusive}, nil
}

func firstArgs(a []string, n int) []string {
	var out []string
	for _, s := range a {
		if strings.HasPrefix(s, "-") {
			continue
		}
		if out = append(out, s); len(out) == n {
			break
		}
	}
	return out
}

func readHolder(f *os.File) string {
	b := make([]byte, 256)
	n, _ := f.ReadAt(b, 0)
	s := strings.TrimSpace(string(b[:n]))
	if s == "" {
		return "another process (reading)"
	}
	return s
}

func (l *storeLock) release() {
	if l == nil || l.f == nil {
		return
	}
	if l.exclusive {
		_ = l.f.Truncate(0)
	}
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
	l.f = nil
}
