//go:build linux && amd64

// Command init is the /init of the initramfs that linuxinit.Build makes:
// a static Go program a stock Linux kernel runs as its first process.
//
// By default (the snapshot test) it fills 8 MiB, marks boot done and its
// snapshot point on the snapfaas snapshot port (0x3f0: 123, then 124; a
// VMM pausing there saves the VM), then — in the original VM or in one
// restored from that snapshot — prints how many CPUs are online, checks
// the 8 MiB on each of them, prints the checksums and reboots (reboot=k on
// the kernel command line turns that into an i8042 reset, which ends the
// VM).
//
// With linuxinit.serve=1 on the kernel command line it serves snapfaas
// run's requests as the test guest does (serve.go).
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// outb writes v to I/O port port (outb_amd64.s).
func outb(port uint16, v uint8)

const portSnapshot = 0x3f0

// drain waits until the console has sent what init wrote (tcdrain): the
// UART sends from its interrupt, possibly on another CPU, and a VM paused
// or reset right after a write must not lose the line. It gives up after
// 2 s rather than hang if the UART's interrupt is lost.
func drain() {
	done := make(chan struct{})
	go func() {
		_ = unix.IoctlSetInt(1, unix.TCSBRK, 1)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		fmt.Println("linuxinit: console drain timed out")
	}
}

// snapshotPoint prints the marker and writes 123 (boot done) and 124
// (snapshot now) to the snapshot port; a restored VM resumes after it.
func snapshotPoint() {
	// ioperm is per thread: write from the thread that got it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := syscall.Ioperm(portSnapshot, 1, 1); err != nil {
		fmt.Println("linuxinit: ioperm:", err)
		return
	}
	fmt.Println("linuxinit: snapshot point")
	drain()
	outb(portSnapshot, 123)
	outb(portSnapshot, 124)
}

func main() {
	fmt.Println("linuxinit: up")
	if err := syscall.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		fmt.Println("linuxinit: mount /proc:", err)
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	for _, w := range strings.Fields(string(cmdline)) {
		if w == "linuxinit.serve=1" {
			serve(string(cmdline))
		}
	}
	buf := make([]byte, 8<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>12)
	}
	snapshotPoint()
	// Every online CPU checks the 8 MiB (in a restored VM: every restored
	// vCPU runs, and sees the snapshot's memory).
	var online unix.CPUSet
	if err := unix.SchedGetaffinity(0, &online); err != nil {
		fmt.Println("linuxinit: sched_getaffinity:", err)
	}
	fmt.Printf("linuxinit: %d CPUs online\n", online.Count())
	var wg sync.WaitGroup
	for cpu := 0; cpu < 1024; cpu++ {
		if !online.IsSet(cpu) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			var one unix.CPUSet
			one.Set(cpu)
			if err := unix.SchedSetaffinity(0, &one); err != nil {
				fmt.Printf("linuxinit: cpu %d: sched_setaffinity: %v\n", cpu, err)
				return
			}
			var sum uint64
			for i, b := range buf {
				sum = sum*31 + uint64(b) + uint64(i&1)
			}
			fmt.Printf("linuxinit: after the snapshot point, cpu %d checksum %016x\n", cpu, sum)
		}()
	}
	wg.Wait()
	drain()
	syscall.Sync()
	if err := syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART); err != nil {
		fmt.Println("linuxinit: reboot:", err)
	}
	os.Exit(1)
}
