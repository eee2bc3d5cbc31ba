// Package linuxinit builds an initramfs whose /init is a static Go program
// (./init) for checking the VMM with a stock Linux kernel on hardware KVM.
// init prints Up, mounts /proc and reads /proc/cmdline; then, in one of two
// modes:
//
//   - default (Build; vmm's TestLinuxSnapshotRestore): it fills 8 MiB,
//     runs to the snapfaas snapshot point (port 0x3f0: 123, 124), and after
//     it (in the booted VM or a restored one) prints a checksum of that
//     memory on every online CPU, then reboots. See Checksum.
//   - serve (BuildServe, and linuxinit.serve=1 on the command line;
//     cmd/snapfaas's TestLinuxRun): it is the test guest of snapfaas run on
//     a stock kernel. It loads the kernel modules in /lib/modules (order
//     in /lib/modules/order) with finit_module, fills a heap of
//     testguest.heap_mb MiB from testguest.seed exactly as the C test guest
//     does, marks the snapshot point (123, 124) after the heap is filled
//     and before connecting, then connects AF_VSOCK to CID 2 on
//     testguest.port and answers length-prefixed JSON requests
//     (testguest.Request) from the heap's memory forever, reconnecting
//     whenever the connection ends (a restored VM's connection is reset by
//     the transport reset event). Answers equal testguest.Heap.Apply's with
//     no initrd (a read request gets "no initrd": the initramfs is gone).
//
// The modules (Modules) are those of Debian's cloud kernel, which builds
// virtio, virtio-mmio and vsock as modules: virtio and virtio_ring (the
// virtio core), virtio_mmio (the transport of our VMM's devices, found
// in the ACPI tables the VMM writes: the kernel lacks
// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, so virtio_mmio.device= on the command
// line means nothing to it), then vsock, vmw_vsock_virtio_transport_common
// and vmw_vsock_virtio_transport (AF_VSOCK over virtio). They must match
// the kernel: scripts/fetch-kernel.sh extracts them next to vmlinuz-VERSION
// into modules-VERSION/ (ModulesDir). See docs/LINUX-BOOT.md.
package linuxinit

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/snapfaas/snapfaas/internal/cpio"
)

// Markers the init program prints on the console.
const (
	Up            = "linuxinit: up"
	SnapshotPoint = "linuxinit: snapshot point"
	CPUsOnline    = "linuxinit: %d CPUs online"
	After         = "linuxinit: after the snapshot point, cpu %d checksum %s"
)

// AfterOn is the line init prints on cpu after the snapshot point when
// the memory it filled is intact.
func AfterOn(cpu int) string { return fmt.Sprintf(After, cpu, Checksum()) }

// Checksum is the checksum init prints in After: the same arithmetic over
// the same 8 MiB.
func Checksum() string {
	var sum uint64
	for i := 0; i < 8<<20; i++ {
		b := byte(i*7 + i>>12)
		sum = sum*31 + uint64(b) + uint64(i&1)
	}
	return fmt.Sprintf("%016x", sum)
}

// Modules are the kernel modules serve mode loads, in load order.
var Modules = []string{"virtio", "virtio_ring", "virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"}

// Serve is what to add to the kernel command line for serve mode.
const Serve = "linuxinit.serve=1"

// ModulesDir is where scripts/fetch-kernel.sh puts the modules of kernel
// .../vmlinuz-VERSION: .../modules-VERSION.
func ModulesDir(kernel string) string {
	return filepath.Join(filepath.Dir(kernel), "modules-"+strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-"))
}

// StockKernel returns the stock kernel these initramfs images are for:
// $SNAPFAAS_KERNEL if set (a prebuilt file, for a machine without apt),
// else Debian's cloud kernel as scripts/fetch-kernel.sh fetches and caches
// it, with its modules in ModulesDir.
func StockKernel() (string, error) {
	if k := os.Getenv("SNAPFAAS_KERNEL"); k != "" {
		return k, nil
	}
	_, self, _, _ := runtime.Caller(0)
	var stderr strings.Builder
	cmd := exec.Command(filepath.Join(filepath.Dir(self), "..", "..", "scripts", "fetch-kernel.sh"))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("cannot fetch Debian's cloud kernel (scripts/fetch-kernel.sh): %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// Build compiles ./init (static, linux/amd64) and writes the initramfs, an
// uncompressed newc cpio archive with /init, /dev/console, /dev and /proc,
// to out. It needs the go command.
func Build(out string) error { return build(out, "") }

// BuildServe is Build plus Modules (found under ModulesDir(kernel)) in
// /lib/modules, with their order in /lib/modules/order, for serve mode.
func BuildServe(out, kernel string) error {
	dir := ModulesDir(kernel)
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("modules of %s: %w (scripts/fetch-kernel.sh extracts them)", kernel, err)
	}
	return build(out, dir)
}

func build(out, modules string) error {
	_, self, _, _ := runtime.Caller(0)
	dir, err := os.MkdirTemp("", "linuxinit-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "init")
	cmd := exec.Command("go", "build", "-o", bin, "./init")
	cmd.Dir = filepath.Dir(self)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build init: %v\n%s", err, b)
	}
	initBytes, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	w := cpio.NewWriter(&b)
	w.Dir("dev", 0o755)
	w.CharDev("dev/console", 0o600, 5, 1)
	w.Dir("proc", 0o755)
	w.File("init", 0o755, initBytes)
	if modules != "" {
		found := map[string]string{}
		err := filepath.WalkDir(modules, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				found[d.Name()] = path
			}
			return err
		})
		if err != nil {
			return err
		}
		w.Dir("lib", 0o755)
		w.Dir("lib/modules", 0o755)
		var order strings.Builder
		for _, m := range Modules {
			p, ok := found[m+".ko"]
			if !ok {
				return fmt.Errorf("module %s.ko is not under %s", m, modules)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			w.File("lib/modules/"+m+".ko", 0o644, b)
			order.WriteString(m + ".ko\n")
		}
		w.File("lib/modules/order", 0o644, []byte(order.String()))
	}
	if err := w.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, b.Bytes(), 0o644)
}
