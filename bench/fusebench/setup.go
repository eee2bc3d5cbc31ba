//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/fusefs"
	"github.com/snapfaas/snapfaas/pagestore"
)

// errMissing: a tool or device the benchmark needs is not on this machine.
var errMissing = errors.New("missing prerequisites")

// tools the benchmark runs, with the Debian package that has each.
var tools = []struct{ name, pkg string }{
	{"mkfs.ext4", "e2fsprogs"},
	{"mksquashfs", "squashfs-tools"},
	{"squashfuse", "squashfuse"},
	{"losetup", "mount"},
	{"mount", "mount"},
}

// preflight checks what the benchmark cannot run without.
func preflight() error {
	var why []string
	if os.Geteuid() != 0 {
		why = append(why, "must run as root (FUSE DirectMount, loop devices, drop_caches)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		why = append(why, "no /dev/fuse")
	}
	var pkgs []string
	for _, t := range tools {
		if _, err := exec.LookPath(t.name); err != nil {
			why = append(why, t.name+" not found")
			if !slices.Contains(pkgs, t.pkg) {
				pkgs = append(pkgs, t.pkg)
			}
		}
	}
	if len(why) == 0 {
		return nil
	}
	msg := strings.Join(why, "; ")
	if len(pkgs) > 0 {
		msg += fmt.Sprintf(" (Debian packages: %s; scripts/fusebench-deps.sh installs them)", strings.Join(pkgs, " "))
	}
	return fmt.Errorf("%w: %s", errMissing, msg)
}

// ---- cleanup ----

// cleaner is a stack of undo actions (unmounts, detaches, process kills)
// run in reverse order on exit, on error and on a signal.
type cleaner struct {
	mu     sync.Mutex
	next   int
	stack  []cleanup
	closed bool
	child  *os.Process
	cancel context.CancelFunc // ends running tools
	logf   func(string, ...any)
	done   chan struct{} // closed when runAll has finished
	err    error         // runAll's result
}

type cleanup struct {
	id   int
	name string
	fn   func() error
}

// push registers fn and returns a function that runs it now and removes it
// (at most once). After runAll has started (a signal raced with setup), fn
// runs at once.
func (c *cleaner) push(name string, fn func() error) func() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		if err := fn(); err != nil {
			c.logf("cleanup: %s: %v", name, err)
		}
		return func() error { return nil }
	}
	c.next++
	id := c.next
	c.stack = append(c.stack, cleanup{id, name, fn})
	c.mu.Unlock()
	return func() error {
		c.mu.Lock()
		i := slices.IndexFunc(c.stack, func(x cleanup) bool { return x.id == id })
		if i < 0 {
			c.mu.Unlock()
			return nil
		}
		c.stack = slices.Delete(c.stack, i, i+1)
		c.mu.Unlock()
		return fn()
	}
}

func (c *cleaner) setChild(p *os.Process) {
	c.mu.Lock()
	c.child = p
	c.mu.Unlock()
}

// runAll kills the running child process, then undoes everything, last
// first; it logs failures and returns the first. It runs once: a second
// caller (the signal handler and the deferred call racing) waits for the
// first to finish, so that the process never exits halfway through.
func (c *cleaner) runAll() error {
	c.mu.Lock()
	if c.done == nil {
		c.done = make(chan struct{})
	}
	done := c.done
	if c.closed {
		c.mu.Unlock()
		<-done
		return c.err
	}
	c.closed = true
	if c.cancel != nil {
		c.cancel()
	}
	st := c.stack
	c.stack = nil
	if c.child != nil {
		c.child.Kill()
		c.child = nil
	}
	c.mu.Unlock()
	var first error
	for i := len(st) - 1; i >= 0; i-- {
		if err := st[i].fn(); err != nil {
			c.logf("cleanup: %s: %v", st[i].name, err)
			if first == nil {
				first = fmt.Errorf("%s: %w", st[i].name, err)
			}
		}
	}
	c.err = first
	close(done)
	return first
}

// ---- system helpers ----

// dropCaches writes back dirty data and drops the OS page cache, dentries
// and inodes.
func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}

// isMounted reports whether dir is a mount point, from /proc/self/mountinfo.
func isMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && unescapeMount(f[4]) == dir {
			return true
		}
	}
	return false
}

// mountOptions returns the mount and super options of the mount at dir.
func mountOptions(dir string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && unescapeMount(f[4]) == dir {
			return f[len(f)-1]
		}
	}
	return ""
}

var octal = regexp.MustCompile(`\\[0-7]{3}`)

