#!/usr/bin/env bash
# The snapfaas demo, as far as the project has come: build the tools, capture
# the memory of a live python3 process as a guest-like memory image, store it
# as a base snapshot, store a modified copy as a diff snapshot, show what the
# store kept, and boot the test guest in a KVM microVM with its disk served
# from the store. Runs in a scratch store; leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/snapfaas-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SNAPSTORE_DIR=$work/store

echo "== building"
go build -o "$work/bin/" ./cmd/snapstore ./cmd/snapfaas ./bench/memcorpus ./guest/testguest/cmd/mkguest
PATH=$work/bin:$PATH

echo "== capturing 128 MiB of guest-like memory from a live python3 process"
if ! memcorpus -size 128M "$work/base.raw"; then
	echo "(no python3: using the synthetic corpus instead)"
	memcorpus -synthetic -size 128M "$work/base.raw"
fi

echo "== base snapshot"
snapstore memory import base "$work/base.raw"

echo "== diff snapshot: the same memory with 1% of its pages rewritten"
python3 - "$work/base.raw" "$work/fn.raw" <<'PY' 2>/dev/null || cp "$work/base.raw" "$work/fn.raw"
import sys, random
data = bytearray(open(sys.argv[1], "rb").read())
pages = len(data) // 4096
rnd = random.Random(1)
for p in rnd.sample(range(pages), pages // 100):
    data[p*4096:p*4096+64] = rnd.randbytes(64)
open(sys.argv[2], "wb").write(data)
PY
snapstore memory import --parent base fn "$work/fn.raw"

echo "== the store"
snapstore ls
snapstore inspect fn

echo "== restore check: export the diff snapshot (parents resolved) and compare"
snapstore memory export fn "$work/fn.out"
cmp "$work/fn.raw" "$work/fn.out" && echo "byte-identical"
snapstore verify

echo "== a microVM: the test guest boots through the VMM (ELF, 64-bit boot protocol)"
if [ ! -w /dev/kvm ]; then
	echo "(no usable /dev/kvm here: skipping the VM part)"
	exit 0
fi
mkguest "$work/guest.elf"
printf 'SFTG\x1c\x00\x00\x00hello from the function disk\n' > "$work/app.img"
truncate -s 4096 "$work/app.img"
snapstore -q image import appfs "$work/app.img"
disk="$work/app.img"
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
	mkdir -p "$work/mnt"
	snapstore mount "$work/mnt" 2>/dev/null &
	mountpid=$!
	for _ in $(seq 50); do [ -e "$work/mnt/images/appfs" ] && break; sleep 0.1; done
	[ -e "$work/mnt/images/appfs" ] && disk="$work/mnt/images/appfs" && echo "(the disk is served from the store's FUSE mount)"
fi
snapfaas vmm --kernel "$work/guest.elf" --appfs "$disk" --mem_size 64 --cmdline "testguest.heap_mb=1" --console "$work/console.txt" 2>/dev/null &
vmpid=$!
for _ in $(seq 600); do grep -q '^ready' "$work/console.txt" 2>/dev/null && break; sleep 0.1; done
kill -INT $vmpid 2>/dev/null; wait $vmpid 2>/dev/null || true
sed 's/^/  guest| /' "$work/console.txt"
if [ -n "${mountpid:-}" ]; then kill -INT $mountpid 2>/dev/null; wait $mountpid 2>/dev/null || true; fi
