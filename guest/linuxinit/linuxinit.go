// Package linuxinit builds an initramfs whose /init is a static Go program
// (./init) for checking the VMM with a stock Linux kernel on hardware KVM:
// the kernel boots into it, it runs to the snapfaas snapshot point, and
// after it (in the booted VM or a restored one) prints a checksum of
// memory it filled before, then reboots. See Checksum and docs/LINUX-BOOT.md.
package linuxinit

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

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

// Build compiles ./init (static, linux/amd64) and writes the initramfs, an
// uncompressed newc cpio archive with /init, /dev/console, /dev and /proc,
// to out. It needs the go command.
func Build(out string) error {
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
	if err := w.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, b.Bytes(), 0o644)
}
