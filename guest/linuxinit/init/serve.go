//go:build linux && amd64

package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/guest/testguest"
)

// modulesDir holds the kernel modules serve mode loads, in the order
// listed in its file "order" (linuxinit.Build writes both).
const modulesDir = "/lib/modules"

// serve is serve mode (linuxinit.serve=1): the test guest's protocol on a
// stock kernel. See the package doc of guest/linuxinit.
func serve(cmdline string) {
	cfg := testguest.DefaultConfig()
	for _, w := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(w, "=")
		n, err := strconv.ParseUint(v, 0, 64)
		if err != nil {
			continue
		}
		switch k {
		case "testguest.heap_mb":
			cfg.HeapMB = n
		case "testguest.seed":
			cfg.Seed = n
		case "testguest.port":
			cfg.Port = n
		}
	}
	loadModules()
	pages := testguest.HeapPages(cfg.HeapMB)
	heap, err := unix.Mmap(-1, 0, int(pages*testguest.PageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		fail("heap: %v", err)
	}
	for p := uint64(0); p < pages; p++ {
		for w := uint64(0); w < testguest.PageSize/8; w++ {
			binary.LittleEndian.PutUint64(heap[p*testguest.PageSize+8*w:], testguest.HeapWord(cfg.Seed, p, w))
		}
	}
	fmt.Printf("linuxinit: heap %d pages, seed %d\n", pages, cfg.Seed)
	snapshotPoint()
	for attempt := 0; ; attempt++ {
		fd, err := connect(uint32(cfg.Port))
		if err != nil {
			// The host may not listen yet; a restored VM's first
			// attempts may meet the transport reset.
			if attempt%50 == 0 {
				fmt.Printf("linuxinit: vsock connect to 2:%d: %v\n", cfg.Port, err)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		fmt.Printf("linuxinit: vsock connected to 2:%d\n", cfg.Port)
		c := os.NewFile(uintptr(fd), "vsock")
		err = serveConn(c, heap, pages)
		c.Close()
		// A restored VM's connection is reset (the transport reset
		// event): connect again.
		fmt.Printf("linuxinit: vsock connection ended: %v\n", err)
		attempt = -1
	}
}

func connect(port uint32) (int, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, &unix.SockaddrVM{CID: testguest.HostCID, Port: port}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// serveConn answers requests on c until it fails.
func serveConn(c *os.File, heap []byte, pages uint64) error {
	for {
		b, err := testguest.ReadFrame(c)
		if err != nil {
			return err
		}
		req := testguest.Request{Count: 1, Stride: 1} // the guest's defaults for absent keys
		var resp testguest.Response
		if err := json.Unmarshal(b, &req); err != nil {
			resp = testguest.Response{Error: "bad request"}
		} else {
			resp = answer(req, heap, pages)
		}
		out, _ := json.Marshal(resp)
		if _, err := c.Write(testguest.EncodeFrame(out)); err != nil {
			return err
		}
		if req.Op == testguest.OpExit && resp.OK {
			syscall.Sync()
			_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART)
		}
	}
}

// answer computes req's response over the heap itself, as the C test
// guest does (testguest.Heap.Apply models it).
func answer(req testguest.Request, heap []byte, pages uint64) testguest.Response {
	switch req.Op {
	case testguest.OpExit:
		return testguest.Response{ID: req.ID, OK: true}
	case testguest.OpRead:
		// The initramfs is unpacked and freed: like a guest without one.
		return testguest.Response{ID: req.ID, Error: "no initrd"}
	case testguest.OpTouch:
	default:
		return testguest.Response{ID: req.ID, Error: "unknown op"}
	}
	switch {
	case req.Bytes > testguest.PageSize:
		return testguest.Response{ID: req.ID, Error: "bytes out of range"}
	case req.Count > testguest.MaxTouchCount:
		return testguest.Response{ID: req.ID, Error: "count too large"}
	case req.Count > 0 && (req.Start >= pages ||
		req.Stride != 0 && (req.Count-1) > (pages-1-req.Start)/req.Stride):
		return testguest.Response{ID: req.ID, Error: "page out of range"}
	}
	n := req.Bytes
	if n == 0 {
		n = testguest.PageSize
	}
	sum := fnv.New64a()
	for k, p := uint64(0), req.Start; k < req.Count; k, p = k+1, p+req.Stride {
		page := heap[p*testguest.PageSize : (p+1)*testguest.PageSize]
		if req.Write {
			binary.LittleEndian.PutUint64(page, binary.LittleEndian.Uint64(page)+1)
		}
		sum.Write(page[:n])
	}
	return testguest.Response{ID: req.ID, Pages: req.Count, Checksum: fmt.Sprintf("%016x", sum.Sum64())}
}

// loadModules loads the modules listed in modulesDir/order with
// finit_module, in that order; one already loaded (or built in) is fine.
func loadModules() {
	order, err := os.ReadFile(modulesDir + "/order")
	if err != nil {
		fmt.Println("linuxinit: no modules:", err)
		return
	}
	for _, name := range strings.Fields(string(order)) {
		f, err := os.Open(modulesDir + "/" + name)
		if err != nil {
			fail("module %s: %v", name, err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && err != unix.EEXIST {
			fail("finit_module %s: %v", name, err)
		}
	}
	fmt.Printf("linuxinit: loaded modules %s\n", bytes.TrimSpace(bytes.ReplaceAll(order, []byte("\n"), []byte(" "))))
}

func fail(format string, a ...any) {
	fmt.Printf("linuxinit: "+format+"\n", a...)
	syscall.Sync()
	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART)
	os.Exit(1)
}
