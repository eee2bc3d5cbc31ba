// Package testutil holds helpers that the tests of several packages share.
// Only _test.go files import it (it imports testing).
package testutil

import (
	"bytes"
	"debug/elf"
	"sync"
	"testing"
)

// Buffer collects output a test reads while it is still being written: a
// child process's stdout or stderr (exec copies it on its own goroutine),
// a server's log, a VM's console. Its zero value is ready to use.
type Buffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	written chan struct{}
}

// Write appends p and signals Written.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case s.ch() <- struct{}{}:
	default:
	}
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Written receives a token after writes (several writes may share one),
// so that a test waiting for some text needs no polling.
func (s *Buffer) Written() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch()
}

// ch is the signal channel; s.mu is held.
func (s *Buffer) ch() chan struct{} {
	if s.written == nil {
		s.written = make(chan struct{}, 1)
	}
	return s.written
}

// ELFSymbol returns the address of symbol name in the ELF file at path
// (a test guest's), failing t if there is none.
func ELFSymbol(t testing.TB, path, name string) uint64 {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		if s.Name == name {
			return s.Value
		}
	}
	t.Fatalf("%s: no symbol %s", path, name)
	return 0
}
