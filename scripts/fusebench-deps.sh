#!/usr/bin/env bash
# Installs what bench/fusebench needs from Debian, if missing: squashfuse
# (serves the squashfs comparison), squashfs-tools (mksquashfs) and
# e2fsprogs (mkfs.ext4 -d). Idempotent: installs nothing when every tool is
# present. Installing needs root and apt-get; otherwise it says what is
# missing and exits 1.
#
#	scripts/fusebench-deps.sh && go run ./bench/fusebench -out docs/PERFORMANCE.md
set -euo pipefail

need=()
command -v squashfuse >/dev/null || need+=(squashfuse)
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(mount)
if ((${#need[@]} == 0)); then
	exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
	echo "fusebench-deps.sh: missing ${need[*]}; install them as root with apt-get (Debian/Ubuntu)" >&2
	exit 1
fi
echo "fusebench-deps.sh: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# Install from the current lists first; refresh them only if that fails.
if ! apt-get -qq install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
	apt-get -qq update
	apt-get -qq install -y --no-install-recommends "${need[@]}" >/dev/null
fi
for t in squashfuse mksquashfs mkfs.ext4 losetup; do
	command -v "$t" >/dev/null || { echo "fusebench-deps.sh: $t still missing after install" >&2; exit 1; }
done
