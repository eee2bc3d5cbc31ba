package testguest

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "testguest-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// guestELF builds the guest once per test binary; skips without gcc.
func guestELF(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() { buildPath, buildErr = Build(filepath.Join(buildDir, "out")) })
	if errors.Is(buildErr, ErrNoCompiler) {
		t.Skip(buildErr)
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

func TestBuild(t *testing.T) {
	p := guestELF(t)
	f, err := elf.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Fatalf("ELF %v %v %v, want ELFCLASS64 EM_X86_64 ET_EXEC", f.Class, f.Machine, f.Type)
	}
	if f.Entry < LoadAddr {
		t.Errorf("entry %#x below 1 MiB", f.Entry)
	}
	loads, end := 0, uint64(0)
	var pvhEntry, imageEnd uint64
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			loads++
			if p.Paddr < LoadAddr || p.Vaddr != p.Paddr {
				t.Errorf("PT_LOAD paddr %#x vaddr %#x: want paddr = vaddr >= 1 MiB", p.Paddr, p.Vaddr)
			}
			if f.Entry >= p.Paddr && f.Entry < p.Paddr+p.Filesz {
				end = max(end, p.Paddr+p.Memsz)
			}
		case elf.PT_NOTE:
			b, err := io.ReadAll(p.Open())
			if err != nil {
				t.Fatal(err)
			}
			// namesz 4, descsz 8, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", entry.
			if len(b) >= 24 && binary.LittleEndian.Uint32(b[8:]) == 18 && string(b[12:16]) == "Xen\x00" {
				pvhEntry = binary.LittleEndian.Uint64(b[16:])
			}
		}
	}
	if loads == 0 || end == 0 {
		t.Fatalf("no PT_LOAD holds the entry point %#x", f.Entry)
	}
	if pvhEntry < LoadAddr || pvhEntry >= end {
		t.Errorf("PVH entry %#x not inside the image", pvhEntry)
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range syms {
		switch s.Name {
		case "_start":
			if s.Value != f.Entry {
				t.Errorf("_start %#x, entry %#x", s.Value, f.Entry)
			}
		case "pvh_start":
			if s.Value != pvhEntry {
				t.Errorf("pvh_start %#x, PVH note %#x", s.Value, pvhEntry)
			}
		case "_end":
			imageEnd = s.Value
			if s.Value >= HeapAlign {
				t.Errorf("_end %#x: the image with its bss should stay below 2 MiB", s.Value)
			}
		}
	}
	fi, _ := os.Stat(p)
	t.Logf("%s: %d bytes, %d PT_LOADs, entry %#x, PVH entry %#x, _end %#x", filepath.Base(p), fi.Size(), loads, f.Entry, pvhEntry, imageEnd)
	if fi.Size() > 64<<10 {
		t.Errorf("image is %d bytes; keep it small", fi.Size())
	}

	// The second build is the cached file.
	p2, err := Build(filepath.Join(buildDir, "out"))
	if err != nil || p2 != p {
		t.Errorf("second Build = %q, %v; want %q", p2, err, p)
	}
}

// Instructions the emulator cannot run: SSE/AVX/MMX/x87 register operands;
// x87 (mnemonics starting with f), AVX (v...), state save/restore,
// cmpxchg16b, popcnt and friends, CET end-branch; undecodable bytes.
var (
	forbiddenOperand  = regexp.MustCompile(`%[xyz]mm|%mm[0-7]|%st\b|%k[0-7]\b`)
	forbiddenMnemonic = regexp.MustCompile(`^(f[a-z0-9]*|v[a-z0-9]+|[a-z]*xsave[a-z0-9]*|[a-z]*xrstor[a-z0-9]*|cmpxchg16b|popcnt|lzcnt|tzcnt|movbe|endbr32|endbr64|emms|ldmxcsr|stmxcsr|\(bad\))$`)
)

// forbiddenInsn reports whether an objdump instruction text (mnemonic with
// any prefixes, then operands) is forbidden.
func forbiddenInsn(insn string) bool {
	for _, w := range strings.Fields(insn) {
		if strings.ContainsAny(w, "%$(,") && w != "(bad)" {
			return forbiddenOperand.MatchString(insn)
		}
		if forbiddenMnemonic.MatchString(w) {
			return true
		}
	}
	return forbiddenOperand.MatchString(insn)
}

