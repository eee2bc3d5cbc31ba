package pageserver

import (
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/snapfaas/snapfaas/pagestore"
	"github.com/snapfaas/snapfaas/uffd"
)

const pageSize = 4096

// page states
const (
	stMissing   uint8 = iota // not installed: the next access faults
	stInstalled              // installed by us (or found present)
	stRemoved                // dropped by the target (REMOVE): serve zeros
	stUnmapped               // unmapped by the target: never serve again
)

// region is a Region resolved to host addresses and snapshot pages.
type region struct {
	base, size uintptr // host range in the target
	first      int64   // first snapshot page
}

// session serves one client's faults.
type session struct {
	id       string
	snapshot string
	u        *uffd.FD
	mem      *pagestore.Memory
	regions  []region // sorted by base
	opts     Handoff
	started  time.Time
	c        counters

	mu       sync.Mutex
	state    []uint8 // per snapshot page
	wsPos    []int32 // position of a page in the working set, or -1
	arena    []byte  // staging buffer of the fault loop
	recorded []uint32
	seen     []bool // recorded pages
}

func newSession(id string, h Handoff, u *uffd.FD, mem *pagestore.Memory) (*session, error) {
	s := &session{id: id, snapshot: h.Snapshot, u: u, mem: mem, opts: h, started: time.Now(),
		state: make([]uint8, mem.Pages())}
	pages := mem.Pages()
	for i, r := range h.Regions {
		if r.Offset+r.Size > uint64(pages)*pageSize {
			return nil, fmt.Errorf("region %d: offset %d + size %d exceeds snapshot %q (%d bytes): %w", i, r.Offset, r.Size, h.Snapshot, pages*pageSize, ErrProtocol)
		}
		s.regions = append(s.regions, region{base: uintptr(r.BaseHostVirtAddr), size: uintptr(r.Size), first: int64(r.Offset / pageSize)})
	}
	sort.Slice(s.regions, func(i, j int) bool { return s.regions[i].base < s.regions[j].base })
	for i := 1; i < len(s.regions); i++ {
		if p := s.regions[i-1]; p.base+p.size > s.regions[i].base {
			return nil, fmt.Errorf("regions overlap at %#x: %w", s.regions[i].base, ErrProtocol)
		}
	}
	if h.Prefetch {
		s.wsPos = make([]int32, pages)
		for i := range s.wsPos {
			s.wsPos[i] = -1
		}
		for i, p := range mem.WorkingSet {
			if int64(p) < pages && s.wsPos[p] < 0 {
				s.wsPos[p] = int32(i)
			}
		}
		s.arena = make([]byte, 0, faultAhead*pageSize)
	}
	if h.Record {
		s.seen = make([]bool, pages)
	}
	return s, nil
}

// lookup maps a host address to its region and snapshot page.
func (s *session) lookup(addr uintptr) (*region, int64, bool) {
	i := sort.Search(len(s.regions), func(i int) bool { return s.regions[i].base+s.regions[i].size > addr })
	if i == len(s.regions) || addr < s.regions[i].base {
		return nil, 0, false
	}
	r := &s.regions[i]
	return r, r.first + int64((addr-r.base)/pageSize), true
}

// hostAddr returns the host address of snapshot page p and a copy of its
// region (a page may be mapped by more than one region, though VMMs map
// each once). Regions change on REMAP events, so it takes the lock.
func (s *session) hostAddr(p int64) (uintptr, region, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.regions {
		if p >= r.first && p < r.first+int64(r.size/pageSize) {
			return r.base + uintptr(p-r.first)*pageSize, r, true
		}
	}
	return 0, region{}, false
}

// handle processes a batch of events from the uffd.
func (s *session) handle(events []uffd.Event) error {
	for _, e := range events {
		switch e.Kind {
		case uffd.EventPagefault:
			if err := s.fault(e.Address); err != nil {
				return err
			}
		default:
			s.event(e)
		}
	}
	return nil
}

