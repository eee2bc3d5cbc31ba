//go:build linux && amd64

package testguest

// A minimal KVM runner, independent of the real VMM: it boots the guest
// through the Linux 64-bit entry with vmm/arch's layout (zero page, page
// tables, GDT, ELF loader) and emulates just enough — the UART's THR/LSR,
// the snapshot port, the i8042 reset and one modern virtio-mmio vsock
// device with a scripted host — to check the guest's 64-bit path and its
// vsock driver on this machine's KVM. Skipped where /dev/kvm cannot be
// opened; any later KVM failure fails the test.

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/snapfaas/snapfaas/internal/testutil"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/vmm/arch"
)

const (
	kvmGetAPIVersion       = 0xae00
	kvmCreateVM            = 0xae01
	kvmGetVCPUMmapSize     = 0xae04
	kvmGetSupportedCPUID   = 0xc008ae05
	kvmCreateVCPU          = 0xae41
	kvmSetUserMemoryRegion = 0x4020ae46
	kvmSetTSSAddr          = 0xae47
	kvmRun                 = 0xae80
	kvmGetRegs             = 0x8090ae81
	kvmSetRegs             = 0x4090ae82
	kvmGetSregs            = 0x8138ae83
	kvmSetSregs            = 0x4138ae84
	kvmSetCPUID2           = 0x4008ae90

	kvmExitIO            = 2
	kvmExitHLT           = 5
	kvmExitMMIO          = 6
	kvmExitShutdown      = 8
	kvmExitFailEntry     = 9
	kvmExitInternalError = 17
)

func ioctl(fd int, req uintptr, arg uintptr) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return r, e
	}
	return r, nil
}

type kvmRegs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFlags                            uint64
}

type kvmSegment struct {
	Base                         uint64
	Limit                        uint32
	Selector                     uint16
	Type, Present, DPL, DB, S, L uint8
	G, AVL, Unusable, padding    uint8
}

type kvmDtable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

type kvmSregs struct {
	CS, DS, ES, FS, GS, SS, TR, LDT kvmSegment
	GDT, IDT                        kvmDtable
	CR0, CR2, CR3, CR4, CR8         uint64
	EFER, APICBase                  uint64
	InterruptBitmap                 [4]uint64
}

func kvmSeg(s arch.Segment) kvmSegment {
	return kvmSegment{Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type, Present: s.Present,
		DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL}
}

type kvmResult struct {
	reason    string // "reset", "hlt", "shutdown", "emulation-failure", "timeout"
	rip       uint64 // at an emulation failure
	serial    string
	snapshots []byte
	// timing: first serial byte, snapshot point 123, end.
	tSerial, tBootDone, tEnd time.Duration
}

type kvmVM struct {
	kvm, vm, vcpu int
	mem, run      []byte
	dev           *vsockDev
	tid           atomic.Int32
	stopped       atomic.Bool
}

func newKVM(t *testing.T, memSize int) *kvmVM {
	if testing.Short() {
		t.Skip("-short: the guest runs for seconds under an emulating KVM")
	}
	kvm, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no KVM: cannot open /dev/kvm: %v", err)
	}
	v := &kvmVM{kvm: kvm, vm: -1, vcpu: -1}
	t.Cleanup(v.close)
	if n, err := ioctl(kvm, kvmGetAPIVersion, 0); err != nil || n != 12 {
		t.Fatalf("KVM_GET_API_VERSION: %d, %v; want 12", n, err)
	}
	vm, err := ioctl(kvm, kvmCreateVM, 0)
	if err != nil {
		t.Fatalf("KVM_CREATE_VM: %v", err)
	}
	v.vm = int(vm)
	ioctl(v.vm, kvmSetTSSAddr, arch.TSSAddress) // Intel wants it; harmless elsewhere
	v.mem, err = unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	region := struct {
		Slot, Flags                      uint32
		GuestPhys, MemorySize, UserspAdd uint64
	}{0, 0, 0, uint64(memSize), uint64(uintptr(unsafe.Pointer(&v.mem[0])))}
	if _, err := ioctl(v.vm, kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region))); err != nil {
		t.Fatalf("KVM_SET_USER_MEMORY_REGION: %v", err)
	}
	vcpu, err := ioctl(v.vm, kvmCreateVCPU, 0)
	if err != nil {
		t.Fatalf("KVM_CREATE_VCPU: %v", err)
	}
	v.vcpu = int(vcpu)
	size, err := ioctl(kvm, kvmGetVCPUMmapSize, 0)
	if err != nil {
		t.Fatal(err)
	}
	v.run, err = unix.Mmap(v.vcpu, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	// CPUID: KVM refuses EFER.LME unless the guest's CPUID has long mode.
	const nent = 256
	cpuid := make([]byte, 8+40*nent)
	binary.LittleEndian.PutUint32(cpuid, nent)
	if _, err := ioctl(kvm, kvmGetSupportedCPUID, uintptr(unsafe.Pointer(&cpuid[0]))); err != nil {
		t.Fatalf("KVM_GET_SUPPORTED_CPUID: %v", err)
	}
	if _, err := ioctl(v.vcpu, kvmSetCPUID2, uintptr(unsafe.Pointer(&cpuid[0]))); err != nil {
		t.Fatalf("KVM_SET_CPUID2: %v", err)
	}
	return v
}

