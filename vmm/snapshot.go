package vmm

import (
	"encoding/json"
	"fmt"

	"github.com/snapfaas/snapfaas/vmm/devices"
	"github.com/snapfaas/snapfaas/vmm/kvm"
	"github.com/snapfaas/snapfaas/vmm/virtio"
)

// StateVersion is the version of the State encoding.
const StateVersion = 1

// VCPUState is everything KVM keeps for one vCPU.
type VCPUState struct {
	Regs      kvm.Regs
	Sregs     kvm.Sregs
	FPU       kvm.FPU
	XSave     kvm.XSave
	XCRs      kvm.XCRs
	DebugRegs kvm.DebugRegs
	LAPIC     kvm.LAPIC
	Events    kvm.VCPUEvents
	MPState   uint32
	MSRs      []kvm.MSREntry
	CPUID     []kvm.CPUIDEntry
}

// State is a paused VM's complete state but its memory: the machine
// (vCPUs, interrupt controllers, PIT, clock) and every device. Memory is
// saved separately (to the store, page by page).
type State struct {
	Version int
	MemMiB  int
	VCPUs   []VCPUState
	Clock   kvm.Clock
	PIC     [2]kvm.IRQChip
	IOAPIC  kvm.IRQChip
	PIT     kvm.PIT2
	Serial  devices.SerialState
	// Virtio holds the transports in device order (disks, then vsock).
	Virtio []virtio.MMIOState
	Vsock  *virtio.VsockState `json:",omitempty"`
}

// Marshal encodes the state for the catalog's vmstate blob.
func (s *State) Marshal() ([]byte, error) { return json.Marshal(s) }

// UnmarshalState decodes a vmstate blob.
func UnmarshalState(b []byte) (*State, error) {
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("VM state: %w", err)
	}
	if s.Version != StateVersion {
		return nil, fmt.Errorf("VM state version %d, this VMM reads %d", s.Version, StateVersion)
	}
	return &s, nil
}

// SaveState captures the state of a paused VM (see Pause).
func (vm *VM) SaveState() (*State, error) {
	vm.pmu.Lock()
	paused := vm.paused && vm.parked == vm.running
	vm.pmu.Unlock()
	if !paused {
		return nil, fmt.Errorf("save state: the VM must be paused")
	}
	st := &State{Version: StateVersion, MemMiB: vm.cfg.MemMiB}
	var err error
	if st.Clock, err = vm.vm.Clock(); err != nil {
		return nil, err
	}
	for i, chip := range []uint32{kvm.ChipPICMaster, kvm.ChipPICSlave} {
		if st.PIC[i], err = vm.vm.IRQChip(chip); err != nil {
			return nil, err
		}
	}
	if st.IOAPIC, err = vm.vm.IRQChip(kvm.ChipIOAPIC); err != nil {
		return nil, err
	}
	if st.PIT, err = vm.vm.PIT2(); err != nil {
		return nil, err
	}
	msrIndex, err := vm.sys.MSRIndexList()
	if err != nil {
		return nil, err
	}
	supported, err := vm.sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	for i, c := range vm.vcpus {
		var v VCPUState
		if v.Regs, err = c.Regs(); err != nil {
			return nil, err
		}
		if v.Sregs, err = c.Sregs(); err != nil {
			return nil, err
		}
		if v.FPU, err = c.FPU(); err != nil {
			return nil, err
		}
		if v.XSave, err = c.XSave(); err != nil {
			return nil, err
		}
		if v.XCRs, err = c.XCRs(); err != nil {
			return nil, err
		}
		if v.DebugRegs, err = c.DebugRegs(); err != nil {
			return nil, err
		}
		if v.LAPIC, err = c.LAPIC(); err != nil {
			return nil, err
		}
		if v.Events, err = c.Events(); err != nil {
			return nil, err
		}
		if v.MPState, err = c.MPState(); err != nil {
			return nil, err
		}
		if v.MSRs, err = c.MSRs(msrIndex); err != nil {
			return nil, err
		}
		v.CPUID = guestCPUID(supported, i, len(vm.vcpus), vm.cfg.HideEmulatorUnsafe)
		st.VCPUs = append(st.VCPUs, v)
	}
	st.Serial = vm.serial.State
	for _, t := range vm.transports {
		st.Virtio = append(st.Virtio, t.SaveState())
	}
	if vm.vsock != nil {
		vs := vm.vsock.State
		st.Vsock = &vs
	}
	return st, nil
}

