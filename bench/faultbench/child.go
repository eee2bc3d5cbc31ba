//go:build linux

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/uffd"
)

// childEnv switches the binary into client mode: its value is a JSON
// childSpec, and the process prints one JSON childResult on stdout.
const childEnv = "FAULTBENCH_CHILD"

// childSpec tells a client child process what to do.
type childSpec struct {
	// Mode is "uffd" (a VMM-like client of the page server) or "anon" (the
	// baseline: first touches of a plain anonymous mapping).
	Mode     string `json:"mode"`
	Socket   string `json:"socket,omitempty"`
	Snapshot string `json:"snapshot,omitempty"`
	Size     int64  `json:"size"`
	// TouchFile holds the pages to touch, in order, as little-endian
	// uint32s; "" touches every page in address order.
	TouchFile    string `json:"touch_file,omitempty"`
	Prefetch     bool   `json:"prefetch,omitempty"`
	FaultAround  bool   `json:"fault_around,omitempty"`
	WaitPrefetch bool   `json:"wait_prefetch,omitempty"`
	// SampleOneIn times one touch in SampleOneIn individually, chosen
	// pseudo-randomly (seed SampleSeed) so that the sample is not aligned
	// with chunk boundaries; 0 times none.
	SampleOneIn int    `json:"sample_one_in,omitempty"`
	SampleSeed  uint64 `json:"sample_seed,omitempty"`
	// ReadFile (anon mode) is a file to read with os.ReadFile first, into
	// the fresh process's memory.
	ReadFile string `json:"read_file,omitempty"`
}

// childResult is what a child prints. Durations are in nanoseconds.
type childResult struct {
	// uffd mode.
	ConnectNs int64 `json:"connect_ns,omitempty"` // pageserver.Connect: handoff sent → reply read
	WaitNs    int64 `json:"wait_ns,omitempty"`    // handoff → prefetch seen done (WaitPrefetch)
	Polls     int   `json:"polls,omitempty"`      // metrics requests while waiting
	// SeenSessionNs is the session's age (server clock) in the metrics
	// reply that first showed the prefetch done; minus PrefetchDone it
	// bounds how late the prefetcher started.
	SeenSessionNs int64 `json:"seen_session_ns,omitempty"`
	TouchNs       int64 `json:"touch_ns"`           // first touch → last touch
	TotalNs       int64 `json:"total_ns,omitempty"` // handoff → last touch
	Touched       int   `json:"touched"`
	// SamplesNs are the individually timed touches.
	SamplesNs []int64 `json:"samples_ns,omitempty"`
	// Sum is the SHA-256 of the touched pages in touch order, computed
	// after the timed region.
	Sum     string             `json:"sum,omitempty"`
	Metrics pageserver.Metrics `json:"metrics"`
	// anon mode: first write and first read of every page of two fresh
	// mappings.
	AnonWriteNs int64 `json:"anon_write_ns,omitempty"`
	AnonReadNs  int64 `json:"anon_read_ns,omitempty"`
	ReadFileNs  int64 `json:"read_file_ns,omitempty"`

	// Filled in by the parent: chunks the server decoded into its cache
	// during the session, and their bytes.
	Decoded      int   `json:"-"`
	DecodedBytes int64 `json:"-"`
}

// sink keeps the compiler from dropping the touches.
var sink byte

// childMain runs the client side and exits.
func childMain(specJSON string) {
	// A goroutine blocked in a page fault cannot be stopped for a garbage
	// collection, and nothing here needs one.
	debug.SetGCPercent(-1)
	var spec childSpec
	err := json.Unmarshal([]byte(specJSON), &spec)
	var res childResult
	if err == nil {
		switch spec.Mode {
		case "uffd":
			res, err = uffdChild(spec)
		case "anon":
			res, err = anonChild(spec)
		default:
			err = fmt.Errorf("unknown mode %q", spec.Mode)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "faultbench child: %v\n", err)
		os.Exit(2)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintf(os.Stderr, "faultbench child: %v\n", err)
		os.Exit(2)
	}
	os.Exit(0)
}

// sampleMask marks the touches to time individually.
func sampleMask(n, oneIn int, seed uint64) []bool {
	if oneIn <= 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 0x73616d706c65)) // "sample"
	m := make([]bool, n)
	for i := range m {
		m[i] = rng.IntN(oneIn) == 0
	}
	return m
}

// readTouchFile reads a page list written by writeTouchFile.
func readTouchFile(path string) ([]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b)%4 != 0 {
		return nil, fmt.Errorf("%s: %d bytes is not a list of uint32", path, len(b))
	}
	out := make([]int64, len(b)/4)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out, nil
}

