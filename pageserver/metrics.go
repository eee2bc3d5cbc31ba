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
	// Copied is the pages installed before the reply (Copy, CopyLayer)
	// and CopyTime how long that took.
	Copied   uint64        `json:"copied,omitempty"`
	CopyTime time.Duration `json:"copy_ns,omitempty"`
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
	// installed); FaultTime its sum.
	Latency   Histogram     `json:"latency"`
	FaultTime time.Duration `json:"fault_time_ns"`
}

func (m Metrics) String() string {
	return fmt.Sprintf("client=%s snapshot=%s duration=%s faults=%d zero=%d around=%d ws=%d prefetched=%d ws_faults=%d existed=%d removed=%d decompressed=%d recorded=%d fault_p50=%s fault_p99=%s",
		m.Client, m.Snapshot, m.Duration.Round(time.Microsecond), m.Faults, m.ZeroFaults, m.AroundPages, m.WorkingSet, m.Prefetched,
		m.WSFaults, m.Existed, m.Removed, m.Decompressed, m.Recorded, m.Latency.Quantile(0.5), m.Latency.Quantile(0.99))
}

// Histogram buckets: one per microsecond below 64 µs (the range where the
// fault-path targets live), then powers of two up to ~1 s.
const (
	histLinear  = 64
	histBuckets = histLinear + 15
)

// Histogram is a latency histogram in microseconds: bucket i < 64 counts
// [i, i+1) µs; bucket 64+k counts [64·2^k, 64·2^(k+1)) µs; the last bucket
// everything above.
type Histogram struct {
	Buckets [histBuckets]uint64 `json:"buckets_us"`
}

// hist is the concurrent form of Histogram.
type hist struct{ b [histBuckets]atomic.Uint64 }

func bucketOf(d time.Duration) int {
	us := uint64(d / time.Microsecond)
	if us < histLinear {
		return int(us)
	}
	i := histLinear + bits.Len64(us/histLinear) - 1
	return min(i, histBuckets-1)
}

// bucketTop is the upper bound of bucket i.
func bucketTop(i int) time.Duration {
	if i < histLinear {
		return time.Duration(i+1) * time.Microsecond
	}
	return time.Duration(uint64(histLinear)<<(i-histLinear+1)) * time.Microsecond
}

func (h *hist) observe(d time.Duration) { h.b[bucketOf(d)].Add(1) }

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

// Quantile returns an upper bound of the q-quantile (the top of its
// bucket: exact to 1 µs below 64 µs).
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
			return bucketTop(i)
		}
	}
	return bucketTop(histBuckets - 1)
}

// counters are a session's live metrics.
type counters struct {
	faults, zeroFaults, around, prefetched, wsFaults, existed, removed, decompressed, copied atomic.Uint64
	prefetchDone, faultTime, copyTime                                                        atomic.Int64
	latency                                                                                  hist
}

// BucketBounds returns the range [lo, hi) bucket i covers.
func BucketBounds(i int) (lo, hi time.Duration) {
	if i > 0 {
		_, lo = BucketBounds(i - 1)
	}
	return lo, bucketTop(i)
}

// QuantileBucket returns the bounds of the bucket holding the q-quantile.
func (h Histogram) QuantileBucket(q float64) (lo, hi time.Duration) {
	top := h.Quantile(q)
	for i := 0; i < histBuckets; i++ {
		if bucketTop(i) == top {
			return BucketBounds(i)
		}
	}
	return 0, top
}

// Below returns the share of observations in buckets that end at or
// below d.
func (h Histogram) Below(d time.Duration) float64 {
	n := h.Count()
	if n == 0 {
		return 0
	}
	var c uint64
	for i, v := range h.Buckets {
		if bucketTop(i) <= d {
			c += v
		}
	}
	return float64(c) / float64(n)
}
