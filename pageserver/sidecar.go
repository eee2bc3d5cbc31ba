package pageserver

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// SidecarFile is the file in the store's directory where a running sidecar
// (snapstore serve) records the path of its socket, for clients to find.
const SidecarFile = "SIDECAR"

// DefaultSocket is where the sidecar of store listens unless told
// otherwise.
func DefaultSocket(store string) string { return filepath.Join(store, "snapstore.sock") }

// FindSidecar returns the socket of the sidecar serving store if one
// answers there, else "".
func FindSidecar(store string) string {
	b, err := os.ReadFile(filepath.Join(store, SidecarFile))
	if err != nil {
		return ""
	}
	sock := strings.TrimSpace(string(b))
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return ""
	}
	conn.Close()
	return sock
}

// SidecarPid returns the pid of the `snapstore serve` holding store's
// lock, as its LOCK file names it, or 0 if the holder is none or not a
// sidecar. A sidecar takes the lock before it listens, so SidecarPid can
// name one that FindSidecar cannot reach yet.
func SidecarPid(store string) int {
	b, err := os.ReadFile(filepath.Join(store, "LOCK"))
	if err != nil {
		return 0
	}
	var pid int
	if _, err := fmt.Sscanf(string(b), "pid %d", &pid); err != nil || pid <= 0 || !strings.Contains(string(b), "serve") {
		return 0
	}
	return pid
}
