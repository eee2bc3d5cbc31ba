// Package report holds what snapfaas's benchmarks share to report their
// results: byte sizes on the command line, target verdicts (met, NOT met,
// or not measured: never "met" by default), and a section of
// docs/PERFORMANCE.md replaced in place so that every benchmark owns its own
// section and reruns do not pile up.
package report

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/snapfaas/snapfaas/internal/size"
)

// Size is a flag.Value holding a byte count parsed by size.Parse.
type Size int64

func (s *Size) String() string { return strconv.FormatInt(int64(*s), 10) }

// Set implements flag.Value.
func (s *Size) Set(v string) error {
	n, err := size.Parse(v)
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// ParseFlags parses a benchmark's command line. With -h it prints the
// usage line and the flags to stderr and returns help; a bad flag's error
// names the usage.
func ParseFlags(fs *flag.FlagSet, args []string, usage string, stderr io.Writer) (help bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "usage: %s\n", usage)
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return true, nil
		}
		return false, fmt.Errorf("%w (usage: %s)", err, usage)
	}
	return false, nil
}

// WriteSection puts sec (which starts with its "## " title line) into the
// markdown file at path: it replaces the section with the same title, up to
// the next "## " heading, or appends it; a missing file is created with a
// "# Performance" header.
func WriteSection(path, sec string) error {
	old, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		old, err = []byte("# Performance\n"), nil
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(ReplaceSection(string(old), sec)), 0o644)
}

// ReplaceSection returns doc with sec (which starts with its "## " title
// line) in place of the section with the same title, up to the next
// heading outside a code fence, or appended when doc has none.
func ReplaceSection(doc, sec string) string {
	title := strings.SplitN(sec, "\n", 2)[0]
	sec = strings.TrimRight(sec, "\n") + "\n"
	lines := strings.SplitAfter(doc, "\n")
	start := -1
	inFence := false
	for i, l := range lines {
		t := strings.TrimRight(l, "\r\n")
		if strings.HasPrefix(t, "```") {
			inFence = !inFence
		}
		if !inFence && strings.TrimSpace(t) == title {
			start = i
			break
		}
	}
	if start < 0 {
		doc = strings.TrimRight(doc, "\n")
		if doc == "" {
			return sec
		}
		return doc + "\n\n" + sec
	}
	end := len(lines)
	inFence = false
	for i := start + 1; i < len(lines); i++ {
		t := strings.TrimRight(lines[i], "\r\n")
		if strings.HasPrefix(t, "```") {
			inFence = !inFence
		}
		if !inFence && (strings.HasPrefix(t, "## ") || strings.HasPrefix(t, "# ")) {
			end = i
			break
		}
	}
	before := strings.Join(lines[:start], "")
	after := strings.Join(lines[end:], "")
	if after != "" {
		sec += "\n"
	}
	return before + sec + after
}

// Table is a header row and data rows, rendered as markdown or as aligned
// text. Columns after the second are numbers and align right in markdown.
type Table struct {
	Head []string
	Rows [][]string
}

// Markdown writes the table as a markdown table.
func (t Table) Markdown(w io.Writer) {
	fmt.Fprintf(w, "| %s |\n", strings.Join(t.Head, " | "))
	seps := make([]string, len(t.Head))
	for i := range seps {
		seps[i] = "---"
		if i > 1 {
			seps[i] = "---:"
		}
	}
	fmt.Fprintf(w, "|%s|\n", strings.Join(seps, "|"))
	for _, r := range t.Rows {
		fmt.Fprintf(w, "| %s |\n", strings.Join(r, " | "))
	}
}

// Text writes the table as right-aligned columns.
func (t Table) Text(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\t\n", strings.Join(t.Head, "\t"))
	for _, r := range t.Rows {
		fmt.Fprintf(tw, "%s\t\n", strings.Join(r, "\t"))
	}
	tw.Flush()
}

// Machine describes this machine in one line: CPUs, CPU model, memory,
// kernel and Go version.
func Machine() string {
	model := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := "unknown"
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = strings.TrimSpace(string(b))
	}
	memTotal := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				if f := strings.Fields(v); len(f) > 0 {
					if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
						memTotal = fmt.Sprintf(", %.1f GiB RAM", float64(kb)/(1<<20))
					}
				}
			}
		}
	}
	return fmt.Sprintf("nproc %d, CPU %s%s, kernel %s, %s %s/%s",
		runtime.NumCPU(), model, memTotal, kernel, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// FSOf names the filesystem (device and type) holding path, from /proc/mounts.
func FSOf(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "unknown"
	}
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "unknown"
	}
	best, bestLen := "unknown", -1
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		mp := f[1]
		if (abs == mp || strings.HasPrefix(abs, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > bestLen {
			best, bestLen = f[2]+" on "+f[0], len(mp)
		}
	}
	return best
}

// US formats a duration in microseconds with three significant digits or
// so ("4.21", "42.1", "421").
func US(d time.Duration) string {
	v := float64(d) / float64(time.Microsecond)
	switch {
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

// Times formats a ratio ("0.052×", "3.41×", "17×"; "-" when undefined).
func Times(x float64) string {
	switch {
	case math.IsInf(x, 0) || math.IsNaN(x):
		return "-"
	case x < 0.1:
		return strconv.FormatFloat(x, 'f', 3, 64) + "×"
	case x < 10:
		return strconv.FormatFloat(x, 'f', 2, 64) + "×"
	}
	return strconv.FormatFloat(x, 'f', 0, 64) + "×"
}

// MiB formats a byte count in MiB with one decimal, without the unit.
func MiB(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) }

// Percentile returns the p-th percentile (nearest rank) of sorted s, 0
// for none.
func Percentile(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Verdict is the outcome of checking a measurement against a target. The
// zero value is NotMeasured, so that a target nobody judged never reads
// "met".
type Verdict int

const (
	NotMeasured Verdict = iota
	Met
	NotMet
)

func (v Verdict) String() string {
	switch v {
	case Met:
		return "met"
	case NotMet:
		return "NOT met"
	}
	return "not measured"
}

// measured reports whether x can be a measured ratio, time or size: a
// finite number above zero (benchmarks leave 0 for "none measured").
func measured(x float64) bool { return x > 0 && !math.IsInf(x, 0) && !math.IsNaN(x) }

// Check judges a target whose measurement is not a positive number (a
// share that may be 0, say): NOT measured unless measured, then met if ok.
func Check(measured, ok bool) Verdict {
	switch {
	case !measured:
		return NotMeasured
	case ok:
		return Met
	}
	return NotMet
}

// AtLeast judges the target x ≥ min.
func AtLeast(x, min float64) Verdict { return Check(measured(x), x >= min) }

// AtMost judges the target x ≤ max.
func AtMost(x, max float64) Verdict { return Check(measured(x), x <= max) }

// All combines the verdicts of one target judged in several cases: NOT
// met if any case is, otherwise not measured if any case is or there is
// no case, otherwise met.
func All(vs ...Verdict) Verdict {
	out := Met
	if len(vs) == 0 {
		out = NotMeasured
	}
	for _, v := range vs {
		switch v {
		case NotMet:
			return NotMet
		case NotMeasured:
			out = NotMeasured
		}
	}
	return out
}
