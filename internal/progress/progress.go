// Package progress reports the progress of long byte-oriented work (an
// import, an export, a verify) to a human: a bar redrawn in place on a
// terminal, a plain line every 10 % (at most one a second) otherwise, so that
// logs stay readable. Work that finishes within a moment prints nothing;
// the caller prints its own summary.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// Bar reports progress towards a total. Its methods are safe for
// concurrent use; a nil *Bar does nothing.
type Bar struct {
	mu      sync.Mutex
	w       io.Writer
	tty     bool
	label   string
	total   int64
	unit    string // "bytes" or "" for plain counts
	start   time.Time
	last    time.Time
	lastPct int
	drawn   bool
}

// delay is how long work runs before anything is shown.
const delay = 300 * time.Millisecond

// New returns a bar for total bytes written to w (usually os.Stderr).
func New(w io.Writer, label string, total int64) *Bar {
	return newBar(w, label, total, "bytes")
}

// NewCount returns a bar for total items.
func NewCount(w io.Writer, label string, total int64) *Bar {
	return newBar(w, label, total, "")
}

func newBar(w io.Writer, label string, total int64, unit string) *Bar {
	b := &Bar{w: w, label: label, total: total, unit: unit, start: time.Now(), lastPct: -1}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		b.tty = true
	}
	return b
}

// Set records that done of total is complete.
func (b *Bar) Set(done int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if now.Sub(b.start) < delay {
		return
	}
	pct := 100
	if b.total > 0 {
		pct = int(done * 100 / b.total)
	}
	if b.tty {
		if now.Sub(b.last) < 100*time.Millisecond && pct < 100 {
			return
		}
		b.last = now
		fmt.Fprintf(b.w, "\r\033[K%s", b.line(done, now, true))
		b.drawn = true
		return
	}
	if pct/10 == b.lastPct/10 || now.Sub(b.last) < time.Second && pct < 100 {
		return
	}
	b.last, b.lastPct = now, pct
	fmt.Fprintln(b.w, b.line(done, now, false))
}

// Finish clears the bar from a terminal line so a summary can follow.
func (b *Bar) Finish() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tty && b.drawn {
		fmt.Fprint(b.w, "\r\033[K")
	}
}

func (b *Bar) line(done int64, now time.Time, bar bool) string {
	var sb strings.Builder
	sb.WriteString(b.label)
	pct := 0.0
	if b.total > 0 {
		pct = float64(done) / float64(b.total)
	}
	if bar {
		const width = 30
		fill := min(width, int(pct*width))
		sb.WriteString(" [")
		sb.WriteString(strings.Repeat("=", fill))
		if fill < width {
			sb.WriteString(">")
			sb.WriteString(strings.Repeat(" ", width-fill-1))
		}
		sb.WriteString("]")
	}
	fmt.Fprintf(&sb, " %3.0f%%", pct*100)
	elapsed := now.Sub(b.start).Seconds()
	if b.unit == "bytes" {
		fmt.Fprintf(&sb, "  %s / %s", Bytes(done), Bytes(b.total))
		if elapsed > 0 {
			fmt.Fprintf(&sb, "  %s/s", Bytes(int64(float64(done)/elapsed)))
		}
	} else {
		fmt.Fprintf(&sb, "  %d / %d", done, b.total)
	}
	if done > 0 && done < b.total && elapsed > 0 {
		eta := time.Duration(float64(b.total-done) / (float64(done) / elapsed) * float64(time.Second))
		fmt.Fprintf(&sb, "  ETA %s", eta.Round(time.Second))
	}
	return sb.String()
}

// Bytes formats a byte count with a binary unit: "1.5 MiB".
func Bytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
