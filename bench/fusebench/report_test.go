//go:build linux

package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// pass is a variant measured once cold and once warm, with these wall
// times in seconds; zero leaves that state unmeasured.
func pass(cold, warm float64) *pairs {
	p := &pairs{}
	if cold > 0 {
		p.cold = []*sample{{wall: time.Duration(cold * float64(time.Second))}}
	}
	if warm > 0 {
		p.warm = []*sample{{wall: time.Duration(warm * float64(time.Second))}}
	}
	return p
}

func TestWarmSeqVerdict(t *testing.T) {
	for _, tc := range []struct {
		name          string
		fusefs, plain *pairs
		want          string
	}{
		{"nothing measured", nil, nil, "not measured"},
		{"no plain file", pass(1, 1), nil, "not measured"},
		{"no samples", &pairs{}, &pairs{}, "not measured"},
		{"no warm fusefs sample", pass(1, 0), pass(1, 1), "not measured"},
		{"no warm plain sample", pass(1, 1), pass(1, 0), "not measured"},
		{"same time", pass(1, 1), pass(1, 1), "met"},
		{"1.5×", pass(1, 1.5), pass(1, 1), "met"},
		{"1.6×", pass(1, 1.6), pass(1, 1), "NOT met"},
	} {
		if got := warmSeqVerdict(tc.fusefs, tc.plain).String(); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestSquashfuseVerdicts(t *testing.T) {
	for _, tc := range []struct {
		name       string
		tree       map[string]*pairs
		cold, warm string
	}{
		{"nothing measured", nil, "not measured", "not measured"},
		{"no squashfuse", map[string]*pairs{"loop-fusefs": pass(1, 1), "loop-plain": pass(1, 1)}, "not measured", "not measured"},
		{"no fusefs tree reads", map[string]*pairs{"squashfuse": pass(1, 1)}, "not measured", "not measured"},
		{"faster than both", map[string]*pairs{"loop-fusefs": pass(1, 1), "squashfuse": pass(2, 2), "squashfuse_ll": pass(1, 1)}, "met", "met"},
		{"slower than squashfuse_ll warm", map[string]*pairs{"loop-fusefs": pass(1, 1), "squashfuse": pass(2, 2), "squashfuse_ll": pass(3, 0.5)}, "met", "NOT met"},
		{"slower cold, one server", map[string]*pairs{"loop-fusefs": pass(2, 1), "squashfuse": pass(1, 1)}, "NOT met", "met"},
		{"no warm samples", map[string]*pairs{"loop-fusefs": pass(1, 0), "squashfuse": pass(2, 0)}, "met", "not measured"},
	} {
		c, w := squashfuseVerdicts(tc.tree)
		if c.String() != tc.cold || w.String() != tc.warm {
			t.Errorf("%s: %s cold, %s warm; want %s, %s", tc.name, c, w, tc.cold, tc.warm)
		}
	}
}

// TestConclusionsUnmeasured: a run that measured nothing reads "not
// measured" for both targets, never "met".
func TestConclusionsUnmeasured(t *testing.T) {
	e := &env{loopErr: errors.New("no loop devices")}
	r := &results{raw: map[string]*pairs{"plain": {}, "fusefs": {}}, rand: map[string]*pairs{"plain": {}, "fusefs": {}}, tree: map[string]*pairs{}}
	out := strings.Join(conclusions(e, r), "\n")
	for _, want := range []string{`"sequential within 1.5× of the plain file when warm" is not measured.`, `"no slower than squashfuse" target is not measured.`} {
		if !strings.Contains(out, want) {
			t.Errorf("conclusions lack %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, " met") {
		t.Errorf("conclusions read met:\n%s", out)
	}
}
