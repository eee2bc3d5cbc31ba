// Package corpus produces realistic "guest-like" memory images for tests and
// benchmarks of the snapshot chunk store.
//
// A snapfaas VM memory snapshot is a flat raw file in which the byte offset is
// the guest physical address. Real snapshots are dominated by a few kinds of
// pages: untouched all-zero pages, executable code, interpreter heap (object
// headers, pointers, strings), file-cache text, and a little high-entropy
// data. Compression and deduplication results depend heavily on that mix, so
// measuring the store on random bytes (incompressible, never duplicated) or on
// zeros (trivially compressible) is misleading. This package provides two
// sources of more realistic images:
//
//   - CapturePython starts a python3 child process running a small workload
//     (stdlib imports, dicts, lists, strings, an in-memory sqlite database) and
//     copies every readable mapping of that process out of /proc/PID/mem into a
//     flat image. Regions are laid out page-aligned, one after another in
//     address order starting at offset 0, separated by a small deterministic
//     gap of zero pages (DefaultGapPages unless WithGapPages is given); the
//     rest of the image, up to the requested size, is zero. This mimics a
//     freshly booted guest running one interpreter: a dense prefix of real
//     pages followed by a long tail of never-touched memory.
//
//   - Generate builds a deterministic synthetic image from a seed, without
//     any external process, for unit tests: roughly 40% zero pages, text,
//     code-like and pointer-heavy pages, ~5% random pages and ~10% exact
//     duplicates of earlier pages.
//
// The command bench/memcorpus wraps both for use from the shell.
package corpus

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// PageSize is the page granularity of images produced by this package.
const PageSize = 4096

// DefaultHeapSize is the approximate live heap the python workload builds
// unless WithHeapSize is given.
const DefaultHeapSize = 32 << 20

// DefaultGapPages is the number of zero pages written between two captured
// regions unless WithGapPages is given.
const DefaultGapPages = 4

// ErrNoPython is returned by CapturePython when no python3 interpreter can be
// found. Callers (tests, benchmarks) typically skip on it.
var ErrNoPython = errors.New("corpus: python3 not found in PATH")

// Stats describes an image written by CapturePython.
type Stats struct {
	// Regions is the number of process mappings (wholly or partly) copied
	// into the image.
	Regions int
	// DataBytes is the number of image bytes that came from the process
	// (including pages that read back as zero), excluding gaps and tail.
	DataBytes int64
	// ZeroPages is the number of all-zero 4 KiB pages in the final image.
	ZeroPages int64
	// TotalPages is the number of 4 KiB pages in the final image.
	TotalPages int64
}

// String formats s as a one-line summary.
func (s Stats) String() string {
	pct := 0.0
	if s.TotalPages > 0 {
		pct = 100 * float64(s.ZeroPages) / float64(s.TotalPages)
	}
	return fmt.Sprintf("regions=%d data=%d (%.1f MiB) zero_pages=%d/%d (%.1f%%) size=%d (%.1f MiB)",
		s.Regions, s.DataBytes, float64(s.DataBytes)/(1<<20),
		s.ZeroPages, s.TotalPages, pct,
		s.TotalPages*PageSize, float64(s.TotalPages*PageSize)/(1<<20))
}

// Option configures CapturePython.
type Option func(*options)

type options struct {
	python   string
	heap     int64
	gapPages int
	stderr   io.Writer
}

// WithHeapSize sets the approximate live heap, in bytes, the python workload
// builds before it is captured (default DefaultHeapSize). Zero means only
// the imports and a minimal workload.
func WithHeapSize(n int64) Option { return func(o *options) { o.heap = n } }

// WithPython sets the interpreter to run (a name looked up in PATH, or a
// path). The default is "python3".
func WithPython(path string) Option { return func(o *options) { o.python = path } }

// WithGapPages sets the number of zero pages written between consecutive
// regions (default DefaultGapPages).
func WithGapPages(n int) Option { return func(o *options) { o.gapPages = n } }

// WithStderr forwards the child's stderr to w (by default it is only kept,
// truncated, for error messages).
func WithStderr(w io.Writer) Option { return func(o *options) { o.stderr = w } }

const readyMarker = "SNAPFAAS-CORPUS-READY"

