package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/snapfaas/snapfaas/uffd"
	"github.com/snapfaas/snapfaas/vmm/arch"
	"github.com/snapfaas/snapfaas/vmm/devices"
	"github.com/snapfaas/snapfaas/vmm/kvm"
	"github.com/snapfaas/snapfaas/vmm/virtio"
)

// Sentinel errors.
var (
	// ErrConfig: the VM configuration is unusable.
	ErrConfig = errors.New("bad VM configuration")
	// ErrReset: the guest asked for a reset (i8042 0xFE, or a reboot).
	// snapfaas VMs treat it as a clean power-off, like Firecracker.
	ErrReset = errors.New("guest reset")
	// ErrTripleFault: a vCPU shut down (KVM_EXIT_SHUTDOWN), a triple
	// fault on x86. Run returns it inside an *ExitError.
	ErrTripleFault = errors.New("guest shut down (triple fault)")
	// ErrEmulation: KVM's instruction emulator could not run an
	// instruction (KVM_EXIT_INTERNAL_ERROR, suberror 1: SSE, x87, XSAVE
	// on a PVM host). Run returns it inside an *ExitError.
	ErrEmulation = errors.New("KVM instruction emulation failed")
)

// DefaultCmdline is the command line given to Linux guests when none is
// set (Firecracker's, with the serial console on).
const DefaultCmdline = "console=ttyS0 reboot=k panic=1 pci=off nomodules 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"

// Config describes a VM to boot.
type Config struct {
	// Kernel is an ELF vmlinux or a bzImage.
	Kernel string
	// Cmdline is the kernel command line (DefaultCmdline if empty); the
	// VMM appends its virtio devices.
	Cmdline string
	MemMiB  int
	VCPUs   int
	// Initrd, if set, is an initrd (initramfs) file New loads into guest
	// memory for the kernel, as high as possible below the end of the
	// first RAM region and the kernel's initrd_addr_max (arch.LoadInitrd).
	// Restore ignores it: the snapshot's memory already holds it.
	Initrd string
	// Console receives the serial port's output (nil: discarded).
	Console io.Writer
	// HideEmulatorUnsafe hides CPU features an instruction emulator cannot
	// run (CX16, XSAVE, AVX, SSE3+, POPCNT...), for PVM hosts like ours.
	HideEmulatorUnsafe bool
	// OnSnapshotPoint is called on the vCPU thread when the guest writes
	// to the snapshot port (123 boot done, 124 snapshot now).
	OnSnapshotPoint func(value uint8)
	// PauseAt, if non-zero, pauses the whole VM when the guest writes this
	// value to the snapshot port; Paused() then delivers, and the VM waits
	// for Resume (after, say, SaveState) or to be stopped.
	PauseAt uint8
	// Disks are attached as virtio-blk devices, in order (rootfs first).
	Disks []Disk
	// Vsock, if set, attaches a virtio-vsock device bridged to Unix
	// sockets (Firecracker's hybrid vsock).
	Vsock *Vsock
	// Log receives device warnings (nil: slog.Default()).
	Log *slog.Logger
	// TrackDirty records which guest pages change (KVM dirty logging for
	// the guest's writes, the device model's own accesses beside it), for
	// diff snapshots: see DirtyPages.
	TrackDirty bool
}

// Vsock configures the virtio-vsock device: the guest's CID and the Unix
// socket path for host-initiated connections ("CONNECT <port>\n"); guest
// connections to CID 2 port P go to "<Path>_<P>".
type Vsock struct {
	CID  uint64
	Path string
}

// Disk is a virtio-blk disk backed by a file.
type Disk struct {
	Path     string
	ReadOnly bool
	// ID is the serial id the guest can read (e.g. "rootfs").
	ID string
}

