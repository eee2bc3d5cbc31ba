package testguest

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// The guest's fixed values.
const (
	// Banner is the guest's first console line.
	Banner = "snapfaas testguest v1"
	// LoadAddr is where the image is linked and loaded (1 MiB).
	LoadAddr = 0x100000

	DefaultHeapMB = 16
	DefaultSeed   = 1
	DefaultPort   = 1234

	// PageSize is the heap page size; a page is 512 little-endian words.
	PageSize = 4096
	// HeapAlign: the heap starts at the first multiple of it after the
	// image's end.
	HeapAlign = 2 << 20

	// SnapshotPort gets SnapshotBootDone once the heap is filled, then
	// SnapshotNow; the guest connects its vsock only after these.
	SnapshotPort     = 0x3f0
	SnapshotBootDone = 123
	SnapshotNow      = 124

	// HostCID is the CID the guest connects to; LocalPortBase is its first
	// local port (each connection attempt takes the next one).
	HostCID       = 2
	LocalPortBase = 1024
	// BufAlloc is the receive buffer the guest advertises.
	BufAlloc = 65536
	// MaxRequest is the longest request frame payload the guest accepts; a
	// longer one gets an error response (id 0) and the connection reset.
	MaxRequest = 16384
	// MaxTouchCount is the largest count of one touch or read request.
	MaxTouchCount = 1 << 24

	// DiskMagic starts a disk image; MaxDiskPayload caps what is read.
	DiskMagic      = "SFTG"
	MaxDiskPayload = 65536
	// diskLineMax is how much of the payload's first line is printed.
	diskLineMax = 200
)

// splitmix64 is the guest's heap generator.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	z := x
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// HeapWord returns word (0..511) of heap page as the guest fills it:
// splitmix64(seed ^ page<<20 ^ word).
func HeapWord(seed, page, word uint64) uint64 {
	return splitmix64(seed ^ (page << 20) ^ word)
}

// PageBytes returns heap page's 4096 bytes after writes write-touches (each
// adds 1 to word 0).
func PageBytes(seed, page uint64, writes int) []byte {
	b := make([]byte, PageSize)
	for j := uint64(0); j < PageSize/8; j++ {
		binary.LittleEndian.PutUint64(b[8*j:], HeapWord(seed, page, j))
	}
	binary.LittleEndian.PutUint64(b, HeapWord(seed, page, 0)+uint64(writes))
	return b
}

// Checksum is FNV-1a 64 over the concatenated pages, as 16 hex digits.
func Checksum(pages [][]byte) string {
	h := fnv.New64a()
	for _, p := range pages {
		h.Write(p)
	}
	return fmt.Sprintf("%016x", h.Sum64())
}

// DiskImage returns a disk image holding payload: "SFTG", the payload
// length as a little-endian uint32, the payload, zero-padded to a multiple
// of 512 bytes. The guest reads at most MaxDiskPayload bytes of it.
func DiskImage(payload []byte) []byte {
	n := 8 + len(payload)
	b := make([]byte, (n+511)/512*512)
	copy(b, DiskMagic)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(payload)))
	copy(b[8:], payload)
	return b
}

func capDisk(payload []byte) []byte {
	return payload[:min(len(payload), MaxDiskPayload)]
}