func TestNoForbiddenInstructions(t *testing.T) {
	p := guestELF(t)
	objdump, err := exec.LookPath("objdump")
	if err != nil {
		t.Skip("objdump not found")
	}
	f, err := elf.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var hits []string
	total := 0
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_EXECINSTR == 0 {
			continue
		}
		args := []string{"-d", "-j", s.Name}
		switch s.Name {
		case ".text":
		case ".text32": // the PVH entry runs in 32-bit protected mode
			args = append(args, "-M", "i386")
		default:
			t.Errorf("unexpected executable section %s", s.Name)
		}
		out, err := exec.Command(objdump, append(args, p)...).Output()
		if err != nil {
			t.Fatalf("objdump %s: %v", s.Name, err)
		}
		var fn string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasSuffix(l, ">:") {
				fn = l[strings.Index(l, "<")+1 : len(l)-2]
				continue
			}
			parts := strings.SplitN(l, "\t", 3)
			if len(parts) < 3 || !strings.HasSuffix(parts[0], ":") {
				continue
			}
			total++
			insn := strings.Join(strings.Fields(parts[2]), " ")
			// Strip a trailing "# comment" and "<symbol>" so names do not match.
			if i := strings.IndexAny(insn, "#<"); i >= 0 {
				insn = strings.TrimSpace(insn[:i])
			}
			if forbiddenInsn(insn) {
				hits = append(hits, fmt.Sprintf("%s %s: %s", s.Name, fn, insn))
			}
		}
	}
	if total < 100 {
		t.Fatalf("disassembled only %d instructions", total)
	}
	want := []string{".text fault_sse: pxor %xmm0,%xmm0"}
	if len(hits) != 1 || hits[0] != want[0] {
		t.Errorf("forbidden instructions:\n%s\nwant exactly %q", strings.Join(hits, "\n"), want)
	}
}

// hostCompile compiles testdata/name.c with the guest sources on the
// include path into a host program.
func hostCompile(t *testing.T, name string) string {
	t.Helper()
	guestELF(t) // skips without gcc
	cc, err := FindCompiler()
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	if err := os.CopyFS(filepath.Join(dir, "src"), Sources()); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	out, err := exec.Command(cc, "-O2", "-Wall", "-I", filepath.Join(dir, "src"),
		"-o", bin, filepath.Join("testdata", name+".c")).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
	return bin
}

func TestHeapAndChecksumMatchC(t *testing.T) {
	bin := hostCompile(t, "hostref")
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		num := func(i int) uint64 {
			v, err := strconv.ParseUint(f[i], 10, 64)
			if err != nil {
				t.Fatalf("%q: %v", l, err)
			}
			return v
		}
		switch f[0] {
		case "w":
			if got, want := HeapWord(num(1), num(2), num(3)), num(4); got != want {
				t.Errorf("HeapWord(%d, %d, %d) = %#x, C says %#x", num(1), num(2), num(3), got, want)
			}
		case "p":
			got := Checksum([][]byte{PageBytes(num(1), num(2), int(num(3)))})
			if got != f[4] {
				t.Errorf("page %d seed %d writes %d: checksum %s, C says %s", num(2), num(1), num(3), got, f[4])
			}
		default:
			t.Fatalf("bad line %q", l)
		}
		n++
	}
	if n < 100 {
		t.Fatalf("only %d reference lines", n)
	}
}

func TestSplitmix64KnownValues(t *testing.T) {
	// splitmix64 with state 0, first three outputs (the reference sequence).
	want := []uint64{0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f}
	x := uint64(0)
	for i, w := range want {
		if got := splitmix64(x); got != w {
			t.Errorf("output %d = %#x, want %#x", i, got, w)
		}
		x += 0x9e3779b97f4a7c15
	}
	if got := Checksum(nil); got != "cbf29ce484222325" {
		t.Errorf("empty checksum %s", got)
	}
	if got := Checksum([][]byte{[]byte("a")}); got != "af63dc4c8601ec8c" {
		t.Errorf(`checksum("a") = %s`, got)
	}
}

// protoHarness runs testdata/hostproto.c: the guest's request code on the host.
type protoHarness struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// startProto starts the harness; initrd, if given, is the initrd file.
func startProto(t *testing.T, seed, pages uint64, initrd ...string) *protoHarness {
	bin := hostCompile(t, "hostproto")
	cmd := exec.Command(bin, append([]string{strconv.FormatUint(seed, 10), strconv.FormatUint(pages, 10)}, initrd...)...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &protoHarness{cmd, in, bufio.NewReader(out)}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	return h
}

func (h *protoHarness) raw(t *testing.T, payload string) Response {
	t.Helper()
	if _, err := h.in.Write(EncodeFrame([]byte(payload))); err != nil {
		t.Fatal(err)
	}
	b, err := ReadFrame(h.out)
	if err != nil {
		t.Fatal(err)
	}
	var r Response
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("response %q: %v", b, err)
	}
	return r
}

