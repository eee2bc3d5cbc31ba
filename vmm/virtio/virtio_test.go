package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

type flatMem []byte

func (m flatMem) Slice(addr uint64, n int) ([]byte, error) {
	if addr+uint64(n) > uint64(len(m)) || addr+uint64(n) < addr {
		return nil, fmt.Errorf("guest range %#x+%d out of memory", addr, n)
	}
	return m[addr : addr+uint64(n)], nil
}

// driver plays the guest's side of a split queue.
type driver struct {
	mem                flatMem
	desc, avail, used  uint64
	size               uint16
	nextDesc, availIdx uint16
	lastUsed           uint16
}

func newDriver(size uint16) (*driver, *Queue) {
	d := &driver{mem: make(flatMem, 1<<20), desc: 0x1000, avail: 0x4000, used: 0x5000, size: size}
	q := NewQueue(size)
	q.Attach(d.mem)
	q.State.Ready, q.State.DescAddr, q.State.DriverAddr, q.State.DeviceAddr = true, d.desc, d.avail, d.used
	return d, q
}

type buf struct {
	addr  uint64
	len   uint32
	write bool
}

// add puts a chain on the available ring and returns its head.
func (d *driver) add(bufs ...buf) uint16 {
	le := binary.LittleEndian
	head := d.nextDesc
	for i, b := range bufs {
		idx := (d.nextDesc + uint16(i)) % d.size
		e := d.mem[d.desc+16*uint64(idx):]
		le.PutUint64(e[0:], b.addr)
		le.PutUint32(e[8:], b.len)
		var flags uint16
		if b.write {
			flags |= descWrite
		}
		if i < len(bufs)-1 {
			flags |= descNext
			le.PutUint16(e[14:], (idx+1)%d.size)
		}
		le.PutUint16(e[12:], flags)
	}
	d.nextDesc = (d.nextDesc + uint16(len(bufs))) % d.size
	le.PutUint16(d.mem[d.avail+4+2*uint64(d.availIdx%d.size):], head)
	d.availIdx++
	// Release: the descriptors and the ring entry above are published by
	// the index, as a guest's virtio driver does (virtio_wmb).
	if err := store16(d.mem, d.avail+2, d.availIdx); err != nil {
		panic(err)
	}
	return head
}

// usedIdx loads used.idx with acquire semantics (virtio_rmb): the used
// elements and buffers the device wrote before it are visible after it.
func (d *driver) usedIdx() uint16 {
	v, err := load16(d.mem, d.used+2)
	if err != nil {
		panic(err)
	}
	return v
}

func (d *driver) usedEntry(i uint16) (uint32, uint32) {
	e := d.mem[d.used+4+8*uint64(i%d.size):]
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
}

func TestQueueChainsAndWrapAround(t *testing.T) {
	d, q := newDriver(8)
	// Start near the 16-bit wrap of the ring indices.
	d.availIdx, q.State.NextAvail, q.State.NextUsed = 65533, 65533, 65533
	binary.LittleEndian.PutUint16(d.mem[d.used+2:], 65533)
	for i := 0; i < 20; i++ {
		head := d.add(buf{0x10000, 16, false}, buf{0x20000, 512, true}, buf{0x30000, 1, true})
		h, chain, ok, err := q.Pop()
		if err != nil || !ok || h != head || len(chain) != 3 || !chain[1].Write || chain[0].Write || chain[1].Len != 512 {
			t.Fatalf("round %d: head %d/%d chain %+v ok %v err %v", i, h, head, chain, ok, err)
		}
		if err := q.Push(h, 513); err != nil {
			t.Fatal(err)
		}
		if idx := d.usedIdx(); idx != q.State.NextUsed {
			t.Fatalf("used idx %d, want %d", idx, q.State.NextUsed)
		}
		if id, n := d.usedEntry(q.State.NextUsed - 1); id != uint32(head) || n != 513 {
			t.Fatalf("used entry %d/%d", id, n)
		}
		if _, _, ok, _ := q.Pop(); ok {
			t.Fatal("popped from an empty queue")
		}
	}
	if q.State.NextAvail != uint16(65533+20-65536) {
		t.Fatalf("next avail %d", q.State.NextAvail)
	}
}

