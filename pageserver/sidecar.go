package pageserver

import (
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