func TestGuestRequestHandlingMatchesModel(t *testing.T) {
	const seed, heapMB = 99, 1
	heap := NewHeap(seed, heapMB)
	h := startProto(t, seed, heap.Pages)
	rw := struct {
		io.Reader
		io.Writer
	}{h.out, h.in}
	reqs := []Request{
		TouchRequest(1, 0, 1, 1, false),
		TouchRequest(2, 0, 4, 1, true),
		TouchRequest(3, 0, 4, 1, false),
		TouchRequest(4, 3, 20, 7, true),
		TouchRequest(5, 10, 5, 0, true),
		TouchRequest(6, 255, 1, 1, true),
		TouchRequest(7, 256, 1, 1, false), // out of range
		TouchRequest(8, 250, 3, 3, false), // last page 256: out of range
		TouchRequest(9, 250, 2, 5, false), // last page 255
		TouchRequest(10, 5, 0, 1, true),   // nothing
		TouchRequest(11, 0, MaxTouchCount+1, 0, false),
		{ID: 12, Op: "nope"},
		TouchRequest(13, 0, 256, 1, false),
		ExitRequest(14),
	}
	for _, req := range reqs {
		want := heap.Apply(req)
		got, err := Call(rw, req)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%+v: guest %+v, model %+v", req, got, want)
		}
	}
	for _, c := range []struct {
		in   string
		want Response
	}{
		{`{"id":20,"op":"touch"}`, heap.Apply(Request{ID: 20, Op: OpTouch, Count: 1, Stride: 1})},
		{` { "op" : "touch" , "write":false, "id" : 21, "start": 3, "count": 2 } `, heap.Apply(TouchRequest(21, 3, 2, 1, false))},
		{`{"id":22,"op":"exit","extra":1}`, Response{ID: 22, Error: "unknown key"}},
		{`{"id":23,"op":"touch","count":-1}`, Response{ID: 23, Error: "bad number"}},
		{`{"id":24,"op":"touch","count":1.5}`, Response{ID: 24, Error: "bad number"}},
		{`{"id":25,"op":"touch","write":yes}`, Response{ID: 25, Error: "bad json"}},
		{`{"id":26,"op":"touch"`, Response{ID: 26, Error: "bad json"}},
		{`{"id":27,"op":"touch"} x`, Response{ID: 27, Error: "bad json"}},
		{`{"op":"exit"}`, Response{Error: "missing id"}},
		{`{"id":28}`, Response{ID: 28, Error: "missing op"}},
		{`{"id":29,"op":"exit"}`, Response{ID: 29, OK: true}},
		{`{"id":30,"op":"t\"x"}`, Response{ID: 30, Error: "bad json"}},
		{`{"id":99999999999999999999}`, Response{Error: "bad number"}},
		{`[]`, Response{Error: "bad json"}},
		{``, Response{Error: "bad json"}},
	} {
		if got := h.raw(t, c.in); got != c.want {
			t.Errorf("%s: guest %+v, want %+v", c.in, got, c.want)
		}
	}
}

