// Package testguest builds and drives a small freestanding x86_64 guest used
// to test the VMM without a Linux kernel.
//
// The guest (C and assembly under src/, embedded here) is entered through
// Linux's 64-bit boot protocol: the ELF entry point in long mode with RSI
// pointing at boot_params (the zero page). It also carries a PVH note, so
// QEMU can boot it with -kernel for testing the guest on its own. It prints
// to the 8250 UART at port 0x3f8, probes the virtio-mmio devices named on
// its command line (polling only), reports the contents of a block device,
// fills a deterministic heap, signals the snapshot points on port 0x3f0 and,
// with a vsock device, connects to the host and serves touch, read (over
// the initrd the VMM loaded, if any) and exit requests.
// Its instructions avoid SSE, x87, MMX, AVX, fxsave/xsave, cmpxchg16b and
// popcnt, which fail under the instruction emulator.
//
// Build compiles it with the host gcc; the rest of the package is the
// pure-Go model of what the guest prints and answers, for the VMM tests.
package testguest

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

//go:embed src/start.S src/main.c src/proto.c src/ref.h src/guest.ld
var sources embed.FS

// ErrNoCompiler: no gcc that targets x86_64 was found.
var ErrNoCompiler = errors.New("testguest: no x86_64 gcc found (install gcc)")

// CFlags are the compiler flags the guest is built with. Beyond the
// required freestanding/no-SSE set, they drop unwind tables and CET
// end-branch instructions and code-alignment padding.
var CFlags = []string{
	"-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie",
	"-mgeneral-regs-only", "-mno-red-zone", "-mno-sse", "-mno-mmx", "-mno-80387",
	"-fno-stack-protector", "-fno-builtin", "-O2",
	"-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fcf-protection=none",
	"-falign-functions=1", "-falign-jumps=1", "-falign-loops=1", "-falign-labels=1",
	"-Wall", "-Wextra",
}

// LDFlags are the linker flags (the script puts everything at 1 MiB).
var LDFlags = []string{
	"-Wl,-T,guest.ld", "-Wl,--build-id=none", "-Wl,-z,max-page-size=4096",
}

// Sources returns the guest's source files (C, assembly, linker script).
func Sources() fs.FS {
	sub, err := fs.Sub(sources, "src")
	if err != nil {
		panic(err)
	}
	return sub
}

// FindCompiler returns the path of a gcc that targets x86_64, or
// ErrNoCompiler.
func FindCompiler() (string, error) {
	var tried []string
	for _, name := range []string{"x86_64-linux-gnu-gcc", "gcc"} {
		p, err := exec.LookPath(name)
		if err != nil {
			tried = append(tried, name+": not found")
			continue
		}
		out, err := exec.Command(p, "-dumpmachine").Output()
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: -dumpmachine: %v", p, err))
			continue
		}
		if m := strings.TrimSpace(string(out)); !strings.HasPrefix(m, "x86_64") {
			tried = append(tried, fmt.Sprintf("%s targets %s", p, m))
			continue
		}
		return p, nil
	}
	return "", fmt.Errorf("%w: %s", ErrNoCompiler, strings.Join(tried, "; "))
}

// sourceHash identifies the sources and flags a binary was built from.
func sourceHash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(sources, "src", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := sources.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d\n", p, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "%q %q\n", CFlags, LDFlags)
	return hex.EncodeToString(h.Sum(nil)[:8]), nil
}

// Build compiles the guest into outDir and returns the ELF's path. The file
// is named by a hash of the sources and flags, so a later call with the
// same outDir returns it without compiling (and without needing gcc).
func Build(outDir string) (elfPath string, err error) {
	sum, err := sourceHash()
	if err != nil {
		return "", err
	}
	elfPath = filepath.Join(outDir, "testguest-"+sum+".elf")
	if fi, err := os.Stat(elfPath); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
		return elfPath, nil
	}
	cc, err := FindCompiler()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "testguest-build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	if err := os.CopyFS(dir, Sources()); err != nil {
		return "", fmt.Errorf("testguest: writing sources: %w", err)
	}
	out := filepath.Join(dir, "testguest.elf")
	args := append(append(append([]string{}, CFlags...), LDFlags...), "-o", out, "start.S", "main.c")
	cmd := exec.Command(cc, args...)
	cmd.Dir = dir
	var msg bytes.Buffer
	cmd.Stdout, cmd.Stderr = &msg, &msg
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("testguest: %s %s: %w\n%s", cc, strings.Join(args, " "), err, msg.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(outDir, ".testguest-*.tmp")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), elfPath); err != nil {
		return "", err
	}
	return elfPath, nil
}