// event applies a non-cooperative event to the page states.
func (s *session) event(e uffd.Event) {
	switch e.Kind {
	case uffd.EventRemove, uffd.EventUnmap:
		st := stRemoved
		if e.Kind == uffd.EventUnmap {
			st = stUnmapped
		}
		s.mu.Lock()
		for a := e.Start &^ (pageSize - 1); a < e.End; a += pageSize {
			if _, p, ok := s.lookup(a); ok {
				if s.state[p] != st {
					s.c.removed.Add(1)
				}
				s.state[p] = st
			}
		}
		s.mu.Unlock()
	case uffd.EventRemap:
		s.mu.Lock()
		for i := range s.regions {
			r := &s.regions[i]
			if r.base >= e.From && r.base+r.size <= e.From+e.Len {
				r.base = r.base - e.From + e.To
			}
		}
		sort.Slice(s.regions, func(i, j int) bool { return s.regions[i].base < s.regions[j].base })
		s.mu.Unlock()
	case uffd.EventFork:
		// We do not follow forks: the child's memory is its own business.
		if e.ForkFD > 0 {
			if u, err := uffd.FromFD(e.ForkFD); err == nil {
				u.Close()
			}
		}
	}
}

// drain reads and applies pending events after ErrAgain, serving any
// faults among them.
func (s *session) drain() error {
	var buf [64]uffd.Event
	for {
		n, err := s.u.ReadEvents(buf[:])
		if err != nil || n == 0 {
			return err
		}
		for _, e := range buf[:n] {
			if e.Kind == uffd.EventPagefault {
				// Served when drain returns, before the caller
				// retries its own install.
				defer func(a uintptr) { _ = s.fault(a) }(e.Address)
				continue
			}
			s.event(e)
		}
	}
}

// retry runs install until it stops failing with ErrAgain.
func (s *session) retry(install func() (uffd.Result, error)) (uffd.Result, error) {
	var total uffd.Result
	for attempt := 0; ; attempt++ {
		res, err := install()
		total.Installed += res.Installed
		total.Existed += res.Existed
		if !errors.Is(err, uffd.ErrAgain) {
			return total, err
		}
		if err := s.drain(); err != nil {
			return total, err
		}
		time.Sleep(time.Duration(min(attempt+1, 50)) * 20 * time.Microsecond)
	}
}

// fault serves a page fault at host address addr.
func (s *session) fault(addr uintptr) error {
	start := time.Now()
	addr &^= pageSize - 1
	s.mu.Lock()
	rp, p, ok := s.lookup(addr)
	var r region
	if ok {
		r = *rp
	}
	if !ok {
		s.mu.Unlock()
		// Not in any region we were told about: wake the thread with a
		// zero page rather than leave it hanging forever.
		_, err := s.retry(func() (uffd.Result, error) { return s.u.ZeroPage(addr, pageSize, 0) })
		return ignoreGone(err)
	}
	st := s.state[p]
	if s.seen != nil && !s.seen[p] {
		s.seen[p] = true
		s.recorded = append(s.recorded, uint32(p))
	}
	s.mu.Unlock()
	if st == stUnmapped {
		return nil
	}
	s.c.faults.Add(1)
	if s.wsPos != nil && s.wsPos[p] >= 0 {
		s.c.wsFaults.Add(1)
	}
	var res uffd.Result
	var err error
	if st == stRemoved {
		s.c.zeroFaults.Add(1)
		res, err = s.retry(func() (uffd.Result, error) { return s.u.ZeroPage(addr, pageSize, 0) })
	} else {
		first, data, decoded, rerr := s.mem.Run(p)
		if rerr != nil {
			return rerr // names the snapshot and page
		}
		s.c.decompressed.Add(uint64(decoded))
		switch {
		case data == nil:
			s.c.zeroFaults.Add(1)
			res, err = s.retry(func() (uffd.Result, error) { return s.u.ZeroPage(addr, pageSize, 0) })
		case s.opts.FaultAround:
			// Clip the run to this region and to pages still missing
			// around the faulting one.
			lo, hi := max(first, r.first), min(first+int64(len(data)/pageSize), r.first+int64(r.size/pageSize))
			s.mu.Lock()
			for lo < p && s.state[lo] != stMissing {
				lo++
			}
			for q := p + 1; q < hi; q++ {
				if s.state[q] != stMissing {
					hi = q
					break
				}
			}
			s.mu.Unlock()
			src := data[(lo-first)*pageSize : (hi-first)*pageSize]
			dst := r.base + uintptr(lo-r.first)*pageSize
			res, err = s.retry(func() (uffd.Result, error) { return s.u.Copy(dst, src, 0) })
			s.c.around.Add(uint64(hi - lo - 1))
			s.markRange(lo, hi)
		default:
			off := (p - first) * pageSize
			res, err = s.retry(func() (uffd.Result, error) { return s.u.Copy(addr, data[off:off+pageSize], 0) })
		}
	}
	s.c.existed.Add(uint64(res.Existed / pageSize))
	s.markRange(p, p+1)
	d := time.Since(start)
	s.c.latency.observe(d)
	s.c.faultTime.Add(int64(d))
	if err == nil && s.wsPos != nil && s.wsPos[p] >= 0 {
		// The guest is at this point of its working set: install what
		// comes next before it asks (the waiting thread is awake already).
		k := int(s.wsPos[p]) + 1
		n, aerr := s.installWS(k, min(k+faultAhead, len(s.mem.WorkingSet)), s.arena)
		s.c.prefetched.Add(uint64(n))
		err = aerr
	}
	return ignoreGone(err)
}