func (v *kvmVM) close() {
	if v.run != nil {
		unix.Munmap(v.run)
	}
	for _, fd := range []int{v.vcpu, v.vm, v.kvm} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	if v.mem != nil {
		unix.Munmap(v.mem)
	}
}

// boot loads the guest and sets the vCPU up as the 64-bit boot protocol says.
func (v *kvmVM) boot(t *testing.T, elfPath, cmdline string) {
	f, err := os.Open(elfPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	k, err := arch.LoadKernel(v.mem, f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	if err := arch.WriteZeroPage(v.mem, arch.BootParams{Cmdline: cmdline, MemSize: uint64(len(v.mem))}); err != nil {
		t.Fatal(err)
	}
	st, err := arch.SetupLongMode(v.mem, k.Entry)
	if err != nil {
		t.Fatal(err)
	}
	var s kvmSregs
	if _, err := ioctl(v.vcpu, kvmGetSregs, uintptr(unsafe.Pointer(&s))); err != nil {
		t.Fatal(err)
	}
	code, data := kvmSeg(st.Segments.Code), kvmSeg(st.Segments.Data)
	s.CS, s.DS, s.ES, s.FS, s.GS, s.SS = code, data, data, data, data, data
	s.TR = kvmSeg(st.Segments.TSS)
	s.GDT = kvmDtable{Base: st.Segments.GDTBase, Limit: st.Segments.GDTLimit}
	s.IDT = kvmDtable{Base: st.Segments.IDTBase, Limit: st.Segments.IDTLimit}
	s.CR0, s.CR3, s.CR4, s.EFER = st.CR0, st.CR3, st.CR4, st.EFER
	if _, err := ioctl(v.vcpu, kvmSetSregs, uintptr(unsafe.Pointer(&s))); err != nil {
		t.Fatalf("KVM_SET_SREGS (long mode): %v", err)
	}
	r := kvmRegs{RIP: st.RIP, RSP: st.RSP, RSI: st.RSI, RFlags: st.RFlags}
	if _, err := ioctl(v.vcpu, kvmSetRegs, uintptr(unsafe.Pointer(&r))); err != nil {
		t.Fatal(err)
	}
}

func (v *kvmVM) regs() kvmRegs {
	var r kvmRegs
	ioctl(v.vcpu, kvmGetRegs, uintptr(unsafe.Pointer(&r)))
	return r
}

// runUntil runs the vCPU on a locked thread until the guest resets, halts
// or shuts down, or timeout passes.
func (v *kvmVM) runUntil(t *testing.T, timeout time.Duration) kvmResult {
	type out struct {
		res kvmResult
		err error
	}
	ch := make(chan out, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		v.tid.Store(int32(unix.Gettid()))
		res, err := v.loop()
		ch <- out{res, err}
	}()
	timer := time.AfterFunc(timeout, func() {
		v.stopped.Store(true)
		v.run[1] = 1 // immediate_exit
		if tid := v.tid.Load(); tid != 0 {
			unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
		}
	})
	defer timer.Stop()
	o := <-ch
	if o.err != nil {
		t.Fatalf("%v\nserial:\n%s", o.err, o.res.serial)
	}
	return o.res
}

func (v *kvmVM) loop() (res kvmResult, err error) {
	var serial strings.Builder
	le := binary.LittleEndian
	t0 := time.Now()
	defer func() { res.serial, res.tEnd = serial.String(), time.Since(t0) }()
	for {
		if v.stopped.Load() {
			res.reason = "timeout"
			return res, nil
		}
		if _, err := ioctl(v.vcpu, kvmRun, 0); err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			return res, fmt.Errorf("KVM_RUN: %v", err)
		}
		switch reason := le.Uint32(v.run[8:]); reason {
		case kvmExitIO:
			dir, size, port := v.run[32], v.run[33], le.Uint16(v.run[34:])
			count, off := le.Uint32(v.run[36:]), le.Uint64(v.run[40:])
			data := v.run[off : off+uint64(size)*uint64(count)]
			if dir == 0 { // in
				for i := range data {
					data[i] = 0xff
				}
				if port == arch.PortCOM1+5 {
					data[0] = 0x60 // LSR: THR empty, idle
				}
				continue
			}
			switch port {
			case arch.PortCOM1:
				if serial.Len() == 0 {
					res.tSerial = time.Since(t0)
				}
				serial.Write(data)
			case arch.PortSnapshot:
				if data[0] == SnapshotBootDone {
					res.tBootDone = time.Since(t0)
				}
				res.snapshots = append(res.snapshots, data[0])
			case arch.PortI8042Cmd:
				if data[0] == 0xfe {
					res.reason = "reset"
					return res, nil
				}
			}
		case kvmExitMMIO:
			addr, n, write := le.Uint64(v.run[32:]), le.Uint32(v.run[48:]), v.run[52] != 0
			data := v.run[40 : 40+n]
			if v.dev == nil || addr < arch.VirtioMMIOBase || addr >= arch.VirtioMMIOBase+arch.VirtioMMIOSize || n != 4 {
				if !write {
					for i := range data {
						data[i] = 0xff
					}
				}
				continue
			}
			off := uint32(addr - arch.VirtioMMIOBase)
			if write {
				v.dev.write(off, le.Uint32(data))
			} else {
				le.PutUint32(data, v.dev.read(off))
			}
		case kvmExitHLT:
			res.reason = "hlt"
			return res, nil
		case kvmExitShutdown:
			res.reason = "shutdown"
			return res, nil
		case kvmExitInternalError:
			if le.Uint32(v.run[32:]) == 1 { // KVM_INTERNAL_ERROR_EMULATION
				res.reason, res.rip = "emulation-failure", v.regs().RIP
				return res, nil
			}
			return res, fmt.Errorf("KVM internal error %#x at rip %#x", le.Uint32(v.run[32:]), v.regs().RIP)
		case kvmExitFailEntry:
			return res, fmt.Errorf("KVM exit %d (suberror/reason %#x) at rip %#x", reason, le.Uint64(v.run[32:]), v.regs().RIP)
		default:
			return res, fmt.Errorf("unexpected KVM exit %d at rip %#x", reason, v.regs().RIP)
		}
	}
}

func TestKVMStructSizes(t *testing.T) {
	if n := unsafe.Sizeof(kvmSregs{}); n != 312 {
		t.Errorf("kvm_sregs %d bytes", n)
	}
	if n := unsafe.Sizeof(kvmRegs{}); n != 144 {
		t.Errorf("kvm_regs %d bytes", n)
	}
}

func TestKVMBootLinux64(t *testing.T) {
	elfPath := guestELF(t)
	v := newKVM(t, 64<<20)
	const seed = 3
	v.boot(t, elfPath, fmt.Sprintf("testguest.heap_mb=1 testguest.seed=%d", seed))
	start := time.Now()
	res := v.runUntil(t, 120*time.Second)
	t.Logf("%s after %v (first output %v, boot done %v):\n%s", res.reason, time.Since(start), res.tSerial, res.tBootDone, res.serial)
	c := ParseConsole(res.serial)
	if res.reason != "hlt" || !c.Banner || !c.Ready || c.Disk != "none" || c.HeapPages != 256 ||
		!strings.HasSuffix(c.Config, "boot=linux64") || string(res.snapshots) != "\x7b\x7c" {
		t.Fatalf("reason %s, snapshots %v, console %+v", res.reason, res.snapshots, c)
	}
	for _, p := range []uint64{0, 1, 255} {
		got := v.mem[c.HeapAddr+p*PageSize : c.HeapAddr+(p+1)*PageSize]
		if string(got) != string(PageBytes(seed, p, 0)) {
			t.Fatalf("heap page %d differs", p)
		}
	}
}

func TestKVMFaults(t *testing.T) {
	elfPath := guestELF(t)
	v := newKVM(t, 64<<20)
	v.boot(t, elfPath, "testguest.fault=sse")
	res := v.runUntil(t, 60*time.Second)
	t.Logf("sse: %s at %#x:\n%s", res.reason, res.rip, res.serial)
	// With hardware SSE decoding the guest sees #UD (CR4.OSFXSR is clear)
	// and prints it; under KVM's instruction emulator the instruction
	// cannot be emulated and KVM reports an emulation failure at it.
	c := ParseConsole(res.serial)
	switch res.reason {
	case "reset":
		if !strings.HasPrefix(c.Exception, "EXCEPTION vector=6 ") {
			t.Errorf("sse: exception %q", c.Exception)
		}
	case "emulation-failure":
		if want := testutil.ELFSymbol(t, elfPath, "fault_sse"); res.rip != want {
			t.Errorf("sse: emulation failure at %#x, fault_sse is %#x", res.rip, want)
		}
	default:
		t.Errorf("sse: %s", res.reason)
	}

	v = newKVM(t, 64<<20)
	v.boot(t, elfPath, "testguest.fault=triple")
	res = v.runUntil(t, 60*time.Second)
	t.Logf("triple: %s:\n%s", res.reason, res.serial)
	if c := ParseConsole(res.serial); res.reason != "shutdown" || c.Exception != "" || len(c.Lines) != 2 {
		t.Errorf("triple: %s, lines %q", res.reason, c.Lines)
	}
}

// ------------------------------------------------------------- vsock

// vsockDev is a modern virtio-mmio vsock device whose host side is a
// scripted peer listening on one port.
type vsockDev struct {
	t   *testing.T
	mem []byte
	mu  sync.Mutex

	status, devFeatSel, drvFeatSel, queueSel uint32
	drvFeatures                              uint64
	intStatus                                uint32
	q                                        [3]vqState
	cid                                      uint64

	// The host peer.
	port, refuse       uint32 // listening port; REQUESTs to refuse first
	guestPort          uint32
	connected          bool
	hostBufAlloc       uint32 // what the host advertises
	hostFwd, advFwd    uint32 // bytes consumed; last fwd_cnt sent
	recvd              uint32 // stream bytes received
	guestBuf, guestFwd uint32 // the guest's credit info
	hostTx             uint32
	pending            [][]byte // packets waiting for RX buffers
	out                []byte   // stream bytes waiting for guest credit
	stream             []byte   // bytes from the guest not yet framed
	responses          []Response
	ops                map[uint16]int // ops received
	errs               []string
}

type vqState struct {
	num, ready         uint32
	desc, avail, used  uint64
	lastAvail, usedIdx uint16
}

const (
	vsHdr                                                                                         = 44
	vsOpRequest, vsOpResponse, vsOpRst, vsOpShutdown, vsOpRW, vsOpCreditUpdate, vsOpCreditRequest = 1, 2, 3, 4, 5, 6, 7
)

func (d *vsockDev) errorf(format string, args ...any) {
	d.errs = append(d.errs, fmt.Sprintf(format, args...))
}

func (d *vsockDev) read(off uint32) uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	q := &d.q[min(d.queueSel, 2)]
	switch off {
	case 0x000:
		return 0x74726976
	case 0x004:
		return 2
	case 0x008:
		return 19
	case 0x00c:
		return 0x554d4551
	case 0x010:
		if d.devFeatSel == 1 {
			return 1 // VIRTIO_F_VERSION_1
		}
		return 1 << 0 // VIRTIO_VSOCK_F_STREAM: offered, the guest must not take it
	case 0x034:
		return 256
	case 0x044:
		return q.ready
	case 0x060:
		return d.intStatus
	case 0x070:
		return d.status
	case 0x0fc:
		return 0
	case 0x100:
		return uint32(d.cid)
	case 0x104:
		return uint32(d.cid >> 32)
	}
	d.errorf("read of register %#x", off)
	return 0
}

