package fusefs

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/snapfaas/snapfaas/pagestore"
)

// ErrUnavailable: this machine cannot mount FUSE file systems.
var ErrUnavailable = errors.New("FUSE is unavailable")

// Mount is a mounted view of a store.
type Mount struct {
	Dir    string
	server *fuse.Server
}

// Options configure a mount.
type Options struct {
	Log *slog.Logger
	// Debug logs every FUSE request.
	Debug bool
}

// New mounts a read-only view of s on dir and returns once it serves.
func New(dir string, s *pagestore.Store, o Options) (*Mount, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := checkMountpoint(abs); err != nil {
		return nil, err
	}
	entry, attr, neg := entryTimeout, entryTimeout, negTimeout
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			DirectMount:       true,
			DirectMountStrict: true,
			FsName:            "snapstore:" + s.Dir(),
			Name:              "snapstore",
			Options:           []string{"ro", "default_permissions"},
			MaxReadAhead:      128 << 10,
			MaxWrite:          1 << 20,
			AllowOther:        os.Geteuid() == 0,
			Debug:             o.Debug,
			DisableXAttrs:     true,
			// Replies are in-memory buffers: go-fuse's splice path only
			// adds syscalls for them (measured: 3 extra per READ).
			DisableSplice: true,
		},
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &neg,
	}
	server, err := fs.Mount(abs, &root{topDir{v: &view{s: s, log: o.Log, mounted: time.Now()}}}, opts)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", abs, err)
	}
	return &Mount{Dir: abs, server: server}, nil
}

// Unmount unmounts, retrying briefly while the mount is busy.
func (m *Mount) Unmount() error {
	var err error
	for i := 0; i < 20; i++ {
		if err = m.server.Unmount(); err == nil {
			m.server.Wait()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("unmount %s: %w", m.Dir, err)
}

// Wait returns when the mount is gone (unmounted from here or by umount).
func (m *Mount) Wait() { m.server.Wait() }

func checkMountpoint(dir string) error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("mount %s: no /dev/fuse on this machine: %w", dir, ErrUnavailable)
	}
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("mount %s: the directory does not exist", dir)
	}
	if !st.IsDir() {
		return fmt.Errorf("mount %s: not a directory", dir)
	}
	if mounted(dir) {
		return fmt.Errorf("mount %s: something is already mounted there (busy)", dir)
	}
	return nil
}

// mounted reports whether dir is a mount point.
func mounted(dir string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescape(fields[4]) == dir {
			return true
		}
	}
	return false
}

// unescape undoes mountinfo's octal escapes (\040 for space...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
