package pageserver

import (
	"fmt"
	"math/bits"
	"sync/atomic"
	"time"
)

// Metrics describe one client session.
type Metrics struct {
	Client   string    `json:"client"`
	Snapshot string    `json:"snapshot"`
	Started  time.Time `json:"started"`
	// Duration is how long the session has run (or ran).
	Duration time.Duration `json:"duration_ns"`
	// Faults is the number of page faults served; ZeroFaults of them were
	// zero pages.
	Faults     uint64 `json:"faults"`
	ZeroFaults uint64 `json:"zero_faults"`
	// AroundPages are pages installed by fault-around beyond the faulting
	// page.
	AroundPages uint64 `json:"fault_around_pages"`
	// WorkingSet is the prefetch list's length; Prefetched the pages
	// prefetch installed; WSFaults the faults on working-set pages (the
	// guest got there before prefetch did); PrefetchDone how long the
	// whole list took.
	WorkingSet   int           `json:"working_set"`
	Prefetched   uint64        `json:"prefetched"`
	WSFaults     uint64        `json:"ws_faults"`
	PrefetchDone time.Duration `json:"prefetch_done_ns,omitempty"`
	// Existed counts pages that were already present when installed (a
	// race between prefetch and a fault, harmless).
	Existed uint64 `json:"existed"`
	// Removed counts pages the target dropped (UFFD_EVENT_REMOVE); they are
	// served as zeros if touched again.
	Removed uint64 `json:"removed"`
	// Decompressed is the chunk bytes this session had to decode.
	Decompressed uint64 `json:"bytes_decompressed"`
	// Recorded is the number of pages in the recorded working set.
	Recorded int `json:"recorded,omitempty"`
	// Latency is the fault service time histogram (event read to page
	// installed).
	Latency Histogram `json:"latency"`
}

func (m Metrics) String() string {
	return fmt.Sprintf("client=%s snapshot=%s duration=%s faults=%d zero=%d around=%d ws=%d prefetched=%d ws_faults=%d existed=%d removed=%d decompressed=%d recorded=%d fault_p50=%s fault_p99=%s",
		m.Client, m.Snapshot, m.Duration.Round(time.Microsecond), m.Faults, m.ZeroFaults, m.AroundPages, m.WorkingSet, m.Prefetched,
		m.WSFaults, m.Existed, m.Removed, m.Decompressed, m.Recorded, m.Latency.Quantile(0.5), m.Latency.Quantile(0.99))
}

// histBuckets: bucket i counts latencies in [2^(i-1), 2^i) µs; bucket 0 is
// under 1 µs; the last is everything from ~1 s on.
const histBuckets = 22

// Histogram is a power-of-two latency histogram in microseconds.
type Histogram struct {
	Buckets [histBuckets]uint64 `json:"buckets_pow2_us"`
}

// hist is the concurrent form of Histogram.
type hist struct{ b [histBuckets]atomic.Uint64 }

func (h *hist) observe(d time.Duration) {
	us := uint64(d / time.Microsecond)
	i := bits.Len64(us)
	if i >= histBuckets {
		i = histBuckets - 1
	}
	h.b[i].Add(1)
}

func (h *hist) snapshot() Histogram {
	var out Histogram
	for i := range h.b {
		out.Buckets[i] = h.b[i].Load()
	}
	return out
}

// Count returns the number of observations.
func (h Histogram) Count() uint64 {
	var n uint64
	for _, c := range h.Buckets {
		n += c
	}
	return n
}

// Quantile returns an upper bound of the q-quantile (the top of its bucket).
func (h Histogram) Quantile(q float64) time.Duration {
	n := h.Count()
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n-1)) + 1
	var seen uint64
	for i, c := range h.Buckets {
		seen += c
		if seen >= rank {
			return time.Duration(uint64(1)<<i) * time.Microsecond
		}
	}
	return time.Duration(uint64(1)<<(histBuckets-1)) * time.Microsecond
}

// counters are a session's live metrics.
type counters struct {
	faults, zeroFaults, around, prefetched, wsFaults, existed, removed, decompressed atomic.Uint64
	prefetchDone                                                                     atomic.Int64
	latency                                                                          hist
}