// VM is a running (or ready) microVM.
type VM struct {
	cfg    Config
	sys    *kvm.System
	vm     *kvm.VM
	mem    []byte
	vcpus  []*kvm.VCPU
	pio    devices.Bus
	mmio   devices.Bus
	serial *devices.Serial
	disks  []*virtio.Block
	vsock  *virtio.Vsock
	// eventfds of the devices' irqfds
	eventfds []int
	// transports are the virtio-mmio devices in slot order.
	transports []*virtio.MMIO
	// uffd serves guest memory lazily, if LazyMemory was called; kept
	// open for the VM's life.
	uffd *uffd.FD
	// virtio lists the virtio-mmio devices for the kernel command line.
	virtio []string
	// devDirty marks the pages devices accessed, with TrackDirty.
	devDirty *pageBits
	// pendingReset: a restored VM's vsock transport reset, sent on Run.
	pendingReset bool
	// stateRestored: Restore has begun restoring vCPU and VM state, which
	// may have KVM write guest memory; too late for LazyMemory.
	stateRestored bool

	stopOnce sync.Once
	stopping atomic.Bool

	// Pausing: vCPUs park outside KVM_RUN while paused is set.
	pmu      sync.Mutex
	pcond    *sync.Cond
	paused   bool
	parked   int
	running  int
	pausedCh chan struct{}
	done     chan struct{}
	err      error
}

// New creates a VM: KVM objects, guest memory, the kernel and boot
// structures in memory, devices, and vCPUs in their entry state.
func New(cfg Config) (_ *VM, err error) {
	if cfg.Cmdline == "" {
		cfg.Cmdline = DefaultCmdline
	}
	kf, err := os.Open(cfg.Kernel)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	defer kf.Close()
	kst, err := kf.Stat()
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	vm, err := create(cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			vm.Close()
		}
	}()
	memSize := uint64(vm.cfg.MemMiB) << 20
	k, err := arch.LoadKernel(vm.mem, kf, kst.Size())
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", cfg.Kernel, err)
	}
	bp := arch.BootParams{SetupHeader: k.SetupHeader, Cmdline: vm.cmdline(), MemSize: memSize}
	if cfg.Initrd != "" {
		if bp.InitrdAddr, bp.InitrdSize, err = loadInitrd(vm.mem, k, cfg.Initrd); err != nil {
			return nil, err
		}
	}
	// Both descriptions of the vCPUs and interrupt controllers: the MP
	// table for kernels that parse it, ACPI for those built without.
	if err := arch.WriteMPTable(vm.mem, vm.cfg.VCPUs); err != nil {
		return nil, err
	}
	if bp.RSDPAddr, err = arch.WriteACPI(vm.mem, vm.cfg.VCPUs, len(vm.transports)); err != nil {
		return nil, err
	}
	if err := arch.WriteZeroPage(vm.mem, bp); err != nil {
		return nil, err
	}
	entry, err := arch.SetupLongMode(vm.mem, k.Entry)
	if err != nil {
		return nil, err
	}
	supported, err := vm.sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	msrIndex, err := vm.sys.MSRIndexList()
	if err != nil {
		return nil, err
	}
	msrs := bootMSRList(msrIndex)
	for i, c := range vm.vcpus {
		if err := setupVCPU(c, entry, guestCPUID(supported, i, vm.cfg.VCPUs, vm.cfg.HideEmulatorUnsafe), msrs); err != nil {
			return nil, fmt.Errorf("vCPU %d: %w", i, err)
		}
	}
	return vm, nil
}

// loadInitrd loads the initrd at path into mem for kernel k and returns
// its guest address and size for the zero page.
func loadInitrd(mem []byte, k *arch.Kernel, path string) (addr, size uint32, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("initrd: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("initrd: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, 0, fmt.Errorf("initrd %q: not a regular file: %w", path, ErrConfig)
	}
	a, err := arch.LoadInitrd(mem, k, f, st.Size())
	if err != nil {
		return 0, 0, fmt.Errorf("initrd %q: %w", path, err)
	}
	// LoadInitrd keeps it below the MMIO gap, so both fit in 32 bits.
	return uint32(a), uint32(st.Size()), nil
}

