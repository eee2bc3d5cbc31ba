package main

import (
	"bytes"
	"fmt"
	"github.com/snapfaas/snapfaas/internal/testutil"
	"github.com/snapfaas/snapfaas/pageserver"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// syncBuf is an output buffer a test may read while a child process's
// output is still being copied into it.
type syncBuf = testutil.Buffer

// waitFor polls cond until it holds, failing the test with what it was
// waiting for (and detail(), if given) when timeout passes first.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool, detail func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			msg := ""
			if detail != nil {
				msg = "\n" + detail()
			}
			t.Fatalf("still waiting after %s for %s%s", timeout, what, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stopSidecarAtCleanup stops, when the test ends, the sidecar that
// `snapfaas run` left running for store (it runs on as a daemon).
func stopSidecarAtCleanup(t *testing.T, store string) {
	t.Cleanup(func() {
		if pid := pageserver.SidecarPid(store); pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	})
}

// processesMentioning lists the live processes whose command line
// contains s (other than this test binary).
func processesMentioning(s string) []string {
	var found []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		if d == fmt.Sprintf("/proc/%d", os.Getpid()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if cmd := strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " "); strings.Contains(cmd, s) {
			found = append(found, filepath.Base(d)+": "+cmd)
		}
	}
	return found
}

// runWithin runs cmd (its output already directed), failing the test with
// what (and the tail of log) if it fails or is still running after
// timeout, when it is killed.
func runWithin(t *testing.T, cmd *exec.Cmd, timeout time.Duration, what string, log *syncBuf) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, tailLines(log.String(), 40))
		}
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s still running after %s:\n%s", what, timeout, tailLines(log.String(), 40))
	}
}
