package pageserver

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/snapfaas/snapfaas/catalog"
	"github.com/snapfaas/snapfaas/pagestore"
	"github.com/snapfaas/snapfaas/uffd"
)

// Server serves guest memory from a store to any number of clients at
// once. Each client has its own goroutines, so one slow or broken VM never
// stalls another.
type Server struct {
	store *pagestore.Store
	log   *slog.Logger

	memMu sync.Mutex
	mems  map[string]*memEntry // resolved snapshots, shared by sessions

	mu       sync.Mutex
	sessions map[*session]struct{}
	finished []Metrics
	nextID   atomic.Uint64
	wg       sync.WaitGroup

	// OnEnd, if set, is called with a session's final metrics.
	OnEnd func(Metrics)
	// Control, if set, handles messages that carry no uffd (commands for
	// the store, say): it owns conn for as long as it runs.
	Control func(ctx context.Context, conn *net.UnixConn, body []byte)
}

// New returns a server for store. The store must be open for writing if
// clients record working sets.
func New(store *pagestore.Store, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{store: store, log: log, mems: map[string]*memEntry{}, sessions: map[*session]struct{}{}}
}

// Serve accepts clients on ln until ctx is done or ln fails. bound is the
// snapshot served to clients that send Firecracker's handoff (which names
// none); "" refuses them. Serve returns after every session it started has
// ended.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener, bound string) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer s.wg.Wait()
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, conn, bound)
		}()
	}
}

// Wait waits for every session to end.
func (s *Server) Wait() { s.wg.Wait() }

// Metrics returns the metrics of live sessions followed by ended ones.
func (s *Server) Metrics() []Metrics {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Metrics
	for ss := range s.sessions {
		out = append(out, ss.metrics())
	}
	return append(out, s.finished...)
}

type memEntry struct {
	once sync.Once
	m    *pagestore.Memory
	err  error
}

// memory returns snapshot name resolved, from the server's cache. Handoffs
// for other snapshots do not wait while one is being resolved.
func (s *Server) memory(name string) (*pagestore.Memory, error) {
	s.memMu.Lock()
	e := s.mems[name]
	if e == nil {
		e = &memEntry{}
		s.mems[name] = e
	}
	s.memMu.Unlock()
	e.once.Do(func() { e.m, e.err = s.store.OpenMemory(name) })
	if e.err != nil {
		s.forget(name)
	}
	return e.m, e.err
}

func (s *Server) forget(name string) {
	s.memMu.Lock()
	delete(s.mems, name)
	s.memMu.Unlock()
}

func writeReply(conn *net.UnixConn, r Reply) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Write(append(b, '\n'))
	return err
}

