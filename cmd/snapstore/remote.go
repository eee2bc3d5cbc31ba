package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/pagestore"
)

// While `snapstore serve` runs it owns the store, and every other command
// runs inside it: the command line is sent over the sidecar's socket (a
// message without a descriptor), run there against the sidecar's open
// store, and its output streamed back in frames:
//
//	type u8 (1 stdout, 2 stderr, 3 exit) | length u32 BE | payload
//
// The exit frame's payload is JSON {"code": N, "error": "..."}. Paths are
// resolved against the caller's working directory, which travels with the
// request. The sidecar writes its socket's path to STORE/SIDECAR so that
// commands can find it.

type remoteRequest struct {
	Argv []string `json:"argv"`
	Cwd  string   `json:"cwd"`
}

type remoteExit struct {
	Code  int    `json:"code"`
	Error string `json:"error,omitempty"`
}

const (
	frameStdout = 1
	frameStderr = 2
	frameExit   = 3
)

type ctxKey int

const (
	keyStore ctxKey = iota
	keyCwd
)

// forwardError asks main to run the command in the sidecar at sock.
type forwardError struct{ sock string }

func (e forwardError) Error() string { return "the store is owned by the sidecar at " + e.sock }

// inSidecar returns the sidecar's store when the command runs inside it.
func inSidecar(c *cli.Context) *pagestore.Store {
	s, _ := c.Context.Value(keyStore).(*pagestore.Store)
	return s
}

// resolvePath makes a relative path relative to the caller's directory.
func resolvePath(c *cli.Context, p string) string {
	cwd, _ := c.Context.Value(keyCwd).(string)
	if cwd == "" || p == "-" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(cwd, p)
}

// forward runs argv in the sidecar at sock, copying its output here, and
// returns the exit code. Interrupting this process cancels the command.
func forward(ctx context.Context, sock string, argv []string) int {
	cwd, _ := os.Getwd()
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "snapstore: sidecar %s: %v\n", sock, err)
		return 1
	}
	defer conn.Close()
	req, _ := json.Marshal(remoteRequest{Argv: argv, Cwd: cwd})
	if _, err := conn.Write(req); err != nil {
		fmt.Fprintf(os.Stderr, "snapstore: sidecar %s: %v\n", sock, err)
		return 1
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r := bufio.NewReader(conn)
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if ctx.Err() != nil {
				fmt.Fprintln(os.Stderr, "snapstore: interrupted")
				return 130
			}
			fmt.Fprintf(os.Stderr, "snapstore: the sidecar closed the connection before the command finished (%v)\n", err)
			return 1
		}
		payload := make([]byte, binary.BigEndian.Uint32(hdr[1:]))
		if _, err := io.ReadFull(r, payload); err != nil {
			fmt.Fprintf(os.Stderr, "snapstore: sidecar: %v\n", err)
			return 1
		}
		switch hdr[0] {
		case frameStdout:
			os.Stdout.Write(payload)
		case frameStderr:
			os.Stderr.Write(payload)
		case frameExit:
			var ex remoteExit
			if err := json.Unmarshal(payload, &ex); err != nil {
				fmt.Fprintf(os.Stderr, "snapstore: sidecar: bad exit frame: %v\n", err)
				return 1
			}
			if ex.Error != "" {
				fmt.Fprintf(os.Stderr, "snapstore: %s\n", ex.Error)
			}
			return ex.Code
		}
	}
}

// frameWriter writes one stream of a remote command as frames.
type frameWriter struct {
	mu   *sync.Mutex
	conn net.Conn
	typ  byte
}

func (w frameWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	hdr := [5]byte{w.typ}
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(p)))
	if _, err := w.conn.Write(append(hdr[:], p...)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// runRemote runs a forwarded command inside the sidecar against s.
func runRemote(ctx context.Context, s *pagestore.Store, conn *net.UnixConn, body []byte) {
	var mu sync.Mutex
	out := frameWriter{&mu, conn, frameStdout}
	exit := func(code int, msg string) {
		b, _ := json.Marshal(remoteExit{Code: code, Error: msg})
		_, _ = frameWriter{&mu, conn, frameExit}.Write(b)
	}
	var req remoteRequest
	if err := json.Unmarshal(body, &req); err != nil || len(req.Argv) == 0 {
		exit(2, "sidecar: malformed command request")
		return
	}
	// The client hanging up cancels the command.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, conn)
		cancel()
	}()
	ctx = context.WithValue(ctx, keyStore, s)
	ctx = context.WithValue(ctx, keyCwd, req.Cwd)
	app := newApp()
	app.Writer, app.ErrWriter = out, frameWriter{&mu, conn, frameStderr}
	err := app.RunContext(ctx, append([]string{"snapstore"}, req.Argv...))
	switch {
	case err == nil:
		exit(0, "")
	default:
		exit(exitCode(err), message(err))
	}
}

var errNotInSidecar = errors.New("not available while the sidecar runs")
