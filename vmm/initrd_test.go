package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/vmm/arch"
)

// TestTestGuestReadsInitrd boots the test guest with an initrd (40 KiB and
// 100 bytes of random data: a partial last page), checks where the VMM put
// it and what the guest saw, and checks read requests over vsock against
// the model.
func TestTestGuestReadsInitrd(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	dir := t.TempDir()
	initrd := make([]byte, 40<<10+100)
	rand.New(rand.NewSource(7)).Read(initrd)
	initrdPath := filepath.Join(dir, "initrd")
	if err := os.WriteFile(initrdPath, initrd, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "v.sock")
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 1
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", sock, cfg.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const memMiB = 64
	var console syncBuf
	vm, err := New(Config{Kernel: elf, Cmdline: cfg.Cmdline(), Initrd: initrdPath, MemMiB: memMiB, Console: &console,
		HideEmulatorUnsafe: true, Vsock: &Vsock{CID: 3, Path: sock}})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()

	// As high as possible, page-aligned, and in the zero page.
	wantAddr := uint64(memMiB<<20 - 44<<10)
	mem := vm.Memory()
	if !bytes.Equal(mem[wantAddr:wantAddr+uint64(len(initrd))], initrd) {
		t.Fatalf("the initrd is not at %#x in guest memory", wantAddr)
	}
	zp := mem[arch.ZeroPageStart:]
	if a, n := binary.LittleEndian.Uint32(zp[0x218:]), binary.LittleEndian.Uint32(zp[0x21c:]); uint64(a) != wantAddr || int(n) != len(initrd) {
		t.Fatalf("boot params say the initrd is %d bytes at %#x, want %d at %#x", n, a, len(initrd), wantAddr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- vm.Run(ctx) }()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	var conn net.Conn
	select {
	case conn = <-accepted:
	case err := <-done:
		t.Fatalf("VM ended before connecting: %v\n%s", err, console.String())
	case <-ctx.Done():
		t.Fatalf("the guest never connected\n%s", console.String())
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Minute))

	c := testguest.ParseConsole(console.String())
	if c.InitrdSize != uint64(len(initrd)) || c.InitrdAddr != wantAddr {
		t.Fatalf("guest says initrd %q, want %d bytes at %#x\n%s", c.Initrd, len(initrd), wantAddr, console.String())
	}
	heap := testguest.NewHeap(cfg.Seed, cfg.HeapMB)
	heap.Initrd = initrd
	reqs := []testguest.Request{
		testguest.ReadRequest(1, 0, 11, 1, 8),     // every page, the partial one too
		testguest.ReadRequest(2, 1, 4, 3, 8),      // 1, 4, 7, 10
		testguest.ReadRequest(3, 9, 2, 1, 4096),   // a whole page and the zero-padded last one
		testguest.ReadRequest(4, 10, 1, 1, 100),   // exactly the last page's bytes
		testguest.ReadRequest(5, 2, 3, 0, 4096),   // stride 0
		testguest.ReadRequest(6, 0, 2, 10, 0),     // bytes left out: 4096
		testguest.ReadRequest(7, 11, 1, 1, 8),     // out of range
		testguest.ReadRequest(8, 1, 3, 5, 8),      // last page 11: out of range
		testguest.ReadRequest(9, 0, 1, 1, 4097),   // bytes out of range
		testguest.TouchRequest(10, 3, 4, 1, true), // touch as before
		{ID: 11, Op: testguest.OpTouch, Start: 3, Count: 4, Stride: 1, Bytes: 8},
	}
	for _, req := range reqs {
		got, err := testguest.Call(conn, req)
		if err != nil {
			t.Fatalf("%+v: %v\n%s", req, err, console.String())
		}
		want := heap.Apply(req)
		if got != want {
			t.Fatalf("%+v: guest %+v, model %+v", req, got, want)
		}
		if req.Op == testguest.OpRead && req.Start >= 11 && got.Error != "page out of range" {
			t.Fatalf("%+v: %+v, want page out of range", req, got)
		}
	}
	if _, err := testguest.Call(conn, testguest.ExitRequest(99)); err != nil {
		t.Fatalf("exit: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("VM after exit: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the guest did not power off after exit")
	}
	t.Logf("console:\n%s", console.String())
}

// TestInitrdErrors: an initrd that cannot be read or does not fit stops
// New with an error naming it.
func TestInitrdErrors(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(40 << 20) // sparse
	f.Close()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	for _, c := range []struct {
		path, want string
	}{
		{big, "does not fit"},
		{empty, "empty"},
		{filepath.Join(dir, "missing"), "no such file"},
		{dir, "not a regular file"},
	} {
		vm, err := New(Config{Kernel: elf, Initrd: c.path, MemMiB: 32, HideEmulatorUnsafe: true})
		if err == nil {
			vm.Close()
			t.Errorf("%s: accepted", c.path)
			continue
		}
		if !strings.Contains(err.Error(), "initrd") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an initrd error saying %q", c.path, err, c.want)
		}
		if c.path == big && !errors.Is(err, arch.ErrMemory) {
			t.Errorf("%s: %v is not ErrMemory", c.path, err)
		}
		t.Logf("%v", err)
	}
}

// TestTestGuestHeapOverlapsInitrd: a heap that would overwrite the initrd
// is refused by the guest before it fills anything.
func TestTestGuestHeapOverlapsInitrd(t *testing.T) {
	skipWithoutKVM(t)
	elf := buildTestGuest(t)
	initrd := filepath.Join(t.TempDir(), "initrd")
	if err := os.WriteFile(initrd, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := testguest.DefaultConfig()
	cfg.HeapMB = 13 // 2..15 MiB; the initrd is at 14..16 MiB
	var console syncBuf
	vm, err := New(Config{Kernel: elf, Cmdline: cfg.Cmdline(), Initrd: initrd, MemMiB: 16, Console: &console, HideEmulatorUnsafe: true})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	out, err := runUntil(t, vm, &console, "", time.Minute)
	if err != nil || !strings.Contains(out, "initrd: 2097152 bytes at 0xe00000\n") ||
		!strings.Contains(out, "heap: 13 MiB at 0x200000 overlaps the initrd\n") {
		t.Fatalf("%v\n%s", err, out)
	}
}
