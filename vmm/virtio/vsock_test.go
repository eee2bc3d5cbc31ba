package virtio

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vsockDriver plays the guest side of a vsock device with three queues.
type vsockDriver struct {
	rx, tx *driver
	dev    *Vsock
}

func newVsockDriver(t *testing.T, path string) *vsockDriver {
	t.Helper()
	dev, err := NewVsock(3, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	// One memory, separate rings per queue.
	rx, qrx := newDriver(16)
	tx := &driver{mem: rx.mem, desc: 0x6000, avail: 0x7000, used: 0x8000, size: 16}
	qtx := NewQueue(16)
	qtx.Attach(rx.mem)
	qtx.State.Ready, qtx.State.DescAddr, qtx.State.DriverAddr, qtx.State.DeviceAddr = true, tx.desc, tx.avail, tx.used
	qev := NewQueue(4)
	qev.Attach(rx.mem)
	dev.Activate(FeatureVersion1, []*Queue{qrx, qtx, qev}, func() {})
	d := &vsockDriver{rx: rx, tx: tx, dev: dev}
	for i := 0; i < 8; i++ { // stock RX buffers at 0x90000 + i*4K
		rx.add(buf{0x90000 + uint64(i)*4096, 4096, true})
	}
	dev.Notify(vsockQueueRX)
	return d
}

// recv waits for the next RX packet.
func (d *vsockDriver) recv(t *testing.T) (vsockHdr, []byte) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for d.rx.usedIdx() == d.rx.lastUsed {
		if time.Now().After(deadline) {
			t.Fatal("no packet from the device")
		}
		time.Sleep(time.Millisecond)
	}
	id, n := d.rx.usedEntry(d.rx.lastUsed)
	d.rx.lastUsed++
	addr := binary.LittleEndian.Uint64(d.rx.mem[d.rx.desc+16*uint64(id):])
	pkt := d.rx.mem[addr : addr+uint64(n)]
	var h vsockHdr
	h.decode(pkt)
	payload := append([]byte(nil), pkt[vsockHdrSize:vsockHdrSize+h.Len]...)
	d.rx.add(buf{addr, 4096, true}) // give the buffer back
	d.dev.Notify(vsockQueueRX)
	return h, payload
}

func (d *vsockDriver) send(h vsockHdr, payload []byte) {
	h.SrcCID, h.DstCID, h.Type, h.Len, h.BufAlloc = 3, vsockHostCID, vsockTypeStream, uint32(len(payload)), 65536
	pkt := make([]byte, vsockHdrSize+len(payload))
	h.encode(pkt)
	copy(pkt[vsockHdrSize:], payload)
	copy(d.tx.mem[0xc0000:], pkt)
	d.tx.add(buf{0xc0000, uint32(len(pkt)), false})
	d.dev.Notify(vsockQueueTX)
}

func TestVsockHostInitiated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.sock")
	d := newVsockDriver(t, path)
	host, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	fmt.Fprintf(host, "CONNECT 52\n")
	req, _ := d.recv(t)
	if req.Op != vsockOpRequest || req.DstPort != 52 || req.DstCID != 3 {
		t.Fatalf("request %+v", req)
	}
	d.send(vsockHdr{SrcPort: 52, DstPort: req.SrcPort, Op: vsockOpResponse}, nil)
	line, err := bufio.NewReader(host).ReadString('\n')
	if err != nil || line != fmt.Sprintf("OK %d\n", req.SrcPort) {
		t.Fatalf("handshake reply %q %v", line, err)
	}
	host.Write([]byte("ping"))
	h, payload := d.recv(t)
	if h.Op != vsockOpRW || string(payload) != "ping" || h.BufAlloc == 0 {
		t.Fatalf("data to guest: %+v %q", h, payload)
	}
	d.send(vsockHdr{SrcPort: 52, DstPort: req.SrcPort, Op: vsockOpRW}, []byte("pong"))
	host.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 4)
	if _, err := host.Read(b); err != nil || string(b) != "pong" {
		t.Fatalf("data to host: %q %v", b, err)
	}
	// The host hangs up: the guest hears SHUTDOWN.
	host.Close()
	if h, _ := d.recv(t); h.Op != vsockOpShutdown {
		t.Fatalf("after hang-up: %+v", h)
	}
}

func TestVsockGuestInitiatedAndRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.sock")
	d := newVsockDriver(t, path)
	// Nobody listens on <path>_1234: reset.
	d.send(vsockHdr{SrcPort: 1024, DstPort: 1234, Op: vsockOpRequest}, nil)
	if h, _ := d.recv(t); h.Op != vsockOpRst {
		t.Fatalf("refused connect: %+v", h)
	}
	ln, err := net.Listen("unix", path+"_1234")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	d.send(vsockHdr{SrcPort: 1025, DstPort: 1234, Op: vsockOpRequest}, nil)
	if h, _ := d.recv(t); h.Op != vsockOpResponse || h.DstPort != 1025 {
		t.Fatalf("accepted connect: %+v", h)
	}
	c := <-acc
	defer c.Close()
	big := strings.Repeat("x", 10000) // more than one RX buffer
	c.Write([]byte(big))
	var got []byte
	for len(got) < len(big) {
		h, p := d.recv(t)
		if h.Op != vsockOpRW {
			t.Fatalf("op %d", h.Op)
		}
		got = append(got, p...)
	}
	if string(got) != big {
		t.Fatal("stream differs")
	}
}