// writeTouchFile writes pages for readTouchFile.
func writeTouchFile(path string, pages []uint32) error {
	var buf bytes.Buffer
	for _, p := range pages {
		_ = binary.Write(&buf, binary.LittleEndian, p)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// touchPages reads one byte of each page in order; the touches marked in
// mask are timed individually into samples (preallocated).
func touchPages(mem []byte, touch []int64, mask []bool, samples []int64) (time.Duration, []int64) {
	var s byte
	start := time.Now()
	for i, p := range touch {
		if mask != nil && mask[i] {
			t := time.Now()
			s += mem[p*pageSize]
			samples = append(samples, int64(time.Since(t)))
			continue
		}
		s += mem[p*pageSize]
	}
	d := time.Since(start)
	sink += s
	return d, samples
}

func uffdChild(spec childSpec) (childResult, error) {
	var res childResult
	pages := spec.Size / pageSize
	touch := make([]int64, 0, pages)
	if spec.TouchFile != "" {
		var err error
		if touch, err = readTouchFile(spec.TouchFile); err != nil {
			return res, err
		}
	} else {
		for p := int64(0); p < pages; p++ {
			touch = append(touch, p)
		}
	}
	for _, p := range touch {
		if p >= pages {
			return res, fmt.Errorf("page %d outside memory of %d pages", p, pages)
		}
	}
	mask := sampleMask(len(touch), spec.SampleOneIn, spec.SampleSeed)
	samples := make([]int64, 0, len(touch))

	mem, err := unix.Mmap(-1, 0, int(spec.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return res, fmt.Errorf("mmap: %w", err)
	}
	u, err := uffd.New()
	if err != nil {
		return res, fmt.Errorf("uffd: %w", err)
	}
	addr := uintptr(unsafe.Pointer(&mem[0]))
	if _, err := u.Register(addr, uintptr(len(mem)), uffd.ModeMissing); err != nil {
		return res, fmt.Errorf("register: %w", err)
	}
	regions := []uffd.Region{{BaseHostVirtAddr: uint64(addr), Size: uint64(len(mem)), Offset: 0, PageSize: pageSize}}

	start := time.Now()
	client, rep, err := pageserver.Connect(spec.Socket, u.Fd(), pageserver.Handoff{Snapshot: spec.Snapshot, Regions: regions,
		Prefetch: spec.Prefetch, FaultAround: spec.FaultAround, Client: "faultbench"})
	if err != nil {
		return res, fmt.Errorf("connect: %w", err)
	}
	res.ConnectNs = int64(time.Since(start))
	go func() {
		<-client.Lost()
		fmt.Fprintln(os.Stderr, "faultbench child: page server lost; stopping")
		os.Exit(3)
	}()
	if spec.WaitPrefetch && rep.WorkingSet > 0 {
		for {
			m, err := client.Metrics()
			res.Polls++
			if err != nil {
				return res, fmt.Errorf("metrics: %w", err)
			}
			if m.PrefetchDone > 0 {
				res.SeenSessionNs = int64(m.Duration)
				break
			}
			if time.Since(start) > 60*time.Second {
				return res, errors.New("prefetch did not finish in 60s")
			}
			time.Sleep(200 * time.Microsecond)
		}
		res.WaitNs = int64(time.Since(start))
	}
	d, samples := touchPages(mem, touch, mask, samples)
	res.TotalNs = int64(time.Since(start))
	res.TouchNs = int64(d)
	res.Touched = len(touch)
	res.SamplesNs = samples

	// Check the bytes outside the timed region: every touched page is
	// present now, so hashing faults nothing.
	h := sha256.New()
	if spec.TouchFile == "" {
		h.Write(mem)
	} else {
		for _, p := range touch {
			h.Write(mem[p*pageSize : (p+1)*pageSize])
		}
	}
	res.Sum = hex.EncodeToString(h.Sum(nil))
	if res.Metrics, err = client.Close(); err != nil {
		return res, fmt.Errorf("bye: %w", err)
	}
	return res, nil
}

// anonChild measures the baselines in a fresh process: os.ReadFile of the
// raw image, and first touches of plain anonymous memory (no uffd,
// transparent huge pages off): one mapping written page by page, another
// read page by page (which maps the shared zero page).
func anonChild(spec childSpec) (childResult, error) {
	var res childResult
	if spec.ReadFile != "" {
		start := time.Now()
		b, err := os.ReadFile(spec.ReadFile)
		res.ReadFileNs = int64(time.Since(start))
		if err != nil {
			return res, err
		}
		if int64(len(b)) != spec.Size {
			return res, fmt.Errorf("read %d bytes of %s, want %d", len(b), spec.ReadFile, spec.Size)
		}
	}
	pages := spec.Size / pageSize
	touch := make([]int64, pages)
	for p := range touch {
		touch[p] = int64(p)
	}
	mask := sampleMask(len(touch), spec.SampleOneIn, spec.SampleSeed)
	samples := make([]int64, 0, len(touch))
	mapAnon := func() ([]byte, error) {
		m, err := unix.Mmap(-1, 0, int(spec.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return nil, fmt.Errorf("mmap: %w", err)
		}
		_ = unix.Madvise(m, unix.MADV_NOHUGEPAGE)
		return m, nil
	}
	w, err := mapAnon()
	if err != nil {
		return res, err
	}
	start := time.Now()
	for i, p := range touch {
		if mask != nil && mask[i] {
			t := time.Now()
			w[p*pageSize] = 1
			samples = append(samples, int64(time.Since(t)))
			continue
		}
		w[p*pageSize] = 1
	}
	res.AnonWriteNs = int64(time.Since(start))
	res.SamplesNs = samples
	r, err := mapAnon()
	if err != nil {
		return res, err
	}
	d, _ := touchPages(r, touch, nil, nil)
	res.AnonReadNs = int64(d)
	res.Touched = len(touch)
	_ = unix.Munmap(w)
	_ = unix.Munmap(r)
	return res, nil
}