// testInitrd is 40 KiB and 100 bytes of random data: 11 pages, the last
// one partial.
func testInitrd(seed int64) []byte {
	b := make([]byte, 40<<10+100)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// initrdReads are read requests over an initrd of 11 pages, valid and not.
func initrdReads(id uint64) []Request {
	return []Request{
		ReadRequest(id+0, 0, 1, 1, 0),
		ReadRequest(id+1, 0, 11, 1, 4096),
		ReadRequest(id+2, 0, 11, 1, 8),
		ReadRequest(id+3, 1, 4, 3, 8),    // 1, 4, 7, 10 (the partial page)
		ReadRequest(id+4, 10, 1, 1, 100), // exactly the partial page's bytes
		ReadRequest(id+5, 10, 1, 1, 101), // one padding zero
		ReadRequest(id+6, 10, 3, 0, 4096),
		ReadRequest(id+7, 2, 5, 2, 1),
		ReadRequest(id+8, 9, 2, 1, 4095),
		ReadRequest(id+9, 5, 0, 1, 8),     // nothing
		ReadRequest(id+10, 11, 1, 1, 8),   // out of range
		ReadRequest(id+11, 0, 3, 5, 8),    // last page 10: fine
		ReadRequest(id+12, 1, 3, 5, 8),    // last page 11: out of range
		ReadRequest(id+13, 0, 1, 1, 4097), // bytes out of range
		ReadRequest(id+14, 0, MaxTouchCount+1, 0, 8),
		{ID: id + 15, Op: OpRead, Count: 1, Write: true},
	}
}

func TestGuestReadMatchesModel(t *testing.T) {
	const seed, heapMB = 3, 1
	initrd := testInitrd(1)
	path := filepath.Join(t.TempDir(), "initrd")
	if err := os.WriteFile(path, initrd, 0o644); err != nil {
		t.Fatal(err)
	}
	heap := NewHeap(seed, heapMB)
	heap.Initrd = initrd
	h := startProto(t, seed, heap.Pages, path)
	rw := struct {
		io.Reader
		io.Writer
	}{h.out, h.in}
	reqs := append(initrdReads(1),
		Request{ID: 30, Op: OpTouch, Start: 2, Count: 3, Stride: 1, Write: true, Bytes: 8},
		Request{ID: 31, Op: OpTouch, Start: 2, Count: 3, Stride: 1, Bytes: 4096},
		Request{ID: 32, Op: OpTouch, Start: 0, Count: 256, Stride: 1, Bytes: 1},
		Request{ID: 33, Op: OpTouch, Start: 0, Count: 1, Stride: 1, Bytes: 4097},
		TouchRequest(34, 2, 3, 1, false))
	errs := 0
	for _, req := range reqs {
		want := heap.Apply(req)
		got, err := Call(rw, req)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%+v: guest %+v, model %+v", req, got, want)
		}
		if got.Error != "" {
			errs++
		}
	}
	if errs != 6 {
		t.Errorf("%d error responses, want 6", errs)
	}
	for _, c := range []struct {
		in   string
		want Response
	}{
		{`{"id":40,"op":"read"}`, heap.Apply(Request{ID: 40, Op: OpRead, Count: 1, Stride: 1})},
		{`{"id":41,"op":"read","bytes":4096,"start":10}`, heap.Apply(ReadRequest(41, 10, 1, 1, 0))},
		{`{"id":42,"op":"read","bytes":0}`, Response{ID: 42, Error: "bytes out of range"}},
		{`{"id":43,"op":"touch","bytes":0}`, Response{ID: 43, Error: "bytes out of range"}},
		{`{"id":44,"op":"read","bytes":-1}`, Response{ID: 44, Error: "bad number"}},
		{`{"id":45,"op":"exit","bytes":7}`, Response{ID: 45, OK: true}},
	} {
		if got := h.raw(t, c.in); got != c.want {
			t.Errorf("%s: guest %+v, want %+v", c.in, got, c.want)
		}
	}

	// Without an initrd every read is refused.
	h2 := startProto(t, seed, heap.Pages)
	rw2 := struct {
		io.Reader
		io.Writer
	}{h2.out, h2.in}
	heap2 := NewHeap(seed, heapMB)
	for _, req := range []Request{ReadRequest(1, 0, 1, 1, 8), ReadRequest(2, 0, 0, 1, 0)} {
		got, err := Call(rw2, req)
		if err != nil {
			t.Fatal(err)
		}
		if want := heap2.Apply(req); got != want || got.Error != "no initrd" {
			t.Errorf("%+v without an initrd: guest %+v, model %+v", req, got, want)
		}
	}
}