func (s *session) markRange(lo, hi int64) {
	s.mu.Lock()
	for q := lo; q < hi; q++ {
		if s.state[q] == stMissing {
			s.state[q] = stInstalled
		}
	}
	s.mu.Unlock()
}

// ignoreGone turns "the target exited" into nil: the serving loop notices
// the exit by itself.
func ignoreGone(err error) error {
	if errors.Is(err, uffd.ErrTargetGone) {
		return nil
	}
	return err
}

// prefetchBatch is how many working-set entries one installWS call takes.
const prefetchBatch = 64

// faultAhead is how many working-set entries a fault on a working-set page
// installs after it, so that a guest racing the prefetcher proceeds at
// install speed instead of one fault per page.
const faultAhead = 32

// prefetch installs the working set in recorded order, skipping pages that
// faults installed first. Another goroutine decodes chunks ahead, so that
// with a cold cache decompression overlaps installing. It stops early when
// stop is closed.
func (s *session) prefetch(stop <-chan struct{}) error {
	start := time.Now()
	ws := s.mem.WorkingSet
	go func() {
		for _, wp := range ws {
			select {
			case <-stop:
				return
			default:
			}
			if int64(wp) < s.mem.Pages() {
				if _, _, decoded, err := s.mem.Run(int64(wp)); err == nil {
					s.c.decompressed.Add(uint64(decoded))
				}
			}
		}
	}()
	arena := make([]byte, 0, prefetchBatch*pageSize)
	for i := 0; i < len(ws); i += prefetchBatch {
		select {
		case <-stop:
			return nil
		default:
		}
		n, err := s.installWS(i, min(i+prefetchBatch, len(ws)), arena)
		s.c.prefetched.Add(uint64(n))
		if err != nil {
			return ignoreGone(err)
		}
	}
	s.c.prefetchDone.Store(int64(time.Since(start)))
	return nil
}

// installWS installs the missing pages among working-set entries
// [from, to), and returns how many it installed. Consecutive entries that
// are consecutive guest pages of one kind (data or zero) go in as one
// range: one waking UFFDIO_COPY (from arena, a staging buffer of at least
// (to-from) pages) or UFFDIO_ZEROPAGE per run.
func (s *session) installWS(from, to int, arena []byte) (int, error) {
	ws := s.mem.WorkingSet
	pages := s.mem.Pages()
	arena = arena[:0]
	missing := func(p int64) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.state[p] == stMissing
	}
	installed := 0
	for i := from; i < to; {
		p := int64(ws[i])
		if p >= pages || !missing(p) {
			i++
			continue
		}
		addr, r, ok := s.hostAddr(p)
		if !ok {
			i++
			continue
		}
		zero := s.mem.IsZero(p)
		end := r.first + int64(r.size/pageSize)
		n := int64(1)
		for i+int(n) < to && int64(ws[i+int(n)]) == p+n && p+n < end && s.mem.IsZero(p+n) == zero && missing(p+n) {
			n++
		}
		var res uffd.Result
		var err error
		if zero {
			res, err = s.retry(func() (uffd.Result, error) { return s.u.ZeroPage(addr, uintptr(n)*pageSize, 0) })
		} else {
			arena = arena[:0]
			for k := int64(0); k < n; k++ {
				first, data, decoded, err := s.mem.Run(p + k)
				if err != nil {
					return installed, fmt.Errorf("working-set page %d: %w", p+k, err)
				}
				s.c.decompressed.Add(uint64(decoded))
				off := (p + k - first) * pageSize
				arena = append(arena, data[off:off+pageSize]...)
			}
			res, err = s.retry(func() (uffd.Result, error) { return s.u.Copy(addr, arena, 0) })
		}
		s.c.existed.Add(uint64(res.Existed / pageSize))
		if err != nil {
			return installed, err
		}
		s.markRange(p, p+n)
		installed += int(n) - int(res.Existed/pageSize)
		i += int(n)
	}
	return installed, nil
}