// workloadScript is run with `python3 -c`; argv[1] is the heap target in
// bytes. It prints "<readyMarker> <pid>" once the heap is built and then
// blocks reading stdin until it is killed or stdin is closed.
const workloadScript = `
import sys, os, gc, io, json, re, random, string, struct, hashlib, datetime
import collections, decimal, functools, itertools, textwrap, base64
import email, email.message, email.utils, email.parser, http.client, urllib.parse
try:
    import sqlite3
except ImportError:
    sqlite3 = None

target = int(sys.argv[1])
rng = random.Random(20240601)
syll = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "zen", "qua", "dro", "pel"]
words = ["".join(rng.choices(syll, k=rng.randint(1, 4))) for _ in range(2000)]
Point = collections.namedtuple("Point", "x y z")
keep = []
used = 0

def add(obj, size):
    global used
    keep.append(obj)
    used += size

# Prefer measuring the heap: anonymous resident memory growth (statm
# resident - shared) since the start of the workload. Fall back to the
# sys.getsizeof estimate accumulated by add().
def anon_rss():
    try:
        with open("/proc/self/statm") as f:
            v = f.read().split()
        return (int(v[1]) - int(v[2])) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None

rss0 = anon_rss()

def grown():
    if rss0 is not None:
        r = anon_rss()
        if r is not None:
            return r - rss0
    return used

word_re = re.compile(r"\b([a-z]+)(\d*)\b")
ctx = decimal.getcontext()
ctx.prec = 28
db = None
if sqlite3 is not None:
    db = sqlite3.connect(":memory:")
    db.execute("create table item (id integer primary key, name text, score real, body text)")
    keep.append(db)

i = 0
while target > 0 and (i % 256 != 0 or grown() < target):
    name = "-".join(rng.choices(words, k=3))
    body = " ".join(rng.choices(words, k=rng.randint(10, 60)))
    rec = {
        "id": i,
        "name": name,
        "tags": rng.choices(words, k=rng.randint(1, 8)),
        "score": rng.random() * 100,
        "created": datetime.datetime(2024, 1, 1) + datetime.timedelta(seconds=i * 37),
        "point": Point(rng.random(), rng.random(), rng.random()),
        "body": body,
    }
    add(rec, sys.getsizeof(rec) + sys.getsizeof(body) + sys.getsizeof(name) + 400)
    k = i % 16
    if k == 3 and i % 64 != 3:
        k = 9  # email is slow to build; only every 64th record
    if k == 0:
        s = json.dumps(rec, default=str)
        add(s, sys.getsizeof(s))
        add(json.loads(s), sys.getsizeof(s))
    elif k == 1:
        m = word_re.findall(body)
        add(m, sys.getsizeof(m) + 64 * len(m))
        c = collections.Counter(body.split())
        add(c, sys.getsizeof(c) + 64 * len(c))
    elif k == 2:
        d = [decimal.Decimal(rng.randint(0, 10**9)) / decimal.Decimal(7) for _ in range(16)]
        add(d, sys.getsizeof(d) + 104 * len(d))
    elif k == 3:
        msg = email.message.EmailMessage()
        msg["From"] = name + "@example.com"
        msg["To"] = rng.choice(words) + "@example.org"
        msg["Subject"] = body[:60]
        msg["Date"] = email.utils.formatdate(1700000000 + i)
        msg.set_content(textwrap.fill(body, 72))
        raw = msg.as_bytes()
        add(raw, sys.getsizeof(raw))
        add(email.parser.BytesParser().parsebytes(raw), 4 * len(raw))
    elif k == 4:
        hdr = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: %d\r\n"
               "Server: %s\r\n\r\n" % (i, name)).encode()
        fp = io.BytesIO(hdr)
        fp.readline()
        add(http.client.parse_headers(fp), 2 * len(hdr) + 512)
        q = urllib.parse.urlencode({"q": name, "page": i})
        add(q, sys.getsizeof(q))
    elif k == 5:
        blob = rng.randbytes(rng.choice([64, 256, 1024]))
        add(blob, sys.getsizeof(blob))
        add(hashlib.sha256(blob).hexdigest(), 113)
        add(base64.b64encode(blob), sys.getsizeof(blob) * 4 // 3)
    elif k == 6:
        arr = list(range(i, i + rng.randint(8, 256)))
        add(arr, sys.getsizeof(arr) + 28 * len(arr))
        pk = struct.pack("<%dq" % len(arr), *arr)
        add(pk, sys.getsizeof(pk))
    elif k == 7 and db is not None:
        db.execute("insert into item (id, name, score, body) values (?, ?, ?, ?)",
                   (i, name, rec["score"], body))
        used += len(body) + len(name) + 64
    elif k == 8:
        od = collections.OrderedDict((w, len(w)) for w in body.split()[:20])
        add(od, sys.getsizeof(od) + 64 * len(od))
        dq = collections.deque(rec["tags"], maxlen=64)
        add(dq, sys.getsizeof(dq))
    elif k == 9:
        s = (name + " ") * rng.randint(2, 40)
        add(s, sys.getsizeof(s))
    i += 1

if db is not None:
    db.commit()
    rows = db.execute("select name, score from item where score > 50 order by score").fetchall()
    keep.append(rows)
gc.collect()
sys.stdout.write("%s %d\n" % ("` + readyMarker + `", os.getpid()))
sys.stdout.flush()
sys.stdin.read()
`