func TestInitrdModel(t *testing.T) {
	initrd := testInitrd(2)
	last := make([]byte, PageSize)
	copy(last, initrd[10*PageSize:])
	page := func(p uint64) []byte { return initrd[p*PageSize : (p+1)*PageSize] }
	for _, c := range []struct {
		req  Request
		want Response
	}{
		{ReadRequest(1, 0, 2, 1, 0), Response{ID: 1, Pages: 2, Checksum: Checksum([][]byte{page(0), page(1)})}},
		{ReadRequest(2, 1, 2, 9, 4096), Response{ID: 2, Pages: 2, Checksum: Checksum([][]byte{page(1), last})}},
		{ReadRequest(3, 3, 3, 0, 8), Response{ID: 3, Pages: 3, Checksum: Checksum([][]byte{page(3)[:8], page(3)[:8], page(3)[:8]})}},
		{ReadRequest(4, 10, 1, 1, 200), Response{ID: 4, Pages: 1, Checksum: Checksum([][]byte{initrd[10*PageSize:], make([]byte, 100)})}},
		{ReadRequest(5, 0, 0, 1, 0), Response{ID: 5, Checksum: Checksum(nil)}},
		{ReadRequest(6, 11, 1, 1, 0), Response{ID: 6, Error: "page out of range"}},
		{ReadRequest(7, 0, 1, 1, PageSize+1), Response{ID: 7, Error: "bytes out of range"}},
		{TouchRequest(8, 0, 1, 1, false), Response{ID: 8, Error: "unknown op"}},
	} {
		if got := InitrdChecksum(initrd, c.req); got != c.want {
			t.Errorf("%+v: %+v, want %+v", c.req, got, c.want)
		}
	}
	if got := InitrdChecksum(nil, ReadRequest(9, 0, 1, 1, 0)); got.Error != "no initrd" {
		t.Errorf("no initrd: %+v", got)
	}
	if n := InitrdPages(uint64(len(initrd))); n != 11 {
		t.Errorf("InitrdPages = %d", n)
	}
	// Touch with bytes hashes a prefix of each page; without, all of it.
	h := NewHeap(5, 1)
	r := h.Apply(Request{ID: 1, Op: OpTouch, Start: 2, Count: 2, Stride: 1, Write: true, Bytes: 16})
	if want := Checksum([][]byte{PageBytes(5, 2, 1)[:16], PageBytes(5, 3, 1)[:16]}); r.Checksum != want {
		t.Errorf("touch bytes 16: %+v, want %s", r, want)
	}
	b, _ := json.Marshal(ReadRequest(3, 1, 2, 3, 8))
	if got, want := string(b), `{"id":3,"op":"read","start":1,"count":2,"stride":3,"write":false,"bytes":8}`; got != want {
		t.Errorf("JSON %s, want %s", got, want)
	}
	b, _ = json.Marshal(ExitRequest(4))
	if got, want := string(b), `{"id":4,"op":"exit","start":0,"count":0,"stride":0,"write":false}`; got != want {
		t.Errorf("exit JSON %s, want %s", got, want)
	}
}

func TestHeapModel(t *testing.T) {
	h := NewHeap(5, 1)
	if h.Pages != 256 {
		t.Fatalf("pages %d", h.Pages)
	}
	r := h.Apply(TouchRequest(1, 2, 3, 2, true))
	want := Checksum([][]byte{PageBytes(5, 2, 1), PageBytes(5, 4, 1), PageBytes(5, 6, 1)})
	if r != (Response{ID: 1, Pages: 3, Checksum: want}) {
		t.Errorf("got %+v, want checksum %s", r, want)
	}
	r = h.Apply(TouchRequest(2, 4, 2, 0, true))
	want = Checksum([][]byte{PageBytes(5, 4, 2), PageBytes(5, 4, 3)})
	if r.Checksum != want {
		t.Errorf("stride 0: %+v, want %s", r, want)
	}
	if r := h.Apply(TouchRequest(3, 0, 0, 1, false)); r.Checksum != Checksum(nil) || r.Pages != 0 {
		t.Errorf("count 0: %+v", r)
	}
	b := PageBytes(5, 9, 0)
	if binary.LittleEndian.Uint64(b[8*17:]) != HeapWord(5, 9, 17) {
		t.Error("PageBytes word 17")
	}
}

func TestFramesAndJSON(t *testing.T) {
	req := TouchRequest(7, 1, 2, 3, true)
	var buf bytes.Buffer
	if err := WriteRequest(&buf, req); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if n := binary.BigEndian.Uint32(b); int(n) != len(b)-4 {
		t.Fatalf("frame length %d for %d bytes", n, len(b)-4)
	}
	if got, want := string(b[4:]), `{"id":7,"op":"touch","start":1,"count":2,"stride":3,"write":true}`; got != want {
		t.Errorf("JSON %s, want %s", got, want)
	}
	p, err := ReadFrame(bytes.NewReader(EncodeFrame([]byte("xyz"))))
	if err != nil || string(p) != "xyz" {
		t.Errorf("ReadFrame = %q, %v", p, err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0, 0, 0, 5, 'a'})); err != io.ErrUnexpectedEOF {
		t.Errorf("short frame: %v", err)
	}
	if _, err := ReadFrame(bytes.NewReader([]byte{0xff, 0, 0, 0})); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("huge frame: %v", err)
	}
	var r Response
	if err := json.Unmarshal([]byte(`{"id":3,"pages":2,"checksum":"00112233445566ff"}`), &r); err != nil ||
		r != (Response{ID: 3, Pages: 2, Checksum: "00112233445566ff"}) {
		t.Errorf("response %+v, %v", r, err)
	}
}

