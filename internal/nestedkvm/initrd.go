package nestedkvm

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/snapfaas/snapfaas/internal/cpio"
)

//go:embed init.sh
var initScript []byte

// EnsureInitrd returns the initramfs for k: /init (init.sh), /bin/busybox,
// /modules/*.ko and /modules/LIST.list (file names in load order). It is
// cached in k.Dir under a key that hashes all of these (building a new one
// removes the others), and written uncompressed: no decompression under TCG.
func EnsureInitrd(k Kernel, busybox string) (string, error) {
	lists, err := k.loadOrder()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrKernel, err)
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrKernel, err)
	}
	h := sha256.New()
	h.Write(initScript)
	h.Write(bb)
	var names []string
	for _, l := range moduleLists {
		fmt.Fprintf(h, "\x00%s:%s", l.name, strings.Join(lists[l.name], ","))
		names = append(names, lists[l.name]...)
	}
	path := filepath.Join(k.Dir, "initrd-"+hex.EncodeToString(h.Sum(nil))[:12]+".cpio")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}

	var b bytes.Buffer
	w := cpio.NewWriter(&b)
	for _, d := range []string{"bin", "dev", "modules"} {
		w.Dir(d, 0o755)
	}
	w.CharDev("dev/console", 0o600, 5, 1)
	w.File("init", 0o755, initScript)
	w.File("bin/busybox", 0o755, bb)
	for _, l := range moduleLists {
		w.File("modules/"+l.name+".list", 0o644, []byte(strings.Join(lists[l.name], "\n")+"\n"))
	}
	for _, n := range names {
		ko, err := os.ReadFile(filepath.Join(k.Dir, "modules", n))
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrKernel, err)
		}
		w.File("modules/"+n, 0o644, ko)
	}
	if err := w.Close(); err != nil {
		return "", fmt.Errorf("%w: %v", ErrKernel, err)
	}
	tmp := fmt.Sprintf("%s.%d", path, os.Getpid())
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("%w: %v", ErrKernel, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("%w: %v", ErrKernel, err)
	}
	// Older builds are of no use; a QEMU still booting one has read it.
	old, _ := filepath.Glob(filepath.Join(k.Dir, "initrd-*.cpio"))
	for _, o := range old {
		if o != path {
			os.Remove(o)
		}
	}
	return path, nil
}
