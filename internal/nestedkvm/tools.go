package nestedkvm

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Tools are the host programs a run needs.
type Tools struct {
	QEMU    string // qemu-system-x86_64
	Busybox string // a statically linked busybox, copied into the initramfs
}

// EnsureTools finds qemu-system-x86_64 and a static busybox. When one is
// missing and this process is root with apt-get, it installs the Debian
// packages (qemu-system-x86, busybox-static) and says so through logf.
func EnsureTools(logf func(string, ...any)) (Tools, error) {
	t, missing := findTools()
	if len(missing) == 0 {
		return t, nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		return t, fmt.Errorf("%w: need %s (install them as root with apt-get)", ErrTools, strings.Join(missing, " and "))
	}
	logf("installing %s with apt-get", strings.Join(missing, " "))
	if err := aptInstall(missing); err != nil {
		return t, fmt.Errorf("%w: apt-get install %s: %v", ErrTools, strings.Join(missing, " "), err)
	}
	if t, missing = findTools(); len(missing) > 0 {
		return t, fmt.Errorf("%w: still no %s after apt-get install", ErrTools, strings.Join(missing, " and "))
	}
	return t, nil
}

// findTools returns what it found and the Debian packages of what it did not.
func findTools() (Tools, []string) {
	var t Tools
	var missing []string
	if p, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		t.QEMU = p
	} else {
		missing = append(missing, "qemu-system-x86")
	}
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if isStatic(p) {
			t.Busybox = p
			break
		}
	}
	if t.Busybox == "" {
		missing = append(missing, "busybox-static")
	}
	return t, missing
}

// isStatic reports whether path is an ELF executable without an interpreter.
func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// aptInstall installs Debian packages, updating the package lists once if
// the first attempt fails (a fresh machine has none).
func aptInstall(pkgs []string) error {
	install := func() error {
		cmd := exec.Command("apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, pkgs...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return runQuiet(cmd)
	}
	if install() == nil {
		return nil
	}
	if err := runQuiet(exec.Command("apt-get", "update", "-qq")); err != nil {
		return err
	}
	return install()
}

// runQuiet runs cmd; on failure the error carries the last line it printed.
func runQuiet(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", cmd.Args[0], err, lastLine(string(out)))
	}
	return nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
