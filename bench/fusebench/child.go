//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// childEnv switches the binary into reader mode: its value is a JSON
// childSpec; the process does the reads and prints one JSON childResult.
// Readers run as separate processes so that what they time is what any
// process reading the mount would see, not a read from the serving
// process itself.
const childEnv = "FUSEBENCH_CHILD"

type childSpec struct {
	// Mode is "seq" (read Path in 1 MiB reads), "rand" (pread 4 KiB at
	// each offset of Offsets, a file of little-endian int64s), "tree"
	// (read every regular file under Path, lexical order, symlinks not
	// followed) or "cmp" (check Path and Path2 are byte-identical).
	Mode    string `json:"mode"`
	Path    string `json:"path"`
	Path2   string `json:"path2,omitempty"`
	Offsets string `json:"offsets,omitempty"`
}

type childResult struct {
	OpenNs int64   `json:"open_ns,omitempty"` // open(2) of Path (seq, rand)
	WallNs int64   `json:"wall_ns"`           // the reads (seq, rand) or the whole walk (tree)
	CPUNs  int64   `json:"cpu_ns"`            // this process's user+system CPU over WallNs
	Bytes  int64   `json:"bytes"`
	Files  int     `json:"files,omitempty"`
	LatNs  []int64 `json:"lat_ns,omitempty"`
	// folios: resident pages of Path by the size of their page-cache folio.
	Small int    `json:"small,omitempty"` // pages in order-0 (4 KiB) folios
	Large int    `json:"large,omitempty"` // pages in large folios
	Heads int    `json:"heads,omitempty"` // large folios
	Err   string `json:"err,omitempty"`
}

// childMain runs in the re-executed reader process.
func childMain() int {
	var spec childSpec
	res := &childResult{}
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &spec); err != nil {
		res.Err = "bad spec: " + err.Error()
	} else if err := doChild(spec, res); err != nil {
		res.Err = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(res)
	if res.Err != "" {
		return 1
	}
	return 0
}