func unescapeMount(s string) string {
	return octal.ReplaceAllStringFunc(s, func(m string) string {
		v, _ := strconv.ParseUint(m[1:], 8, 8)
		return string(rune(v))
	})
}

// unmount unmounts dir, retrying while busy, then lazily.
func unmount(dir string) error {
	var err error
	for i := 0; i < 30; i++ {
		if !isMounted(dir) {
			return nil
		}
		if err = syscall.Unmount(dir, 0); err == nil || errors.Is(err, syscall.EINVAL) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lerr := syscall.Unmount(dir, syscall.MNT_DETACH); lerr == nil {
		return fmt.Errorf("unmount %s: %w (detached lazily)", dir, err)
	}
	return fmt.Errorf("unmount %s: %w", dir, err)
}

// selfCPU is the CPU time (user+system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the CPU time of process pid, from /proc (10 ms resolution).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 13 {
		return 0
	}
	// Fields after the command: state(0) ... utime(11) stime(12).
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * (time.Second / 100) // USER_HZ is 100 on Linux
}

// runCmd runs a tool to completion; ctx ends it early (on a signal).
func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(lastLines(string(out), 5)))
	}
	return string(out), nil
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-n):], "\n")
}

// ---- content ----

// content describes the file tree and the images made from it.
type content struct {
	tree      string
	files     int   // regular files
	bytes     int64 // their bytes
	dirs      int
	symlinks  int
	skipped   int // sampled sockets, devices, fifos and unreadable entries
	overMax   int // sampled files skipped because they would pass -max
	treeFiles int // regular files in the whole tree
	treeBytes int64
	fraction  float64 // share of the hash range sampled
	copyDur   time.Duration

	img      string // ext4 image (plain file)
	imgSize  int64
	imgAlloc int64 // allocated bytes (the image is sparse)
	mkfsCmd  string
	mkfsDur  time.Duration

	sqfs      string
	sqfsSize  int64
	sqfsCmd   string
	sqfsComp  string // compression and block size, from mksquashfs's report
	sqfsDur   time.Duration
	sqVersion string

	stored     int64 // store bytes of the image's chunks
	dataBytes  int64 // distinct non-zero chunk bytes
	zeroBytes  int64
	chunks     int
	chunkSize  int
	importDur  time.Duration
	importMBs  float64
	nonZero    int64 // non-zero 4 KiB blocks of the image
	seqOffsets []int64
}

// copyTree copies a sample of src into dst that holds about max bytes of
// regular files spread over the whole tree: every regular file and symlink
// whose path (relative to src) hashes below max/total of the 64-bit FNV-1a
// range is taken, in its own directory; a file that would take the copy
// past max is skipped. When the tree holds max bytes or less, all of it is
// copied. Symlinks stay symlinks; sockets, devices and fifos are skipped.
func copyTree(src, dst string, max int64, c *content) error {
	c.tree = src
	start := time.Now()
	// Pass 1: how many bytes does the tree hold?
	if err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == src {
				return err
			}
			return nil
		}
		if d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				c.treeBytes += info.Size()
				c.treeFiles++
			}
		}
		return nil
	}); err != nil {
		return err
	}
	c.fraction = 1
	if c.treeBytes > max {
		c.fraction = float64(max) / float64(c.treeBytes)
	}
	limit := uint64(math.MaxUint64)
	if c.fraction < 1 {
		limit = uint64(c.fraction * math.MaxUint64)
	}
	take := func(rel string) bool {
		h := fnv.New64a()
		h.Write([]byte(rel))
		return h.Sum64() <= limit
	}
	made := map[string]bool{".": true}
	mkdirs := func(rel string) error {
		var missing []string
		for d := filepath.Dir(rel); !made[d]; d = filepath.Dir(d) {
			missing = append(missing, d)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if err := os.Mkdir(filepath.Join(dst, missing[i]), 0o755); err != nil {
				return err
			}
			made[missing[i]] = true
			c.dirs++
		}
		return nil
	}
	// Pass 2: copy the sample.
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == src {
				return err
			}
			c.skipped++
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		t := d.Type()
		if d.IsDir() || !take(rel) {
			return nil
		}
		target := filepath.Join(dst, rel)
		switch {
		case t&fs.ModeSymlink != 0:
			l, err := os.Readlink(path)
			if err != nil {
				c.skipped++
				return nil
			}
			if err := mkdirs(rel); err != nil {
				return err
			}
			if err := os.Symlink(l, target); err != nil {
				return err
			}
			c.symlinks++
		case t.IsRegular():
			info, err := d.Info()
			if err != nil {
				c.skipped++
				return nil
			}
			if c.bytes+info.Size() > max {
				c.overMax++
				return nil
			}
			if err := mkdirs(rel); err != nil {
				return err
			}
			n, err := copyFile(path, target, info.Mode().Perm())
			if err != nil {
				if os.IsPermission(err) || errors.Is(err, syscall.EIO) {
					os.Remove(target)
					c.skipped++
					return nil
				}
				return err
			}
			c.files++
			c.bytes += n
		default:
			c.skipped++
		}
		return nil
	})
	c.copyDur = time.Since(start)
	return err
}