func (d *vsockDev) write(off, val uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	q := &d.q[min(d.queueSel, 2)]
	set := func(p *uint64, high bool) {
		if high {
			*p = *p&0xffffffff | uint64(val)<<32
		} else {
			*p = *p&^0xffffffff | uint64(val)
		}
	}
	switch off {
	case 0x014:
		d.devFeatSel = val
	case 0x020:
		d.drvFeatures = d.drvFeatures&^(0xffffffff<<(32*uint64(d.drvFeatSel&1))) | uint64(val)<<(32*uint64(d.drvFeatSel&1))
	case 0x024:
		d.drvFeatSel = val
	case 0x030:
		if val > 2 {
			d.errorf("QueueSel %d", val)
		}
		d.queueSel = val
	case 0x038:
		if val == 0 || val > 256 || val&(val-1) != 0 {
			d.errorf("QueueNum %d", val)
		}
		q.num = val
	case 0x044:
		q.ready = val
	case 0x050:
		if d.status&4 == 0 {
			d.errorf("notify before DRIVER_OK")
		}
		if val == 1 {
			d.processTX()
		}
		d.deliver()
	case 0x064:
		d.intStatus &^= val
	case 0x070:
		if val == 0 { // reset
			d.status, d.drvFeatures, d.intStatus, d.queueSel, d.q = 0, 0, 0, 0, [3]vqState{}
			return
		}
		if val&8 != 0 && d.drvFeatures != 1<<32 {
			d.errorf("driver features %#x, want only VERSION_1", d.drvFeatures)
		}
		d.status = val
	case 0x080, 0x084:
		set(&q.desc, off == 0x084)
	case 0x090, 0x094:
		set(&q.avail, off == 0x094)
	case 0x0a0, 0x0a4:
		set(&q.used, off == 0x0a4)
	default:
		d.errorf("write of register %#x", off)
	}
}