func TestQueueRejectsMalformedChains(t *testing.T) {
	d, q := newDriver(4)
	// A chain that loops back on itself.
	le := binary.LittleEndian
	for i := uint16(0); i < 2; i++ {
		e := d.mem[d.desc+16*uint64(i):]
		le.PutUint16(e[12:], descNext)
		le.PutUint16(e[14:], 1-i)
	}
	le.PutUint16(d.mem[d.avail+4:], 0)
	le.PutUint16(d.mem[d.avail+2:], 1)
	if _, _, _, err := q.Pop(); !errors.Is(err, ErrQueue) {
		t.Fatalf("looping chain: %v", err)
	}
	// A driver claiming more buffers than the queue holds.
	d2, q2 := newDriver(4)
	le.PutUint16(d2.mem[d2.avail+2:], 9)
	if _, _, _, err := q2.Pop(); !errors.Is(err, ErrQueue) {
		t.Fatalf("index too far ahead: %v", err)
	}
	// Out-of-range descriptor index.
	d3, q3 := newDriver(4)
	le.PutUint16(d3.mem[d3.avail+4:], 7)
	le.PutUint16(d3.mem[d3.avail+2:], 1)
	if _, _, _, err := q3.Pop(); !errors.Is(err, ErrQueue) {
		t.Fatalf("descriptor index out of range: %v", err)
	}
}

func TestBlockRequests(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	img := make([]byte, 64*sectorSize)
	for i := range img {
		img[i] = byte(i / sectorSize)
	}
	os.WriteFile(path, img, 0o644)
	for _, ro := range []bool{false, true} {
		b, err := OpenBlock(path, ro, "rootfs-serial-id-0123456789")
		if err != nil {
			t.Fatal(err)
		}
		d, q := newDriver(16)
		irqs := 0
		b.Activate(FeatureVersion1, []*Queue{q}, func() { irqs++ })
		req := func(typ uint32, sector uint64, data buf) byte {
			hdr := d.mem[0x10000:]
			binary.LittleEndian.PutUint32(hdr[0:], typ)
			binary.LittleEndian.PutUint64(hdr[8:], sector)
			d.mem[0x30000] = 0xff
			d.add(buf{0x10000, 16, false}, data, buf{0x30000, 1, true})
			b.Notify(0)
			if b.Err != nil {
				t.Fatal(b.Err)
			}
			return d.mem[0x30000]
		}
		if st := req(blkTIn, 3, buf{0x20000, 2 * sectorSize, true}); st != blkSOK || d.mem[0x20000] != 3 || d.mem[0x20000+sectorSize] != 4 {
			t.Fatalf("read: status %d, data %d %d", st, d.mem[0x20000], d.mem[0x20000+sectorSize])
		}
		for i := 0; i < sectorSize; i++ {
			d.mem[0x40000+i] = 0xab
		}
		st := req(blkTOut, 5, buf{0x40000, sectorSize, false})
		if ro && st != blkSIOErr || !ro && st != blkSOK {
			t.Fatalf("write (ro=%v): status %d", ro, st)
		}
		if st := req(blkTFlush, 0, buf{0x50000, 0, false}); st != blkSOK {
			t.Fatalf("flush: %d", st)
		}
		if st := req(blkTGetID, 0, buf{0x50000, 20, true}); st != blkSOK || string(d.mem[0x50000:0x50014]) != "rootfs-serial-id-012" {
			t.Fatalf("get id: %d %q", st, d.mem[0x50000:0x50014])
		}
		if st := req(blkTIn, 63, buf{0x20000, 2 * sectorSize, true}); st != blkSIOErr {
			t.Fatalf("read past the end: %d", st)
		}
		if st := req(99, 0, buf{0x20000, 8, true}); st != blkSUnsupp {
			t.Fatalf("unknown type: %d", st)
		}
		if irqs != 6 {
			t.Fatalf("%d interrupts for 6 requests", irqs)
		}
		var cfg [8]byte
		b.ReadConfig(0, cfg[:])
		if binary.LittleEndian.Uint64(cfg[:]) != 64 {
			t.Fatalf("capacity %d", binary.LittleEndian.Uint64(cfg[:]))
		}
		if got := b.Features()&blkFRO != 0; got != ro {
			t.Fatalf("RO feature %v", got)
		}
		b.Close()
	}
	got, _ := os.ReadFile(path)
	if got[5*sectorSize] != 0xab {
		t.Fatal("write did not reach the file")
	}
}

