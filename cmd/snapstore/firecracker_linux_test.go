package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/bench/corpus"
	"github.com/snapfaas/snapfaas/uffd"
)

// fcRegion is one element of the message a stock Firecracker sends its UFFD
// handler (GuestRegionUffdMapping), spelled out here rather than taken from
// package uffd so that the test checks the wire format.
type fcRegion struct {
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	Size             uint64 `json:"size"`
	Offset           uint64 `json:"offset"`
	PageSize         uint64 `json:"page_size"`
}

// TestServeFirecracker plays a stock Firecracker against `serve
// --firecracker SOCK=NAME`: guest memory in two anonymous mappings (mapped
// in reverse order, so the second region starts lower), registered with a
// uffd that travels over SOCK with the region list; every page touched
// must hold snapshot NAME's bytes, its parent's where the diff has none.
func TestServeFirecracker(t *testing.T) {
	if _, _, err := uffd.SupportedFeatures(); err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	const pages = 512
	base := corpus.Generate(31, pages*page)
	copy(base[400*page:402*page], bytes.Repeat([]byte{0x77}, 2*page))
	clear(base[450*page : 452*page]) // zero pages, served with ZEROPAGE
	fn := bytes.Clone(base)
	copy(fn[7*page:], "diff page 7")
	copy(fn[300*page:], "diff page 300")
	clear(fn[400*page : 402*page]) // pages that became zero in the diff
	ok(t, store, "memory", "import", "base", writeTemp(t, "base.raw", base))
	ok(t, store, "memory", "import", "--parent", "base", "fn", writeTemp(t, "fn.raw", fn))

	fcSock := filepath.Join(dir, "fc.sock")
	d := startDaemon(t, store, "serve", "--socket", filepath.Join(dir, "s.sock"), "--firecracker", fcSock+"=fn")
	d.waitLog(t, `msg="snapstore serving"`, 10*time.Second)

	u, err := uffd.New()
	if err != nil {
		t.Fatal(err)
	}
	const half = pages / 2
	hi, err1 := unix.Mmap(-1, 0, (pages-half)*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	lo, err2 := unix.Mmap(-1, 0, half*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err1 != nil || err2 != nil {
		t.Fatalf("mmap: %v %v", err1, err2)
	}
	touched := make(chan []byte, 1)
	finished := make(chan struct{})
	// Undo in this order: the sidecar stops (serve's cleanup runs later
	// and finds it done), our uffd is closed, which, as the last
	// reference, wakes a thread still blocked in a fault; then unmap.
	t.Cleanup(func() {
		if !d.done {
			d.cmd.Process.Kill()
			<-d.exited
			d.done = true
		}
		u.Close()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			panic("the touching goroutine is still blocked in a fault after the uffd was closed")
		}
		unix.Munmap(lo)
		unix.Munmap(hi)
	})
	var regions []fcRegion
	for _, m := range []struct {
		mem []byte
		off uint64
	}{{lo, 0}, {hi, half * page}} {
		addr := uintptr(unsafe.Pointer(&m.mem[0]))
		if _, err := u.Register(addr, uintptr(len(m.mem)), uffd.ModeMissing); err != nil {
			t.Fatal(err)
		}
		regions = append(regions, fcRegion{BaseHostVirtAddr: uint64(addr), Size: uint64(len(m.mem)), Offset: m.off, PageSize: page})
	}
	body, err := json.Marshal(regions)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: fcSock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := uffd.SendRaw(conn, u.Fd(), body); err != nil {
		t.Fatal(err)
	}

	// Touch every page in guest order. A Go loop, not copy(): a fault
	// inside memmove cannot be preempted (see package uffd).
	go func() {
		defer close(finished)
		out := make([]byte, 0, pages*page)
		for _, m := range [][]byte{lo, hi} {
			for i := range m {
				out = append(out, m[i])
			}
		}
		touched <- out
	}()
	var got []byte
	select {
	case got = <-touched:
	case <-time.After(30 * time.Second):
		t.Fatalf("waited 30s for the guest pages to be served:\n%s", d.stderr.String())
	}
	if p := firstPageDiff(got, fn); p >= 0 {
		t.Fatalf("guest page %d differs from snapshot fn's (zero: %v, base's: %v)",
			p, isZero(got[p*page:(p+1)*page]), bytes.Equal(got[p*page:(p+1)*page], base[p*page:(p+1)*page]))
	}
	if l := d.logLine(t, `msg="client connected"`, 10*time.Second); !strings.Contains(l, "snapshot=fn") || !strings.Contains(l, "firecracker=true") {
		t.Fatalf("the session is not a Firecracker client of snapshot fn: %s", l)
	}

	// Firecracker exits: the session ends, having served every page on
	// demand, and the sidecar stops cleanly.
	conn.Close()
	if l := d.logLine(t, `msg="client disconnected"`, 10*time.Second); !strings.Contains(l, fmt.Sprintf(" faults=%d ", pages)) {
		t.Fatalf("session metrics: %s; want faults=%d", l, pages)
	}
	d.stop(t, syscall.SIGTERM)
}