func (d *vsockDev) u16(a uint64) uint16 { return binary.LittleEndian.Uint16(d.mem[a:]) }

// avail returns the next available head, if any.
func (d *vsockDev) avail(q *vqState) (uint16, bool) {
	idx := uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&d.mem[q.avail]))) >> 16)
	if idx == q.lastAvail {
		return 0, false
	}
	head := d.u16(q.avail + 4 + 2*uint64(q.lastAvail%uint16(q.num)))
	q.lastAvail++
	return head, true
}

func (d *vsockDev) putUsed(q *vqState, head uint16, n uint32) {
	e := q.used + 4 + 8*uint64(q.usedIdx%uint16(q.num))
	binary.LittleEndian.PutUint32(d.mem[e:], uint32(head))
	binary.LittleEndian.PutUint32(d.mem[e+4:], n)
	q.usedIdx++
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&d.mem[q.used])), uint32(q.usedIdx)<<16)
	d.intStatus |= 1
}

func (d *vsockDev) desc(q *vqState, i uint16) (addr uint64, n uint32, flags, next uint16) {
	a := q.desc + 16*uint64(i)
	le := binary.LittleEndian
	return le.Uint64(d.mem[a:]), le.Uint32(d.mem[a+8:]), le.Uint16(d.mem[a+12:]), le.Uint16(d.mem[a+14:])
}

