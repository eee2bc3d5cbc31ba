#!/usr/bin/env bash
# Runs COMMAND as root inside an L1 Linux guest with a real /dev/kvm
# (kvm_amd on QEMU TCG's emulated SVM), for testing the VMM against
# hardware-style KVM on machines whose own /dev/kvm is PVM:
#   scripts/nested-kvm.sh [--mem MiB] [--cpus N] [--timeout S] [--name TAG] -- COMMAND...
# The host root is visible read-only, the cwd's git checkout writable at the
# same path, /tmp and /root writable in L1's memory; COMMAND runs in the cwd
# and its exit status is ours. Design and exit codes: internal/nestedkvm, cmd/nestedkvm.
# This wrapper builds cmd/nestedkvm into the cache and execs it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${XDG_CACHE_HOME:-$HOME/.cache}/snapfaas/nested-kvm/bin/nestedkvm
if ! command -v go >/dev/null; then
	echo "nested-kvm: needs the go command to build cmd/nestedkvm" >&2
	exit 121
fi
mkdir -p "$(dirname "$bin")"
(cd "$repo" && CGO_ENABLED=0 go build -o "$bin.$$" ./cmd/nestedkvm) || {
	echo "nested-kvm: building cmd/nestedkvm failed" >&2
	exit 121
}
mv -f "$bin.$$" "$bin"
exec "$bin" "$@"