// copyIn installs, before the VM runs, every page (leafOnly false: zero
// runs with one UFFDIO_ZEROPAGE each, data a chunk run per UFFDIO_COPY) or
// only the non-zero pages of the snapshot's own layer.
func (s *session) copyIn(leafOnly bool) error {
	start := time.Now()
	pages := s.mem.Pages()
	want := func(p int64) bool { return !leafOnly || s.mem.InLeaf(p) }
	// Decode ahead while this thread installs: one worker per CPU (up to
	// four), each through its own slice of memory in order, so that by
	// the time the installer reaches a slice its chunks are in the cache
	// (single-flight shares a chunk decoded by two at once).
	stop := make(chan struct{})
	defer close(stop)
	workers := int64(min(runtime.NumCPU(), 4))
	for w := int64(0); w < workers; w++ {
		go func(lo, hi int64) {
			for p := lo; p < hi; p++ {
				select {
				case <-stop:
					return
				default:
				}
				if s.mem.IsZero(p) || !want(p) {
					continue
				}
				first, data, decoded, err := s.mem.Run(p)
				if err != nil {
					return
				}
				s.c.decompressed.Add(uint64(decoded))
				p = first + int64(len(data)/pageSize) - 1
			}
		}(pages*w/workers, pages*(w+1)/workers)
	}
	for p := int64(0); p < pages; {
		addr, r, ok := s.hostAddr(p)
		if !ok || !want(p) {
			p++
			continue
		}
		end := min(pages, r.first+int64(r.size/pageSize))
		var q int64
		var res uffd.Result
		var err error
		if s.mem.IsZero(p) {
			for q = p + 1; q < end && s.mem.IsZero(q); q++ {
			}
			res, err = s.retry(func() (uffd.Result, error) { return s.u.ZeroPage(addr, uintptr(q-p)*pageSize, 0) })
		} else {
			first, data, decoded, rerr := s.mem.Run(p)
			if rerr != nil {
				return rerr
			}
			s.c.decompressed.Add(uint64(decoded))
			q = min(end, first+int64(len(data)/pageSize))
			res, err = s.retry(func() (uffd.Result, error) {
				return s.u.Copy(addr, data[(p-first)*pageSize:(q-first)*pageSize], 0)
			})
		}
		s.c.existed.Add(uint64(res.Existed / pageSize))
		if err != nil {
			return err
		}
		s.markRange(p, q)
		s.c.copied.Add(uint64(q - p))
		p = q
	}
	s.c.copyTime.Add(int64(time.Since(start)))
	return nil
}

// stopRecording freezes the recorded working set (later faults are not
// added; bye saves the same set again).
func (s *session) stopRecording() {
	s.mu.Lock()
	s.seen = nil
	s.mu.Unlock()
}

// workingSet returns what to store as the new working set: the faults in
// first-touch order, after the prefetched set when prefetch was on (a
// prefetched page never faults, so its touch cannot be observed).
func (s *session) workingSet() []uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.opts.Prefetch {
		return append([]uint32(nil), s.recorded...)
	}
	out := append([]uint32(nil), s.mem.WorkingSet...)
	in := make(map[uint32]bool, len(out))
	for _, p := range out {
		in[p] = true
	}
	for _, p := range s.recorded {
		if !in[p] {
			out = append(out, p)
		}
	}
	return out
}

func (s *session) metrics() Metrics {
	m := Metrics{
		Client: s.id, Snapshot: s.snapshot, Started: s.started, Duration: time.Since(s.started),
		Faults: s.c.faults.Load(), ZeroFaults: s.c.zeroFaults.Load(), AroundPages: s.c.around.Load(),
		Prefetched: s.c.prefetched.Load(), WSFaults: s.c.wsFaults.Load(), Existed: s.c.existed.Load(),
		Removed: s.c.removed.Load(), Decompressed: s.c.decompressed.Load(),
		PrefetchDone: time.Duration(s.c.prefetchDone.Load()), Latency: s.c.latency.snapshot(),
		FaultTime: time.Duration(s.c.faultTime.Load()),
		Copied:    s.c.copied.Load(), CopyTime: time.Duration(s.c.copyTime.Load()),
	}
	if s.opts.Prefetch {
		m.WorkingSet = len(s.mem.WorkingSet)
	}
	s.mu.Lock()
	m.Recorded = len(s.recorded)
	s.mu.Unlock()
	return m
}
