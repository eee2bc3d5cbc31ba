#!/bin/busybox sh
# /init of the nested-kvm L1 guest (see doc.go). Busybox only. It reports
# each stage as a kernel log record "@@nestedkvm STAGE [DETAIL]" written to
# /dev/kmsg: the console (ttyS0) carries every record whole, so a marker is
# never torn by other kernel messages. The job (paths and COMMAND) comes in
# job.sh on the "run" share.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /newroot /job /ovl
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

mark() { echo "<2>@@nestedkvm $*" >/dev/kmsg; }
# fail STAGE DETAIL: report and power off; the host turns it into one line.
fail() {
	mark "fail $*"
	poweroff -f
	exit 1
}
mark init

# load LIST STAGE: insmod the modules of /modules/LIST.list, in order.
load() {
	while read -r ko; do
		if ! out=$(insmod "/modules/$ko" 2>&1); then
			why=$(dmesg | grep -v @@nestedkvm | tail -n 2 | awk '{ sub(/^\[[^]]*\] */, ""); printf "%s%s", s, $0; s = "; " }')
			fail $2 "$(echo "$out" | tail -n 1); kernel: $why"
		fi
	done <"/modules/$1.list"
}
load kvm kvm
mark kvm
load base modules
mark modules

ninep() { mount -t 9p -o "trans=virtio,version=9p2000.L,cache=loose,msize=262144$3" "$1" "$2"; }
ninep run /job || fail mounts "mount the run share"
. /job/job.sh # CHECKOUT WORKDIR CMD_PATH; set -- COMMAND
umount /job

R=/newroot
ninep root $R ,ro || fail mounts "mount the host root (9p)"
mount -t proc proc $R/proc && mount -t sysfs sysfs $R/sys && mount -t devtmpfs devtmpfs $R/dev ||
	fail mounts "mount proc, sys and dev"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/run
# /tmp and /root show the host's files; what L1 writes there stays in L1.
mount -t tmpfs tmpfs /ovl
for d in tmp root; do
	mkdir -p /ovl/$d/up /ovl/$d/work
	chmod "$(stat -c %a $R/$d)" /ovl/$d/up
	mount -t overlay -o lowerdir=$R/$d,upperdir=/ovl/$d/up,workdir=/ovl/$d/work overlay $R/$d ||
		mount -t tmpfs tmpfs $R/$d
done
ninep checkout "$R$CHECKOUT" || fail mounts "mount the checkout at $CHECKOUT"

# COMMAND's stdout and stderr: the virtio-serial ports named so by the host.
# The ports appear asynchronously after virtio_console loads.
port() {
	for p in /sys/class/virtio-ports/*; do
		[ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && echo "/dev/${p##*/}" && return
	done
}
i=0
while [ -z "$(port stdout)" ] || [ -z "$(port stderr)" ]; do
	i=$((i + 1))
	[ $i -gt 100 ] && fail modules "no virtio-serial ports stdout and stderr"
	sleep 0.1
done
mark mounted

mark run
/bin/busybox env -i PATH="$CMD_PATH" HOME=/root TMPDIR=/tmp USER=root LOGNAME=root TERM=dumb \
	/bin/busybox chroot $R /bin/sh -c 'cd "$1" || exit 126; shift; exec "$@"' nested-kvm "$WORKDIR" "$@" \
	</dev/null >"$(port stdout)" 2>"$(port stderr)"
mark "exit $?"
sync
poweroff -f