// CapturePython runs a python3 workload in a child process, copies its
// readable memory mappings into w as a flat guest-like image of exactly size
// bytes (see the package documentation for the layout), and kills the child.
// size must be a positive multiple of PageSize. Captured data beyond size is
// dropped. If w is an *os.File positioned at its end, the zero tail is
// produced with Truncate and so stays sparse on disk.
//
// It returns ErrNoPython (wrapped) if the interpreter cannot be found.
// Capturing relies on /proc and is only supported on Linux.
func CapturePython(ctx context.Context, w io.Writer, size int64, opts ...Option) (Stats, error) {
	if size <= 0 || size%PageSize != 0 {
		return Stats{}, fmt.Errorf("corpus: image size %d must be a positive multiple of %d", size, PageSize)
	}
	o := options{python: "python3", heap: DefaultHeapSize, gapPages: DefaultGapPages}
	for _, opt := range opts {
		opt(&o)
	}
	if o.heap < 0 {
		return Stats{}, fmt.Errorf("corpus: heap size %d must not be negative", o.heap)
	}
	if o.gapPages < 0 {
		return Stats{}, fmt.Errorf("corpus: gap of %d pages must not be negative", o.gapPages)
	}
	if !captureSupported {
		return Stats{}, fmt.Errorf("corpus: capture needs /proc/PID/mem (Linux only): %w", errors.ErrUnsupported)
	}
	py, err := exec.LookPath(o.python)
	if err != nil {
		return Stats{}, fmt.Errorf("%w: %s: %w", ErrNoPython, o.python, err)
	}

	cmd := exec.CommandContext(ctx, py, "-c", workloadScript, strconv.FormatInt(o.heap, 10))
	cmd.WaitDelay = 2 * time.Second
	stderr := &tailBuffer{max: 8 << 10}
	if o.stderr != nil {
		cmd.Stderr = io.MultiWriter(stderr, o.stderr)
	} else {
		cmd.Stderr = stderr
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return Stats{}, fmt.Errorf("corpus: stdin pipe for %s: %w", py, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Stats{}, fmt.Errorf("corpus: stdout pipe for %s: %w", py, err)
	}
	if err := cmd.Start(); err != nil {
		return Stats{}, fmt.Errorf("corpus: start %s: %w", py, err)
	}
	stop := func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}

	pid, err := waitReady(ctx, stdout)
	if err != nil {
		stop()
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w (python stderr: %s)", err, msg)
		}
		return Stats{}, fmt.Errorf("corpus: %s workload: %w", py, err)
	}

	iw := newImageWriter(w, size)
	regions, capErr := captureProcess(ctx, pid, iw, o.gapPages)
	stop()
	if capErr != nil {
		return Stats{}, fmt.Errorf("corpus: capture python pid %d: %w", pid, capErr)
	}
	if err := iw.finish(); err != nil {
		return Stats{}, fmt.Errorf("corpus: write zero tail: %w", err)
	}
	return Stats{
		Regions:    regions,
		DataBytes:  iw.data,
		ZeroPages:  iw.zeroPages,
		TotalPages: size / PageSize,
	}, nil
}

// waitReady reads the child's ready line and returns the pid it reports.
func waitReady(ctx context.Context, stdout io.Reader) (int, error) {
	type result struct {
		pid int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		br := bufio.NewReader(stdout)
		for {
			line, err := br.ReadString('\n')
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), readyMarker+" "); ok {
				pid, perr := strconv.Atoi(rest)
				if perr != nil || pid <= 0 {
					ch <- result{err: fmt.Errorf("bad ready line %q", line)}
				} else {
					ch <- result{pid: pid}
				}
				return
			}
			if err != nil {
				if err == io.EOF {
					err = errors.New("exited before signalling ready")
				}
				ch <- result{err: fmt.Errorf("wait for ready line: %w", err)}
				return
			}
		}
	}()
	select {
	case r := <-ch:
		return r.pid, r.err
	case <-ctx.Done():
		return 0, fmt.Errorf("wait for ready line: %w", ctx.Err())
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }

var zeroPage [PageSize]byte

