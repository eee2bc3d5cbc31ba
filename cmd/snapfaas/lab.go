package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/snapfaas/snapfaas/guest/testguest"
	"github.com/snapfaas/snapfaas/pageserver"
	"github.com/snapfaas/snapfaas/vmm/kvm"
)

// lab drives `snapfaas run` (this very binary, as a user would) against
// one store with the test guest, for the demo and the restore benchmark:
// each trial feeds requests on stdin, checks every answer against the
// guest's model, and reads back the --stats JSON.
type lab struct {
	self, store, snapstore string
	work                   string // scratch files (and the store unless --store), removed by close
}

// newLab sets up a lab for c's command: the store is --store, or a
// scratch one that close removes; snapstore is --snapstore or found as run
// finds it.
func newLab(c *cli.Context) (*lab, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	snapstore, err := snapstoreBinary(c)
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "snapfaas-lab-")
	if err != nil {
		return nil, err
	}
	store := c.String("store")
	if store == "" {
		store = filepath.Join(work, "store")
	}
	return &lab{self: self, store: store, snapstore: snapstore, work: work}, nil
}

// close stops the sidecar that runs started for the store and removes the
// lab's scratch files.
func (l *lab) close() {
	l.stopSidecar()
	os.RemoveAll(l.work)
}

// startSidecar (re)starts the store's sidecar, so that the next restore
// begins with a cold chunk cache and without paying for the start.
func (l *lab) startSidecar() error {
	l.stopSidecar()
	_, _, err := startSidecar(l.snapstore, l.store, filepath.Join(l.work, "sidecar.sock"), filepath.Join(l.work, "sidecar.log"))
	return err
}

func (l *lab) stopSidecar() {
	pid := pageserver.SidecarPid(l.store)
	if pid == 0 || syscall.Kill(pid, syscall.SIGTERM) != nil {
		return
	}
	for i := 0; i < 200 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// trial runs `snapfaas run ARGS` with reqs on stdin and checks the answers
// against model (which it advances); it returns run's statistics.
func (l *lab) trial(model *testguest.Heap, initrd []byte, reqs []testguest.Request, args ...string) (runStats, error) {
	statsPath := filepath.Join(l.work, "stats.json")
	os.Remove(statsPath)
	full := append([]string{"run", "--store", l.store, "--stats", statsPath, "--snapstore", l.snapstore}, args...)
	cmd := exec.Command(l.self, full...)
	var in bytes.Buffer
	var want []testguest.Response
	for _, r := range reqs {
		b, _ := json.Marshal(r)
		in.Write(append(b, '\n'))
		if r.Op == testguest.OpRead {
			want = append(want, testguest.InitrdChecksum(initrd, r))
		} else {
			want = append(want, model.Apply(r))
		}
	}
	cmd.Stdin = &in
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	if err := cmd.Run(); err != nil {
		return runStats{}, fmt.Errorf("snapfaas %s: %v\n%s", strings.Join(args, " "), err, tailLines(se.String(), 15))
	}
	sc := bufio.NewScanner(&so)
	for i := 0; sc.Scan(); i++ {
		var got testguest.Response
		if err := json.Unmarshal(sc.Bytes(), &got); err != nil || i >= len(want) || got != want[i] {
			return runStats{}, fmt.Errorf("snapfaas %s: answer %d is %s; the guest's model says %+v", strings.Join(args, " "), i+1, sc.Text(), want[min(i, len(want)-1)])
		}
	}
	var st runStats
	b, err := os.ReadFile(statsPath)
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil {
		return runStats{}, fmt.Errorf("snapfaas %s: stats: %w", strings.Join(args, " "), err)
	}
	if len(st.Requests) != len(reqs) {
		return runStats{}, fmt.Errorf("snapfaas %s: %d answers for %d requests", strings.Join(args, " "), len(st.Requests), len(reqs))
	}
	return st, nil
}

// inspect returns `snapstore inspect --json name`.
func (l *lab) inspect(name string) (map[string]any, error) {
	out, err := snapstoreRun(context.Background(), l.snapstore, l.store, "inspect", "--json", name)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(out, &m)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// labGuest checks for KVM and builds the test guest; what is missing is
// said in the error (what for: "the demo").
func labGuest(what string) (string, error) {
	if s, err := kvm.Open(); err != nil {
		return "", fmt.Errorf("%s runs VMs and needs KVM: %w", what, err)
	} else {
		s.Close()
	}
	// Built once per source version, in the user's cache (keyed by the
	// sources' hash), not in the scratch space.
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	elf, err := testguest.Build(filepath.Join(cache, "snapfaas", "testguest"))
	if errors.Is(err, testguest.ErrNoCompiler) {
		return "", fmt.Errorf("%w (install gcc, or use scripts/demo.sh, which does)", err)
	}
	return elf, err
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
