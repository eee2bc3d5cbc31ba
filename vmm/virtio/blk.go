package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// virtio-blk feature bits, request types and status values (virtio 1.2, 5.2).
const (
	blkFRO    = 1 << 5
	blkFFlush = 1 << 9

	blkTIn    = 0
	blkTOut   = 1
	blkTFlush = 4
	blkTGetID = 8

	blkSOK     = 0
	blkSIOErr  = 1
	blkSUnsupp = 2

	sectorSize = 512
	blkIDLen   = 20
)

// BlockState is a block device's state (the backing file is configuration).
type BlockState struct {
	Features uint64
}

// Block is a virtio-blk device backed by a file (a disk image, possibly on
// the store's FUSE mount). Requests are served synchronously.
type Block struct {
	State    BlockState
	file     *os.File
	readOnly bool
	id       string
	capacity uint64 // sectors
	queue    *Queue
	irq      func()
	// Err records the first I/O error, for the VMM to report.
	Err error
}

// OpenBlock opens path as a disk; id is the serial id the guest reads
// (VIRTIO_BLK_T_GET_ID), at most 20 bytes.
func OpenBlock(path string, readOnly bool, id string) (*Block, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk: %w", err)
	}
	if len(id) > blkIDLen {
		id = id[:blkIDLen]
	}
	return &Block{file: f, readOnly: readOnly, id: id, capacity: uint64(st.Size()) / sectorSize}, nil
}

// Close closes the backing file.
func (b *Block) Close() error { return b.file.Close() }

// Type implements Device.
func (b *Block) Type() uint32 { return TypeBlock }

// Features implements Device.
func (b *Block) Features() uint64 {
	f := uint64(blkFFlush)
	if b.readOnly {
		f |= blkFRO
	}
	return f
}

// QueueSizes implements Device: one request queue.
func (b *Block) QueueSizes() []uint16 { return []uint16{256} }

// ReadConfig implements Device: capacity (u64 sectors) at offset 0.
func (b *Block) ReadConfig(off uint64, data []byte) {
	var cfg [8]byte
	binary.LittleEndian.PutUint64(cfg[:], b.capacity)
	for i := range data {
		if o := off + uint64(i); o < uint64(len(cfg)) {
			data[i] = cfg[o]
		} else {
			data[i] = 0
		}
	}
}

// WriteConfig implements Device (nothing is writable).
func (b *Block) WriteConfig(uint64, []byte) {}

// Activate implements Device.
func (b *Block) Activate(features uint64, queues []*Queue, irq func()) error {
	b.State.Features = features
	b.queue, b.irq = queues[0], irq
	return nil
}

// Reset implements Device.
func (b *Block) Reset() { b.queue = nil }

// Notify implements Device: serve every available request.
func (b *Block) Notify(int) {
	q := b.queue
	if q == nil {
		return
	}
	served := false
	for {
		head, chain, ok, err := q.Pop()
		if err != nil {
			b.fail(err)
			return
		}
		if !ok {
			break
		}
		n, err := b.serve(q.mem, chain)
		if err != nil {
			b.fail(err)
			return
		}
		if err := q.Push(head, n); err != nil {
			b.fail(err)
			return
		}
		served = true
	}
	if served && q.NeedsInterrupt() && b.irq != nil {
		b.irq()
	}
}

func (b *Block) fail(err error) {
	if b.Err == nil {
		b.Err = err
	}
}

// serve handles one request: header, data descriptors, status byte. It
// returns the bytes written into guest buffers.
func (b *Block) serve(mem Memory, chain []Desc) (uint32, error) {
	if len(chain) < 2 || chain[0].Write || chain[0].Len < 16 || !chain[len(chain)-1].Write || chain[len(chain)-1].Len < 1 {
		return 0, fmt.Errorf("virtio-blk: request without header or status: %w", ErrQueue)
	}
	hdr, err := mem.Slice(chain[0].Addr, 16)
	if err != nil {
		return 0, err
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	status, err := mem.Slice(chain[len(chain)-1].Addr, 1)
	if err != nil {
		return 0, err
	}
	data := chain[1 : len(chain)-1]
	var written uint32
	st := byte(blkSOK)
	off := int64(sector) * sectorSize
	switch typ {
	case blkTIn, blkTOut:
		for _, d := range data {
			if d.Write != (typ == blkTIn) {
				return 0, fmt.Errorf("virtio-blk: data buffer direction: %w", ErrQueue)
			}
			buf, err := mem.Slice(d.Addr, int(d.Len))
			if err != nil {
				return 0, err
			}
			if uint64(off)+uint64(len(buf)) > b.capacity*sectorSize {
				st = blkSIOErr
				break
			}
			if typ == blkTIn {
				n, err := b.file.ReadAt(buf, off)
				if err != nil && !errors.Is(err, io.EOF) {
					st = blkSIOErr
					break
				}
				clear(buf[n:])
				written += d.Len
			} else if b.readOnly {
				st = blkSIOErr
				break
			} else if _, err := b.file.WriteAt(buf, off); err != nil {
				st = blkSIOErr
				break
			}
			off += int64(len(buf))
		}
	case blkTFlush:
		if !b.readOnly {
			if err := b.file.Sync(); err != nil {
				st = blkSIOErr
			}
		}
	case blkTGetID:
		if len(data) > 0 && data[0].Write {
			buf, err := mem.Slice(data[0].Addr, int(min(data[0].Len, blkIDLen)))
			if err != nil {
				return 0, err
			}
			clear(buf)
			copy(buf, b.id)
			written += uint32(len(buf))
		}
	default:
		st = blkSUnsupp
	}
	status[0] = st
	return written + 1, nil
}