func (d *vsockDev) processTX() {
	q := &d.q[1]
	for {
		head, ok := d.avail(q)
		if !ok {
			return
		}
		var pkt []byte
		for i, n := head, 0; ; n++ {
			addr, l, flags, next := d.desc(q, i)
			if flags&2 != 0 || n > 4 {
				d.errorf("bad TX chain")
				break
			}
			pkt = append(pkt, d.mem[addr:addr+uint64(l)]...)
			if flags&1 == 0 {
				break
			}
			i = next
		}
		d.putUsed(q, head, 0)
		d.handle(pkt)
	}
}

type vsHeader struct {
	SrcCID, DstCID          uint64
	SrcPort, DstPort, Len   uint32
	Type, Op                uint16
	Flags, BufAlloc, FwdCnt uint32
}

func (d *vsockDev) send(op uint16, payload []byte) {
	h := vsHeader{SrcCID: HostCID, DstCID: d.cid, SrcPort: d.port, DstPort: d.guestPort, Len: uint32(len(payload)),
		Type: 1, Op: op, BufAlloc: d.hostBufAlloc, FwdCnt: d.hostFwd}
	b := make([]byte, vsHdr, vsHdr+len(payload))
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.SrcCID)
	le.PutUint64(b[8:], h.DstCID)
	le.PutUint32(b[16:], h.SrcPort)
	le.PutUint32(b[20:], h.DstPort)
	le.PutUint32(b[24:], h.Len)
	le.PutUint16(b[28:], h.Type)
	le.PutUint16(b[30:], h.Op)
	le.PutUint32(b[32:], h.Flags)
	le.PutUint32(b[36:], h.BufAlloc)
	le.PutUint32(b[40:], h.FwdCnt)
	if op == vsOpRW {
		d.hostTx += uint32(len(payload))
	}
	d.pending = append(d.pending, append(b, payload...))
}