func copyFile(src, dst string, perm fs.FileMode) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm|0o400)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// buildExt4 makes an ext4 image of dir with mkfs.ext4 -d, sized for the
// content with headroom.
func buildExt4(ctx context.Context, dir, img string, c *content) error {
	inodes := int64(c.files+c.dirs+c.symlinks) + 64
	size := int64(float64(c.bytes)*1.15) + inodes*4096/4 + 64<<20
	for attempt := 0; ; attempt++ {
		size = (size + 1<<20 - 1) &^ (1<<20 - 1)
		args := []string{"-q", "-F", "-m", "0", "-L", "fusebench"}
		if need := inodes * 5 / 4; need > size/16384 {
			args = append(args, "-N", strconv.FormatInt(need+1024, 10))
		}
		args = append(args, "-d", dir, img, fmt.Sprintf("%dM", size>>20))
		os.Remove(img)
		start := time.Now()
		out, err := runCmd(ctx, "mkfs.ext4", args...)
		c.mkfsDur = time.Since(start)
		c.mkfsCmd = "mkfs.ext4 " + strings.Join(args, " ")
		if err == nil {
			break
		}
		if attempt < 3 && regexp.MustCompile(`(?i)no space|could not allocate|not enough space|out of space`).MatchString(out) {
			size = size * 3 / 2
			continue
		}
		return err
	}
	st, err := os.Stat(img)
	if err != nil {
		return err
	}
	c.img = img
	c.imgSize = st.Size()
	c.imgAlloc = st.Sys().(*syscall.Stat_t).Blocks * 512
	return nil
}