// imageWriter writes a flat image of a fixed size, counting zero pages.
// Writes are always whole pages; anything beyond size is dropped.
type imageWriter struct {
	w         io.Writer
	size      int64
	off       int64
	data      int64
	zeroPages int64
}

func newImageWriter(w io.Writer, size int64) *imageWriter {
	return &imageWriter{w: w, size: size}
}

func (iw *imageWriter) remaining() int64 { return iw.size - iw.off }

// writeData writes as much of p (a whole number of pages) as fits and
// reports how many bytes were written.
func (iw *imageWriter) writeData(p []byte) (int, error) {
	if r := iw.remaining(); int64(len(p)) > r {
		p = p[:r]
	}
	for i := 0; i < len(p); i += PageSize {
		if bytes.Equal(p[i:min(i+PageSize, len(p))], zeroPage[:min(PageSize, len(p)-i)]) {
			iw.zeroPages++
		}
	}
	n, err := iw.w.Write(p)
	iw.off += int64(n)
	iw.data += int64(n)
	return n, err
}

// writeZeros writes n zero bytes (n a multiple of PageSize), clamped to size.
func (iw *imageWriter) writeZeros(n int64) error {
	n = min(n, iw.remaining())
	iw.zeroPages += n / PageSize
	for n > 0 {
		chunk := min(n, int64(len(zeroChunk)))
		m, err := iw.w.Write(zeroChunk[:chunk])
		iw.off += int64(m)
		n -= int64(m)
		if err != nil {
			return err
		}
	}
	return nil
}

var zeroChunk = make([]byte, 1<<20)

// finish fills the image up to size with zeros, sparsely when possible.
func (iw *imageWriter) finish() error {
	rem := iw.remaining()
	if rem == 0 {
		return nil
	}
	if f, ok := iw.w.(*os.File); ok {
		if pos, err := f.Seek(0, io.SeekCurrent); err == nil {
			if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() == pos {
				if err := f.Truncate(pos + rem); err != nil {
					return fmt.Errorf("truncate %s to %d: %w", f.Name(), pos+rem, err)
				}
				if _, err := f.Seek(pos+rem, io.SeekStart); err != nil {
					return fmt.Errorf("seek %s: %w", f.Name(), err)
				}
				iw.off += rem
				iw.zeroPages += rem / PageSize
				return nil
			}
		}
	}
	return iw.writeZeros(rem)
}

// Page kinds used by Generate.
const (
	kindZero = iota
	kindText
	kindCode
	kindPointer
	kindRandom
	kindDup
)

var vocabulary = strings.Fields(`
	the of and to in is for on that with as by from this are be it an or at
	function return import class def self None True False while if else elif
	python json request response error value key data buffer snapshot memory
	page chunk store guest kernel module object string list dict tuple bytes
	GET POST HTTP/1.1 Content-Type application/json utf-8 localhost usr lib
	/usr/lib/python3.11 __init__ __main__ __name__ __dict__ sys os re time
	`)

// codeSnippets are x86-64-ish instruction byte sequences.
var codeSnippets = [][]byte{
	{0x55},                               // push rbp
	{0x48, 0x89, 0xe5},                   // mov rbp, rsp
	{0x48, 0x83, 0xec, 0x20},             // sub rsp, 0x20
	{0x48, 0x8b, 0x45, 0xf8},             // mov rax, [rbp-8]
	{0x48, 0x89, 0x7d, 0xe8},             // mov [rbp-0x18], rdi
	{0x31, 0xc0},                         // xor eax, eax
	{0x85, 0xc0},                         // test eax, eax
	{0x0f, 0x1f, 0x44, 0x00, 0x00},       // nop dword
	{0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00}, // nop word
	{0xc9},                               // leave
	{0xc3},                               // ret
	{0x5d},                               // pop rbp
	{0x41, 0x57, 0x41, 0x56},             // push r15; push r14
	{0x48, 0x8d, 0x05},                   // lea rax, [rip+...] (disp follows)
	{0xe8},                               // call rel32 (follows)
	{0x74},                               // je rel8 (follows)
	{0x0f, 0x84},                         // je rel32 (follows)
}