func TestMMIONegotiation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(path, make([]byte, 4096), 0o644)
	b, _ := OpenBlock(path, true, "x")
	defer b.Close()
	d, _ := newDriver(16)
	m := NewMMIO(b, d.mem, func() {}, nil)
	r := func(off uint64) uint32 {
		var v [4]byte
		m.Read(off, v[:])
		return binary.LittleEndian.Uint32(v[:])
	}
	w := func(off uint64, v uint32) {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], v)
		m.Write(off, b[:])
	}
	if r(regMagic) != magicValue || r(regVersion) != 2 || r(regDeviceID) != TypeBlock {
		t.Fatal("identification registers")
	}
	w(regStatus, statusAcknowledge|statusDriver)
	w(regDeviceFeatSel, 1)
	if r(regDeviceFeatures)&1 == 0 {
		t.Fatal("VERSION_1 not offered")
	}
	// Without VERSION_1, FEATURES_OK does not stick.
	w(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK)
	if r(regStatus)&statusFeaturesOK != 0 {
		t.Fatal("FEATURES_OK accepted without VERSION_1")
	}
	w(regDriverFeatSel, 1)
	w(regDriverFeatures, 1)
	w(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK)
	if r(regStatus)&statusFeaturesOK == 0 {
		t.Fatal("FEATURES_OK refused")
	}
	w(regQueueSel, 0)
	if r(regQueueNumMax) != 256 {
		t.Fatalf("queue max %d", r(regQueueNumMax))
	}
	w(regQueueNum, 16)
	w(regQueueDescLow, uint32(d.desc))
	w(regQueueDriverLow, uint32(d.avail))
	w(regQueueDeviceLow, uint32(d.used))
	w(regQueueReady, 1)
	w(regStatus, statusAcknowledge|statusDriver|statusFeaturesOK|statusDriverOK)
	if !m.State.Activated || r(regStatus)&statusNeedsReset != 0 {
		t.Fatal("device not activated")
	}
	st := m.SaveState()
	if len(st.Queues) != 1 || st.Queues[0].DescAddr != d.desc || st.Queues[0].Size != 16 {
		t.Fatalf("saved state %+v", st)
	}
	w(regStatus, 0)
	if m.State.Activated || r(regStatus) != 0 || m.queues[0].State.Ready {
		t.Fatal("reset left state behind")
	}
}

func TestRingIndexWords(t *testing.T) {
	mem := make(flatMem, 64)
	for i := range mem {
		mem[i] = byte(i)
	}
	// Both halves of an aligned word, each without touching the other.
	if err := store16(mem, 8, 0xa1b2); err != nil {
		t.Fatal(err)
	}
	if err := store16(mem, 14, 0xc3d4); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if got := le.Uint16(mem[8:]); got != 0xa1b2 {
		t.Fatalf("low half %#x", got)
	}
	if got := le.Uint16(mem[10:]); got != 0x0b0a {
		t.Fatalf("store16 at 8 changed bytes 10-11 to %#x", got)
	}
	if got := le.Uint16(mem[12:]); got != 0x0d0c {
		t.Fatalf("store16 at 14 changed bytes 12-13 to %#x", got)
	}
	if got := le.Uint16(mem[14:]); got != 0xc3d4 {
		t.Fatalf("high half %#x", got)
	}
	for addr, want := range map[uint64]uint16{8: 0xa1b2, 10: 0x0b0a, 12: 0x0d0c, 14: 0xc3d4} {
		if got, err := load16(mem, addr); err != nil || got != want {
			t.Fatalf("load16(%d) = %#x, %v; want %#x", addr, got, err, want)
		}
	}
	if _, err := load16(mem, 9); !errors.Is(err, ErrQueue) {
		t.Fatalf("odd address: %v", err)
	}
	if err := store16(mem, 62, 1); err != nil {
		t.Fatalf("last word: %v", err)
	}
	if _, err := load16(mem, 64); err == nil {
		t.Fatal("load16 past the end of memory succeeded")
	}
}
