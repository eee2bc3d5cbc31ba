// Command snapstore manages a snapfaas snapshot store: disk images and
// guest-memory snapshots kept as compressed, deduplicated chunks with a
// bbolt catalog (package pagestore).
package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/catalog"
	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/pagestore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp()
	err := app.RunContext(ctx, os.Args)
	var fwd forwardError
	if errors.As(err, &fwd) {
		os.Exit(forward(ctx, fwd.sock, os.Args[1:]))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "snapstore: %s\n", message(err))
		os.Exit(exitCode(err))
	}
}

// usageError is a mistake in how the command was called.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// message turns an error into one line a user can act on.
func message(err error) string {
	msg := err.Error()
	switch {
	case errors.Is(err, context.Canceled):
		return "interrupted; nothing was committed (run `snapstore gc` to reclaim partial data)"
	case errors.Is(err, pagestore.ErrNoStore):
		return msg
	case errors.Is(err, catalog.ErrNotFound):
		return strings.TrimSuffix(msg, ": not found") + ": no such image or snapshot (see `snapstore ls`)"
	case errors.Is(err, catalog.ErrExists):
		return strings.TrimSuffix(msg, ": already exists") + " already exists; choose another name or `snapstore rm` it first"
	}
	return msg
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "snapstore",
		Usage: "manage the snapfaas snapshot store (images, memory snapshots)",
		Description: `The store keeps disk images and guest-memory snapshots as zstd-compressed,
content-addressed chunks: identical data is stored once, zero pages are
never stored, and every read is checked. One process writes at a time;
readers share the store.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "store", Aliases: []string{"s"}, EnvVars: []string{"SNAPSTORE_DIR"}, Value: pagestore.DefaultDir(), Usage: "store `DIR`"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress output"},
		},
		Commands: []*cli.Command{
			imageCommand(),
			memoryCommand(),
			lsCommand(),
			inspectCommand(),
			rmCommand(),
			verifyCommand(),
			gcCommand(),
			serveCommand(),
			mountCommand(),
			workingSetCommand(),
		},
		HideHelpCommand:      true,
		EnableBashCompletion: true,
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usagef("%v (see --help)", err)
		},
		ExitErrHandler: func(*cli.Context, error) {}, // main prints errors
	}
}

// args checks the positional arguments of a command.
func args(c *cli.Context, names ...string) ([]string, error) {
	if c.NArg() != len(names) {
		return nil, usagef("%s: needs %s (see --help)", strings.TrimPrefix(c.Command.HelpName, "snapstore "), strings.Join(names, " "))
	}
	return c.Args().Slice(), nil
}

// openStore returns the store to work on: the sidecar's own when the
// command runs inside it; else the store in --store, opened for writing
// (creating it when create is set) or for reading. When a sidecar owns the
// store, it returns forwardError so that main runs the command there.
func openStore(c *cli.Context, write, create bool) (*pagestore.Store, func(), error) {
	if s := inSidecar(c); s != nil {
		return s, func() {}, nil
	}
	dir := c.String("store")
	var opts []pagestore.Option
	switch {
	case !write:
		opts = append(opts, pagestore.ReadOnly())
	case create:
		opts = append(opts, pagestore.Create())
	}
	s, err := pagestore.Open(dir, opts...)
	switch {
	case errors.Is(err, pagestore.ErrLocked):
		// A sidecar takes the store's lock before it listens: when the
		// holder is one, wait for its socket.
		deadline := time.Now().Add(10 * time.Second)
		for {
			if sock := pageserver.FindSidecar(dir); sock != "" {
				return nil, nil, forwardError{sock}
			}
			if pageserver.SidecarPid(dir) == 0 || time.Now().After(deadline) {
				return nil, nil, err
			}
			time.Sleep(20 * time.Millisecond)
		}
	case errors.Is(err, fs.ErrPermission):
		return nil, nil, fmt.Errorf("store %s: permission denied (use --store or SNAPSTORE_DIR to pick a directory you can write)", dir)
	case err != nil:
		return nil, nil, err
	}
	return s, func() { s.Close() }, nil
}
