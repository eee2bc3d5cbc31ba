#!/usr/bin/env bash
# The snapfaas demo, the project's main job: build the CLIs, then
# `snapfaas demo` builds the test guest, boots it in a KVM microVM, stores a
# base snapshot at its snapshot point, a diff snapshot of the warmed-up
# function (dirty pages only) and its working set, and restores it three
# ways (eager, lazy, lazy + working set), printing what each cost. Works in
# a scratch store; leaves nothing behind. Extra arguments go to
# `snapfaas demo` (see `bin/snapfaas demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

# The test guest is freestanding C: install gcc from Debian if missing.
if ! command -v gcc >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "demo.sh: installing gcc"
		apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y gcc >/dev/null
	else
		echo "demo.sh: the demo builds its test guest with gcc; install it first" >&2
		exit 1
	fi
fi

echo "== building snapfaas and snapstore into bin/"
go build -o bin/ ./cmd/snapfaas ./cmd/snapstore
exec bin/snapfaas demo "$@"