// create makes everything a VM has before it boots or is restored: KVM
// objects, guest memory, devices and (unconfigured) vCPUs.
func create(cfg Config) (_ *VM, err error) {
	if cfg.MemMiB <= 0 {
		cfg.MemMiB = 128
	}
	if cfg.VCPUs <= 0 {
		cfg.VCPUs = 1
	}
	if cfg.VCPUs > arch.MaxVCPUs {
		return nil, fmt.Errorf("%d vCPUs: at most %d: %w", cfg.VCPUs, arch.MaxVCPUs, ErrConfig)
	}
	if cfg.MemMiB < 16 {
		return nil, fmt.Errorf("%d MiB of memory: at least 16: %w", cfg.MemMiB, ErrConfig)
	}
	sys, err := kvm.Open()
	if err != nil {
		return nil, err
	}
	vm := &VM{cfg: cfg, sys: sys, done: make(chan struct{}), pausedCh: make(chan struct{}, 1)}
	vm.pcond = sync.NewCond(&vm.pmu)
	defer func() {
		if err != nil {
			vm.Close()
		}
	}()
	if vm.vm, err = sys.CreateVM(); err != nil {
		return nil, err
	}
	if err := vm.vm.SetTSSAddr(arch.TSSAddress); err != nil {
		return nil, err
	}
	if err := vm.vm.SetIdentityMapAddr(arch.IdentityMapAddress); err != nil {
		return nil, err
	}
	if err := vm.vm.CreateIRQChip(); err != nil {
		return nil, err
	}
	if err := vm.vm.CreatePIT2(); err != nil {
		return nil, err
	}
	if err := vm.maskPICs(); err != nil {
		return nil, err
	}
	memSize := uint64(cfg.MemMiB) << 20
	vm.mem, err = unix.Mmap(-1, 0, int(memSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("guest memory of %d MiB: %w", cfg.MemMiB, err)
	}
	base := hostAddr(vm.mem)
	for i, r := range arch.RAMRegions(memSize) {
		if err := vm.vm.SetMemory(uint32(i), r.Guest, r.Size, base+uintptr(r.Offset), cfg.TrackDirty); err != nil {
			return nil, err
		}
	}
	if cfg.TrackDirty {
		vm.devDirty = newPageBits(memSize / pageSize)
	}
	if err := vm.addLegacyDevices(); err != nil {
		return nil, err
	}
	if err := vm.addVirtioDevices(); err != nil {
		return nil, err
	}
	for i := 0; i < cfg.VCPUs; i++ {
		c, err := vm.vm.CreateVCPU(i)
		if err != nil {
			return nil, err
		}
		vm.vcpus = append(vm.vcpus, c)
	}
	return vm, nil
}

func (vm *VM) cmdline() string {
	return strings.TrimSpace(strings.Join(append([]string{vm.cfg.Cmdline}, vm.virtio...), " "))
}

// guestMemory gives devices bounds-checked access to guest memory; with
// dirty set it marks every page it hands out (devices may write them).
type guestMemory struct {
	mem   []byte
	dirty *pageBits
}

func (g guestMemory) Slice(addr uint64, n int) ([]byte, error) {
	off := addr
	if addr >= arch.MMIOGapEnd {
		off = addr - (arch.MMIOGapEnd - arch.MMIOGapStart)
	} else if addr+uint64(n) > arch.MMIOGapStart && addr < arch.MMIOGapEnd {
		return nil, fmt.Errorf("guest range %#x+%d is in the MMIO gap", addr, n)
	}
	if n < 0 || off+uint64(n) > uint64(len(g.mem)) || off+uint64(n) < off {
		return nil, fmt.Errorf("guest range %#x+%d is outside guest memory", addr, n)
	}
	if g.dirty != nil && n > 0 {
		g.dirty.setRange(off/pageSize, (off+uint64(n)-1)/pageSize)
	}
	return g.mem[off : off+uint64(n)], nil
}

// addVirtio puts a device behind a virtio-mmio transport at the next slot
// and announces it on the command line (the DSDT describes it too, from
// the same arch.VirtioSlot).
func (vm *VM) addVirtio(dev virtio.Device) error {
	base, irq := arch.VirtioSlot(len(vm.virtio))
	if irq > arch.IRQMax {
		return fmt.Errorf("too many virtio devices: %w", ErrConfig)
	}
	// The device interrupts through an irqfd: a write to the eventfd
	// raises the GSI in the in-kernel IOAPIC without a VM exit or ioctl.
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	vm.eventfds = append(vm.eventfds, efd)
	if err := vm.vm.IRQFD(efd, irq); err != nil {
		return err
	}
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	t := virtio.NewMMIO(dev, guestMemory{vm.mem, vm.devDirty}, func() { _, _ = unix.Write(efd, one) }, vm.log())
	if err := vm.mmio.Add(base, arch.VirtioMMIOSize, t); err != nil {
		return err
	}
	vm.transports = append(vm.transports, t)
	vm.virtio = append(vm.virtio, fmt.Sprintf("virtio_mmio.device=4K@%#x:%d", base, irq))
	return nil
}

func (vm *VM) addVirtioDevices() error {
	for _, d := range vm.cfg.Disks {
		b, err := virtio.OpenBlock(d.Path, d.ReadOnly, d.ID)
		if err != nil {
			return err
		}
		vm.disks = append(vm.disks, b)
		if err := vm.addVirtio(b); err != nil {
			return err
		}
	}
	if v := vm.cfg.Vsock; v != nil {
		cid := v.CID
		if cid == 0 {
			cid = 3
		}
		dev, err := virtio.NewVsock(cid, v.Path, vm.log())
		if err != nil {
			return err
		}
		vm.vsock = dev
		if err := vm.addVirtio(dev); err != nil {
			return err
		}
	}
	return nil
}

func (vm *VM) log() *slog.Logger {
	if vm.cfg.Log != nil {
		return vm.cfg.Log
	}
	return slog.Default()
}

// maskPICs masks every input of both 8259 PICs and gives them the vectors
// a PC BIOS does (0x08, 0x70). KVM creates them unprogrammed: all inputs
// unmasked, vector base 0. KVM's default routing sends GSIs 0-15 to the
// PICs as well as the IOAPIC, and the boot vCPU's LINT0 takes the PIC's
// output (ExtINT, as on a PC). A guest that never programs the PIC — Linux
// on our hardware-reduced ACPI platform has no legacy PIC — would then get
// each of our device interrupts a second time as a stray vector 0-15, an
// exception vector (COM1's IRQ 4 as #OF, a virtio IRQ 8 as #DF); stock
// kernels triple-faulted or stalled on a vCPU. A guest that uses the PIC
// initialises it and sets its own mask.
func (vm *VM) maskPICs() error {
	for chip, base := range map[uint32]uint8{kvm.ChipPICMaster: 0x08, kvm.ChipPICSlave: 0x70} {
		s, err := vm.vm.IRQChip(chip)
		if err != nil {
			return err
		}
		s.SetPICMask(0xff, base)
		if err := vm.vm.SetIRQChip(s); err != nil {
			return err
		}
	}
	return nil
}

func (vm *VM) addLegacyDevices() error {
	vm.serial = devices.NewSerial(vm.cfg.Console, func() {
		_ = vm.vm.IRQLine(arch.IRQCOM1, 1)
		_ = vm.vm.IRQLine(arch.IRQCOM1, 0)
	})
	if err := vm.pio.Add(arch.PortCOM1, 8, vm.serial); err != nil {
		return err
	}
	if err := vm.pio.Add(arch.PortCMOS, 2, &devices.CMOS{}); err != nil {
		return err
	}
	i8042 := &devices.I8042{Reset: func() { vm.stop(ErrReset) }}
	if err := vm.pio.Add(arch.PortI8042Data, 5, i8042); err != nil {
		return err
	}
	snap := &devices.SnapshotPort{Signal: func(v uint8) {
		if vm.cfg.OnSnapshotPoint != nil {
			vm.cfg.OnSnapshotPoint(v)
		}
		if vm.cfg.PauseAt != 0 && v == vm.cfg.PauseAt {
			vm.pauseForSnapshot()
		}
	}}
	return vm.pio.Add(arch.PortSnapshot, 1, snap)
}

// Memory returns guest memory (offset = guest physical address below the
// MMIO gap).
func (vm *VM) Memory() []byte { return vm.mem }

// Run runs the vCPUs until the guest powers off or resets (nil), fails
// (an *ExitError or another error), or ctx is done (ctx.Err()).
func (vm *VM) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { vm.stop(ctx.Err()) })
	defer stop()
	if vm.pendingReset {
		vm.pendingReset = false
		vm.vsock.TransportReset()
	}
	var wg sync.WaitGroup
	vm.pmu.Lock()
	vm.running = len(vm.vcpus)
	vm.pmu.Unlock()
	for _, c := range vm.vcpus {
		wg.Add(1)
		go func(c *kvm.VCPU) {
			defer wg.Done()
			if err := vm.runVCPU(c); err != nil {
				vm.stop(err)
			}
		}(c)
	}
	<-vm.done
	wg.Wait()
	if vm.vsock != nil {
		// The VM is over: its devices must not fault on guest memory
		// that nobody may serve any more (a lazily restored VM's).
		vm.vsock.Quiesce()
	}
	if errors.Is(vm.err, ErrReset) {
		return nil
	}
	return vm.err
}

