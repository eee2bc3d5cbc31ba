package pageserver

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/snapfaas/snapfaas/uffd"
)

// ErrSidecarGone means the connection to the sidecar ended while the
// client still needed it. A VMM whose guest memory the sidecar serves must
// stop the VM at once: its faults will never be served again.
var ErrSidecarGone = errors.New("page server connection lost")

// Client is a VMM's connection to the sidecar.
type Client struct {
	conn    *net.UnixConn
	mu      sync.Mutex // one request at a time
	replies chan Reply
	lost    chan struct{}
	bye     chan struct{}
	byeOnce sync.Once
	fatal   string // the sidecar's reason for ending the session; set before lost closes
}

// Connect hands uffdFD (registered over the regions in h) and h to the
// sidecar listening at path, and waits for its reply. The caller keeps its
// own uffd descriptor open: if it closed it and the sidecar died, the
// kernel would resolve the guest's faults with zero pages.
func Connect(path string, uffdFD int, h Handoff) (*Client, Reply, error) {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, Reply{}, fmt.Errorf("page server %s: %w", path, err)
	}
	body, err := json.Marshal(h)
	if err != nil {
		conn.Close()
		return nil, Reply{}, err
	}
	if err := uffd.SendRaw(conn, uffdFD, body); err != nil {
		conn.Close()
		return nil, Reply{}, fmt.Errorf("page server %s: %w", path, err)
	}
	c := &Client{conn: conn, replies: make(chan Reply), lost: make(chan struct{}), bye: make(chan struct{})}
	go c.read()
	select {
	case r, ok := <-c.replies:
		if !ok {
			return nil, Reply{}, fmt.Errorf("page server %s: closed the connection: %w", path, ErrSidecarGone)
		}
		if !r.OK {
			conn.Close()
			return nil, r, fmt.Errorf("page server %s: %s", path, r.Error)
		}
		return c, r, nil
	case <-time.After(30 * time.Second):
		conn.Close()
		return nil, Reply{}, fmt.Errorf("page server %s: no reply to the handoff in 30s", path)
	}
}

func (c *Client) read() {
	defer close(c.replies)
	r := bufio.NewReader(c.conn)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			select {
			case <-c.bye:
			default:
				close(c.lost)
			}
			return
		}
		var rep Reply
		if err := json.Unmarshal(line, &rep); err != nil {
			rep = Reply{Error: fmt.Sprintf("bad reply: %v", err)}
		}
		if rep.Fatal != "" {
			c.fatal = rep.Fatal
			continue
		}
		c.replies <- rep
	}
}

// Lost is closed when the connection to the sidecar ends before Close:
// the sidecar died or dropped the session.
func (c *Client) Lost() <-chan struct{} { return c.lost }

// Err says, once Lost is closed, why: the sidecar's reason when it gave
// one, else ErrSidecarGone.
func (c *Client) Err() error {
	select {
	case <-c.lost:
	default:
		return nil
	}
	if c.fatal != "" {
		return fmt.Errorf("%w: %s", ErrSidecarGone, c.fatal)
	}
	return ErrSidecarGone
}

func (c *Client) request(op string) (Reply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, _ := json.Marshal(Request{Op: op})
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return Reply{}, fmt.Errorf("%s: %w: %w", op, err, ErrSidecarGone)
	}
	r, ok := <-c.replies
	if !ok {
		return Reply{}, fmt.Errorf("%s: %w", op, ErrSidecarGone)
	}
	if !r.OK {
		return r, fmt.Errorf("%s: %s", op, r.Error)
	}
	return r, nil
}

// Metrics asks for the session's metrics.
func (c *Client) Metrics() (Metrics, error) {
	r, err := c.request("metrics")
	if err != nil || r.Metrics == nil {
		return Metrics{}, err
	}
	return *r.Metrics, nil
}

// SaveWorkingSet stores the pages faulted so far as the snapshot's working
// set and returns their number.
func (c *Client) SaveWorkingSet() (int, error) {
	r, err := c.request("save_working_set")
	return int(r.Pages), err
}

// Close ends the session cleanly (saving the working set if recording)
// and returns the final metrics.
func (c *Client) Close() (Metrics, error) {
	c.byeOnce.Do(func() { close(c.bye) })
	r, err := c.request("bye")
	c.conn.Close()
	if r.Metrics != nil {
		return *r.Metrics, err
	}
	return Metrics{}, err
}