// buildSquashfs makes a squashfs of dir with mksquashfs's default
// compression.
func buildSquashfs(ctx context.Context, dir, out string, c *content) error {
	args := []string{dir, out, "-noappend", "-no-progress"}
	start := time.Now()
	txt, err := runCmd(ctx, "mksquashfs", args...)
	c.sqfsDur = time.Since(start)
	if err != nil {
		return err
	}
	c.sqfsCmd = "mksquashfs " + strings.Join(args, " ")
	// "Exportable Squashfs 4.0 filesystem, gzip compressed, data block size 131072"
	c.sqfsComp = "default compression"
	if m := regexp.MustCompile(`(\w+) compressed, data block size (\d+)`).FindStringSubmatch(txt); m != nil {
		n, _ := strconv.Atoi(m[2])
		c.sqfsComp = fmt.Sprintf("%s, %d KiB blocks", m[1], n>>10)
	}
	if v, err := exec.Command("mksquashfs", "-version").CombinedOutput(); err == nil {
		c.sqfsComp += "; " + strings.TrimSpace(strings.SplitN(string(v), "\n", 2)[0])
	}
	// "squashfuse 0.1.104 (c) 2012 Dave Vasilevsky"
	if v, _ := exec.Command("squashfuse", "--version").CombinedOutput(); len(v) > 0 {
		if f := strings.Fields(string(v)); len(f) >= 2 {
			c.sqVersion = f[0] + " " + f[1]
		}
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	c.sqfs = out
	c.sqfsSize = st.Size()
	return nil
}

// importImage stores the ext4 image in a fresh store.
func importImage(storeDir, img string, c *content) error {
	s, err := pagestore.Open(storeDir, pagestore.Create())
	if err != nil {
		return err
	}
	defer s.Close()
	f, err := os.Open(img)
	if err != nil {
		return err
	}
	defer f.Close()
	start := time.Now()
	res, err := s.ImportImage(context.Background(), imageName, f, pagestore.ImportOptions{})
	c.importDur = time.Since(start)
	if err != nil {
		return err
	}
	c.importMBs = mbs(res.Size, c.importDur)
	info, err := s.Inspect(imageName)
	if err != nil {
		return err
	}
	if info.LogicalBytes != c.imgSize {
		return fmt.Errorf("store holds %d bytes of image, the file has %d", info.LogicalBytes, c.imgSize)
	}
	c.stored = info.StoredBytes
	c.dataBytes = info.DataBytes
	c.zeroBytes = info.ZeroPages * 4096
	c.chunks = info.Chunks
	c.chunkSize = info.ChunkSize
	return nil
}

// randomOffsets returns n distinct 4 KiB-aligned offsets of non-zero
// blocks of the image in random order, and the number of such blocks.
func randomOffsets(img string, n int, seed uint64) ([]int64, int64, error) {
	f, err := os.Open(img)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	var blocks []int64
	buf := make([]byte, 1<<20)
	zero := make([]byte, 4096)
	for off := int64(0); ; off += int64(len(buf)) {
		k, err := f.ReadAt(buf, off)
		for i := 0; i+4096 <= k; i += 4096 {
			if !bytes.Equal(buf[i:i+4096], zero) {
				blocks = append(blocks, off+int64(i))
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, 0, err
		}
	}
	if len(blocks) == 0 {
		return nil, 0, errors.New("image has no non-zero block")
	}
	rng := rand.New(rand.NewPCG(seed, 0x66757365)) // "fuse"
	total := int64(len(blocks))
	rng.Shuffle(len(blocks), func(i, j int) { blocks[i], blocks[j] = blocks[j], blocks[i] })
	return blocks[:min(n, len(blocks))], total, nil
}

// ---- serving stacks ----

// fuseServer is our FUSE mount of the store.
type fuseServer struct {
	s   *pagestore.Store
	m   *fusefs.Mount
	pop func() error
}

// fuseUp opens the store afresh (empty chunk cache) and mounts it; with
// debug set, go-fuse logs every request to logTo.
func (e *env) fuseUp(debug io.Writer) error {
	if e.fuse != nil {
		return errors.New("fusefs already mounted")
	}
	s, err := pagestore.Open(e.storeDir, pagestore.ReadOnly())
	if err != nil {
		return err
	}
	if debug != nil {
		log.SetOutput(debug)
	} else {
		log.SetOutput(e.gflog)
	}
	m, err := fusefs.New(e.fuseMnt, s, fusefs.Options{Log: slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), Debug: debug != nil})
	if err != nil {
		log.SetOutput(e.gflog)
		s.Close()
		return err
	}
	f := &fuseServer{s: s, m: m}
	f.pop = e.cl.push("unmount fusefs "+e.fuseMnt, func() error {
		err := m.Unmount()
		if cerr := s.Close(); err == nil {
			err = cerr
		}
		log.SetOutput(e.gflog)
		return err
	})
	e.fuse = f
	return nil
}

func (e *env) fuseDown() error {
	if e.fuse == nil {
		return nil
	}
	err := e.fuse.pop()
	e.fuse = nil
	return err
}

// bdiReadAhead is the read_ahead_kb file of the FUSE mount's backing device.
func bdiReadAhead(mnt string) string {
	var st unix.Stat_t
	if unix.Stat(mnt, &st) != nil {
		return ""
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// loop is an ext4 image attached read-only to a loop device and mounted.
type loop struct {
	dev string
	pop func() error
}

func (e *env) loopUp(backing string) error {
	if e.loop != nil {
		return errors.New("loop already mounted")
	}
	out, err := runCmd(e.ctx, "losetup", "--find", "--show", "--read-only", backing)
	if err != nil {
		return err
	}
	dev := strings.TrimSpace(out)
	detach := e.cl.push("detach "+dev, func() error { return detachLoop(dev) })
	if _, err := runCmd(e.ctx, "mount", "-t", "ext4", "-o", "ro", dev, e.loopMnt); err != nil {
		detach()
		return err
	}
	umnt := e.cl.push("unmount "+e.loopMnt, func() error { return unmount(e.loopMnt) })
	e.loop = &loop{dev: dev, pop: func() error {
		err := umnt()
		if derr := detach(); err == nil {
			err = derr
		}
		return err
	}}
	return nil
}

func (e *env) loopDown() error {
	if e.loop == nil {
		return nil
	}
	err := e.loop.pop()
	e.loop = nil
	return err
}

// detachLoop detaches dev and waits until it has let go of its file.
func detachLoop(dev string) error {
	if _, err := runCmd(context.Background(), "losetup", "-d", dev); err != nil {
		return err
	}
	bf := "/sys/block/" + filepath.Base(dev) + "/loop/backing_file"
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(bf); err != nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s still holds its backing file", dev)
}

// squash is a running squashfuse (in the foreground, our child).
type squash struct {
	cmd *exec.Cmd
	pop func() error
}

// squashUp starts bin ("squashfuse", the libfuse high-level server, or
// "squashfuse_ll", the low-level one) on the squashfs in the foreground.
func (e *env) squashUp(bin string) error {
	if e.sq != nil {
		return errors.New("squashfuse already mounted")
	}
	cmd := exec.Command(bin, "-f", e.c.sqfs, e.sqMnt)
	var errBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &errBuf, &errBuf
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		err := unmount(e.sqMnt)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
			if err == nil {
				err = errors.New("squashfuse did not exit after unmount; killed")
			}
		}
		return err
	}
	pop := e.cl.push("stop squashfuse on "+e.sqMnt, stop)
	deadline := time.Now().Add(15 * time.Second)
	for !isMounted(e.sqMnt) {
		select {
		case err := <-exited:
			exited <- err
			pop()
			return fmt.Errorf("%s exited: %v: %s", bin, err, strings.TrimSpace(errBuf.String()))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			pop()
			return fmt.Errorf("%s did not mount within 15s: %s", bin, strings.TrimSpace(errBuf.String()))
		}
	}
	e.sq = &squash{cmd: cmd, pop: pop}
	return nil
}

func (e *env) squashDown() error {
	if e.sq == nil {
		return nil
	}
	err := e.sq.pop()
	e.sq = nil
	return err
}

// ---- go-fuse's log ----

// goFuseLog receives go-fuse's log (log.Default()) while no debug pass
// runs: it counts the "trySplice" failures go-fuse logs once per READ
// reply that does not fit a pipe, and passes other lines on.
type goFuseLog struct {
	mu     sync.Mutex
	out    io.Writer
	splice int
	part   []byte
}

func (l *goFuseLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		line := l.part[:i+1]
		if bytes.Contains(line, []byte("trySplice:")) {
			l.splice++
		} else {
			l.out.Write(line)
		}
		l.part = l.part[i+1:]
	}
	return len(p), nil
}