// stop ends the VM with err (the first one wins) and kicks every vCPU.
func (vm *VM) stop(err error) {
	vm.stopOnce.Do(func() {
		vm.err = err
		vm.stopping.Store(true)
		close(vm.done)
		for _, c := range vm.vcpus {
			c.Kick()
		}
		vm.pmu.Lock()
		vm.pcond.Broadcast()
		vm.pmu.Unlock()
	})
}

// ErrStopped: the VM is not running.
var ErrStopped = errors.New("VM is not running")

// Pause stops every vCPU outside KVM_RUN (any I/O instruction in flight
// completed: each vCPU re-enters KVM_RUN with immediate_exit first) and
// returns when all are parked. vCPU, VM and device state can then be read
// consistently; Resume lets them go on.
func (vm *VM) Pause() error {
	if err := vm.beginPause(); err != nil {
		return err
	}
	return vm.waitParked()
}

// beginPause asks every vCPU to park.
func (vm *VM) beginPause() error {
	vm.pmu.Lock()
	defer vm.pmu.Unlock()
	if vm.stopping.Load() || vm.running == 0 {
		return ErrStopped
	}
	vm.paused = true
	for _, c := range vm.vcpus {
		c.Kick()
	}
	return nil
}

// waitParked returns when every running vCPU is parked.
func (vm *VM) waitParked() error {
	vm.pmu.Lock()
	defer vm.pmu.Unlock()
	for vm.parked < vm.running && !vm.stopping.Load() {
		vm.pcond.Wait()
	}
	if vm.stopping.Load() {
		return ErrStopped
	}
	return nil
}

