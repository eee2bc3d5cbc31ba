#!/usr/bin/env bash
# Runs every check CI runs: formatting, vet, and the full test suite under
# the race detector.
# Tests that need a device this machine lacks (/dev/kvm, /dev/fuse,
# userfaultfd, python3) skip and say why; run with -v to see the reasons.
set -euo pipefail
cd "$(dirname "$0")/.."

# Install what the tests need from Debian, if missing (CI machines are fresh).
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v python3 >/dev/null || need+=(python3)
command -v iasl >/dev/null || need+=(acpica-tools) # vmm/arch: ACPI tables checked with iasl
if ((${#need[@]})); then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "test.sh: installing ${need[*]}"
		apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y "${need[@]}" >/dev/null
	else
		echo "test.sh: missing ${need[*]}; the tests that need them will skip" >&2
	fi
fi

# The FUSE benchmark's test compares against squashfuse; install its tools
# (idempotent, root only; the test skips with the reason without them).
if [ "$(id -u)" = 0 ] && [ -x scripts/fusebench-deps.sh ]; then
	scripts/fusebench-deps.sh >/dev/null 2>&1 || echo "test.sh: could not install the FUSE benchmark's tools; its test will skip" >&2
fi

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "test.sh: gofmt needed on:" $unformatted >&2
	exit 1
fi
go vet ./...
# The whole suite runs under the race detector: the VMM, the page server
# and the FUSE server share memory across goroutines (and with the guest).
# Tests named TestLinux… need hardware KVM: where /dev/kvm is PVM they run
# in an L1 guest with real KVM (internal/realkvm, scripts/nested-kvm.sh),
# and each outcome is logged here for the summary.
export SNAPFAAS_REALKVM_LOG
SNAPFAAS_REALKVM_LOG=$(mktemp)
trap 'rm -f "$SNAPFAAS_REALKVM_LOG"' EXIT
status=0
go test -race -count=1 -timeout 40m "$@" ./... || status=$?
ran=$(wc -l <"$SNAPFAAS_REALKVM_LOG")
if [ "$ran" -gt 0 ]; then
	echo "test.sh: $ran Linux-guest tests ran on real KVM:"
	sort "$SNAPFAAS_REALKVM_LOG" | sed 's/^/  /; s/\t/  /g'
else
	echo "test.sh: no Linux-guest test ran on real KVM (-short, or no /dev/kvm)"
fi
# Where /dev/kvm is PVM the vmm and cmd/snapfaas suites ran on PVM above;
# they must also hold on hardware-style KVM (RIP after an I/O exit,
# CPUID, MSR lists): run them whole in L1 too, without the TestLinux…
# tests, which already ran there.
if [ -d /sys/module/kvm_pvm ] && [[ " $* " != *" -short "* ]]; then
	echo "test.sh: the vmm and cmd/snapfaas suites in L1 (scripts/test-l1.sh)"
	scripts/test-l1.sh -skip '^TestLinux' || status=1
fi
exit "$status"