// Memory gives a VM being restored its guest memory: Restore calls it on
// the new VM before it restores any vCPU, device or VM state. That order
// is the rule for lazy restores: restoring state can make KVM itself write
// guest memory (seen on hardware KVM; the paravirtual MSRs such as
// kvmclock and steal time point KVM at guest pages), and every such write
// must land on the snapshot's page served by the page server, not on a
// fresh zero page that would then shadow it. A nil Memory leaves guest
// memory zero.
type Memory func(vm *VM) error

// Fill is a Memory that copies guest memory in with fill (an eager
// restore from a flat memory file, for example).
func Fill(fill func(mem []byte) error) Memory {
	return func(vm *VM) error { return fill(vm.mem) }
}

// Restore builds a VM from cfg (its devices: disks, vsock, console) and a
// saved state, with guest memory from memory (Fill, or LazyMemory called
// inside it, so that the sidecar serves every page). The VM is ready to
// Run and continues where it was saved; vsock connections do not survive,
// and the guest is told so with a transport-reset event.
func Restore(cfg Config, st *State, memory Memory) (_ *VM, err error) {
	if len(st.VCPUs) == 0 {
		return nil, fmt.Errorf("restore: the state has no vCPUs")
	}
	cfg.MemMiB, cfg.VCPUs = st.MemMiB, len(st.VCPUs)
	vm, err := create(cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			vm.Close()
		}
	}()
	if memory != nil {
		if err := memory(vm); err != nil {
			return nil, fmt.Errorf("restore memory: %w", err)
		}
	}
	vm.stateRestored = true
	// The order that worked on this project's hosts: clock, irqchip, PIT;
	// then per vCPU CPUID, MP state, registers, FPU, XSAVE, XCRs, debug
	// registers, LAPIC, MSRs, events.
	if err := vm.vm.SetClock(st.Clock); err != nil {
		return nil, err
	}
	for _, chip := range []kvm.IRQChip{st.PIC[0], st.PIC[1], st.IOAPIC} {
		if err := vm.vm.SetIRQChip(chip); err != nil {
			return nil, err
		}
	}
	if err := vm.vm.SetPIT2(st.PIT); err != nil {
		return nil, err
	}
	for i, c := range vm.vcpus {
		v := st.VCPUs[i]
		steps := []func() error{
			func() error { return c.SetCPUID(v.CPUID) },
			func() error { return c.SetMPState(v.MPState) },
			func() error { return c.SetRegs(v.Regs) },
			func() error { return c.SetSregs(v.Sregs) },
			func() error { return c.SetFPU(v.FPU) },
			func() error { return c.SetXSave(v.XSave) },
			func() error { return c.SetXCRs(v.XCRs) },
			func() error { return c.SetDebugRegs(v.DebugRegs) },
			func() error { return c.SetLAPIC(v.LAPIC) },
			func() error { return c.SetMSRs(v.MSRs) },
			func() error { return c.SetEvents(v.Events) },
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return nil, fmt.Errorf("restore vCPU %d: %w", i, err)
			}
		}
	}
	vm.serial.State = st.Serial
	if len(st.Virtio) != len(vm.transports) {
		return nil, fmt.Errorf("restore: the state has %d virtio devices, the configuration %d", len(st.Virtio), len(vm.transports))
	}
	for i, t := range vm.transports {
		if err := t.RestoreState(st.Virtio[i]); err != nil {
			return nil, fmt.Errorf("restore virtio device %d: %w", i, err)
		}
	}
	if vm.vsock != nil {
		if st.Vsock != nil {
			vm.vsock.State = *st.Vsock
		}
		// Told when the VM first runs: guest memory (the event queue)
		// may not be there yet; a lazily restored VM gets it from the
		// sidecar only after LazyMemory. Touching it now would read
		// (and map) zeros instead of the snapshot's pages.
		vm.pendingReset = true
	}
	return vm, nil
}