func (l *goFuseLog) take() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.splice
	l.splice = 0
	return n
}

// ---- go-fuse debug log: READ request sizes ----

// readHist counts the READ requests in go-fuse's debug log.
type readHist struct {
	mu    sync.Mutex
	sizes map[int64]int
	n     int
	bytes int64
	other map[string]int // other opcodes
	part  []byte
}

var (
	readRe = regexp.MustCompile(`^rx \d+: READ n\d+ \{Fh \d+ \[\d+ \+(\d+)\)`)
	opRe   = regexp.MustCompile(`^rx \d+: ([A-Z_]+)`)
)

func newReadHist() *readHist { return &readHist{sizes: map[int64]int{}, other: map[string]int{}} }

func (h *readHist) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.part = append(h.part, p...)
	for {
		i := bytes.IndexByte(h.part, '\n')
		if i < 0 {
			break
		}
		line := string(h.part[:i])
		h.part = h.part[i+1:]
		// Strip the log package's date prefix, if any.
		if j := strings.Index(line, "rx "); j > 0 {
			line = line[j:]
		}
		if m := readRe.FindStringSubmatch(line); m != nil {
			sz, _ := strconv.ParseInt(m[1], 10, 64)
			h.sizes[sz]++
			h.n++
			h.bytes += sz
		} else if m := opRe.FindStringSubmatch(line); m != nil {
			h.other[m[1]]++
		}
	}
	return len(p), nil
}

func (h *readHist) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.sizes)
	clear(h.other)
	h.n, h.bytes = 0, 0
}

// summary renders the histogram: count, mean, and the commonest sizes.
func (h *readHist) summary() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == 0 {
		return "no READ requests"
	}
	type kv struct {
		size int64
		n    int
	}
	var all []kv
	var maxSz int64
	for s, n := range h.sizes {
		all = append(all, kv{s, n})
		maxSz = max(maxSz, s)
	}
	slices.SortFunc(all, func(a, b kv) int {
		if a.n != b.n {
			return b.n - a.n
		}
		return int(a.size - b.size)
	})
	var top []string
	for _, x := range all[:min(3, len(all))] {
		top = append(top, fmt.Sprintf("%s ×%d (%.0f%%)", kib(x.size), x.n, 100*float64(x.n)/float64(h.n)))
	}
	return fmt.Sprintf("%d READs, mean %s, max %s; commonest: %s", h.n, kib(h.bytes/int64(h.n)), kib(maxSz), strings.Join(top, ", "))
}

func kib(n int64) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%.1f KiB", float64(n)/1024)
}