// pump moves queued stream bytes into RW packets within the guest's credit.
func (d *vsockDev) pump() {
	for d.connected && len(d.out) > 0 {
		credit := d.guestBuf - (d.hostTx - d.guestFwd)
		if credit == 0 || credit > d.guestBuf {
			return
		}
		n := min(uint32(len(d.out)), credit, 1000)
		d.send(vsOpRW, d.out[:n])
		d.out = d.out[n:]
	}
}

func (d *vsockDev) handle(p []byte) {
	le := binary.LittleEndian
	if len(p) < vsHdr {
		d.errorf("short packet")
		return
	}
	h := vsHeader{SrcCID: le.Uint64(p), DstCID: le.Uint64(p[8:]), SrcPort: le.Uint32(p[16:]), DstPort: le.Uint32(p[20:]),
		Len: le.Uint32(p[24:]), Type: le.Uint16(p[28:]), Op: le.Uint16(p[30:]), Flags: le.Uint32(p[32:]),
		BufAlloc: le.Uint32(p[36:]), FwdCnt: le.Uint32(p[40:])}
	payload := p[vsHdr:]
	if h.SrcCID != d.cid || h.DstCID != HostCID || h.Type != 1 || int(h.Len) != len(payload) {
		d.errorf("bad header %+v (payload %d)", h, len(payload))
		return
	}
	if h.DstPort != d.port {
		d.errorf("packet to port %d", h.DstPort)
		return
	}
	d.ops[h.Op]++
	if h.Op == vsOpRequest {
		d.guestPort = h.SrcPort
		if d.refuse > 0 {
			d.refuse--
			d.send(vsOpRst, nil)
			return
		}
		d.connected = true
		d.guestBuf, d.guestFwd, d.hostTx = h.BufAlloc, h.FwdCnt, 0
		d.send(vsOpResponse, nil)
		d.send(vsOpCreditRequest, nil) // the guest must answer with CREDIT_UPDATE
		d.pump()
		return
	}
	if !d.connected || h.SrcPort != d.guestPort {
		d.errorf("packet op %d from port %d while not connected", h.Op, h.SrcPort)
		return
	}
	d.guestBuf, d.guestFwd = h.BufAlloc, h.FwdCnt
	switch h.Op {
	case vsOpRW:
		d.recvd += h.Len
		if d.recvd-d.advFwd > d.hostBufAlloc {
			d.errorf("guest overran the host's credit: %d bytes beyond fwd_cnt %d (buf_alloc %d)", d.recvd-d.advFwd, d.advFwd, d.hostBufAlloc)
		}
		d.stream = append(d.stream, payload...)
		for len(d.stream) >= 4 {
			n := binary.BigEndian.Uint32(d.stream)
			if len(d.stream) < 4+int(n) {
				break
			}
			var r Response
			if err := json.Unmarshal(d.stream[4:4+n], &r); err != nil {
				d.errorf("response %q: %v", d.stream[4:4+n], err)
			}
			d.responses = append(d.responses, r)
			d.stream = d.stream[4+n:]
		}
		d.hostFwd = d.recvd // consumed at once; the guest learns it from our next packet
	case vsOpCreditRequest:
		d.send(vsOpCreditUpdate, nil)
	case vsOpCreditUpdate:
	default:
		d.errorf("unexpected op %d", h.Op)
	}
	d.pump()
}