// pauseForSnapshot pauses the VM on behalf of the guest's snapshot point
// and announces it on Paused. It runs on the vCPU thread that wrote the
// port, before that vCPU goes back into the guest, so the guest is
// stopped exactly at its snapshot point (other vCPUs stop within a kick).
func (vm *VM) pauseForSnapshot() {
	if vm.beginPause() != nil {
		return
	}
	go func() {
		if vm.waitParked() == nil {
			select {
			case vm.pausedCh <- struct{}{}:
			default:
			}
		}
	}()
}

// Paused delivers when the VM paused itself at Config.PauseAt.
func (vm *VM) Paused() <-chan struct{} { return vm.pausedCh }

// Resume lets paused vCPUs run again.
func (vm *VM) Resume() {
	vm.pmu.Lock()
	vm.paused = false
	vm.pcond.Broadcast()
	vm.pmu.Unlock()
}

func (vm *VM) isPaused() bool {
	vm.pmu.Lock()
	defer vm.pmu.Unlock()
	return vm.paused
}

// park blocks a vCPU while the VM is paused.
func (vm *VM) park() {
	vm.pmu.Lock()
	defer vm.pmu.Unlock()
	for vm.paused && !vm.stopping.Load() {
		vm.parked++
		vm.pcond.Broadcast()
		vm.pcond.Wait()
		vm.parked--
	}
}