// Generate returns a deterministic synthetic guest-like image of size bytes
// (a final partial page is filled like any other page). Pages are roughly
// 40% zero, 15% text, 15% code-like, 15% pointer-heavy, 5% random and 10%
// exact duplicates of earlier non-zero pages, with kinds tending to come in
// runs as they do in real memory. The same seed always yields the same
// bytes. size <= 0 yields an empty slice.
func Generate(seed int64, size int64) []byte {
	if size <= 0 {
		return []byte{}
	}
	img := make([]byte, size)
	rng := rand.New(rand.NewPCG(uint64(seed), 0x736e617066616173)) // "snapfaas"
	bases := [...]uint64{0x00007f3a12000000, 0x0000555555554000, 0xffff888000000000, 0x00007ffc8a000000}
	var nonZero []int64 // offsets of generated non-zero pages
	kind := kindZero
	for off := int64(0); off < size; off += PageSize {
		page := img[off:min(off+PageSize, size)]
		if off == 0 || rng.IntN(2) == 0 { // runs: half the time keep the kind
			switch r := rng.IntN(100); {
			case r < 40:
				kind = kindZero
			case r < 55:
				kind = kindText
			case r < 70:
				kind = kindCode
			case r < 85:
				kind = kindPointer
			case r < 90:
				kind = kindRandom
			default:
				kind = kindDup
			}
		}
		k := kind
		if k == kindDup && len(nonZero) == 0 {
			k = kindText
		}
		switch k {
		case kindZero:
			continue
		case kindText:
			fillText(rng, page)
		case kindCode:
			fillCode(rng, page)
		case kindPointer:
			fillPointers(rng, page, bases[:])
		case kindRandom:
			for i := range page {
				page[i] = byte(rng.Uint32())
			}
		case kindDup:
			src := nonZero[rng.IntN(len(nonZero))]
			copy(page, img[src:src+PageSize])
		}
		if len(page) == PageSize {
			nonZero = append(nonZero, off)
		}
	}
	return img
}

func fillText(rng *rand.Rand, page []byte) {
	// Some pages are only partly used, the rest stays zero.
	end := len(page)
	if rng.IntN(3) == 0 {
		end = rng.IntN(len(page)) + 1
	}
	i := 0
	for i < end {
		w := vocabulary[rng.IntN(len(vocabulary))]
		i += copy(page[i:end], w)
		if i < end {
			sep := byte(' ')
			if rng.IntN(12) == 0 {
				sep = '\n'
			}
			page[i] = sep
			i++
		}
	}
}

func fillCode(rng *rand.Rand, page []byte) {
	i := 0
	for i < len(page) {
		s := codeSnippets[rng.IntN(len(codeSnippets))]
		i += copy(page[i:], s)
		switch s[len(s)-1] {
		case 0x05, 0xe8, 0x84: // rel32 operand
			var b [4]byte
			v := rng.Int32N(1<<16) - 1<<15
			b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
			i += copy(page[i:], b[:])
		case 0x74: // rel8 operand
			if i < len(page) {
				page[i] = byte(rng.IntN(64))
				i++
			}
		}
	}
}

func fillPointers(rng *rand.Rand, page []byte, bases []uint64) {
	base := bases[rng.IntN(len(bases))]
	for i := 0; i+8 <= len(page); i += 8 {
		var v uint64
		switch r := rng.IntN(10); {
		case r < 6: // pointer near the page's dominant base
			v = base + uint64(rng.IntN(1<<20))*16
		case r < 7: // pointer near another base
			v = bases[rng.IntN(len(bases))] + uint64(rng.IntN(1<<16))*8
		case r < 9: // small integer (refcount, length, flags)
			v = uint64(rng.IntN(256))
		default: // zero word
		}
		for j := 0; j < 8; j++ {
			page[i+j] = byte(v >> (8 * j))
		}
	}
}

// WriteFile writes a size-byte guest-like image to path for a benchmark:
// captured from python3 (heap target heap) when it can be, else generated
// from seed, which logf reports. It returns the source ("python" or
// "synthetic") and, for a capture, a one-line description.
func WriteFile(ctx context.Context, path string, size, heap, seed int64, logf func(string, ...any)) (source, desc string, err error) {
	f, err := os.Create(path)
	if err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	st, err := CapturePython(ctx, f, size, WithHeapSize(heap))
	switch {
	case err == nil:
		source = "python"
		desc = fmt.Sprintf("python3 process memory captured by bench/corpus.CapturePython (heap target %d MiB): %s", heap>>20, st)
	case errors.Is(err, ErrNoPython) || errors.Is(err, errors.ErrUnsupported):
		logf("NOTE: cannot capture python3 (%v); using the synthetic corpus (seed %d) instead", err, seed)
		if err := f.Truncate(0); err != nil {
			f.Close()
			return "", "", err
		}
		if _, err := f.WriteAt(Generate(seed, size), 0); err != nil {
			f.Close()
			return "", "", err
		}
		source = "synthetic"
	default:
		f.Close()
		return "", "", fmt.Errorf("capture corpus: %w", err)
	}
	return source, desc, f.Close()
}
