package nestedkvm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestJobScriptQuotes sources job.sh in a real sh, as init.sh does, and
// requires the paths and COMMAND back byte for byte.
func TestJobScriptQuotes(t *testing.T) {
	c := Config{
		Checkout: "/work/it's here", Workdir: "/work/it's here/sub dir", Path: "/usr/bin:/bin",
		Command: []string{"sh", "-c", `echo "$HOME" 'q' \ $(x)`, "", "new\nline", "*"},
	}
	job := filepath.Join(t.TempDir(), "job.sh")
	if err := os.WriteFile(job, jobScript(c), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", `. "$0"; printf '%s\0' "$CHECKOUT" "$WORKDIR" "$CMD_PATH" "$@"`, job).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	want := append([]string{c.Checkout, c.Workdir, c.Path}, c.Command...)
	if !slices.Equal(got, want) {
		t.Fatalf("job.sh gives\n%q\nwant\n%q", got, want)
	}
}

// TestProgress feeds console lines as the L1 kernel prints them (timestamp
// prefix, CRLF, other messages between) and checks stages, status and
// durations.
func TestProgress(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p := &progress{start: t0, at: map[string]time.Time{}}
	if got := p.reached(); !strings.Contains(got, "not reached init") {
		t.Errorf("before any marker: %q", got)
	}
	feed := []struct {
		line string
		at   float64
	}{
		{"[    0.000000] Linux version 6.1.0-48-amd64\r\n", 0.1},
		{"[    5.100000] @@nestedkvm init\r\n", 5},
		{"[    5.200000] kvm [1]: Unhandled WRMSR(0xc0010007)\r\n", 5.1},
		{"[    5.300000] @@nestedkvm kvm\r\n", 5.25},
		{"[    5.600000] @@nestedkvm modules\r\n", 5.5},
		{"[    6.000000] @@nestedkvm mounted\r\n", 6},
		{"[    6.000000] @@nestedkvm run\r\n", 6},
	}
	for _, f := range feed {
		p.line(f.line, t0.Add(time.Duration(f.at*float64(time.Second))))
	}
	if got := p.reached(); got != "L1 had booted and loaded kvm_amd; COMMAND still running" {
		t.Errorf("while running: %q", got)
	}
	tm := p.times(t0.Add(8 * time.Second))
	if tm.Boot != 5*time.Second || tm.KVM != 250*time.Millisecond || tm.Modules != 250*time.Millisecond ||
		tm.Mounts != 500*time.Millisecond || tm.Command != 2*time.Second || tm.Total != 8*time.Second {
		t.Errorf("times while running: %+v", tm)
	}
	p.line("[    9.000000] @@nestedkvm exit 7\r\n", t0.Add(9*time.Second))
	if !p.exited || p.status != 7 || p.times(t0.Add(10*time.Second)).Command != 3*time.Second {
		t.Errorf("after exit 7: exited=%v status=%d", p.exited, p.status)
	}
	if s := p.times(t0.Add(10 * time.Second)).String(); s != "L1 boot to init 5.0s, kvm_amd 0.2s, other modules 0.2s, mounts 0.5s, command 3.0s; total 10.0s" {
		t.Errorf("times line: %q", s)
	}

	q := &progress{start: t0, at: map[string]time.Time{}}
	q.line("[    5.1] @@nestedkvm init\r\n", t0)
	q.line("[    5.3] @@nestedkvm fail kvm insmod kvm-amd.ko: can't insert: Operation not supported\r\n", t0)
	if q.fail != "kvm insmod kvm-amd.ko: can't insert: Operation not supported" || q.exited || q.last != "init" {
		t.Errorf("fail marker: %+v", q)
	}
}

func TestCompareVersions(t *testing.T) {
	vs := []string{"6.1.0-48", "6.1.0-9", "6.10.0-1", "6.1.0-42"}
	slices.SortFunc(vs, compareVersions)
	if want := []string{"6.1.0-9", "6.1.0-42", "6.1.0-48", "6.10.0-1"}; !slices.Equal(vs, want) {
		t.Fatalf("sorted %v, want %v", vs, want)
	}
}

// TestModuleOrder resolves the load order from the real modules' .modinfo
// (fetching the kernel into the user cache when it lacks it; a second
// EnsureKernel must not fetch again) and builds the initramfs.
func TestModuleOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("fetches a Debian kernel package; not in -short")
	}
	k := cachedKernel(t)
	again, err := EnsureKernel(filepath.Dir(k.Dir), func(f string, a ...any) {
		t.Errorf("second EnsureKernel: "+f, a...) // "fetching ...": it must come from the cache
	})
	if err != nil || again != k {
		t.Fatalf("second EnsureKernel: %v, %v; want %v", again, err, k)
	}
	lists, err := k.loadOrder()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"irqbypass.ko", "kvm.ko", "ccp.ko", "kvm-amd.ko"}; !slices.Equal(lists["kvm"], want) {
		t.Errorf("kvm list %v, want %v", lists["kvm"], want)
	}
	pos := map[string]int{}
	for i, n := range lists["base"] {
		pos[n] = i + 1
	}
	for _, before := range [][2]string{{"virtio_ring.ko", "virtio_pci.ko"}, {"virtio.ko", "virtio_console.ko"}, {"9pnet.ko", "9pnet_virtio.ko"}, {"netfs.ko", "9p.ko"}, {"fscache.ko", "9p.ko"}} {
		if pos[before[0]] == 0 || pos[before[0]] > pos[before[1]] {
			t.Errorf("base list %v: want %s before %s", lists["base"], before[0], before[1])
		}
	}
	for _, m := range []string{"fuse.ko", "tun.ko", "overlay.ko", "9p.ko"} {
		if pos[m] == 0 {
			t.Errorf("base list %v lacks %s", lists["base"], m)
		}
	}
	initrd, err := EnsureInitrd(k, busyboxOrSkip(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(initrd)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"init\x00", "#!/bin/busybox sh\n", "modules/kvm.list\x00", "modules/kvm-amd.ko\x00", "irqbypass.ko\nkvm.ko\nccp.ko\nkvm-amd.ko\n", "TRAILER!!!"} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("initramfs lacks %q", want)
		}
	}
}

func cachedKernel(t *testing.T) Kernel {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	k, err := EnsureKernel(filepath.Join(cache, "snapfaas", "nested-kvm"), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func busyboxOrSkip(t *testing.T) string {
	t.Helper()
	tools, missing := findTools()
	if tools.Busybox == "" {
		t.Skipf("no static busybox (%v)", missing)
	}
	return tools.Busybox
}