// handle runs one client session from handoff to end.
func (s *Server) handle(ctx context.Context, conn *net.UnixConn, bound string) {
	defer conn.Close()
	id := fmt.Sprintf("client-%d", s.nextID.Add(1))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	fd, body, err := uffd.ReceiveRaw(conn)
	if errors.Is(err, io.EOF) {
		return // a probe: connected and hung up without a word
	}
	if err != nil {
		s.log.Warn("handoff failed", "client", id, "err", err)
		_ = writeReply(conn, Reply{Error: err.Error()})
		return
	}
	conn.SetReadDeadline(time.Time{})
	if fd < 0 {
		if s.Control != nil {
			s.Control(ctx, conn, body)
			return
		}
		_ = writeReply(conn, Reply{Error: "the handoff message carried no file descriptor (send the uffd with SCM_RIGHTS)"})
		return
	}
	h, firecracker, err := parseHandoff(body, bound)
	fail := func(err error) {
		s.log.Warn("handoff refused", "client", id, "err", err)
		if !firecracker {
			_ = writeReply(conn, Reply{Error: err.Error()})
		}
	}
	if err != nil {
		closeFD(fd)
		fail(err)
		return
	}
	if h.Client != "" {
		id = h.Client
	}
	u, err := uffd.FromFD(fd)
	if err != nil {
		closeFD(fd)
		fail(err)
		return
	}
	defer u.Close()
	mem, err := s.memory(h.Snapshot)
	if err != nil {
		fail(err)
		return
	}
	ss, err := newSession(id, h, u, mem)
	if err != nil {
		fail(err)
		return
	}
	if h.Copy || h.CopyLayer {
		if err := ss.copyIn(!h.Copy); err != nil {
			fail(fmt.Errorf("copying the memory in: %w", err))
			return
		}
	}
	if err := u.WatchPeer(conn); err != nil {
		s.log.Debug("cannot watch peer; relying on the socket", "client", id, "err", err)
	}
	s.mu.Lock()
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	// Lease the snapshot so that it cannot be removed (and its chunks
	// collected) while this VM may still fault on it. Off the critical
	// path: the lease's commit fsyncs.
	leased := make(chan string, 1)
	go func() {
		lid, err := s.store.Lease("vm "+id, 0, []catalog.ObjectRef{catalog.SnapshotRef(h.Snapshot)}, nil)
		if err != nil && !errors.Is(err, pagestore.ErrReadOnly) {
			s.log.Warn("cannot lease the snapshot; it could be removed under the VM", "client", id, "err", err)
		}
		leased <- lid
	}()
	defer func() {
		if lid := <-leased; lid != "" {
			if err := s.store.ReleaseLease(lid); err != nil {
				s.log.Warn("releasing lease failed", "lease", lid, "err", err)
			}
		}
	}()

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopPrefetch := make(chan struct{})
	var bg sync.WaitGroup
	if h.Prefetch && len(mem.WorkingSet) > 0 {
		bg.Add(1)
		go func() {
			defer bg.Done()
			if err := ss.prefetch(stopPrefetch); err != nil {
				s.log.Warn("prefetch failed", "client", id, "err", err)
			}
		}()
	}
	if !firecracker {
		if err := writeReply(conn, Reply{OK: true, Pages: mem.Pages(), WorkingSet: ss.metrics().WorkingSet}); err != nil {
			cancel()
		}
	}
	// The control loop ends the session when the client says bye or the
	// connection closes.
	bye := make(chan bool, 1)
	bg.Add(1)
	go func() {
		defer bg.Done()
		bye <- s.control(sctx, conn, ss, firecracker)
		cancel()
	}()
	s.log.Info("client connected", "client", id, "snapshot", h.Snapshot, "pages", mem.Pages(), "prefetch", h.Prefetch, "record", h.Record, "fault_around", h.FaultAround, "firecracker", firecracker)

	err = u.Serve(sctx, ss.handle)
	close(stopPrefetch)
	conn.CloseRead() // unblock the control loop
	bg.Wait()
	<-bye
	switch {
	case err == nil, errors.Is(err, context.Canceled), errors.Is(err, uffd.ErrTargetGone), errors.Is(err, uffd.ErrClosed):
	default:
		s.log.Error("serving faults failed", "client", id, "err", err)
		if !firecracker {
			_ = writeReply(conn, Reply{Fatal: fmt.Sprintf("serving faults: %v", err)})
		}
	}
	m := ss.metrics()
	s.mu.Lock()
	delete(s.sessions, ss)
	s.finished = append(s.finished, m)
	if len(s.finished) > 1000 {
		s.finished = s.finished[len(s.finished)-1000:]
	}
	s.mu.Unlock()
	s.log.Info("client disconnected", "metrics", m.String())
	if s.OnEnd != nil {
		s.OnEnd(m)
	}
}

// control answers a client's requests until bye (returns true) or the
// connection ends (false).
func (s *Server) control(ctx context.Context, conn *net.UnixConn, ss *session, firecracker bool) bool {
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil || ctx.Err() != nil {
			return false
		}
		if firecracker {
			continue // Firecracker sends nothing more; ignore noise
		}
		var req Request
		if err := json.Unmarshal(line, &req); err != nil {
			_ = writeReply(conn, Reply{Error: fmt.Sprintf("request: %v", err)})
			return false
		}
		switch req.Op {
		case "metrics":
			m := ss.metrics()
			_ = writeReply(conn, Reply{OK: true, Metrics: &m})
		case "save_working_set":
			if !ss.opts.Record {
				_ = writeReply(conn, Reply{Error: "the session is not recording (handoff without record)"})
				continue
			}
			ss.stopRecording() // a working set is what one request touched
			n, err := s.saveWorkingSet(ss)
			if err != nil {
				_ = writeReply(conn, Reply{Error: err.Error()})
				continue
			}
			_ = writeReply(conn, Reply{OK: true, Pages: int64(n)})
		case "bye":
			reply := Reply{OK: true}
			if ss.opts.Record {
				n, err := s.saveWorkingSet(ss)
				if err != nil {
					reply = Reply{Error: err.Error()}
				}
				reply.Pages = int64(n)
			}
			m := ss.metrics()
			reply.Metrics = &m
			_ = writeReply(conn, reply)
			return true
		default:
			_ = writeReply(conn, Reply{Error: fmt.Sprintf("unknown op %q", req.Op)})
		}
	}
}

func (s *Server) saveWorkingSet(ss *session) (int, error) {
	ws := ss.workingSet()
	if err := s.store.SetWorkingSet(ss.snapshot, ws); err != nil {
		s.log.Error("saving working set failed", "client", ss.id, "err", err)
		return 0, err
	}
	s.forget(ss.snapshot) // reload with the new working set
	s.log.Info("working set saved", "client", ss.id, "snapshot", ss.snapshot, "pages", len(ws))
	return len(ws), nil
}

// ErrNotFound is the store's: the handoff named an unknown snapshot.
var ErrNotFound = catalog.ErrNotFound
