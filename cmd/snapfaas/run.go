package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/pagestore"
	"github.com/snapfaas/snapfaas/vmm"
)

// snapfaas run is SnapFaaS's singlevm: one VM, booted from a kernel (and
// optionally snapshotted at the guest's snapshot point) or restored from a
// snapshot in the store, serving JSON requests read one per line from
// stdin over vsock (4-byte big-endian length + JSON, both ways), one
// response per line on stdout, timings on stderr.
//
// The store is reached through the snapstore command (which talks to the
// sidecar when one runs), and restored memory is served lazily by the
// sidecar, which run starts itself if none answers.
func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "run one function VM: requests on stdin, responses on stdout (SnapFaaS singlevm)",
		Description: `Boots a kernel (--kernel) or restores a snapshot from the store
(--load_dir), then sends each stdin line to the guest over vsock (it
connects to the host on --guest_port; frames are a 4-byte big-endian
length and the JSON) and prints each answer on stdout; "VM ready in" and
per-request times go to stderr. When stdin ends the VM is stopped.

Snapshots: booting with --dump_dir NAME stores a base snapshot when the
guest writes 124 to port 0x3f0 (its snapshot point). Restoring with
--dump_dir NAME stores the VM after the last answer: a full-app snapshot,
or with --diff only the pages dirtied since the restore, on top of the
loaded snapshot. Memory of a restored VM is served by the store's sidecar
(snapstore serve, started if none runs): on fault (default), with the
recorded working set prefetched (--load_ws), all copied in first
(--copy_base) or the snapshot's own layer copied in first (--copy_diff).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kernel", Usage: "kernel `FILE` to boot (not needed with --load_dir)"},
			&cli.StringFlag{Name: "rootfs", Usage: "root file system image `FILE`"},
			&cli.StringFlag{Name: "appfs", Usage: "application image `FILE`"},
			&cli.StringFlag{Name: "initrd", Usage: "initial ramdisk `FILE` loaded into guest memory (boot only)"},
			&cli.IntFlag{Name: "mem_size", Value: 128, Usage: "guest memory in `MiB` (boot only)"},
			&cli.IntFlag{Name: "vcpu_count", Value: 1, Usage: "vCPUs (boot only)"},
			&cli.StringFlag{Name: "cmdline", Usage: "kernel command line (boot only)"},
			&cli.StringFlag{Name: "dump_dir", Usage: "store a snapshot `NAME`: when booting, at the guest's snapshot point (and go on); when restoring, after the last request (a full-app snapshot, or with --diff only the pages that changed)"},
			&cli.BoolFlag{Name: "diff", Usage: "with --load_dir and --dump_dir: store a diff snapshot on top of the loaded one (dirty pages only)"},
			&cli.StringFlag{Name: "load_dir", Usage: "restore snapshot `NAME` instead of booting"},
			&cli.BoolFlag{Name: "dump_ws", Usage: "record the pages the restore and the first request touch as the snapshot's working set"},
			&cli.BoolFlag{Name: "load_ws", Usage: "prefetch the snapshot's working set on restore"},
			&cli.BoolFlag{Name: "copy_base", Usage: "copy all memory in before running (eager restore) instead of serving it on fault"},
			&cli.BoolFlag{Name: "copy_diff", Usage: "copy the snapshot's own layer (a diff snapshot's diff) in before running; the parents' pages are served on fault"},
			&cli.BoolFlag{Name: "force_exit", Usage: "accepted for SnapFaaS compatibility: run always stops the VM once stdin ends and the last answer is in"},
			&cli.IntFlag{Name: "guest_port", Value: 1234, Usage: "vsock port the guest connects to"},
			&cli.StringFlag{Name: "store", EnvVars: []string{"SNAPSTORE_DIR"}, Value: pagestore.DefaultDir(), Usage: "store `DIR`"},
			&cli.StringFlag{Name: "snapstore", Usage: "the snapstore `BINARY` (default: next to snapfaas, then PATH)"},
			&cli.StringFlag{Name: "stats", Usage: "write timings, page-server metrics and memory use as JSON to `FILE` at the end"},
		},
		Action: runAction,
	}
}

func snapstoreBinary(c *cli.Context) (string, error) {
	if p := c.String("snapstore"); p != "" {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), "snapstore"); fileExists(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath("snapstore")
	if err != nil {
		return "", fmt.Errorf("snapstore not found next to snapfaas or on PATH (use --snapstore)")
	}
	return p, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// snapstore runs a snapstore command against the store and returns its
// standard output (see snapstoreRun).
func snapstore(c *cli.Context, args ...string) ([]byte, error) {
	return snapstoreCtx(c.Context, c, args...)
}

func snapstoreCtx(ctx context.Context, c *cli.Context, args ...string) ([]byte, error) {
	bin, err := snapstoreBinary(c)
	if err != nil {
		return nil, err
	}
	return snapstoreRun(ctx, bin, c.String("store"), args...)
}

// snapstoreRun runs snapstore binary bin on store and returns its standard
// output. It stops the command (with SIGINT, as Ctrl-C would) when ctx
// ends. On failure the error is snapstore's own one-line message.
func snapstoreRun(ctx context.Context, bin, store string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, bin, append([]string{"--store", store, "-q"}, args...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		msg = strings.TrimPrefix(msg, "snapstore: ")
		if msg == "" {
			msg = err.Error()
		}
		if ctx.Err() != nil && !strings.HasPrefix(msg, "interrupted") {
			msg = "interrupted"
		}
		return nil, fmt.Errorf("snapstore: %s", msg)
	}
	return stdout.Bytes(), nil
}

// ensureSidecar returns the sidecar's socket, starting `snapstore serve`
// (logging to STORE/sidecar.log, left running as a daemon) if none
// answers.
func ensureSidecar(c *cli.Context) (string, error) {
	store := c.String("store")
	if sock := pageserver.FindSidecar(store); sock != "" {
		return sock, nil
	}
	bin, err := snapstoreBinary(c)
	if err != nil {
		return "", err
	}
	sock, pid, err := startSidecar(bin, store, pageserver.DefaultSocket(store), filepath.Join(store, "sidecar.log"))
	if err != nil {
		return "", err
	}
	if pid != 0 {
		fmt.Fprintf(os.Stderr, "started the sidecar (pid %d, log %s)\n", pid, filepath.Join(store, "sidecar.log"))
	}
	return sock, nil
}

// startSidecar starts `bin serve` on store listening at sock, output to
// logPath, and returns the socket and pid once it answers. If another
// process's sidecar won the race for the store (two runs starting at
// once), it returns that one's socket and pid 0.
func startSidecar(bin, store, sock, logPath string) (string, int, error) {
	if err := os.MkdirAll(store, 0o755); err != nil {
		return "", 0, err
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return "", 0, fmt.Errorf("sidecar log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--store", store, "serve", "--socket", sock)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return "", 0, fmt.Errorf("start the sidecar: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	for i := 0; i < 400; i++ {
		if found := pageserver.FindSidecar(store); found != "" {
			select {
			case <-exited:
				return found, 0, nil // another sidecar serves the store
			default:
			}
			if found == sock {
				return sock, cmd.Process.Pid, nil
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	select {
	case <-exited:
		return "", 0, fmt.Errorf("the sidecar exited; see %s", logPath)
	default:
		return "", 0, fmt.Errorf("the sidecar did not come up in 10s; see %s", logPath)
	}
}

func runAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError{"run takes no arguments, only flags (see --help)"}
	}
	load, dump := c.String("load_dir"), c.String("dump_dir")
	if load == "" && c.String("kernel") == "" {
		return usageError{"run needs --kernel to boot or --load_dir to restore"}
	}
	if (c.Bool("dump_ws") || c.Bool("load_ws")) && load == "" {
		return usageError{"--dump_ws and --load_ws work on a restored snapshot (--load_dir)"}
	}
	if c.Bool("diff") && (load == "" || dump == "") {
		return usageError{"--diff needs --load_dir (the parent) and --dump_dir (the new snapshot)"}
	}
	work, err := os.MkdirTemp("", "snapfaas-run-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	vsockPath := filepath.Join(work, "vsock")
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", vsockPath, c.Int("guest_port")))
	if err != nil {
		return err
	}
	defer ln.Close()

	var disks []vmm.Disk
	for _, d := range []struct{ flag, id string }{{"rootfs", "rootfs"}, {"appfs", "appfs"}} {
		if p := c.String(d.flag); p != "" {
			disks = append(disks, vmm.Disk{Path: p, ReadOnly: true, ID: d.id})
		}
	}
	cfg := vmm.Config{Kernel: c.String("kernel"), Initrd: c.String("initrd"), Cmdline: c.String("cmdline"), MemMiB: c.Int("mem_size"), VCPUs: c.Int("vcpu_count"),
		Console: os.Stderr, HideEmulatorUnsafe: true, Disks: disks, Vsock: &vmm.Vsock{CID: 3, Path: vsockPath},
		TrackDirty: c.Bool("diff")}
	start := time.Now()
	stats := runStats{Mode: "boot"}
	var vm *vmm.VM
	var client *pageserver.Client
	if load != "" {
		stats.Mode = "lazy"
		if c.Bool("copy_base") {
			stats.Mode = "eager"
		} else if c.Bool("copy_diff") {
			stats.Mode = "copy_diff"
		} else if c.Bool("load_ws") {
			stats.Mode = "lazy+ws"
		}
		statePath := filepath.Join(work, "vmstate")
		if _, err := snapstore(c, "memory", "vmstate", load, statePath); err != nil {
			return fmt.Errorf("restore %q: %w", load, err)
		}
		blob, err := os.ReadFile(statePath)
		if err != nil {
			return err
		}
		st, err := vmm.UnmarshalState(blob)
		if err != nil {
			return fmt.Errorf("snapshot %q: %w", load, err)
		}
		// Guest memory comes from the sidecar: all of it copied in
		// before the VM runs (eager), the snapshot's own layer copied in
		// (copy_diff), or served on fault, the working set prefetched.
		// It is handed over before any state is restored (see
		// vmm.Memory).
		sock, err := ensureSidecar(c)
		if err != nil {
			return err
		}
		if vm, err = vmm.Restore(cfg, st, func(vm *vmm.VM) error {
			client, _, err = vm.LazyMemory(sock, load, pageserver.Handoff{Client: "snapfaas-run", Copy: c.Bool("copy_base"), CopyLayer: c.Bool("copy_diff"),
				Prefetch: c.Bool("load_ws"), Record: c.Bool("dump_ws")})
			return err
		}); err != nil {
			return err
		}
		defer vm.Close()
		go func() {
			// The VM stops itself when the sidecar goes; a thread stuck in
			// a fault that will never be served must not keep this process
			// alive.
			<-client.Lost()
			time.Sleep(2 * time.Second)
			fmt.Fprintf(os.Stderr, "snapfaas: guest memory of snapshot %q can no longer be served: %v\n", load, client.Err())
			os.RemoveAll(work) // os.Exit runs no deferred calls
			os.Exit(1)
		}()
	} else {
		if dump != "" {
			cfg.PauseAt = 124
		}
		if vm, err = vmm.New(cfg); err != nil {
			return err
		}
		defer vm.Close()
	}

	stats.Restore = time.Since(start)
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- vm.Run(ctx) }()
	if dump != "" && load == "" {
		select {
		case <-vm.Paused():
		case err := <-done:
			return fmt.Errorf("the VM ended before its snapshot point: %w", err)
		}
		if err := dumpSnapshot(c, vm, work, dump, "", false); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "snapshot %q stored in %s\n", dump, time.Since(start).Round(time.Millisecond))
		vm.Resume()
	}

	conns := guestConns(ln)
	conn, err := nextConn(conns, done)
	if err != nil {
		return err
	}
	stats.Ready = time.Since(start)
	fmt.Fprintf(os.Stderr, "VM ready in %s\n", stats.Ready.Round(time.Microsecond))
	defer func() { conn.Close() }()
	err = serveStdin(&conn, conns, done, func(d time.Duration) {
		if stats.Requests == nil {
			stats.FirstResponse = time.Since(start)
			if client != nil && c.Bool("dump_ws") {
				// The working set is what restoring and serving the
				// first request touched.
				if n, err := client.SaveWorkingSet(); err != nil {
					fmt.Fprintf(os.Stderr, "snapfaas: saving the working set: %v\n", err)
				} else {
					fmt.Fprintf(os.Stderr, "working set: %d pages (restore and first request)\n", n)
				}
			}
		}
		stats.Requests = append(stats.Requests, d)
	})
	if err != nil {
		return err
	}
	stats.RSS, stats.AnonRSS, stats.GuestRSS = memoryUse(vm.Memory())
	if dump != "" && load != "" {
		t0 := time.Now()
		if err := vm.Pause(); err != nil {
			return fmt.Errorf("pause for the snapshot: %w", err)
		}
		if err := dumpSnapshot(c, vm, work, dump, load, c.Bool("diff")); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "snapshot %q stored in %s\n", dump, time.Since(t0).Round(time.Millisecond))
	}
	conn.Close()
	// Stop the VM before ending the page-server session: once the session
	// ends nobody serves its faults, and a fault then (in device code
	// running Go, not in KVM_RUN) would never return.
	cancel()
	runErr := <-done
	if client != nil {
		m, err := client.Close()
		if err != nil {
			return fmt.Errorf("page server: %w", err)
		}
		fmt.Fprintf(os.Stderr, "memory: %d faults, %d prefetched, %d copied in, %d working-set pages recorded\n", m.Faults, m.Prefetched, m.Copied, m.Recorded)
		stats.PageServer = &m
	}
	if p := c.String("stats"); p != "" {
		b, _ := json.MarshalIndent(stats, "", "  ")
		if err := os.WriteFile(p, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("--stats: %w", err)
		}
	}
	if runErr != nil && !errors.Is(runErr, context.Canceled) {
		return runErr
	}
	return nil
}

// dumpSnapshot stores the paused VM as snapshot name: a base snapshot
// (parent ""), a full-app snapshot naming parent, or with diff a diff
// snapshot on top of parent holding the pages dirtied since the restore
// (written to a sparse file whose holes are the parent's pages).
func dumpSnapshot(c *cli.Context, vm *vmm.VM, work, name, parent string, diff bool) error {
	st, err := vm.SaveState()
	if err != nil {
		return err
	}
	blob, err := st.Marshal()
	if err != nil {
		return err
	}
	memPath, statePath := filepath.Join(work, "memory"), filepath.Join(work, "vmstate")
	if err := os.WriteFile(statePath, blob, 0o644); err != nil {
		return err
	}
	defer os.Remove(memPath)
	args := []string{"memory", "import", "--vmstate", statePath}
	mem := vm.Memory()
	switch {
	case diff:
		pages, err := vm.DirtyPages()
		if err != nil {
			return err
		}
		if err := writeSparse(memPath, mem, pages); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "diff snapshot: %d dirty pages of %d\n", len(pages), len(mem)/4096)
		args = append(args, "--parent", parent, "--changed-only")
	case parent != "":
		if err := os.WriteFile(memPath, mem, 0o644); err != nil {
			return err
		}
		args = append(args, "--parent", parent, "--full")
	default:
		if err := os.WriteFile(memPath, mem, 0o644); err != nil {
			return err
		}
	}
	_, err = snapstore(c, append(args, name, memPath)...)
	return err
}

// writeSparse writes a file of len(mem) bytes holding only the given pages
// of mem (ascending page indices), runs of them in one write each.
func writeSparse(path string, mem []byte, pages []uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(int64(len(mem))); err != nil {
		return err
	}
	for i := 0; i < len(pages); {
		j := i + 1
		for j < len(pages) && pages[j] == pages[j-1]+1 {
			j++
		}
		off := int64(pages[i]) * 4096
		if _, err := f.WriteAt(mem[off:int64(pages[j-1]+1)*4096], off); err != nil {
			return err
		}
		i = j
	}
	return f.Close()
}

// guestConns accepts the guest's vsock connections (a restored guest
// reconnects once it sees the transport reset).
func guestConns(ln net.Listener) <-chan net.Conn {
	got := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			got <- c
		}
	}()
	return got
}

func nextConn(conns <-chan net.Conn, done <-chan error) (net.Conn, error) {
	select {
	case c := <-conns:
		return c, nil
	case err := <-done:
		return nil, fmt.Errorf("the VM ended before the guest connected: %v", err)
	case <-time.After(5 * time.Minute):
		return nil, errors.New("the guest did not connect over vsock within 5 minutes")
	}
}

// serveStdin sends each stdin line as a request and prints each response.
// Until the first answer, a new guest connection replaces the current one
// (a restored guest reconnects when it sees the transport reset, without
// closing its old connection) and the request is sent again.
//
// The guest's current connection stays open, left in *connp for the
// caller to close: a snapshot taken after the last request must find the
// guest idle and connected, not busy reconnecting.
func serveStdin(connp *net.Conn, conns <-chan net.Conn, done <-chan error, onAnswer func(time.Duration)) error {
	conn := *connp
	defer func() { *connp = conn }()
	took := func(d time.Duration) {
		fmt.Fprintf(os.Stderr, "request took %s\n", d.Round(time.Microsecond))
		onAnswer(d)
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	answered := false
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		t0 := time.Now()
		for {
			type result struct {
				resp []byte
				err  error
			}
			res := make(chan result, 1)
			go func(c net.Conn) {
				r, err := call(c, line)
				res <- result{r, err}
			}(conn)
			var switchTo net.Conn
			select {
			case r := <-res:
				if r.err != nil {
					if answered {
						return r.err
					}
					// Broken before any answer: wait for the reconnect.
					c, err := nextConn(conns, done)
					if err != nil {
						return fmt.Errorf("%v (after %v)", err, r.err)
					}
					switchTo = c
					break
				}
				answered = true
				fmt.Println(string(r.resp))
				took(time.Since(t0))
			case c := <-conns:
				if answered {
					c.Close() // a guest that is up does not reconnect
					r := <-res
					if r.err != nil {
						return r.err
					}
					fmt.Println(string(r.resp))
					took(time.Since(t0))
					break
				}
				switchTo = c
			case err := <-done:
				return fmt.Errorf("the VM ended while serving a request: %v", err)
			}
			if switchTo == nil {
				break
			}
			conn.Close()
			conn = switchTo
		}
	}
	return in.Err()
}

// call sends one framed request and reads one framed response.
func call(conn net.Conn, req string) ([]byte, error) {
	conn.SetDeadline(time.Now().Add(5 * time.Minute))
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(req)))
	if _, err := conn.Write(append(frame, req...)); err != nil {
		return nil, fmt.Errorf("send request: %w", err)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	resp := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(conn, resp); err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	return resp, nil
}

// runStats is what --stats writes: durations from the start of run
// (restore: the VM built and its memory copied or handed to the sidecar;
// ready: the guest connected; first response), each request's latency,
// the page server's metrics (lazy restores), and the process's resident
// memory with the part that is guest memory.
type runStats struct {
	Mode          string              `json:"mode"`
	Restore       time.Duration       `json:"restore_ns"`
	Ready         time.Duration       `json:"ready_ns"`
	FirstResponse time.Duration       `json:"first_response_ns"`
	Requests      []time.Duration     `json:"requests_ns"`
	RSS           int64               `json:"rss_bytes"`
	AnonRSS       int64               `json:"anon_rss_bytes"`
	GuestRSS      int64               `json:"guest_rss_bytes"`
	PageServer    *pageserver.Metrics `json:"page_server,omitempty"`
}

// memoryUse returns this process's resident memory, the anonymous
// (private, not file-backed) part of it, and the part in the guest memory
// mapping mem, from /proc/self/smaps (zeros if unreadable). RSS minus
// guest is the VMM's overhead; of it, anon minus guest is what each VMM
// adds, the rest being the binary's pages, shared by every VMM.
func memoryUse(mem []byte) (rss, anon, guest int64) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0, 0, 0
	}
	defer f.Close()
	base := fmt.Sprintf("%x-", uintptr(unsafe.Pointer(&mem[0])))
	in := bufio.NewScanner(f)
	inGuest := false
	for in.Scan() {
		line := in.Text()
		if fields := strings.Fields(line); len(fields) > 0 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			inGuest = strings.HasPrefix(line, base)
			continue
		}
		var kb int64
		if _, err := fmt.Sscanf(line, "Rss: %d kB", &kb); err == nil {
			rss += kb << 10
			if inGuest {
				guest += kb << 10
			}
		} else if _, err := fmt.Sscanf(line, "Anonymous: %d kB", &kb); err == nil {
			anon += kb << 10
		}
	}
	return rss, anon, guest
}
