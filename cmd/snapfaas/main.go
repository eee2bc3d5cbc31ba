// Command snapfaas is the snapfaas user's CLI: boot a microVM by hand
// (vmm), and — as the project grows — run functions from snapshots (run),
// make snapshots (snapshot), serve a cluster (serve) and show it all (demo).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/vmm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := &cli.App{
		Name:  "snapfaas",
		Usage: "serverless functions in microVMs restored from snapshots",
		Commands: []*cli.Command{
			vmmCommand(),
			runCommand(),
			demoCommand(),
			benchCommand(),
			snapshotCommand(),
		},
		HideHelpCommand: true,
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageError{fmt.Sprintf("%v (see --help)", err)}
		},
		ExitErrHandler: func(*cli.Context, error) {},
	}
	if err := app.RunContext(ctx, os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "snapfaas: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func vmmCommand() *cli.Command {
	return &cli.Command{
		Name:  "vmm",
		Usage: "boot a microVM by hand (a kernel, memory, vCPUs; serial console on stdout)",
		Description: `Boots KERNEL (an ELF vmlinux or a bzImage) through Linux's 64-bit boot
protocol and runs it until it powers off or resets (exit 0), fails (the
exit reason and registers are printed, exit 1) or is interrupted.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "kernel", Required: true, Usage: "kernel `FILE` (ELF vmlinux or bzImage)"},
			&cli.StringFlag{Name: "cmdline", Usage: "kernel command line (default: " + vmm.DefaultCmdline + ")"},
			&cli.StringFlag{Name: "initrd", Usage: "initrd `FILE`, loaded high in guest memory (below the kernel's initrd_addr_max and the MMIO gap)"},
			&cli.IntFlag{Name: "mem_size", Value: 128, Usage: "guest memory in `MiB`"},
			&cli.IntFlag{Name: "vcpu_count", Value: 1, Usage: "number of vCPUs"},
			&cli.StringFlag{Name: "rootfs", Usage: "root file system image `FILE` (virtio-blk, read-only)"},
			&cli.StringFlag{Name: "appfs", Usage: "application image `FILE` (virtio-blk, read-only)"},
			&cli.BoolFlag{Name: "rw", Usage: "attach the disks read-write"},
			&cli.StringFlag{Name: "vsock", Usage: "attach virtio-vsock with its host side at Unix socket `PATH` (guest connections to port P go to PATH_P)"},
			&cli.UintFlag{Name: "cid", Value: 3, Usage: "the guest's vsock CID"},
			&cli.StringFlag{Name: "console", Usage: "write the serial console to `FILE` instead of stdout"},
			&cli.BoolFlag{Name: "hide_emulator_unsafe", Value: true, Usage: "hide CPU features KVM's instruction emulator cannot run (CX16, XSAVE, AVX, SSE3+)"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError{"vmm takes no arguments, only flags (see --help)"}
			}
			var disks []vmm.Disk
			for _, d := range []struct{ flag, id string }{{"rootfs", "rootfs"}, {"appfs", "appfs"}} {
				if p := c.String(d.flag); p != "" {
					disks = append(disks, vmm.Disk{Path: p, ReadOnly: !c.Bool("rw"), ID: d.id})
				}
			}
			var vsock *vmm.Vsock
			if p := c.String("vsock"); p != "" {
				vsock = &vmm.Vsock{CID: uint64(c.Uint("cid")), Path: p}
			}
			var console io.Writer = os.Stdout
			if p := c.String("console"); p != "" {
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
				if err != nil {
					return fmt.Errorf("--console: %w", err)
				}
				defer f.Close()
				console = f
			}
			vm, err := vmm.New(vmm.Config{
				Disks:              disks,
				Vsock:              vsock,
				Kernel:             c.String("kernel"),
				Cmdline:            c.String("cmdline"),
				Initrd:             c.String("initrd"),
				MemMiB:             c.Int("mem_size"),
				VCPUs:              c.Int("vcpu_count"),
				Console:            console,
				HideEmulatorUnsafe: c.Bool("hide_emulator_unsafe"),
			})
			if err != nil {
				return err
			}
			defer vm.Close()
			err = vm.Run(c.Context)
			if errors.Is(err, context.Canceled) {
				return errors.New("interrupted")
			}
			return err
		},
	}
}
