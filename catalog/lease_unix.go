//go:build unix

package catalog

import (
	"errors"
	"syscall"
	"time"
)

// Live reports whether the lease still protects what it holds: it has not
// expired and the process that took it, if one is named, still exists.
func (l LeaseInfo) Live(now time.Time) bool {
	if !l.Expires.IsZero() && now.After(l.Expires) {
		return false
	}
	if l.PID > 0 {
		err := syscall.Kill(l.PID, 0)
		if errors.Is(err, syscall.ESRCH) {
			return false
		}
	}
	return true
}