// deliver puts pending packets into RX buffers.
func (d *vsockDev) deliver() {
	q := &d.q[0]
	if d.status&4 == 0 || q.ready == 0 {
		return
	}
	for len(d.pending) > 0 {
		head, ok := d.avail(q)
		if !ok {
			return
		}
		addr, l, flags, _ := d.desc(q, head)
		p := d.pending[0]
		if flags&2 == 0 || flags&1 != 0 || int(l) < len(p) {
			d.errorf("bad RX buffer: flags %#x len %d", flags, l)
			return
		}
		copy(d.mem[addr:], p)
		d.advFwd = binary.LittleEndian.Uint32(p[40:]) // the fwd_cnt the guest now knows
		d.putUsed(q, head, uint32(len(p)))
		d.pending = d.pending[1:]
	}
}

func TestKVMVsock(t *testing.T) {
	elfPath := guestELF(t)
	v := newKVM(t, 64<<20)
	const seed, heapMB, port = 11, 1, 5000
	heap := NewHeap(seed, heapMB)

	// The script: requests framed, padded with JSON whitespace so the total
	// exceeds the guest's 64 KiB buffer (credit must flow), and split into
	// packets of odd sizes by pump.
	var script []byte
	var want []Response
	add := func(req Request, pad int) {
		b, _ := json.Marshal(req)
		b = append(b[:len(b)-1], []byte(strings.Repeat(" ", pad)+"}")...)
		script = append(script, EncodeFrame(b)...)
		want = append(want, heap.Apply(req))
	}
	add(TouchRequest(1, 0, 1, 1, false), 0)
	add(TouchRequest(2, 0, 8, 1, true), 0)
	add(TouchRequest(3, 0, 8, 1, false), 12000)
	for i := uint64(0); i < 8; i++ {
		add(TouchRequest(10+i, i*7, 3, 30, i%2 == 0), 15000)
	}
	add(TouchRequest(30, 250, 10, 1, false), 0) // out of range
	script = append(script, EncodeFrame([]byte(`{"id":31,"op":"bogus"}`))...)
	want = append(want, Response{ID: 31, Error: "unknown op"})
	add(ExitRequest(99), 0)

	d := &vsockDev{t: t, mem: v.mem, cid: 3, port: port, refuse: 1, hostBufAlloc: 128, out: script, ops: map[uint16]int{}}
	v.dev = d
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the device's own thread: RX delivery while the guest polls
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Microsecond):
			}
			d.mu.Lock()
			d.deliver()
			d.mu.Unlock()
		}
	}()
	v.boot(t, elfPath, fmt.Sprintf("virtio_mmio.device=4K@%#x:%d testguest.heap_mb=%d testguest.seed=%d testguest.port=%d",
		arch.VirtioMMIOBase, arch.VirtioIRQBase, heapMB, seed, port))
	start := time.Now()
	res := v.runUntil(t, 180*time.Second)
	t.Logf("%s after %v (first output %v, boot done %v):\n%s", res.reason, time.Since(start), res.tSerial, res.tBootDone, res.serial)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.errs {
		t.Error(e)
	}
	if res.reason != "reset" || string(res.snapshots) != "\x7b\x7c" {
		t.Fatalf("reason %s, snapshots %v", res.reason, res.snapshots)
	}
	if len(d.responses) != len(want) {
		t.Fatalf("%d responses, want %d", len(d.responses), len(want))
	}
	for i := range want {
		if d.responses[i] != want[i] {
			t.Errorf("response %d: %+v, want %+v", i, d.responses[i], want[i])
		}
	}
	if d.ops[vsOpRequest] != 2 || d.ops[vsOpCreditUpdate] == 0 || d.ops[vsOpCreditRequest] == 0 {
		t.Errorf("guest sent ops %v: want 2 REQUESTs (one refused), CREDIT_UPDATEs and CREDIT_REQUESTs", d.ops)
	}
	for _, l := range []string{"virtio: 0xd0000000 irq 5: vsock", "vsock: cid 3 port 1025 connecting to 2:5000", "vsock: connected", "exit"} {
		if !strings.Contains(res.serial, l+"\n") {
			t.Errorf("no line %q", l)
		}
	}
}
