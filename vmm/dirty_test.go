package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/guest/testguest"
)

// TestDirtyPagesCoverEveryChange pauses the test guest at its snapshot
// point, keeps a copy of its memory, lets it serve write requests over
// vsock (guest writes and device writes), pauses it again and checks that
// every page that differs from the copy is among DirtyPages, and that the
// set is small.
func TestDirtyPagesCoverEveryChange(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 1
	sock := filepath.Join(t.TempDir(), "v.sock")
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", sock, cfg.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var console syncBuf
	vm, done, cancel := bootPaused(t, Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 64, Console: &console, HideEmulatorUnsafe: true,
		Vsock: &Vsock{CID: 3, Path: sock}, TrackDirty: true}, &console)
	defer vm.Close()
	defer cancel()
	boot, err := vm.DirtyPages()
	if err != nil {
		t.Fatal(err)
	}
	if len(boot) == 0 {
		t.Fatal("booting dirtied no pages")
	}
	before := bytes.Clone(vm.Memory())
	vm.Resume()

	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	heap := testguest.NewHeap(cfg.Seed, cfg.HeapMB)
	for i, req := range []testguest.Request{testguest.TouchRequest(1, 3, 1, 1, true), testguest.TouchRequest(2, 100, 3, 50, true), testguest.TouchRequest(3, 7, 2, 1, false)} {
		got, err := testguest.Call(conn, req)
		if err != nil {
			t.Fatalf("request %d: %v\n%s", i, err, console.String())
		}
		if want := heap.Apply(req); got != want {
			t.Fatalf("request %d: got %+v, want %+v", i, got, want)
		}
	}
	if err := vm.Pause(); err != nil {
		t.Fatal(err)
	}
	dirty, err := vm.DirtyPages()
	if err != nil {
		t.Fatal(err)
	}
	set := map[uint64]bool{}
	for _, p := range dirty {
		set[p] = true
	}
	mem := vm.Memory()
	changed := 0
	for p := uint64(0); p < uint64(len(mem))/pageSize; p++ {
		if !bytes.Equal(mem[p*pageSize:(p+1)*pageSize], before[p*pageSize:(p+1)*pageSize]) {
			changed++
			if !set[p] {
				t.Errorf("page %d (offset %#x) changed but is not reported dirty", p, p*pageSize)
			}
		}
	}
	const heapBase = 0x200000 / pageSize
	for _, p := range []uint64{3, 100, 150, 200} {
		if !set[heapBase+p] {
			t.Errorf("written heap page %d is not reported dirty", p)
		}
	}
	t.Logf("boot dirtied %d pages; the requests changed %d pages, %d reported dirty", len(boot), changed, len(dirty))
	if len(dirty) > 200 {
		t.Errorf("%d pages reported dirty for %d changed", len(dirty), changed)
	}
	vm.Resume()
	cancel()
	<-done

	plain, err := New(Config{Kernel: elf, Cmdline: cfg.Cmdline(), MemMiB: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := plain.DirtyPages(); !errors.Is(err, ErrNotTracking) {
		t.Fatalf("DirtyPages without tracking: %v", err)
	}
}
