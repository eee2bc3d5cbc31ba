#!/usr/bin/env bash
# The snapfaas demo, as far as the project has come: build the tools, capture
# the memory of a live python3 process as a guest-like memory image, store it
# as a base snapshot, store a modified copy as a diff snapshot, and show what
# the store kept. Runs in a scratch store; leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/snapfaas-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SNAPSTORE_DIR=$work/store

echo "== building"
go build -o "$work/bin/" ./cmd/snapstore ./bench/memcorpus
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
