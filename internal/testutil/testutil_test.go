package testutil

import (
	"strings"
	"testing"
	"time"
)

func TestBufferSignalsWrites(t *testing.T) {
	var b Buffer // the zero value works
	go func() {
		for _, s := range []string{"one ", "two ", "READY"} {
			b.Write([]byte(s))
		}
	}()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(b.String(), "READY") {
		select {
		case <-b.Written():
		case <-deadline:
			t.Fatalf("no READY after 10s: %q", b.String())
		}
	}
	if b.String() != "one two READY" {
		t.Fatalf("buffer holds %q", b.String())
	}
}
