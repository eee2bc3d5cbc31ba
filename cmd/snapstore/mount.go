package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/fusefs"
)

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "mount a read-only view of the store (images/, snapshots/, functions/)",
		ArgsUsage: "DIR",
		Description: `Runs in the foreground until interrupted (Ctrl-C, SIGTERM) and unmounts
cleanly. Images appear as files of their exact size, read lazily from the
store; snapshots as directories with info.json, memory, working-set and a
parent link. The mount holds a reader's lock: to import while mounted, run
` + "`snapstore serve --mount DIR`" + ` instead.`,
		Flags: []cli.Flag{&cli.BoolFlag{Name: "debug", Usage: "log every FUSE request"}},
		Action: func(c *cli.Context) error {
			a, err := args(c, "DIR")
			if err != nil {
				return err
			}
			if inSidecar(c) != nil {
				return fmt.Errorf("mount: the store is owned by a running sidecar; mount it with `snapstore serve --mount DIR`")
			}
			s, release, err := openStore(c, false, false)
			if err != nil {
				return err
			}
			defer release()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			m, err := fusefs.New(a[0], s, fusefs.Options{Log: log, Debug: c.Bool("debug")})
			if err != nil {
				return err
			}
			log.Info("mounted", "dir", m.Dir, "store", s.Dir())
			gone := make(chan struct{})
			go func() { m.Wait(); close(gone) }()
			select {
			case <-c.Context.Done():
				if err := m.Unmount(); err != nil {
					return fmt.Errorf("%w (still in use? close files under it, or umount -l)", err)
				}
				log.Info("unmounted", "dir", m.Dir)
			case <-gone:
				log.Info("unmounted from outside", "dir", m.Dir)
			}
			return nil
		},
	}
}
