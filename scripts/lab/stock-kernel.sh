#!/usr/bin/env bash
# Fetch (once per kernel version) the lab's stock guest kernel: Debian's linux-image-6.12.*-amd64-unsigned
# from bookworm-security, downloaded with `apt-get download` and unpacked with `dpkg-deb -x`, never
# installed. Only what the guest needs is kept, under $VFIO_LAB_CACHE/stock/<package>/:
#   vmlinuz                    the kernel image
#   lib/modules/<kver>/...     the few modules the guest loads (decompressed, with a modules.dep)
#   modules.load               the module names, in the order the guest loads them
# Prints that directory on stdout; progress goes to stderr.
#
# env: VFIO_LAB_STOCK_PKG=linux-image-6.12.117+deb12-amd64-unsigned   pin a package instead of the newest
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

# What the guest needs from the stock kernel: virtio transport + 9p for the shares, the legacy VFIO
# stack, and virtio_rng so 00:06.1 has a complete driver. intel_iommu is built into Debian's kernel;
# iommufd, the vfio cdev and noiommu are not enabled there at all (that is what the custom kernel is for).
MODULES=(virtio_pci 9pnet_virtio 9p vfio vfio_iommu_type1 vfio-pci virtio_rng)
META=linux-image-6.12-amd64
stock=$VFIO_LAB_CACHE/stock

# The version in the package name changes with every security update, so it is looked up, not pinned:
# first through the 6.12 meta-package's dependency, then by searching the package names.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '$1=="Candidate:"{print $2}' | grep -qv '(none)'; }
resolve_pkg() {
  local dep name
  dep=$(apt-cache show "$META" 2>/dev/null | awk -F': ' '$1=="Depends"{print $2; exit}' \
    | grep -o 'linux-image-6\.12\.[0-9]*+deb[0-9]*-amd64' | head -1) || true
  if [ -n "$dep" ] && candidate "$dep-unsigned"; then echo "$dep-unsigned"; return 0; fi
  for name in $(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64-unsigned$' 2>/dev/null \
    | awk '{print $1}' | sort -rV); do
    if candidate "$name"; then echo "$name"; return 0; fi
  done
  return 1
}

pkg=${VFIO_LAB_STOCK_PKG:-}
if [ -z "$pkg" ]; then
  pkg=$(resolve_pkg) || { lab_log "no 6.12 kernel package in the apt lists; running apt-get update"; \
    lab_root apt-get update -qq >&2 || true; pkg=$(resolve_pkg) || true; }
fi
if [ -z "$pkg" ]; then
  # Offline, or the sources lost bookworm-security: a kernel fetched earlier is still good.
  cached=$(ls -d "$stock"/linux-image-*/ 2>/dev/null | sort -V | tail -1)
  [ -n "$cached" ] || lab_die "no linux-image-6.12.*-amd64-unsigned package found with apt; the stock lab kernel comes from Debian bookworm-security (add it to the apt sources, or set VFIO_LAB_STOCK_PKG)"
  lab_log "apt offers no 6.12 kernel; using the cached ${cached%/}"
  echo "${cached%/}"; exit 0
fi

out=$stock/$pkg
if [ -f "$out/vmlinuz" ] && [ -f "$out/modules.load" ]; then echo "$out"; exit 0; fi

lab_need_apt kmod xz-utils zstd
tmp=$stock/.tmp-$$
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"; mkdir -p "$tmp/deb" "$tmp/x" "$tmp/out"
lab_progress "downloading $pkg (about 110 MB, once per kernel version)"
start=$(date +%s)
# As root, apt would try to drop to its _apt user, which cannot write into a private cache dir.
sandbox=(); [ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
download() { (cd "$tmp/deb" && apt-get download -q "${sandbox[@]}" "$pkg" >&2); }
download || { lab_root apt-get update -qq >&2 && download; } || lab_die "apt-get download $pkg failed"
lab_progress_done
lab_progress "unpacking $pkg"
dpkg-deb -x "$tmp"/deb/*.deb "$tmp/x"
lab_progress_done
kver=$(ls "$tmp/x/lib/modules" | head -1)
[ -n "$kver" ] && [ -f "$tmp/x/boot/vmlinuz-$kver" ] || lab_die "$pkg holds no boot/vmlinuz-<version>"
src=$tmp/x/lib/modules/$kver
[ -f "$src/modules.dep" ] || depmod -b "$tmp/x" "$kver"

# Copy each module and its dependencies, decompressed: busybox modprobe in the guest cannot unpack .ko.xz.
dst=$tmp/out/lib/modules/$kver
mkdir -p "$dst"
for m in "${MODULES[@]}"; do
  modprobe -d "$tmp/x" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}' \
    || lab_die "module $m is missing from $pkg"
done | sort -u | while read -r f; do
  rel=${f#"$src"/}
  mkdir -p "$dst/$(dirname "$rel")"
  case $f in
    *.xz) xz -dc "$f" > "$dst/${rel%.xz}" ;;
    *.zst) zstd -qdc "$f" > "$dst/${rel%.zst}" ;;
    *) cp "$f" "$dst/$rel" ;;
  esac
done
cp "$src"/modules.{order,builtin,builtin.modinfo} "$dst/"
depmod -b "$tmp/out" "$kver"
cp "$tmp/x/boot/vmlinuz-$kver" "$tmp/out/vmlinuz"
printf '%s\n' "${MODULES[@]}" > "$tmp/out/modules.load"

# Older stock kernels are superseded; drop them so the cache does not grow with every update.
for old in "$stock"/linux-image-*; do [ -d "$old" ] && [ "$old" != "$out" ] && rm -rf "$old"; done
rm -rf "$out"; mv "$tmp/out" "$out"
lab_log "stock kernel $kver ready in $(( $(date +%s) - start ))s: $out"
echo "$out"
