package vmm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/fusefs"
	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/pagestore"
)

func buildTestGuest(t *testing.T) string {
	t.Helper()
	elf, err := testguest.Build(filepath.Join(os.TempDir(), "snapfaas-testguest"))
	if errors.Is(err, testguest.ErrNoCompiler) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return elf
}

// diskOnFUSE imports a disk image into a store, mounts the store and
// returns the image's path on the mount; without FUSE it returns a plain
// file and says so.
func diskOnFUSE(t *testing.T, img []byte) string {
	t.Helper()
	dir := t.TempDir()
	plain := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(plain, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		t.Logf("no FUSE mount possible here; the disk is a plain file")
		return plain
	}
	s, err := pagestore.Open(filepath.Join(dir, "store"), pagestore.Create())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ImportImage(context.Background(), "appfs", bytes.NewReader(img), pagestore.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	m, err := fusefs.New(mnt, s, fusefs.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Unmount()
		s.Close()
	})
	return filepath.Join(mnt, "images", "appfs")
}

// runUntil runs vm until the console contains want (then stops it) or the
// VM ends by itself; it returns the console output and the run error.
func runUntil(t *testing.T, vm *VM, console *syncBuf, want string, timeout time.Duration) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- vm.Run(ctx) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return console.String(), err
		case <-tick.C:
			if want != "" && strings.Contains(console.String(), want) {
				cancel()
				<-done
				return console.String(), nil
			}
		}
	}
}

func TestTestGuestBootsWithDiskFromFUSE(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	payload := []byte("hello function\nbody of the function's data\n")
	disk := diskOnFUSE(t, testguest.DiskImage(payload))
	for _, n := range []int{1, 2} {
		var console syncBuf
		var points []uint8
		cfg := testguest.DefaultConfig()
		cfg.HeapMB = 1
		vm, err := New(Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 64, VCPUs: n, Console: &console,
			HideEmulatorUnsafe: true, Disks: []Disk{{Path: disk, ReadOnly: true, ID: "appfs"}},
			OnSnapshotPoint: func(v uint8) { points = append(points, v) }})
		if err != nil {
			t.Fatal(err)
		}
		out, err := runUntil(t, vm, &console, "\nready\n", 3*time.Minute)
		defer vm.Close()
		if err != nil {
			t.Fatalf("%d vCPUs: %v\nconsole:\n%s", n, err, out)
		}
		c := testguest.ParseConsole(out)
		if !c.Banner || !c.Ready {
			t.Fatalf("%d vCPUs: console:\n%s", n, out)
		}
		if c.Disk != testguest.DiskLine(payload) || c.DiskChecksum != testguest.DiskChecksum(payload) || c.DiskID != "appfs" {
			t.Fatalf("disk lines %q %q %q, want %q %q appfs", c.Disk, c.DiskChecksum, c.DiskID, testguest.DiskLine(payload), testguest.DiskChecksum(payload))
		}
		if c.HeapPages != testguest.HeapPages(1) {
			t.Fatalf("heap pages %d", c.HeapPages)
		}
		if len(points) != 2 || points[0] != 123 || points[1] != 124 {
			t.Fatalf("snapshot points %v", points)
		}
		// The guest's heap, read straight from guest memory, is what the
		// model says.
		mem := vm.Memory()
		for _, p := range []uint64{0, 1, c.HeapPages - 1} {
			got := mem[c.HeapAddr+p*4096 : c.HeapAddr+(p+1)*4096]
			if !bytes.Equal(got, testguest.PageBytes(cfg.Seed, p, 0)) {
				t.Fatalf("heap page %d differs from the model", p)
			}
		}
	}
}

func TestTestGuestFaultsAreReported(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	for _, fault := range []string{"sse", "triple"} {
		var console syncBuf
		cfg := testguest.DefaultConfig()
		cfg.HeapMB, cfg.Fault = 0, fault
		vm, err := New(Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 32, Console: &console, HideEmulatorUnsafe: true})
		if err != nil {
			t.Fatal(err)
		}
		out, err := runUntil(t, vm, &console, "", 2*time.Minute)
		vm.Close()
		var ee *ExitError
		// sse: an emulation failure here, #UD (reported by the guest, then
		// a reset) on hardware; triple: a shutdown exit.
		if !errors.As(err, &ee) && !strings.Contains(out, "EXCEPTION vector=6") {
			t.Fatalf("fault=%s: %v\n%s", fault, err, out)
		}
		t.Logf("fault=%s: %v", fault, err)
	}
}
