// Package pageserver is the memory half of the `snapstore serve` sidecar:
// it serves the guest memory of restored VMs from the store, page by page,
// through userfaultfd, prefetching the recorded working set and recording
// new ones.
//
// # Protocol
//
// A client (the VMM) creates a uffd, registers its guest memory with it
// (missing mode, never user-mode-only), connects to the sidecar's Unix
// socket and sends, in one sendmsg, the uffd as SCM_RIGHTS and a JSON body:
//
//   - Firecracker's message, a JSON array of
//     {base_host_virt_addr, size, offset, page_size} (page_size_kib from
//     older releases is accepted). It names no snapshot: the socket it
//     arrives on must be bound to one (`--firecracker PATH=SNAPSHOT`). No
//     replies are sent, so a stock Firecracker can use the sidecar as its
//     UFFD handler.
//   - snapfaas's Handoff object: the same regions plus the snapshot name and
//     options (prefetch, record, fault_around, client). The sidecar answers
//     with one JSON Reply line; the client must wait for it before sending
//     Requests ({"op": "metrics" | "save_working_set" | "bye"}), each
//     answered by one Reply line.
//
// # Serving
//
// Each session has a fault loop (uffd.Serve) on its own goroutine and, with
// prefetch, a prefetcher that installs the working set in recorded order in
// batches of DONTWAKE copies followed by one wake per contiguous run. A
// demand fault never waits for the prefetcher: both install concurrently and
// a page already present (EEXIST) counts as done. Zero pages are installed
// with UFFDIO_ZEROPAGE. With fault-around, a fault installs the whole run of
// the faulting page's chunk that is still missing, in one copy. Pages the
// target drops (UFFD_EVENT_REMOVE) are served as zeros if touched again;
// unmapped ranges are never served; EAGAIN drains pending events and
// retries.
//
// # Working sets
//
// In record mode every fault appends its page, in first-touch order, and
// the list is stored on the snapshot in the catalog when the client asks
// (save_working_set) or ends cleanly (bye). A session that ends any other way
// stores nothing. With prefetch on as well, prefetched pages never fault, so
// the stored set is the old set followed by the newly faulted pages.
//
// # Failure
//
// Sessions are independent: a broken message gets an error reply and a
// closed connection, a VM that exits ends its session (its pidfd or the
// socket says so), and nothing one session does blocks another. A client
// detects a dead sidecar by its connection closing (Client.Lost) and must
// stop its VM: the guest's faults will never be served again. It keeps its
// own uffd open so that the kernel never resolves those faults with zero
// pages behind its back.
package pageserver