func TestDiskImageAndConfig(t *testing.T) {
	img := DiskImage([]byte("hi\nthere"))
	if len(img) != 512 || string(img[:4]) != "SFTG" || binary.LittleEndian.Uint32(img[4:]) != 8 || string(img[8:16]) != "hi\nthere" {
		t.Errorf("DiskImage: % x", img[:16])
	}
	if n := len(DiskImage(make([]byte, 505))); n != 1024 {
		t.Errorf("505-byte payload: %d-byte image", n)
	}
	if got := DiskLine([]byte("a\tb\x80c\nrest")); got != "a.b.c" {
		t.Errorf("DiskLine %q", got)
	}
	big := bytes.Repeat([]byte("x"), MaxDiskPayload+10)
	if DiskChecksum(big) != Checksum([][]byte{big[:MaxDiskPayload]}) || len(DiskLine(big)) != 200 {
		t.Error("disk payload cap")
	}
	c := DefaultConfig()
	c.Devices = []MMIODevice{{Base: 0xd0000000, Size: 0x1000, IRQ: 5}, {Base: 0xd0001000, Size: 0x200, IRQ: 6}}
	c.Fault = "sse"
	c.Extra = []string{"console=ttyS0"}
	want := "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=0x200@0xd0001000:6 " +
		"testguest.heap_mb=16 testguest.seed=1 testguest.port=1234 testguest.fault=sse console=ttyS0"
	if got := c.Cmdline(); got != want {
		t.Errorf("Cmdline:\n%s\nwant\n%s", got, want)
	}
	con := ParseConsole("snapfaas testguest v1\r\nconfig: x\ndisk: hello\ndisk-checksum: 0123456789abcdef\n" +
		"disk-id: abc\ninitrd: 41060 bytes at 0x3ff5000\nheap: 512 pages at 0x200000\nready\n")
	if !con.Banner || con.Config != "x" || con.Disk != "hello" || con.DiskChecksum != "0123456789abcdef" ||
		con.DiskID != "abc" || con.HeapPages != 512 || con.HeapAddr != 0x200000 || !con.Ready ||
		con.Initrd != "41060 bytes at 0x3ff5000" || con.InitrdSize != 41060 || con.InitrdAddr != 0x3ff5000 {
		t.Errorf("ParseConsole: %+v", con)
	}
	if con := ParseConsole("initrd: none\n"); con.Initrd != "none" || con.InitrdSize != 0 {
		t.Errorf("ParseConsole initrd none: %+v", con)
	}
}

func TestForbiddenInsnFilter(t *testing.T) {
	for insn, want := range map[string]bool{
		"movaps %xmm0,(%rsp)":           true,
		"pxor %xmm0,%xmm0":              true,
		"vzeroupper":                    true,
		"fldcw (%rsp)":                  true,
		"fnstsw %ax":                    true,
		"fxsave64 (%rdi)":               true,
		"xsaveopt (%rdi)":               true,
		"lock cmpxchg16b (%rdi)":        true,
		"popcnt %rax,%rbx":              true,
		"repz bsf %eax,%eax":            false,
		"tzcnt %eax,%eax":               true,
		"endbr64":                       true,
		"(bad)":                         true,
		"movq %mm0,%rax":                true,
		"cmovbe %ebp,%ebx":              false,
		"mov %eax,%fs":                  false,
		"rep stos %rax,%es:(%rdi)":      false,
		"cs nopw 0x0(%rax,%rax,1)":      false,
		"movabs $0xbf58476d1ce4e5b9,%r": false,
		"call 100abc":                   false,
	} {
		if got := forbiddenInsn(insn); got != want {
			t.Errorf("forbiddenInsn(%q) = %v, want %v", insn, got, want)
		}
	}
}

func TestBuildWithoutCompiler(t *testing.T) {
	cached := guestELF(t)
	t.Setenv("PATH", t.TempDir())
	if _, err := Build(t.TempDir()); !errors.Is(err, ErrNoCompiler) {
		t.Errorf("Build without gcc: %v, want ErrNoCompiler", err)
	}
	// A cached build needs no compiler.
	if p, err := Build(filepath.Dir(cached)); err != nil || p != cached {
		t.Errorf("cached Build without gcc = %q, %v", p, err)
	}
}
