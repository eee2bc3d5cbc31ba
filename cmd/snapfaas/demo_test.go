package main

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// demoRow is one restore row of the demo's table, as printed.
type demoRow struct {
	name                         string
	built, ready, first, faultMS float64 // ms
	faults, prefetched           int
	memoryIn, decoded            float64 // bytes
}

// parseDemoTable reads the restore table that follows the demo's header
// line "restore  VM built ...".
func parseDemoTable(t *testing.T, out string) []demoRow {
	t.Helper()
	lines := strings.Split(out, "\n")
	start := -1
	for i, l := range lines {
		if f := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(l), -1); len(f) > 1 && f[0] == "restore" && f[1] == "VM built" {
			start = i + 1
			break
		}
	}
	if start < 0 {
		t.Fatalf("no restore table in the demo's output:\n%s", out)
	}
	var rows []demoRow
	for _, l := range lines[start:] {
		f := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(l), -1)
		if len(f) != 9 {
			break
		}
		r := demoRow{name: f[0]}
		r.built, r.ready, r.first, r.faultMS = msField(t, f[1]), msField(t, f[2]), msField(t, f[3]), msField(t, f[8])
		r.faults, r.prefetched = intField(t, f[4]), intField(t, f[5])
		r.memoryIn, r.decoded = bytesField(t, f[6]), bytesField(t, f[7])
		rows = append(rows, r)
	}
	return rows
}

func msField(t *testing.T, s string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, " ms"), 64)
	if err != nil || !strings.HasSuffix(s, " ms") {
		t.Fatalf("not a time in ms: %q", s)
	}
	return v
}

func intField(t *testing.T, s string) int {
	t.Helper()
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("not a count: %q", s)
	}
	return v
}

func bytesField(t *testing.T, s string) float64 {
	t.Helper()
	num, unit, ok := strings.Cut(s, " ")
	v, err := strconv.ParseFloat(num, 64)
	mult := map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
	if !ok || err != nil || mult == 0 {
		t.Fatalf("not a byte count: %q", s)
	}
	return v * mult
}

// TestDemo runs the README's main job, `snapfaas demo`, end to end at a
// small size and checks its table against what each restore kind must
// show: eager copies all guest memory in before the guest runs and takes
// no faults; lazy faults its pages in; lazy + WS prefetches the recorded
// working set and so faults far less. It leaves no scratch files and no
// process behind.
func TestDemo(t *testing.T) {
	testGuest(t) // skips without KVM or gcc, and builds the guest once
	tmp := t.TempDir()
	const memMiB = 32
	cmd := exec.Command(bin, "demo", "--heap", "1", "--mem_size", strconv.Itoa(memMiB))
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	var out syncBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	runWithin(t, cmd, 5*time.Minute, "snapfaas demo", &out)
	text := out.String()
	t.Logf("demo output:\n%s", text)

	for _, want := range []string{
		"== base snapshot", "== diff snapshot", "== working set", "every answer matched the guest's model", "done in ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if m := regexp.MustCompile(`"demo-fn": (\d+) pages in its own layer`).FindStringSubmatch(text); m == nil {
		t.Errorf("no diff snapshot size line")
	} else if n, _ := strconv.Atoi(m[1]); n < 32 || n > memMiB<<20/4096/10 {
		// 32 page writes in the warm-up, plus stack and device pages; far
		// from all of memory.
		t.Errorf("diff snapshot holds %d pages: want 32 written heap pages and little else", n)
	}
	ws := 0
	if m := regexp.MustCompile(`(\d+) pages recorded`).FindStringSubmatch(text); m != nil {
		ws, _ = strconv.Atoi(m[1])
	}
	// The request reads 128 heap pages; the restore touches a few more.
	if ws < 128 {
		t.Errorf("working set of %d pages; the request alone touches 128", ws)
	}

	rows := parseDemoTable(t, text)
	if len(rows) != 3 || rows[0].name != "eager" || rows[1].name != "lazy" || rows[2].name != "lazy + WS" {
		t.Fatalf("restore rows %+v, want eager, lazy, lazy + WS", rows)
	}
	for _, r := range rows {
		if !(r.built > 0 && r.built <= r.ready && r.ready <= r.first) {
			t.Errorf("%s: VM built %.1f, guest ready %.1f, first response %.1f ms: want 0 < built <= ready <= first", r.name, r.built, r.ready, r.first)
		}
		if r.decoded <= 0 {
			t.Errorf("%s: decoded nothing, yet the snapshot's pages are compressed", r.name)
		}
	}
	eager, lazy, lazyWS := rows[0], rows[1], rows[2]
	if eager.faults != 0 || eager.memoryIn < memMiB<<20 {
		t.Errorf("eager: %d faults, %.0f bytes in; want no faults and all %d MiB copied in", eager.faults, eager.memoryIn, memMiB)
	}
	if lazy.prefetched != 0 || lazy.faults < 128 || lazy.faultMS <= 0 || lazy.memoryIn >= memMiB<<20 {
		t.Errorf("lazy: %+v; want no prefetch, at least the request's 128 pages faulted in, and far less than all memory", lazy)
	}
	// The guest may race the prefetcher to a few working-set pages.
	if lazyWS.prefetched > ws || lazyWS.prefetched < ws*9/10 || lazyWS.faults*10 > lazy.faults {
		t.Errorf("lazy + WS: %+v; want (nearly) all %d recorded pages prefetched and under a tenth of lazy's %d faults", lazyWS, ws, lazy.faults)
	}

	// Nothing left behind: the scratch store and the sidecar it started.
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		var names []string
		for _, e := range left {
			names = append(names, e.Name())
		}
		t.Errorf("the demo left %v in its TMPDIR", names)
	}
	waitFor(t, 10*time.Second, "no process running from the demo's scratch directory", func() bool {
		return len(processesMentioning(tmp)) == 0
	}, func() string { return strings.Join(processesMentioning(tmp), "\n") })
}
