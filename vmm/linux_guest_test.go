package vmm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/snapfaas/snapfaas/guest/linuxinit"
)

// The files the TestLinux… tests boot: Debian's cloud kernel and an
// initramfs holding guest/linuxinit. They are made on this host, before
// the tests are delegated to an L1 guest (internal/realkvm), because L1
// has no network for apt-get download and no writable module cache for
// go build. They reach L1 as SNAPFAAS_KERNEL and SNAPFAAS_INITRD (and the
// sidecar as SNAPFAAS_SNAPSTORE_BIN), which realkvm passes on; a machine
// without apt or the go command can set them to prebuilt files.
var linuxGuest struct {
	once           sync.Once
	kernel, initrd string
	err            error
}

var snapstore struct {
	once sync.Once
	bin  string
	err  error
}

// snapstoreBin returns the sidecar binary the tests start: built once per
// test binary, or $SNAPFAAS_SNAPSTORE_BIN (prebuilt, for a machine without
// the go command). It exports that variable so that an L1 run of this
// binary uses the same build.
func snapstoreBin(t *testing.T) string {
	t.Helper()
	s := &snapstore
	s.once.Do(func() {
		s.bin = os.Getenv("SNAPFAAS_SNAPSTORE_BIN")
		if s.bin == "" {
			s.bin = filepath.Join(scratchDir, "snapstore")
			if out, err := exec.Command("go", "build", "-o", s.bin, "../cmd/snapstore").CombinedOutput(); err != nil {
				s.err = fmt.Errorf("build snapstore: %v\n%s", err, out)
				return
			}
		}
		os.Setenv("SNAPFAAS_SNAPSTORE_BIN", s.bin)
	})
	if s.err != nil {
		t.Fatal(s.err)
	}
	return s.bin
}

// scratchDir holds files made for the whole test binary; TestMain removes it.
var scratchDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vmm-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmm tests:", err)
		os.Exit(1)
	}
	scratchDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// linuxGuestFiles returns the kernel and initrd paths, making them once,
// and exports them so that an L1 run of this binary uses the same files.
func linuxGuestFiles(t *testing.T) (kernel, initrd string) {
	t.Helper()
	snapstoreBin(t)
	g := &linuxGuest
	g.once.Do(func() {
		if g.kernel, g.err = linuxinit.StockKernel(); g.err != nil {
			return
		}
		g.initrd = os.Getenv("SNAPFAAS_INITRD")
		if g.initrd == "" {
			g.initrd = filepath.Join(scratchDir, "linuxinit.cpio")
			if err := linuxinit.Build(g.initrd); err != nil {
				g.err = fmt.Errorf("build guest/linuxinit's initramfs: %w", err)
				return
			}
		}
		for _, p := range []string{g.kernel, g.initrd} {
			if _, err := os.Stat(p); err != nil {
				g.err = err
				return
			}
		}
		os.Setenv("SNAPFAAS_KERNEL", g.kernel)
		os.Setenv("SNAPFAAS_INITRD", g.initrd)
	})
	if g.err != nil {
		t.Fatal(g.err)
	}
	return g.kernel, g.initrd
}
