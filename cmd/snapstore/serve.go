package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/fusefs"
	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/pagestore"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the sidecar: serve guest memory to VMs through userfaultfd",
		Description: `Owns the store and serves restored VMs' memory from it. A VMM connects to
--socket and sends its uffd with a handoff message naming a snapshot; the
sidecar serves page faults, prefetches the snapshot's working set and
records new ones. --firecracker binds a socket to one snapshot for clients
that send Firecracker's handoff message (which names none), so a stock
Firecracker can use the sidecar as its UFFD handler.

Per-client metrics are printed when a client disconnects. While serve runs,
other snapstore commands find the store locked.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Usage: "listen on Unix socket `PATH` (default: STORE/snapstore.sock)"},
			&cli.StringSliceFlag{Name: "firecracker", Usage: "serve snapshot NAME to Firecracker clients on socket PATH (`PATH=NAME`, repeatable)"},
			&cli.StringFlag{Name: "cache-size", Value: "512M", Usage: "decompressed chunk cache `SIZE`"},
			&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json"},
			&cli.StringFlag{Name: "mount", Usage: "also mount the store's read-only view on `DIR` (see snapstore mount)"},
		},
		Action: func(c *cli.Context) error {
			if _, err := args(c); err != nil {
				return err
			}
			if inSidecar(c) != nil {
				return fmt.Errorf("serve: a sidecar already owns this store")
			}
			cache, err := parseSize(c.String("cache-size"))
			if err != nil {
				return usagef("--cache-size: %v", err)
			}
			var handler slog.Handler
			switch c.String("log-format") {
			case "text":
				handler = slog.NewTextHandler(os.Stderr, nil)
			case "json":
				handler = slog.NewJSONHandler(os.Stderr, nil)
			default:
				return usagef("--log-format: want text or json")
			}
			log := slog.New(handler)

			type binding struct{ path, snapshot string }
			sock := c.String("socket")
			if sock == "" {
				sock = pageserver.DefaultSocket(c.String("store"))
			}
			binds := []binding{{path: sock}}
			for _, fc := range c.StringSlice("firecracker") {
				path, name, ok := strings.Cut(fc, "=")
				if !ok || path == "" || name == "" {
					return usagef("--firecracker %q: want PATH=SNAPSHOT", fc)
				}
				binds = append(binds, binding{path, name})
			}

			s, err := pagestore.Open(c.String("store"), pagestore.Create(), pagestore.CacheSize(cache))
			if err != nil {
				return err
			}
			defer s.Close()
			for _, b := range binds[1:] {
				if _, err := s.OpenMemory(b.snapshot); err != nil {
					return fmt.Errorf("--firecracker %s: %w", b.path, err)
				}
			}
			var lns []*net.UnixListener
			defer func() {
				for _, ln := range lns {
					ln.Close()
				}
			}()
			for _, b := range binds {
				ln, err := listen(b.path)
				if err != nil {
					return err
				}
				lns = append(lns, ln)
			}

			if dir := c.String("mount"); dir != "" {
				m, err := fusefs.New(dir, s, fusefs.Options{Log: log})
				if err != nil {
					return err
				}
				log.Info("mounted", "dir", m.Dir)
				defer func() {
					if err := m.Unmount(); err != nil {
						log.Error("unmount failed", "err", err)
					}
				}()
			}
			srv := pageserver.New(s, log)
			srv.Control = func(ctx context.Context, conn *net.UnixConn, body []byte) {
				runRemote(ctx, s, conn, body)
			}
			// Tell other commands where to find us.
			abs, _ := filepath.Abs(sock)
			marker := filepath.Join(c.String("store"), pageserver.SidecarFile)
			if err := os.WriteFile(marker, []byte(abs+"\n"), 0o644); err != nil {
				return err
			}
			defer os.Remove(marker)
			var wg sync.WaitGroup
			errs := make(chan error, len(binds))
			for i, b := range binds {
				wg.Add(1)
				go func(ln *net.UnixListener, b binding) {
					defer wg.Done()
					if err := srv.Serve(c.Context, ln, b.snapshot); err != nil {
						errs <- fmt.Errorf("%s: %w", b.path, err)
					}
				}(lns[i], b)
				if b.snapshot != "" {
					log.Info("serving Firecracker clients", "socket", b.path, "snapshot", b.snapshot)
				}
			}
			log.Info("snapstore serving", "store", c.String("store"), "socket", sock, "pid", os.Getpid())
			wg.Wait()
			close(errs)
			for _, b := range binds {
				os.Remove(b.path)
			}
			if err := <-errs; err != nil {
				return err
			}
			log.Info("snapstore stopped")
			return nil
		},
	}
}

// listen listens on a Unix socket at path, replacing a stale socket file
// left by a sidecar that died, but never one that is live.
func listen(path string) (*net.UnixListener, error) {
	if len(path) >= 108 {
		return nil, fmt.Errorf("socket path %s is %d bytes; Unix sockets allow 107 (use --socket)", path, len(path))
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if conn, err := net.Dial("unix", path); err == nil {
			conn.Close()
			return nil, fmt.Errorf("%s: another sidecar is listening there", path)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		os.Remove(path)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	return ln, nil
}
