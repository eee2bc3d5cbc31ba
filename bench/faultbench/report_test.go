//go:build linux

package main

import (
	"math"
	"strings"
	"testing"
	"time"

	perf "github.com/snapfaas/snapfaas/bench/report"
	"github.com/snapfaas/snapfaas/pageserver"
)

// stat is a working-set mode's stats in one cache state: n sessions, the
// median handoff → all-touched time, the share of WS pages faulted.
func stat(n int, total time.Duration, faulted float64) wsStat {
	return wsStat{sessions: n, total: spread{med: total, lo: total, hi: total}, faulted: faulted}
}

func verdicts(cs []judged) string {
	var s []string
	for _, c := range cs {
		s = append(s, c.label+": "+c.v.String())
	}
	return strings.Join(s, "; ")
}

func TestSpeedupCases(t *testing.T) {
	lazy := wsRow{mode: wsModes[0], cold: stat(1, 100*time.Millisecond, 1), warm: stat(1, 50*time.Millisecond, 1)}
	around := wsRow{mode: wsModes[1], cold: stat(1, 1*time.Millisecond, 1), warm: stat(1, 1*time.Millisecond, 1)}
	pre := func(cold, warm wsStat) wsRow { return wsRow{mode: wsModes[2], cold: cold, warm: warm} }
	const at = "prefetch, touch at once"
	for _, tc := range []struct {
		name string
		ws   []wsRow
		want string
	}{
		{"no modes measured", nil, ""},
		{"no prefetching mode", []wsRow{lazy, around}, ""},
		{"5× and 2.5×", []wsRow{lazy, around, pre(stat(1, 20*time.Millisecond, 0), stat(1, 20*time.Millisecond, 0))},
			at + " (cold): met; " + at + " (warm): NOT met"},
		{"slower than lazy", []wsRow{lazy, pre(stat(1, 200*time.Millisecond, 0), stat(1, 60*time.Millisecond, 0))},
			at + " (cold): NOT met; " + at + " (warm): NOT met"},
		{"mode without sessions", []wsRow{lazy, pre(stat(0, 0, math.NaN()), stat(1, 5*time.Millisecond, 0))},
			at + " (cold): not measured; " + at + " (warm): met"},
		{"no lazy baseline", []wsRow{around, pre(stat(1, time.Millisecond, 0), stat(1, time.Millisecond, 0))},
			at + " (cold): not measured; " + at + " (warm): not measured"},
		{"lazy without sessions", []wsRow{{mode: wsModes[0]}, pre(stat(1, time.Millisecond, 0), stat(1, time.Millisecond, 0))},
			at + " (cold): not measured; " + at + " (warm): not measured"},
	} {
		if got := verdicts(speedupCases(tc.ws, 5)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestInstalledCases(t *testing.T) {
	lazy := wsRow{mode: wsModes[0], cold: stat(1, time.Second, 1), warm: stat(1, time.Second, 1)}
	const w = "prefetch, wait for it"
	for _, tc := range []struct {
		name       string
		cold, warm wsStat
		want       string
	}{
		{"all and 99% installed", stat(1, 1, 0), stat(1, 1, 0.01), w + " (cold): met; " + w + " (warm): met"},
		{"98% and none installed", stat(1, 1, 0.02), stat(1, 1, 1), w + " (cold): NOT met; " + w + " (warm): NOT met"},
		{"no sessions", stat(0, 0, math.NaN()), stat(0, 0, 0), w + " (cold): not measured; " + w + " (warm): not measured"},
	} {
		ws := []wsRow{lazy, {mode: wsModes[3], cold: tc.cold, warm: tc.warm}}
		if got := verdicts(installedCases(ws, 0.99)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := installedCases(nil, 0.99); len(got) != 0 {
		t.Errorf("no modes: %v", got)
	}
}

func TestSummary(t *testing.T) {
	met, miss, none := perf.Met, perf.NotMet, perf.NotMeasured
	for _, tc := range []struct {
		name  string
		cases []judged
		want  string
	}{
		{"no cases", nil, "Target not measured."},
		{"all met", []judged{{"a", met}, {"b", met}}, "Target met in every case."},
		{"none met", []judged{{"a", miss}, {"b", miss}}, "Target NOT met in any case."},
		{"none measured", []judged{{"a", none}}, "Target not measured in any case."},
		{"mixed", []judged{{"a", met}, {"b", miss}, {"c", none}, {"d", met}}, "Target met for a and d; NOT met for b; not measured for c."},
		{"met or unmeasured", []judged{{"a", met}, {"c", none}}, "Target met for a; not measured for c."},
	} {
		if got := summary(tc.cases); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestP50Verdict(t *testing.T) {
	h := func(counts map[int]uint64) pageserver.Histogram {
		var h pageserver.Histogram
		for i, n := range counts {
			h.Buckets[i] = n
		}
		return h
	}
	for _, tc := range []struct {
		name  string
		h     pageserver.Histogram
		max   time.Duration
		want  string
		shown bool
	}{
		{"no faults", pageserver.Histogram{}, 5 * time.Microsecond, "not measured", true},
		{"p50 in [2, 3) µs", h(map[int]uint64{2: 10, 40: 1}), 5 * time.Microsecond, "met", true},
		{"p50 in [4, 5) µs", h(map[int]uint64{4: 10}), 5 * time.Microsecond, "met", true},
		{"p50 in [5, 6) µs", h(map[int]uint64{1: 4, 5: 6}), 5 * time.Microsecond, "NOT met", true},
		{"p50 bucket [64, 128) µs straddles 100 µs", h(map[int]uint64{64: 10}), 100 * time.Microsecond, "NOT met", false},
	} {
		v, shown := p50Verdict(tc.h, tc.max)
		if v.String() != tc.want || shown != tc.shown {
			t.Errorf("%s: %v, shown %v; want %s, shown %v", tc.name, v, shown, tc.want, tc.shown)
		}
	}
}
