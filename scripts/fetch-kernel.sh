#!/usr/bin/env bash
# Fetches Debian's current cloud kernel (a stock bzImage) for the Linux
# boot-path smoke test, with `apt-get download`, and prints the path of the
# extracted vmlinuz. Cached: a second run downloads nothing.
#   scripts/fetch-kernel.sh -> ~/.cache/snapfaas/debian-kernel/vmlinuz-<version>
# Next to it, modules-<version>/ holds the kernel's virtio and vsock
# modules (kernel/drivers/virtio, kernel/net/vmw_vsock: what
# guest/linuxinit's serve mode loads; linuxinit.ModulesDir).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${SNAPFAAS_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/snapfaas/debian-kernel}
mkdir -p "$cache"
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$pkg" ]; then
	if ! ls "$cache"/vmlinuz-* >/dev/null 2>&1; then
		(apt-get -qq update >/dev/null 2>&1 || true)
		pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
	fi
fi
if [ -z "$pkg" ]; then
	k=$(ls -t "$cache"/vmlinuz-* 2>/dev/null | head -1 || true)
	[ -n "$k" ] && { echo "$k"; exit 0; }
	echo "fetch-kernel: cannot resolve linux-image-cloud-amd64 (no apt index?)" >&2
	exit 1
fi
version=${pkg#linux-image-}
out="$cache/vmlinuz-$version"
mods="$cache/modules-$version"
if [ ! -s "$out" ] || [ ! -d "$mods" ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	echo "fetch-kernel: apt-get download $pkg" >&2
	(cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
	dpkg-deb -x "$tmp"/*.deb "$tmp/x"
	if [ ! -d "$mods" ]; then
		rm -rf "$mods.tmp"
		for d in kernel/drivers/virtio kernel/net/vmw_vsock; do
			mkdir -p "$mods.tmp/$(dirname "$d")"
			cp -r "$tmp/x/lib/modules/$version/$d" "$mods.tmp/$d"
		done
		mv "$mods.tmp" "$mods"
	fi
	if [ ! -s "$out" ]; then
		cp "$tmp/x/boot/vmlinuz-$version" "$out.tmp"
		mv "$out.tmp" "$out"
	fi
fi
echo "$out"
