package pageserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/uffd"
)

// Handoff is snapfaas's handoff message: the region map of
// Firecracker's message plus the snapshot to serve and options. It travels
// as JSON with the uffd attached (SCM_RIGHTS), in one sendmsg.
type Handoff struct {
	// Snapshot names the memory snapshot in the store.
	Snapshot string `json:"snapshot"`
	// Regions map the target's guest memory to offsets in the snapshot's
	// memory (Firecracker's GuestRegionUffdMapping).
	Regions []uffd.Region `json:"regions"`
	// Prefetch installs the snapshot's recorded working set, in recorded
	// order, as soon as the uffd arrives, concurrently with demand faults.
	Prefetch bool `json:"prefetch,omitempty"`
	// Record logs faulting pages in first-touch order and stores them as
	// the snapshot's working set on save_working_set or bye.
	Record bool `json:"record,omitempty"`
	// FaultAround installs, on a fault, every page of the faulting page's
	// chunk run (up to the store's granularity) in one UFFDIO_COPY.
	FaultAround bool `json:"fault_around,omitempty"`
	// Copy installs every page before the reply: an eager restore
	// through the sidecar (the VM never faults). CopyLayer installs only
	// the snapshot's own layer's pages (a diff snapshot's diff; SnapFaaS's
	// --copy_diff), leaving the parents' pages to faults and prefetch.
	Copy      bool `json:"copy,omitempty"`
	CopyLayer bool `json:"copy_layer,omitempty"`
	// Client names the client in logs and metrics (e.g. the VM id).
	Client string `json:"client,omitempty"`
}

// Reply is the sidecar's answer to a Handoff and to each Request. It is one
// JSON line. Firecracker-format clients get no replies.
type Reply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Pages is the snapshot's page count (handoff) or the working-set
	// size stored (save_working_set, bye).
	Pages int64 `json:"pages,omitempty"`
	// WorkingSet is the number of pages that will be prefetched.
	WorkingSet int      `json:"working_set,omitempty"`
	Metrics    *Metrics `json:"metrics,omitempty"`
	// Fatal, unasked, says why the sidecar ends the session: serving a
	// fault failed (a corrupt chunk, say). The connection closes next.
	Fatal string `json:"fatal,omitempty"`
}

// Request is a control message a snapfaas client sends after the handoff
// reply, one JSON line each; every request gets one Reply.
type Request struct {
	// Op is "metrics", "save_working_set" (save the pages recorded so far
	// as the snapshot's working set and stop recording) or "bye" (save the
	// working set if recording, then end the session cleanly).
	Op string `json:"op"`
}

// ErrProtocol marks a malformed handoff or request.
var ErrProtocol = errors.New("protocol error")

// parseHandoff decodes either form of the handoff body. A JSON array is
// Firecracker's message, served from the snapshot bound to the socket
// (bound), with no replies and no options.
func parseHandoff(body []byte, bound string) (h Handoff, firecracker bool, err error) {
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '[' {
		if err := json.Unmarshal(body, &h.Regions); err != nil {
			return h, true, fmt.Errorf("region list: %v: %w", err, ErrProtocol)
		}
		if bound == "" {
			return h, true, fmt.Errorf("a Firecracker handoff names no snapshot and none is bound to this socket (use --firecracker PATH=SNAPSHOT): %w", ErrProtocol)
		}
		h.Snapshot = bound
		return h, true, fixRegions(h.Regions)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return h, false, fmt.Errorf("handoff: %v: %w", err, ErrProtocol)
	}
	if h.Snapshot == "" {
		if bound == "" {
			return h, false, fmt.Errorf("handoff names no snapshot: %w", ErrProtocol)
		}
		h.Snapshot = bound
	}
	return h, false, fixRegions(h.Regions)
}

// fixRegions folds Firecracker's older page_size_kib and checks the map.
func fixRegions(rs []uffd.Region) error {
	if len(rs) == 0 {
		return fmt.Errorf("no regions: %w", ErrProtocol)
	}
	for i := range rs {
		r := &rs[i]
		if r.PageSize == 0 && r.PageSizeKiB != 0 {
			r.PageSize = r.PageSizeKiB << 10
		}
		switch {
		case r.PageSize != pageSize:
			return fmt.Errorf("region %d: page size %d: only 4 KiB pages are served: %w", i, r.PageSize, ErrProtocol)
		case r.Size == 0 || r.Size%pageSize != 0 || r.BaseHostVirtAddr%pageSize != 0 || r.Offset%pageSize != 0:
			return fmt.Errorf("region %d: address, size and offset must be multiples of 4 KiB: %w", i, ErrProtocol)
		}
	}
	return nil
}

func closeFD(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}