func doChild(spec childSpec, res *childResult) error {
	var offsets []int64
	if spec.Mode == "rand" {
		b, err := os.ReadFile(spec.Offsets)
		if err != nil {
			return err
		}
		offsets = make([]int64, len(b)/8)
		for i := range offsets {
			offsets[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
		}
	}
	buf := make([]byte, 1<<20)
	runtime.GC()
	switch spec.Mode {
	case "seq":
		t := time.Now()
		f, err := os.Open(spec.Path)
		res.OpenNs = int64(time.Since(t))
		if err != nil {
			return err
		}
		defer f.Close()
		c0, t0 := selfCPU(), time.Now()
		for {
			n, err := f.Read(buf)
			res.Bytes += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		res.WallNs, res.CPUNs = int64(time.Since(t0)), int64(selfCPU()-c0)
	case "rand":
		t := time.Now()
		f, err := os.Open(spec.Path)
		res.OpenNs = int64(time.Since(t))
		if err != nil {
			return err
		}
		defer f.Close()
		res.LatNs = make([]int64, len(offsets))
		p := buf[:4096]
		c0, t0 := selfCPU(), time.Now()
		for i, off := range offsets {
			t := time.Now()
			n, err := f.ReadAt(p, off)
			res.LatNs[i] = int64(time.Since(t))
			if err != nil {
				return fmt.Errorf("pread at %d: %w", off, err)
			}
			res.Bytes += int64(n)
		}
		res.WallNs, res.CPUNs = int64(time.Since(t0)), int64(selfCPU()-c0)
	case "tree":
		c0, t0 := selfCPU(), time.Now()
		err := filepath.WalkDir(spec.Path, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() {
				return nil
			}
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			for {
				n, err := f.Read(buf)
				res.Bytes += int64(n)
				if err == io.EOF {
					break
				}
				if err != nil {
					return fmt.Errorf("%s: %w", path, err)
				}
			}
			res.Files++
			return nil
		})
		res.WallNs, res.CPUNs = int64(time.Since(t0)), int64(selfCPU()-c0)
		return err
	case "cmp":
		a, err := os.Open(spec.Path)
		if err != nil {
			return err
		}
		defer a.Close()
		b, err := os.Open(spec.Path2)
		if err != nil {
			return err
		}
		defer b.Close()
		buf2 := make([]byte, len(buf))
		for off := int64(0); ; {
			n, errA := io.ReadFull(a, buf)
			m, errB := io.ReadFull(b, buf2)
			if n != m || !bytes.Equal(buf[:n], buf2[:m]) {
				return fmt.Errorf("%s and %s differ in the MiB at %d", spec.Path, spec.Path2, off)
			}
			off += int64(n)
			res.Bytes = off
			if errA != nil || errB != nil {
				if isEOF(errA) && isEOF(errB) {
					return nil
				}
				return fmt.Errorf("compare at %d: %v / %v", off, errA, errB)
			}
		}
	case "folios":
		return folios(spec.Path, res)
	default:
		return fmt.Errorf("unknown mode %q", spec.Mode)
	}
	return nil
}

// folios maps path, touches every page (already cached: the caller read
// the file just before) and classifies each resident page by its folio,
// from /proc/self/pagemap and /proc/kpageflags (root only).
func folios(path string, res *childResult) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	defer unix.Munmap(m)
	for i := 0; i < len(m); i += 4096 {
		touchSink ^= m[i]
	}
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return err
	}
	defer pm.Close()
	kf, err := os.Open("/proc/kpageflags")
	if err != nil {
		return err
	}
	defer kf.Close()
	const kpfCompoundHead, kpfCompoundTail = 15, 16
	base := uintptr(unsafe.Pointer(&m[0]))
	ent := make([]byte, 8*256)
	var fl [8]byte
	for off := 0; off < len(m); off += 256 * 4096 {
		n := min(256, (len(m)-off+4095)/4096)
		if _, err := pm.ReadAt(ent[:8*n], int64((base+uintptr(off))/4096*8)); err != nil {
			return fmt.Errorf("pagemap: %w", err)
		}
		for k := 0; k < n; k++ {
			e := binary.LittleEndian.Uint64(ent[8*k:])
			if e>>63 == 0 {
				continue
			}
			pfn := e & (1<<55 - 1)
			if pfn == 0 {
				return errors.New("pagemap hides page frame numbers (needs CAP_SYS_ADMIN)")
			}
			if _, err := kf.ReadAt(fl[:], int64(pfn*8)); err != nil {
				return fmt.Errorf("kpageflags: %w", err)
			}
			switch flags := binary.LittleEndian.Uint64(fl[:]); {
			case flags>>kpfCompoundHead&1 != 0:
				res.Heads++
				res.Large++
			case flags>>kpfCompoundTail&1 != 0:
				res.Large++
			default:
				res.Small++
			}
		}
	}
	return nil
}

// touchSink keeps the page touches in folios from being optimized away.
var touchSink byte

func isEOF(err error) bool { return err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) }

// sample is one timed reader pass.
type sample struct {
	wall      time.Duration
	open      time.Duration
	cpu       time.Duration // the reader's CPU
	serverCPU time.Duration // the FUSE server's CPU; -1 when no user-space server
	bytes     int64
	files     int
	lat       []time.Duration
	res       childResult
}

func (s *sample) mbs() float64 { return mbs(s.bytes, s.wall) }

// reader runs one reader child with spec; meter, if not nil, reads the
// serving process's CPU time before and after.
func (e *env) reader(spec childSpec, meter func() time.Duration) (*sample, error) {
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(e.self)
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	var m0 time.Duration
	if meter != nil {
		m0 = meter()
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	e.cl.setChild(cmd.Process)
	werr := cmd.Wait()
	e.cl.setChild(nil)
	s := &sample{serverCPU: -1}
	if meter != nil {
		s.serverCPU = meter() - m0
	}
	var res childResult
	if jerr := json.Unmarshal(out.Bytes(), &res); jerr != nil {
		if werr == nil {
			werr = jerr
		}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			werr = fmt.Errorf("reader killed by %v", ws.Signal())
		}
		return nil, fmt.Errorf("reader %s %s: %v: %s", spec.Mode, spec.Path, werr, strings.TrimSpace(errb.String()))
	}
	if res.Err != "" {
		return nil, fmt.Errorf("reader %s %s: %s", spec.Mode, spec.Path, res.Err)
	}
	s.wall, s.open, s.cpu = time.Duration(res.WallNs), time.Duration(res.OpenNs), time.Duration(res.CPUNs)
	s.bytes, s.files = res.Bytes, res.Files
	s.res = res
	s.res.LatNs = nil
	for _, l := range res.LatNs {
		s.lat = append(s.lat, time.Duration(l))
	}
	return s, nil
}
