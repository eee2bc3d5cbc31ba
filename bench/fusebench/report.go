//go:build linux

package main

import (
	"fmt"
	perf "github.com/snapfaas/snapfaas/bench/report"
	"io"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func secs(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 2, 64)
}

func times(x float64) string {
	if x <= 0 {
		return "-"
	}
	return perf.Times(x)
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// rateCell renders the median MB/s of bytes over samples, with the range.
func rateCell(ss []*sample) string {
	if len(ss) == 0 {
		return "-"
	}
	med, lo, hi := walls(ss)
	b := ss[0].bytes
	if len(ss) == 1 {
		return fmt.Sprintf("%.0f", mbs(b, med))
	}
	return fmt.Sprintf("%.0f (%.0f–%.0f)", mbs(b, med), mbs(b, hi), mbs(b, lo))
}

// timeCell renders the median seconds and MB/s.
func timeCell(ss []*sample) string {
	if len(ss) == 0 {
		return "-"
	}
	med, lo, hi := walls(ss)
	s := fmt.Sprintf("%s s, %.0f MB/s", secs(med), mbs(ss[0].bytes, med))
	if len(ss) > 1 {
		s += fmt.Sprintf(" (%s–%s s)", secs(lo), secs(hi))
	}
	return s
}

type table = perf.Table

// seqTime is the median wall time of a variant's samples.
func seqTime(ss []*sample) time.Duration {
	m, _, _ := walls(ss)
	return m
}

func rawTable(r *results) table {
	t := table{Head: []string{"image served as", "seq cold MB/s", "cold time ×plain", "seq warm MB/s", "warm time ×plain",
		"pread cold p50 / p99 µs", "cold p50 ×plain", "pread warm p50 / p99 µs", "warm p50 ×plain", "server CPU s, seq cold / warm"}}
	pl := r.raw["plain"]
	pc50, _ := lat(r.rand["plain"].cold)
	pw50, _ := lat(r.rand["plain"].warm)
	for _, v := range r.rawV {
		s, rd := r.raw[v.key], r.rand[v.key]
		c50, c99 := lat(rd.cold)
		w50, w99 := lat(rd.warm)
		t.Rows = append(t.Rows, []string{v.label,
			rateCell(s.cold), times(ratio(seqTime(s.cold), seqTime(pl.cold))),
			rateCell(s.warm), times(ratio(seqTime(s.warm), seqTime(pl.warm))),
			perf.US(c50) + " / " + perf.US(c99), times(ratio(c50, pc50)),
			perf.US(w50) + " / " + perf.US(w99), times(ratio(w50, pw50)),
			cpuPair(s),
		})
	}
	return t
}

func cpuPair(p *pairs) string {
	c, w := serverCPU(p.cold), serverCPU(p.warm)
	if c < 0 {
		return "-"
	}
	return secs(c) + " / " + secs(w)
}

// treeRefs are the references the tree table compares against, as present.
func treeRefs(r *results) []string {
	var refs []string
	for _, k := range []string{"squashfuse", "squashfuse_ll", "loop-plain"} {
		if _, ok := r.tree[k]; ok {
			refs = append(refs, k)
		}
	}
	return refs
}

func treeTable(r *results) table {
	t := table{Head: []string{"tree served as", "cold", "warm"}}
	refs := treeRefs(r)
	for _, k := range refs {
		t.Head = append(t.Head, "×"+k+" cold / warm")
	}
	t.Head = append(t.Head, "server CPU s, cold / warm", "reader CPU s, cold / warm")
	for _, v := range r.treeV {
		s := r.tree[v.key]
		row := []string{v.label, timeCell(s.cold), timeCell(s.warm)}
		for _, k := range refs {
			ref := r.tree[k]
			row = append(row, times(ratio(seqTime(s.cold), seqTime(ref.cold)))+" / "+times(ratio(seqTime(s.warm), seqTime(ref.warm))))
		}
		row = append(row, cpuPair(s), secs(readerCPU(s.cold))+" / "+secs(readerCPU(s.warm)))
		t.Rows = append(t.Rows, row)
	}
	return t
}

func diagTable(d *diagResult) table {
	t := table{Head: []string{"fusefs, cold", "read_ahead_kb", "result (median)", "vs 128"}}
	for _, kind := range []string{"seq", "tree"} {
		m := d.seqRA
		label := "sequential image read (1 MiB reads)"
		if kind == "tree" {
			m = d.treeRA
			label = "whole-tree read, ext4 loop ← fusefs image"
		}
		base := m[raSizes[0]]
		for _, ra := range raSizes {
			p := m[ra]
			if p == nil || len(p.cold) == 0 {
				continue
			}
			cell := fmt.Sprintf("%.0f MB/s, %s s, server CPU %s s", mbs(p.cold[0].bytes, seqTime(p.cold)), secs(seqTime(p.cold)), secs(serverCPU(p.cold)))
			vs := "-"
			if base != nil && len(base.cold) > 0 && ra != raSizes[0] {
				vs = "time " + times(ratio(seqTime(p.cold), seqTime(base.cold)))
			}
			t.Rows = append(t.Rows, []string{label, strconv.Itoa(ra), cell, vs})
		}
	}
	return t
}

func contentLine(e *env) string {
	c := &e.c
	s := fmt.Sprintf("%s MiB in %d regular files (%d directories, %d symlinks", perf.MiB(c.bytes), c.files, c.dirs, c.symlinks)
	if c.skipped > 0 {
		s += fmt.Sprintf(", %d special or unreadable entries skipped", c.skipped)
	}
	s += ")"
	if c.fraction < 1 {
		s += fmt.Sprintf(", a deterministic sample of %s (%d files, %s MiB): each regular file and symlink whose path hashes (FNV-1a) into the first %.1f%% of the hash range, in its own directory, so that about -max %s MiB is spread over the whole tree",
			c.tree, c.treeFiles, perf.MiB(c.treeBytes), 100*c.fraction, perf.MiB(e.p.max))
		if c.overMax > 0 {
			s += fmt.Sprintf("; %d sampled files that would have passed -max were left out", c.overMax)
		}
	} else {
		s += ": all of " + c.tree
	}
	return s
}

func imagesLines(e *env) []string {
	c := &e.c
	return []string{
		fmt.Sprintf("ext4 image: %s MiB (%s MiB allocated; the rest is holes), `%s` (%s)", perf.MiB(c.imgSize), perf.MiB(c.imgAlloc), shortCmd(e, c.mkfsCmd), c.mkfsDur.Round(100*time.Millisecond)),
		fmt.Sprintf("squashfs: %s MiB (%.2f× smaller than the ext4 image), `%s` (%s; %s)", perf.MiB(c.sqfsSize), float64(c.imgSize)/float64(c.sqfsSize), shortCmd(e, c.sqfsCmd), c.sqfsComp, c.sqfsDur.Round(100*time.Millisecond)),
		fmt.Sprintf("store: `ImportImage` with default options (zstd, %d KiB chunks) at %.0f MB/s: %d distinct chunks, %s MiB of data, %s MiB zero (not stored), %s MiB stored: %.2f× smaller than the ext4 image, %.2f× the squashfs",
			c.chunkSize>>10, c.importMBs, c.chunks, perf.MiB(c.dataBytes), perf.MiB(c.zeroBytes), perf.MiB(c.stored), float64(c.imgSize)/float64(c.stored), float64(c.stored)/float64(c.sqfsSize)),
	}
}

// shortCmd replaces the temp dir in a command line with $TMP.
func shortCmd(e *env, s string) string { return strings.ReplaceAll(s, e.tmp, "$TMP") }

func printHuman(w io.Writer, e *env, r *results) {
	fmt.Fprintf(w, "content: %s\n", contentLine(e))
	for _, l := range imagesLines(e) {
		fmt.Fprintf(w, "  %s\n", l)
	}
	if e.loopErr != nil {
		fmt.Fprintf(w, "loop devices unusable here, ext4 tree reads skipped: %v\n", e.loopErr)
	}
	fmt.Fprintf(w, "%d rounds; cold = page cache dropped and mounts made afresh; warm = repeated at once; MB/s median (range); load average %s before, %s after\n\n", e.p.rounds, r.loadBefore, r.loadAfter)
	rawTable(r).Text(w)
	fmt.Fprintln(w)
	treeTable(r).Text(w)
	fmt.Fprintln(w)
	if r.diag != nil {
		for _, l := range diagLines(e, r.diag) {
			fmt.Fprintf(w, "- %s\n", l)
		}
		if r.diag.raErr == nil {
			fmt.Fprintln(w)
			diagTable(r.diag).Text(w)
		}
		fmt.Fprintln(w)
	}
	for _, c := range conclusions(e, r) {
		fmt.Fprintf(w, "- %s\n", c)
	}
	fmt.Fprintf(w, "\nrun took %s\n", r.elapsed.Round(100*time.Millisecond))
}

func diagLines(e *env, d *diagResult) []string {
	var out []string
	ra := d.raDefault
	if ra == "" {
		ra = "unknown"
	}
	out = append(out, fmt.Sprintf("fusefs mount options: `%s`; the mount's read_ahead_kb: %s", d.maxRead, ra))
	for _, h := range d.hist {
		out = append(out, fmt.Sprintf("READ requests, %s: %s", h.workload, h.summary))
	}
	one := d.decode[1]
	line := fmt.Sprintf("Chunk decode in-process (`Image.ReadAt` over every non-zero chunk, fresh store, packs in the page cache): %.0f MB/s with 1 goroutine (%s µs per %d KiB chunk, %d chunks)",
		one.mbs, perf.US(one.perChunk), e.c.chunkSize>>10, one.chunks)
	if n := runtime.NumCPU(); n > 1 {
		if dn, ok := d.decode[n]; ok {
			line += fmt.Sprintf(", %.0f MB/s with %d", dn.mbs, n)
		}
	}
	out = append(out, line+".")
	if len(d.spliceLogs) > 0 || d.mainLogs > 0 {
		var parts []string
		for _, ra := range raSizes {
			if n, ok := d.spliceLogs[ra]; ok {
				parts = append(parts, fmt.Sprintf("%d with read_ahead_kb=%d", n, ra))
			}
		}
		out = append(out, fmt.Sprintf("go-fuse `trySplice: ... max pipe size` log lines (one per READ reply larger than the 1 MiB pipe limit, which then falls back to writev): %d in the main measurements; in the read-ahead passes %s.", d.mainLogs, strings.Join(parts, ", ")))
	}
	out = append(out, fmt.Sprintf("open(2) of the image, median: cold %s µs for the plain file vs %s µs through fusefs (LOOKUP + OPEN, which loads the chunk list from the catalog), warm %s vs %s µs. fusefs server CPU per MiB of cold sequential image read: %s µs.",
		perf.US(d.openCold["plain"]), perf.US(d.openCold["fusefs"]), perf.US(d.openWarm["plain"]), perf.US(d.openWarm["fusefs"]), perf.US(d.serverPerMiB)))
	if d.foliosErr != nil {
		out = append(out, fmt.Sprintf("Page-cache folio sizes not measured: %v.", d.foliosErr))
	} else if p, f := d.folios["plain"], d.folios["fusefs"]; p != nil && f != nil {
		out = append(out, fmt.Sprintf("Page cache after a cold sequential read (pages by folio, from /proc/kpageflags): plain file %s; fusefs %s. The kernel's per-folio work on a page-cache read (lookup, accessed marking) is then done per 4 KiB for the FUSE file.",
			folioText(p), folioText(f)))
	}
	return out
}

func folioText(c *childResult) string {
	n := c.Small + c.Large
	if n == 0 {
		return "no resident pages"
	}
	s := fmt.Sprintf("%.0f%% of %d resident 4 KiB pages in large folios", 100*float64(c.Large)/float64(n), n)
	if c.Heads > 0 {
		s += fmt.Sprintf(" (%d folios, mean %s)", c.Heads, kib(int64(c.Large)*4096/int64(c.Heads)))
	}
	return s
}

// warmSeqMax is the target for warm sequential image reads: fusefs within
// this factor of the plain file's time.
const warmSeqMax = 1.5

// warmSeqVerdict judges "sequential within warmSeqMax× of the plain file
// when warm" from the median warm times; without samples of either it is
// not measured.
func warmSeqVerdict(fusefs, plain *pairs) perf.Verdict {
	if fusefs == nil || plain == nil {
		return perf.NotMeasured
	}
	return perf.AtMost(ratio(seqTime(fusefs.warm), seqTime(plain.warm)), warmSeqMax)
}

// squashfuseServers are the servers the "no slower than squashfuse"
// target compares against, when measured.
var squashfuseServers = []string{"squashfuse", "squashfuse_ll"}

// squashfuseVerdicts judge "no slower than squashfuse" for whole-tree
// reads through ext4 loop-mounted on the fusefs image, cold and warm,
// against every squashfuse server measured: not measured without the
// fusefs tree reads or without any squashfuse server.
func squashfuseVerdicts(tree map[string]*pairs) (cold, warm perf.Verdict) {
	lf := tree["loop-fusefs"]
	if lf == nil {
		return perf.NotMeasured, perf.NotMeasured
	}
	var cs, ws []perf.Verdict
	for _, k := range squashfuseServers {
		if sq := tree[k]; sq != nil {
			cs = append(cs, perf.AtMost(ratio(seqTime(lf.cold), seqTime(sq.cold)), 1))
			ws = append(ws, perf.AtMost(ratio(seqTime(lf.warm), seqTime(sq.warm)), 1))
		}
	}
	return perf.All(cs...), perf.All(ws...)
}

// cpuTick is the resolution of the CPU times /proc reports.
const cpuTick = 10 * time.Millisecond

// conclusions derives plain statements from the measurements.
func conclusions(e *env, r *results) []string {
	var out []string
	pl, fu := r.raw["plain"], r.raw["fusefs"]
	imgB := e.c.imgSize
	d := r.diag

	// 1. Warm sequential image reads; target: within 1.5× of the plain file.
	wr := ratio(seqTime(fu.warm), seqTime(pl.warm))
	line := fmt.Sprintf("Warm sequential reads of the %s MiB image file: fusefs %.0f MB/s against %.0f MB/s for the plain file, %s the time: the target \"sequential within %.1f× of the plain file when warm\" is %s.",
		perf.MiB(imgB), mbs(imgB, seqTime(fu.warm)), mbs(imgB, seqTime(pl.warm)), times(wr), warmSeqMax, warmSeqVerdict(fu, pl))
	if c := serverCPU(fu.warm); c >= 0 && len(fu.warm) > 0 {
		if c < cpuTick {
			line += fmt.Sprintf(" fusefs itself did no measurable work during them (%s s of server CPU, counted in %d ms ticks): the kernel served them from the page cache", secs(c), cpuTick.Milliseconds())
		} else {
			line += fmt.Sprintf(" fusefs used %s s of server CPU during them", secs(c))
		}
		if d != nil && d.foliosErr == nil && d.folios["plain"] != nil && d.folios["fusefs"] != nil {
			line += fmt.Sprintf("; page cache after a cold read: FUSE file %s, ext4 file %s", folioShare(d.folios["fusefs"]), folioShare(d.folios["plain"]))
			if warmSeqVerdict(fu, pl) == perf.NotMet {
				line += ", a likely cause of the gap (not measured directly), which fusefs does not control"
			}
		}
		line += "."
	}
	if lf, lp := r.tree["loop-fusefs"], r.tree["loop-plain"]; lf != nil && lp != nil {
		line += fmt.Sprintf(" Through ext4 loop-mounted on the image, as a VM or container would use it, warm reads come from ext4's own page cache and fusefs is at %s of the plain image.",
			times(ratio(seqTime(lf.warm), seqTime(lp.warm))))
	}
	out = append(out, line)

	// 2. Cold: sequential and random.
	cr := ratio(seqTime(fu.cold), seqTime(pl.cold))
	pc, pc99 := lat(r.rand["plain"].cold)
	fc, fc99 := lat(r.rand["fusefs"].cold)
	pw, _ := lat(r.rand["plain"].warm)
	fw, _ := lat(r.rand["fusefs"].warm)
	line = fmt.Sprintf("Cold, fusefs reads the image sequentially at %.0f MB/s against %.0f MB/s for the plain file (%s the time)", mbs(imgB, seqTime(fu.cold)), mbs(imgB, seqTime(pl.cold)), times(cr))
	if c := serverCPU(fu.cold); c > 0 {
		line += fmt.Sprintf(", with the serving process busy %s s of CPU over the %s s read (%.0f%% of one of %d cores)", secs(c), secs(seqTime(fu.cold)), 100*ratio(c, seqTime(fu.cold)), runtime.NumCPU())
	}
	if d != nil {
		line += fmt.Sprintf("; decoding alone runs at %.0f MB/s of chunk data on one goroutine", d.decode[1].mbs)
	}
	line += fmt.Sprintf(". Cold random 4 KiB preads take p50 %s µs (p99 %s) against %s µs (p99 %s), %s: each miss reads and decodes a whole %d KiB chunk. Warm (repeated at once), p50 %s vs %s µs, %s.",
		perf.US(fc), perf.US(fc99), perf.US(pc), perf.US(pc99), times(ratio(fc, pc)), e.c.chunkSize>>10, perf.US(fw), perf.US(pw), times(ratio(fw, pw)))
	out = append(out, line)

	// 3. Against squashfuse.
	if lf, ok := r.tree["loop-fusefs"]; ok {
		line := fmt.Sprintf("Whole-tree reads (%d files, %s MiB) through ext4 loop-mounted from the fusefs image: %s s cold, %s s warm.",
			e.c.files, perf.MiB(e.c.bytes), secs(seqTime(lf.cold)), secs(seqTime(lf.warm)))
		for _, k := range squashfuseServers {
			sq, ok := r.tree[k]
			if !ok {
				continue
			}
			cq, wq := ratio(seqTime(lf.cold), seqTime(sq.cold)), ratio(seqTime(lf.warm), seqTime(sq.warm))
			line += fmt.Sprintf(" %s: %s s cold, %s s warm (fusefs takes %s and %s the time).", k, secs(seqTime(sq.cold)), secs(seqTime(sq.warm)), times(cq), times(wq))
		}
		vc, vw := squashfuseVerdicts(r.tree)
		line += fmt.Sprintf(" The target \"no slower than squashfuse\" (against every squashfuse server measured) is %s cold and %s warm.", vc, vw)
		if lp, ok := r.tree["loop-plain"]; ok {
			line += fmt.Sprintf(" Against the same ext4 on the plain image file (%s s cold, %s s warm) fusefs costs %s the time cold and %s warm.",
				secs(seqTime(lp.cold)), secs(seqTime(lp.warm)), times(ratio(seqTime(lf.cold), seqTime(lp.cold))), times(ratio(seqTime(lf.warm), seqTime(lp.warm))))
		}
		out = append(out, line)
	} else if sq := r.tree["squashfuse"]; sq != nil {
		sqB := e.c.bytes
		out = append(out, fmt.Sprintf("Loop devices are unusable here (%v), so no file-tree read through ext4 on the fusefs image was possible. The closest available comparison, which is NOT like for like (one image file of %s MiB vs %d files of %s MiB with per-file lookups), is fusefs's raw image sequential read at %.0f MB/s cold / %.0f MB/s warm against squashfuse's whole-tree read at %.0f / %.0f MB/s; the \"no slower than squashfuse\" target cannot be judged from it.",
			e.loopErr, perf.MiB(imgB), e.c.files, perf.MiB(sqB), mbs(imgB, seqTime(fu.cold)), mbs(imgB, seqTime(fu.warm)), mbs(sqB, seqTime(sq.cold)), mbs(sqB, seqTime(sq.warm))))
	} else {
		out = append(out, "Neither fusefs tree reads nor squashfuse were measured: the \"no slower than squashfuse\" target is not measured.")
	}

	// 4. Size.
	c := &e.c
	out = append(out, fmt.Sprintf("Size: the store keeps the %s MiB ext4 image in %s MiB (%.2f× smaller; zero chunks are not stored, import at %.0f MB/s), against %s MiB for a squashfs of the same files (%s): %.2f× the squashfs.",
		perf.MiB(c.imgSize), perf.MiB(c.stored), float64(c.imgSize)/float64(c.stored), c.importMBs, perf.MiB(c.sqfsSize), strings.SplitN(c.sqfsComp, ";", 2)[0], float64(c.stored)/float64(c.sqfsSize)))

	// 5. Levers, from the diagnostics.
	if d != nil {
		var parts []string
		if len(d.hist) > 0 {
			parts = append(parts, "the kernel sends cold sequential reads to fusefs as "+strings.SplitN(d.hist[0].summary, ";", 2)[0])
		}
		if b, o := d.seqRA[raSizes[0]], d.seqRA[1024]; b != nil && o != nil && len(b.cold) > 0 && len(o.cold) > 0 {
			s := fmt.Sprintf("raising the mount's read_ahead_kb from %d to 1024 (1 MiB READs) takes a cold sequential read from %.0f to %.0f MB/s (%s the time)",
				raSizes[0], mbs(imgB, seqTime(b.cold)), mbs(imgB, seqTime(o.cold)), times(ratio(seqTime(o.cold), seqTime(b.cold))))
			if bt, ot := d.treeRA[raSizes[0]], d.treeRA[1024]; bt != nil && ot != nil && len(bt.cold) > 0 && len(ot.cold) > 0 {
				s += fmt.Sprintf(" and a cold tree read through the loop from %s to %s s (%s)", secs(seqTime(bt.cold)), secs(seqTime(ot.cold)), times(ratio(seqTime(ot.cold), seqTime(bt.cold))))
			}
			parts = append(parts, s)
		}
		if d1, dn := d.decode[1], d.decode[runtime.NumCPU()]; runtime.NumCPU() > 1 && dn.mbs > 0 {
			parts = append(parts, fmt.Sprintf("in-process decoding gives %.0f MB/s on one goroutine and %.0f MB/s on %d (%.2f×), while fusefs decodes the chunks of one READ one after another",
				d1.mbs, dn.mbs, runtime.NumCPU(), dn.mbs/d1.mbs))
		}
		parts = append(parts, fmt.Sprintf("opening the image costs %s µs cold and %s µs warm through fusefs against %s / %s µs for the plain file",
			perf.US(d.openCold["fusefs"]), perf.US(d.openWarm["fusefs"]), perf.US(d.openCold["plain"]), perf.US(d.openWarm["plain"])))
		out = append(out, "Levers (diagnostics): "+strings.Join(parts, "; ")+".")
	}
	return out
}

func folioShare(c *childResult) string {
	n := c.Small + c.Large
	if n == 0 {
		return "no pages"
	}
	s := fmt.Sprintf("%.0f%% of pages in large folios", 100*float64(c.Large)/float64(n))
	if c.Heads > 0 {
		s += fmt.Sprintf(", mean %s", kib(int64(c.Large)*4096/int64(c.Heads)))
	}
	return s
}

func markdownSection(e *env, r *results) string {
	var w strings.Builder
	c := &e.c
	fmt.Fprintf(&w, "%s\n\n", sectionTitle)
	fmt.Fprintf(&w, "Generated by `bench/fusebench`; every number below was measured in this one run (%s).\n\n", r.elapsed.Round(time.Second))
	cmd := "go run ./bench/fusebench"
	if len(e.p.args) > 0 {
		cmd += " " + strings.Join(e.p.args, " ")
	}
	fmt.Fprintf(&w, "- Command: `scripts/fusebench-deps.sh && %s`\n", cmd)
	fmt.Fprintf(&w, "- Date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&w, "- Machine: %s; 1-minute load average %s before the run, %s after (the run itself keeps up to two processes busy; more than that, or load before, is other work)\n", perf.Machine(), r.loadBefore, r.loadAfter)
	fmt.Fprintf(&w, "- Temp files, images and store: %s\n", perf.FSOf(e.tmp))
	fmt.Fprintf(&w, "- Content: %s\n", contentLine(e))
	for _, l := range imagesLines(e) {
		fmt.Fprintf(&w, "- %s\n", l)
	}
	sqv := c.sqVersion
	if sqv == "" {
		sqv = "squashfuse"
	}
	fmt.Fprintf(&w, "- Servers: fusefs (go-fuse DirectMount, default `fusefs.Options`, store opened read-only with the default 256 MiB chunk cache) in the benchmark process; %s as a child process: `squashfuse -f` (libfuse high-level API) and `squashfuse_ll -f` (low-level API, same package), libfuse3 defaults; loop devices via `losetup --read-only` (buffered, no direct I/O) and `mount -t ext4 -o ro`.\n", sqv)
	if e.loopErr != nil {
		fmt.Fprintf(&w, "- Loop devices: **unusable on this machine** (%v); the ext4 tree reads were skipped.\n", e.loopErr)
	}
	w.WriteString("\n")
	fmt.Fprintf(&w, "Method. Readers are separate processes (the benchmark binary re-executed), never the process serving fusefs. *Sequential*: read the image file from start to end in 1 MiB `read`s; MB/s are decimal megabytes of the image (holes included) per second. *Random*: %d `pread`s of 4 KiB at distinct non-zero 4 KiB blocks of the image (of %d), in one fixed random order (seed %d), the same for every pass; latencies pooled over rounds. *Whole tree*: walk the tree in lexical order (symlinks not followed) and `read` every regular file to the end in 1 MiB reads; every pass must see exactly the %d files and %d bytes that were copied. (`tar -cf /dev/null` is not used: GNU tar does not read file contents when the archive is /dev/null.) *Cold*: `sync; echo 3 > /proc/sys/vm/drop_caches`, then every mount of the variant made afresh — for fusefs a newly opened store (empty chunk cache) and a new mount; for squashfuse a new process; for loop variants a new loop device and ext4 mount — before the reader starts. Dropping the guest's page cache does not drop a hypervisor's cache of a virtual disk, so \"cold\" plain-file reads may come from host memory; the ranges show how much cold numbers move. *Warm*: the same reader again at once. Each of the %d rounds measures every variant cold then warm; cells show the median of the rounds (range in parentheses). Ratios are time ratios against the reference measured in the same run (below 1× is faster). *Server CPU*: user+system CPU of the serving user-space process over the pass (fusefs: this process; squashfuse: its process, from /proc, 10 ms resolution; none for kernel-only variants; loop kernel threads are not counted).\n\n",
		len(c.seqOffsets), c.nonZero, e.p.seed, c.files, c.bytes, e.p.rounds)
	w.WriteString("Image file reads (the ext4 image itself):\n\n")
	rawTable(r).Markdown(&w)
	w.WriteString("\nWhole-tree reads (every regular file):\n\n")
	treeTable(r).Markdown(&w)
	if d := r.diag; d != nil {
		w.WriteString("\nDiagnostics (fusefs only; the READ counts come from go-fuse's debug log in separate untimed passes):\n\n")
		for _, l := range diagLines(e, d) {
			fmt.Fprintf(&w, "- %s\n", l)
		}
		if d.raErr == nil {
			fmt.Fprintf(&w, "\nCold reads with the fusefs mount's `/sys/class/bdi/0:N/read_ahead_kb` set after mounting (default %s; %d rounds, the two settings alternating). The %d rows repeat a configuration of the tables above in separate passes; how far they are from those shows the run-to-run noise:\n\n", d.raDefault, e.p.rounds, raSizes[0])
			diagTable(d).Markdown(&w)
		} else {
			fmt.Fprintf(&w, "- Read-ahead experiment skipped: %v\n", d.raErr)
		}
	}
	w.WriteString("\nConclusions (from the numbers above):\n\n")
	for _, s := range conclusions(e, r) {
		fmt.Fprintf(&w, "- %s\n", s)
	}
	return w.String()
}
