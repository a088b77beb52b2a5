#!/usr/bin/env bash
# Fetches the guest assets colo's Linux-loader test needs: Debian's cloud kernel (the bzImage
# "vmlinuz"), with `apt-get download` into assets/linux/ (git-ignored; never committed).
# Idempotent: does nothing if the kernel is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=assets/linux
if [[ -s "$dest/vmlinuz" ]]; then
    echo "guest assets: $dest/vmlinuz present"
    exit 0
fi
mkdir -p "$dest/tmp"
# The metapackage names the current kernel package (e.g. linux-image-6.1.0-56-cloud-amd64).
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [[ -z "$pkg" ]]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
fi
# A stale package list can name a version the mirror no longer has: refresh once and retry.
if ! (cd "$dest/tmp" && apt-get download -qq "$pkg"); then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    (cd "$dest/tmp" && apt-get download -qq "$pkg")
fi
dpkg-deb -x "$dest"/tmp/*.deb "$dest/tmp/root"
cp "$dest"/tmp/root/boot/vmlinuz-* "$dest/vmlinuz"
echo "$pkg" > "$dest/PACKAGE"
rm -rf "$dest/tmp"
echo "guest assets: $dest/vmlinuz from $pkg"
