// Package kvm is a thin binding to the Linux KVM API for x86_64: /dev/kvm,
// VMs (memory slots, in-kernel irqchip and PIT, irqfd, ioeventfd) and vCPUs
// (registers, CPUID, MSRs, the run loop's exit data).
//
// It holds no policy: package vmm decides what to create and how to run
// it. All ioctl numbers, struct layouts and unsafe code live in
// kvm_linux.go; the rest is plain Go. A vCPU must be run from one OS
// thread: Run locks the calling goroutine to its thread on first use, and
// Kick interrupts a running KVM_RUN from any goroutine (immediate_exit plus
// a SIGURG to that thread, a signal the Go runtime already handles).
package kvm
