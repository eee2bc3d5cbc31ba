// Package testutil holds helpers that the tests of several packages share.
// Only _test.go files import it.
package testutil

import (
	"bytes"
	"sync"
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
