// Package nestedkvm runs a command as root inside an L1 Linux guest that has
// a real, hardware-style /dev/kvm: kvm_amd on the AMD SVM that QEMU's TCG
// emulates. This project's machines offer only PVM KVM, on which a stock
// Linux cannot run; L1 is how the VMM is tested against SVM KVM there (see
// /work/shared/design/ENVIRONMENT.md and docs/LINUX-BOOT.md).
// scripts/nested-kvm.sh is the command line (cmd/nestedkvm).
//
// # What L1 is
//
// Debian's generic kernel (linux-image-VERSION-amd64-unsigned; the cloud
// flavour has no kvm-amd or ccp) boots under
//
//	qemu-system-x86_64 -accel tcg,thread=multi -M q35 -cpu EPYC -kernel vmlinuz -initrd initrd.cpio
//
// into a busybox initramfs whose /init (init.sh) loads irqbypass, kvm, ccp,
// kvm-amd, then the virtio, 9p, virtio_console, overlay, fuse and tun
// modules (the load order is computed from each module's "depends="), and
// builds COMMAND's root:
//
//	/                  host root, 9p tag "root", read-only, cache=loose
//	/proc /sys /dev    proc, sysfs, devtmpfs (kvm, fuse, net/tun, userfaultfd), devpts, /dev/shm tmpfs
//	/run               tmpfs
//	/tmp /root         overlay: the host's files, writes kept in L1 memory (tmpfs)
//	CHECKOUT           9p tag "checkout", writable: the git toplevel of the cwd (or the cwd)
//
// COMMAND runs chrooted there, in the host's cwd, with PATH from the host,
// HOME=/root, TMPDIR=/tmp and stdin from /dev/null. TMPDIR is not on 9p:
// a Unix socket cannot be bound there (bind fails with ENXIO), and tests
// put sockets in their temporary directories. What L1 should hand back
// goes into the checkout. The job (paths and COMMAND, job.sh) comes on a
// third share, tag "run", a fresh host directory removed after the run.
//
// # Channels
//
//	ttyS0 (console)          kernel messages at loglevel 4 and the markers;
//	                         the host keeps them in a console log
//	virtio-serial "stdout"   COMMAND's stdout, copied to the host's stdout live
//	virtio-serial "stderr"   COMMAND's stderr, likewise
//
// Markers are kernel log records "@@nestedkvm STAGE [DETAIL]" that init
// writes to /dev/kmsg (so the console never tears them): init, kvm,
// modules, mounted, run, then "exit N", or "fail STAGE REASON". After
// "exit N" or "fail" init powers L1 off, QEMU (-no-reboot, panic=-1) exits,
// and the host drains the ports to EOF, so no output is lost. A virtio-serial
// write returns only once QEMU has passed the bytes to its pipe.
//
// # Cache
//
// Under os.UserCacheDir()/snapfaas/nested-kvm/VERSION/ (VERSION such as
// 6.1.0-48): vmlinuz, modules/ (the .ko files L1 loads and the kernel's
// modules.builtin), and initrd-KEY.cpio, where KEY hashes init.sh, the
// module lists and busybox, so a change to any of them builds a new one.
// The kernel is fetched once with apt-get download; later runs use the
// cache without asking apt.
//
// # Failures
//
// Every failure is one error wrapping one sentinel (ErrTools, ErrKernel,
// ErrKVM, ErrL1, ErrTimeout, ErrInterrupted) with what L1 had reached;
// cmd/nestedkvm prints it as one line and exits with the sentinel's code.
// QEMU runs in its own process group with a parent-death signal; a timeout
// or a cancelled context kills the group and waits for it.
package nestedkvm