// VCPUs returns the vCPUs, for reading their state while paused.
func (vm *VM) VCPUs() []*kvm.VCPU { return vm.vcpus }

func (vm *VM) exitError(c *kvm.VCPU, kind error, reason, detail string) error {
	e := &ExitError{VCPU: c.ID, Err: kind, Reason: reason, Detail: detail}
	e.Regs, _ = c.Regs()
	e.Sregs, _ = c.Sregs()
	return e
}

func (vm *VM) runVCPU(c *kvm.VCPU) error {
	defer func() {
		vm.pmu.Lock()
		vm.running--
		vm.pcond.Broadcast()
		vm.pmu.Unlock()
	}()
	for {
		if vm.stopping.Load() {
			return nil
		}
		if vm.isPaused() {
			// On VMX/SVM an I/O instruction completes on the next
			// KVM_RUN: enter once with immediate_exit so the state a
			// snapshot saves is after it (PVM completes it already).
			c.Kick()
			if _, err := c.Run(); err != nil {
				return fmt.Errorf("vCPU %d: %w", c.ID, err)
			}
			c.ClearKick()
		}
		vm.park()
		exit, err := c.Run()
		if err != nil {
			return fmt.Errorf("vCPU %d: %w", c.ID, err)
		}
		switch exit {
		case kvm.ExitIO:
			io := c.IOExit()
			for i := 0; i < io.Count; i++ {
				d := io.Data[i*io.Size : (i+1)*io.Size]
				if io.Direction == kvm.IOOut {
					vm.pio.Write(uint64(io.Port), d)
				} else {
					vm.pio.Read(uint64(io.Port), d)
				}
			}
		case kvm.ExitMMIO:
			m := c.MMIOExit()
			if m.IsWrite {
				vm.mmio.Write(m.Addr, m.Data)
			} else {
				vm.mmio.Read(m.Addr, m.Data)
			}
		case kvm.ExitIntr:
			c.ClearKick()
		case kvm.ExitHLT:
			return nil // without an in-kernel irqchip; never here with one
		case kvm.ExitShutdown:
			return vm.exitError(c, ErrTripleFault, "guest shut down (triple fault)", "")
		case kvm.ExitSystemEvent:
			switch c.SystemEvent() {
			case 1: // KVM_SYSTEM_EVENT_SHUTDOWN
				return ErrReset
			case 2: // KVM_SYSTEM_EVENT_RESET
				return ErrReset
			}
			return vm.exitError(c, nil, "system event", fmt.Sprint(c.SystemEvent()))
		case kvm.ExitInternalError:
			sub, data := c.InternalError()
			detail := fmt.Sprintf("suberror %d, data %#x", sub, data)
			var kind error
			if sub == 1 {
				kind = ErrEmulation
				detail = "emulation failure: the instruction emulator cannot run the instruction at rip (SSE/x87/XSAVE on a PVM host?); " + detail
			}
			return vm.exitError(c, kind, "KVM internal error", detail)
		case kvm.ExitFailEntry:
			return vm.exitError(c, nil, "VM entry failed", fmt.Sprintf("hardware reason %#x", c.FailEntry()))
		default:
			return vm.exitError(c, nil, fmt.Sprintf("unhandled exit %d", exit), "")
		}
	}
}

// Close releases everything.
func (vm *VM) Close() error {
	for _, d := range vm.disks {
		d.Close()
	}
	if vm.vsock != nil {
		vm.vsock.Close()
	}
	for _, fd := range vm.eventfds {
		unix.Close(fd)
	}
	if vm.uffd != nil {
		vm.uffd.Close()
	}
	for _, c := range vm.vcpus {
		c.Close()
	}
	if vm.vm != nil {
		vm.vm.Close()
	}
	if vm.mem != nil {
		unix.Munmap(vm.mem)
	}
	if vm.sys != nil {
		vm.sys.Close()
	}
	return nil
}
