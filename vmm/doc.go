// Package vmm is snapfaas's lean virtual machine monitor: it assembles a
// KVM microVM (package kvm) from a kernel, memory size and vCPU count,
// writes the Linux 64-bit boot structures (package arch), attaches devices
// (package devices; virtio in package virtio) and runs one goroutine per
// vCPU, each locked to its OS thread, dispatching port and MMIO exits to
// the device buses.
//
// The same code boots a stock Linux kernel on hardware KVM and the
// freestanding test guest (guest/testguest) on this project's emulated
// (PVM) hosts, where CPU features the instruction emulator cannot run are
// hidden from the guest (Config.HideEmulatorUnsafe). A guest that triple
// faults or hits an instruction the emulator cannot run stops the VM with an
// *ExitError carrying the exit reason (errors.Is ErrTripleFault or
// ErrEmulation) and the registers.
//
// Guest memory is one anonymous mapping, ready to be registered with
// userfaultfd for lazy restore; RAM above the MMIO gap (3.25–4 GiB) is
// mapped above 4 GiB.
package vmm
