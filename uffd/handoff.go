//go:build linux

package uffd

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// Region describes one guest memory region in the message that hands a uffd
// to its page-fault handler. The JSON form is Firecracker's
// GuestRegionUffdMapping: a JSON array of these objects is sent together with
// the uffd (SCM_RIGHTS) in one message.
type Region struct {
	// BaseHostVirtAddr is the region's address in the target process.
	BaseHostVirtAddr uint64 `json:"base_host_virt_addr"`
	// Size is the region's length in bytes.
	Size uint64 `json:"size"`
	// Offset is the region's offset in the snapshot memory file.
	Offset uint64 `json:"offset"`
	// PageSize is the backing page size in bytes.
	PageSize uint64 `json:"page_size"`
	// PageSizeKiB is the deprecated form of PageSize sent by older
	// Firecracker versions; Receive folds it into PageSize.
	PageSizeKiB uint64 `json:"page_size_kib,omitempty"`
}

// maxHandoff bounds the JSON body Receive accepts.
const maxHandoff = 1 << 20

// Send sends the uffd fd and the JSON-encoded regions over conn in one
// message (the fd travels as SCM_RIGHTS). The caller keeps its own fd.
func Send(conn *net.UnixConn, fd int, regions []Region) error {
	body, err := json.Marshal(regions)
	if err != nil {
		return fmt.Errorf("uffd: send: %w", err)
	}
	return SendRaw(conn, fd, body)
}

// SendRaw sends fd with an arbitrary JSON body (an extended handoff
// message) in one message.
func SendRaw(conn *net.UnixConn, fd int, body []byte) error {
	n, _, err := conn.WriteMsgUnix(body, unix.UnixRights(fd), nil)
	if err != nil {
		return fmt.Errorf("uffd: send: %w", err)
	}
	if n != len(body) {
		return fmt.Errorf("uffd: send: short write %d of %d: %w", n, len(body), unix.EIO)
	}
	return nil
}

// Receive reads one handoff message from conn: a uffd passed with
// SCM_RIGHTS plus a JSON array of regions, and returns the uffd wrapped with
// FromFD(fd, opts...). It does not watch the sender; call WatchPeer(conn)
// if the sender is the target process and should be watched for exit.
func Receive(conn *net.UnixConn, opts ...Option) (*FD, []Region, error) {
	fd, body, err := ReceiveRaw(conn)
	if err != nil {
		return nil, nil, err
	}
	if fd < 0 {
		return nil, nil, fmt.Errorf("uffd: receive: the message carried no file descriptor: %w", unix.EPROTO)
	}
	var regions []Region
	if err := json.Unmarshal(body, &regions); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("uffd: receive: region list: %w", err)
	}
	for i := range regions {
		if regions[i].PageSize == 0 && regions[i].PageSizeKiB != 0 {
			regions[i].PageSize = regions[i].PageSizeKiB << 10
		}
	}
	u, err := FromFD(fd, opts...)
	if err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	return u, regions, nil
}

// ReceiveRaw reads one handoff message from conn and returns the raw
// descriptor it carried and its JSON body (any JSON value: Firecracker's
// array or an extended object). A message without a descriptor returns
// fd -1 and no error, so that one socket can also carry control messages.
// The caller owns fd.
func ReceiveRaw(conn *net.UnixConn) (fd int, body []byte, err error) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return -1, nil, fmt.Errorf("uffd: receive: %w", err)
	}
	fds, ferr := parseRights(oob[:oobn])
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	switch {
	case ferr != nil:
		closeAll()
		return -1, nil, fmt.Errorf("uffd: receive: %w", ferr)
	case flags&unix.MSG_CTRUNC != 0:
		closeAll()
		return -1, nil, fmt.Errorf("uffd: receive: control message truncated: %w", unix.EMSGSIZE)
	case len(fds) > 1:
		closeAll()
		return -1, nil, fmt.Errorf("uffd: receive: got %d file descriptors, want 1: %w", len(fds), unix.EPROTO)
	}
	fd = -1
	if len(fds) == 1 {
		fd = fds[0]
	}
	closeFD := func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	body = buf[:n]
	// One sendmsg arrives in one read unless it filled the buffer; only
	// then is there more to read. A short, invalid body is just invalid.
	for last := n; !json.Valid(body) && last == len(buf); {
		if len(body) >= maxHandoff {
			closeFD()
			return -1, nil, fmt.Errorf("uffd: receive: handoff message exceeds %d bytes: %w", maxHandoff, unix.EMSGSIZE)
		}
		m, err := conn.Read(buf)
		if err != nil {
			closeFD()
			return -1, nil, fmt.Errorf("uffd: receive: incomplete handoff message (%d bytes): %w", len(body), err)
		}
		body, last = append(body, buf[:m]...), m
	}
	if !json.Valid(body) {
		closeFD()
		return -1, nil, fmt.Errorf("uffd: receive: handoff message is not valid JSON (%d bytes): %w", len(body), unix.EPROTO)
	}
	return fd, body, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	var errs []error
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		errs = append(errs, err)
		fds = append(fds, got...)
	}
	return fds, errors.Join(errs...)
}

// WatchPeer watches the process at the other end of conn (the process that
// connected or created the socket pair) like WatchTarget, using a pidfd from
// SO_PEERPIDFD (Linux 6.5+), or from SO_PEERCRED and pidfd_open.
func (u *FD) WatchPeer(conn *net.UnixConn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("uffd: watch peer: %w", err)
	}
	pidfd, pid := -1, 0
	var sockErr error
	cerr := rc.Control(func(s uintptr) {
		if fd, err := unix.GetsockoptInt(int(s), unix.SOL_SOCKET, unix.SO_PEERPIDFD); err == nil {
			pidfd = fd
			return
		}
		cred, err := unix.GetsockoptUcred(int(s), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			sockErr = err
			return
		}
		pid = int(cred.Pid)
	})
	if cerr != nil {
		return fmt.Errorf("uffd: watch peer: %w", cerr)
	}
	if sockErr != nil {
		return fmt.Errorf("uffd: watch peer: SO_PEERCRED: %w", sockErr)
	}
	if pidfd >= 0 {
		unix.CloseOnExec(pidfd)
		return u.addWatch(pidfd, WatchPidfd)
	}
	if pid <= 0 {
		return fmt.Errorf("uffd: watch peer: no peer pid: %w", unix.ESRCH)
	}
	return u.WatchPid(pid)
}
