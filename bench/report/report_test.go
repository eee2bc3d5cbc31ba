package report

import (
	"math"
	"testing"
)

func TestReplaceSection(t *testing.T) {
	sec := "## Some benchmark" + "\n\nnew\n"
	for _, tc := range []struct{ name, doc, want string }{
		{"empty", "", sec},
		{"header only", "# Performance\n", "# Performance\n\n" + sec},
		{"append", "# Performance\n\n## Other\n\nx\n", "# Performance\n\n## Other\n\nx\n\n" + sec},
		{"replace last", "# Performance\n\n" + "## Some benchmark" + "\n\nold\n", "# Performance\n\n" + sec},
		{"replace middle", "# P\n\n" + "## Some benchmark" + "\n\nold\n### sub\nold\n\n## Next\n\ny\n", "# P\n\n" + sec + "\n## Next\n\ny\n"},
		{"heading in code fence", "# P\n\n" + "## Some benchmark" + "\n\n```\n## not a heading\n```\n\n## Next\n", "# P\n\n" + sec + "\n## Next\n"},
	} {
		if got := ReplaceSection(tc.doc, sec); got != tc.want {
			t.Errorf("%s: got\n%q\nwant\n%q", tc.name, got, tc.want)
		}
	}
}

func TestVerdicts(t *testing.T) {
	inf, nan := math.Inf(1), math.NaN()
	for _, tc := range []struct {
		name string
		got  Verdict
		want string
	}{
		{"zero value", Verdict(0), "not measured"},
		{"at least: above", AtLeast(6, 5), "met"},
		{"at least: equal", AtLeast(5, 5), "met"},
		{"at least: below", AtLeast(4.9, 5), "NOT met"},
		{"at least: none measured (0)", AtLeast(0, 5), "not measured"},
		{"at least: negative", AtLeast(-1, -5), "not measured"},
		{"at least: 0/0", AtLeast(nan, 5), "not measured"},
		{"at least: x/0", AtLeast(inf, 5), "not measured"},
		{"at most: below", AtMost(1.2, 1.5), "met"},
		{"at most: equal", AtMost(1.5, 1.5), "met"},
		{"at most: above", AtMost(1.6, 1.5), "NOT met"},
		{"at most: none measured (0)", AtMost(0, 1.5), "not measured"},
		{"at most: 0/0", AtMost(nan, 1.5), "not measured"},
		{"at most: x/0", AtMost(inf, 1.5), "not measured"},
		{"check: measured, ok", Check(true, true), "met"},
		{"check: measured, not ok", Check(true, false), "NOT met"},
		{"check: not measured", Check(false, true), "not measured"},
		{"all: no case", All(), "not measured"},
		{"all: met", All(Met, Met), "met"},
		{"all: one not met", All(Met, NotMet, NotMeasured), "NOT met"},
		{"all: one not measured", All(Met, NotMeasured), "not measured"},
	} {
		if got := tc.got.String(); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
