#!/usr/bin/env bash
# Fetches the guest assets colo's Linux tests need into assets/linux/ (git-ignored; never
# committed): Debian's cloud kernel as shipped (the bzImage "vmlinuz", with `apt-get download`)
# and the uncompressed kernel ELF "vmlinux" extracted from that same bzImage (its setup
# header's payload_offset/payload_length locate the LZ4 "legacy" payload; `lz4` from Debian's
# lz4 package decompresses it). Idempotent: each file is made only if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=assets/linux

fetch_vmlinuz() {
    mkdir -p "$dest/tmp"
    # The metapackage names the current kernel package (e.g. linux-image-6.1.0-56-cloud-amd64).
    local pkg
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
    # A new vmlinuz makes any older vmlinux stale.
    rm -f "$dest/vmlinux"
    echo "guest assets: $dest/vmlinuz from $pkg"
}

# Little-endian unsigned integer of $3 bytes at offset $2 of file $1.
le() {
    local v
    v=$(od -An -t u"$3" -j "$2" -N "$3" --endian=little "$1" | tr -d ' ')
    [[ -n "$v" ]] || { echo "setup-guest-assets: $1 too short for offset $2" >&2; exit 1; }
    echo "$v"
}

extract_vmlinux() {
    local image="$dest/vmlinuz"
    command -v lz4 >/dev/null || { apt-get update -qq; apt-get install -y -qq lz4 >/dev/null; }
    # boot.rst: "HdrS" at 0x202, setup_sects at 0x1f1 (0 means 4), and from protocol 2.08 on
    # payload_offset (0x248, from the start of the protected-mode code) and payload_length (0x24c).
    [[ $(le "$image" $((0x202)) 4) == $((0x53726448)) ]] || { echo "setup-guest-assets: $image is not a bzImage" >&2; exit 1; }
    local setup_sects offset length
    setup_sects=$(le "$image" $((0x1f1)) 1)
    (( setup_sects == 0 )) && setup_sects=4
    offset=$(( (setup_sects + 1) * 512 + $(le "$image" $((0x248)) 4) ))
    length=$(le "$image" $((0x24c)) 4)
    # LZ4 legacy frame magic 0x184c2102 (lz4_Block_format / "Legacy frame" in lz4's docs).
    [[ $(le "$image" "$offset" 4) == $((0x184c2102)) ]] || {
        echo "setup-guest-assets: $image's payload is not LZ4 legacy; this script handles only that" >&2; exit 1; }
    # The kernel build appends the uncompressed size (4 bytes) after the frame: give lz4 the
    # frame alone, then check the result against that size and the setup header's version (the
    # release and the build tag, "#1 SMP ... Debian 6.1.172-1 (date)", both in linux_banner).
    local size version
    size=$(le "$image" $((offset + length - 4)) 4)
    dd if="$image" iflag=skip_bytes,count_bytes skip="$offset" count=$((length - 4)) bs=1M status=none |
        lz4 -dc > "$dest/vmlinux.tmp"
    # kernel_version (0x20e) points, less 0x200, at a NUL-terminated string ("6.1.0-48-cloud-amd64 ...").
    version=$(dd if="$image" iflag=skip_bytes,count_bytes skip=$(( $(le "$image" $((0x20e)) 2) + 0x200 )) count=200 status=none |
        tr '\0' '\n' | sed -n 1p)
    if [[ $(head -c 4 "$dest/vmlinux.tmp") != $'\x7fELF' || $(stat -c %s "$dest/vmlinux.tmp") != "$size" ]] ||
        ! grep -qaF "Linux version ${version%% *} " "$dest/vmlinux.tmp" ||
        ! grep -qaF "#${version#*#}" "$dest/vmlinux.tmp"; then
        rm -f "$dest/vmlinux.tmp"
        echo "setup-guest-assets: the payload of $image did not decompress to its $size-byte ELF of $version" >&2
        exit 1
    fi
    mv "$dest/vmlinux.tmp" "$dest/vmlinux"
    echo "guest assets: $dest/vmlinux ($size bytes, $version) extracted from $dest/vmlinuz"
}

if [[ -s "$dest/vmlinuz" ]]; then
    echo "guest assets: $dest/vmlinuz present"
else
    fetch_vmlinuz
fi
if [[ -s "$dest/vmlinux" ]]; then
    echo "guest assets: $dest/vmlinux present"
else
    extract_vmlinux
fi