// DiskLine returns what the guest prints after "disk: " for payload: its
// first line (up to 200 bytes), with bytes outside printable ASCII as '.'.
func DiskLine(payload []byte) string {
	p := capDisk(payload)
	if i := strings.IndexByte(string(p), '\n'); i >= 0 {
		p = p[:i]
	}
	p = p[:min(len(p), diskLineMax)]
	var sb strings.Builder
	for _, c := range p {
		if c < 0x20 || c >= 0x7f {
			c = '.'
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// DiskChecksum returns what the guest prints after "disk-checksum: ".
func DiskChecksum(payload []byte) string {
	return Checksum([][]byte{capDisk(payload)})
}

// MMIODevice is a virtio-mmio device as named on the command line.
type MMIODevice struct {
	Base, Size uint64
	IRQ        uint32
}

// String is the virtio_mmio.device= value: <size>@<base>:<irq>.
func (d MMIODevice) String() string {
	size := fmt.Sprintf("%#x", d.Size)
	if d.Size%1024 == 0 && d.Size != 0 {
		size = fmt.Sprintf("%dK", d.Size/1024)
	}
	return fmt.Sprintf("%s@%#x:%d", size, d.Base, d.IRQ)
}

// Config is the guest's command-line configuration.
type Config struct {
	HeapMB, Seed, Port uint64
	// Fault is "", "sse" or "triple".
	Fault string
	// Devices become virtio_mmio.device= words (leave empty when the VMM
	// adds them itself).
	Devices []MMIODevice
	// Extra words are appended as they are (the guest ignores unknown ones).
	Extra []string
}

// DefaultConfig is what the guest assumes when the command line is empty.
func DefaultConfig() Config {
	return Config{HeapMB: DefaultHeapMB, Seed: DefaultSeed, Port: DefaultPort}
}

// Cmdline returns the kernel command line for c; every value is explicit.
func (c Config) Cmdline() string {
	var w []string
	for _, d := range c.Devices {
		w = append(w, "virtio_mmio.device="+d.String())
	}
	w = append(w,
		"testguest.heap_mb="+strconv.FormatUint(c.HeapMB, 10),
		"testguest.seed="+strconv.FormatUint(c.Seed, 10),
		"testguest.port="+strconv.FormatUint(c.Port, 10))
	if c.Fault != "" {
		w = append(w, "testguest.fault="+c.Fault)
	}
	return strings.Join(append(w, c.Extra...), " ")
}

// HeapPages is the number of heap pages for heapMB.
func HeapPages(heapMB uint64) uint64 { return heapMB << 20 / PageSize }

// Heap models one guest's heap: apply the requests sent to that guest to
// get the responses it must give. A VM restored from a snapshot starts
// from a fresh heap (the snapshot is taken before any request).
type Heap struct {
	Seed, Pages uint64
	// Initrd is the guest's initrd, for read requests (nil: none).
	Initrd []byte
	writes map[uint64]int
}

// NewHeap models a guest booted with the given seed and heap_mb.
func NewHeap(seed, heapMB uint64) *Heap {
	return &Heap{Seed: seed, Pages: HeapPages(heapMB), writes: map[uint64]int{}}
}

// Page returns page p's current bytes.
func (h *Heap) Page(p uint64) []byte { return PageBytes(h.Seed, p, h.writes[p]) }

// Apply returns the response the guest gives to req and updates the model.
// Read requests go to InitrdChecksum with h.Initrd.
func (h *Heap) Apply(req Request) Response {
	switch req.Op {
	case OpExit:
		return Response{ID: req.ID, OK: true}
	case OpRead:
		return InitrdChecksum(h.Initrd, req)
	case OpTouch:
	default:
		return Response{ID: req.ID, Error: "unknown op"}
	}
	if err := checkPages(req, h.Pages); err != "" {
		return Response{ID: req.ID, Error: err}
	}
	n := hashBytes(req)
	sum := fnv.New64a()
	for k, p := uint64(0), req.Start; k < req.Count; k, p = k+1, p+req.Stride {
		if req.Write {
			h.writes[p]++
		}
		sum.Write(h.Page(p)[:n])
	}
	return Response{ID: req.ID, Pages: req.Count, Checksum: fmt.Sprintf("%016x", sum.Sum64())}
}

// hashBytes is how much of each page req hashes (Bytes 0 is the default,
// a whole page, as the key is then left out of the JSON).
func hashBytes(req Request) uint64 {
	if req.Bytes == 0 {
		return PageSize
	}
	return req.Bytes
}

// checkPages is the guest's check of a touch or read request over pages
// pages: the error it answers, or "".
func checkPages(req Request, pages uint64) string {
	switch {
	case req.Bytes > PageSize:
		return "bytes out of range"
	case req.Count > MaxTouchCount:
		return "count too large"
	case req.Count > 0 && (req.Start >= pages ||
		req.Stride != 0 && (req.Count-1) > (pages-1-req.Start)/req.Stride):
		return "page out of range"
	}
	return ""
}

// InitrdPages is the number of pages a read request can name in an initrd
// of size bytes (the last one may be partial).
func InitrdPages(size uint64) uint64 { return (size + PageSize - 1) / PageSize }

// InitrdChecksum returns the response the guest gives to read request req
// when its initrd holds initrd (empty: none): FNV-1a 64 over the first
// Bytes bytes of initrd pages Start, Start+Stride, ..., a page being
// 4096 bytes from the initrd's start and the last one zero-padded.
func InitrdChecksum(initrd []byte, req Request) Response {
	switch {
	case req.Op != OpRead:
		return Response{ID: req.ID, Error: "unknown op"}
	case len(initrd) == 0:
		return Response{ID: req.ID, Error: "no initrd"}
	case req.Write:
		return Response{ID: req.ID, Error: "write not allowed"}
	}
	if err := checkPages(req, InitrdPages(uint64(len(initrd)))); err != "" {
		return Response{ID: req.ID, Error: err}
	}
	n := hashBytes(req)
	page := make([]byte, n)
	sum := fnv.New64a()
	for k, p := uint64(0), req.Start; k < req.Count; k, p = k+1, p+req.Stride {
		clear(page)
		copy(page, initrd[p*PageSize:])
		sum.Write(page)
	}
	return Response{ID: req.ID, Pages: req.Count, Checksum: fmt.Sprintf("%016x", sum.Sum64())}
}

// Console is what the guest printed, line by line.
type Console struct {
	Lines []string
	// Banner: the first line was Banner.
	Banner bool
	// Config is the text after "config: ".
	Config string
	// Disk, DiskChecksum and DiskID are the texts after "disk: ",
	// "disk-checksum: " and "disk-id: " ("" when not printed).
	Disk, DiskChecksum, DiskID string
	// Initrd is the text after "initrd: " ("none", or "N bytes at
	// 0x..."); InitrdSize and InitrdAddr are its numbers.
	Initrd                 string
	InitrdSize, InitrdAddr uint64
	// HeapPages and HeapAddr come from "heap: N pages at 0x...".
	HeapPages, HeapAddr uint64
	// Ready: the guest printed "ready" (no vsock device; idle).
	Ready bool
	// Exception is the "EXCEPTION vector=..." line, if any.
	Exception string
}

// ParseConsole splits the guest's serial output into lines and picks out
// the known ones.
func ParseConsole(out string) Console {
	var c Console
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimRight(l, "\r")
		if l == "" {
			continue
		}
		c.Lines = append(c.Lines, l)
		switch {
		case len(c.Lines) == 1 && l == Banner:
			c.Banner = true
		case strings.HasPrefix(l, "config: "):
			c.Config = strings.TrimPrefix(l, "config: ")
		case strings.HasPrefix(l, "disk: "):
			c.Disk = strings.TrimPrefix(l, "disk: ")
		case strings.HasPrefix(l, "disk-checksum: "):
			c.DiskChecksum = strings.TrimPrefix(l, "disk-checksum: ")
		case strings.HasPrefix(l, "disk-id: "):
			c.DiskID = strings.TrimPrefix(l, "disk-id: ")
		case strings.HasPrefix(l, "initrd: "):
			c.Initrd = strings.TrimPrefix(l, "initrd: ")
			fmt.Sscanf(c.Initrd, "%d bytes at 0x%x", &c.InitrdSize, &c.InitrdAddr)
		case strings.HasPrefix(l, "heap: "):
			fmt.Sscanf(l, "heap: %d pages at 0x%x", &c.HeapPages, &c.HeapAddr)
		case l == "ready":
			c.Ready = true
		case strings.HasPrefix(l, "EXCEPTION "):
			c.Exception = l
		}
	}
	return c
}
