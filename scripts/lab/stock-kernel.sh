#!/usr/bin/env bash
# Fetch (once per kernel version) one of the lab's stock guest kernels, downloaded with `apt-get download`
# and unpacked with `dpkg-deb -x`, never installed:
#   stock-kernel.sh 6.12   Debian 12's linux-image-6.12.*-amd64-unsigned from bookworm-security (default)
#   stock-kernel.sh 7      Debian's newest 7.x from trixie-backports: linux-image-7.*-amd64 is split into
#                          linux-binary-* (the image), linux-modules-* and linux-base-*, all fetched
# Only what the guest needs is kept, under $VFIO_LAB_CACHE/stock/<package>/:
#   vmlinuz                    the kernel image
#   lib/modules/<kver>/...     the few modules the guest loads (decompressed, with a modules.dep)
#   modules.load               the module names, in the order the guest loads them
# Prints that directory on stdout; progress goes to stderr.
#
# env: VFIO_LAB_STOCK_PKG=linux-image-6.12.117+deb12-amd64-unsigned   pin a package instead of the newest
#      (for 6.12; for 7, e.g. linux-image-7.3.4+deb13-amd64)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

LINE=${1:-6.12}
case $LINE in
  6.12) META=linux-image-6.12-amd64 NAME='linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64' SUFFIX=-unsigned ;;
  7) META=linux-image-amd64/trixie-backports NAME='linux-image-7\.[0-9]+\.[0-9]+\+deb[0-9]+-amd64' SUFFIX=
    lab_apt_suite trixie-backports ;;
  *) lab_die "usage: stock-kernel.sh [6.12|7]" ;;
esac

# What the guest needs from the stock kernel: virtio transport + 9p for the shares, the legacy VFIO
# stack, and virtio_rng so 00:06.1 has a complete driver. intel_iommu is built into Debian's kernel;
# iommufd, the vfio cdev and noiommu are not enabled there at all (that is what the custom kernel is for).
MODULES=(virtio_pci 9pnet_virtio 9p vfio vfio_iommu_type1 vfio-pci virtio_rng)
stock=$VFIO_LAB_CACHE/stock

# The version in the package name changes with every security update, so it is looked up, not pinned:
# first through the meta-package's dependency, then by searching the package names.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '$1=="Candidate:"{print $2}' | grep -qv '(none)'; }
resolve_pkg() {
  local dep name
  dep=$(apt-cache show "$META" 2>/dev/null | awk -F': ' '$1=="Depends"{print $2; exit}' \
    | grep -oE "$NAME" | head -1) || true
  if [ -n "$dep" ] && candidate "$dep$SUFFIX"; then echo "$dep$SUFFIX"; return 0; fi
  for name in $(apt-cache search --names-only "^$NAME$SUFFIX\$" 2>/dev/null | awk '{print $1}' | sort -rV); do
    if candidate "$name"; then echo "$name"; return 0; fi
  done
  return 1
}

pkg=${VFIO_LAB_STOCK_PKG:-}
if [ -z "$pkg" ]; then
  pkg=$(resolve_pkg) || { lab_log "no $LINE kernel package in the apt lists; running apt-get update"; \
    lab_root apt-get update -qq >&2 || true; pkg=$(resolve_pkg) || true; }
fi
if [ -z "$pkg" ]; then
  # Offline, or the sources lost bookworm-security: a kernel fetched earlier is still good.
  cached=$(ls -d "$stock"/linux-image-"$LINE".*/ 2>/dev/null | sort -V | tail -1)
  [ -n "$cached" ] || lab_die "no $NAME$SUFFIX package found with apt; the stock $LINE lab kernel comes from Debian $([ "$LINE" = 7 ] && echo trixie-backports || echo bookworm-security) (add it to the apt sources, or set VFIO_LAB_STOCK_PKG)"
  lab_log "apt offers no $LINE kernel; using the cached ${cached%/}"
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
debs=("$pkg")
# Debian's 7.x image package is empty: the kernel, its modules and their lists (modules.builtin) come in
# packages of their own.
[ "$LINE" = 7 ] && debs=(linux-{binary,modules,base}-"${pkg#linux-image-}")
for d in "${debs[@]}"; do lab_apt_download "$d" "$tmp/deb"; done
lab_progress_done
lab_progress "unpacking $pkg"
for d in "$tmp"/deb/*.deb; do dpkg-deb -x "$d" "$tmp/x"; done
# Debian 13 ships modules under /usr/lib/modules; depmod and modprobe -d look under lib/modules.
if [ ! -d "$tmp/x/lib/modules" ] && [ -d "$tmp/x/usr/lib/modules" ]; then
  mkdir -p "$tmp/x/lib" && mv "$tmp/x/usr/lib/modules" "$tmp/x/lib/modules"
fi
lab_progress_done
kver=$(ls "$tmp/x/lib/modules" | head -1)
src=$tmp/x/lib/modules/$kver
# 6.12 has boot/vmlinuz-<version>; 7.x's linux-binary has the image beside its modules.
kimg=$tmp/x/boot/vmlinuz-$kver; [ -f "$kimg" ] || kimg=$src/vmlinuz
[ -n "$kver" ] && [ -f "$kimg" ] || lab_die "$pkg holds no boot/vmlinuz-<version> or lib/modules/<version>/vmlinuz"
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
cp "$kimg" "$tmp/out/vmlinuz"
# The guest loads the modules that are modules here (7.x builds virtio_pci in).
for m in "${MODULES[@]}"; do
  modprobe -d "$tmp/out" -S "$kver" --show-depends "$m" 2>/dev/null | grep -q '^insmod ' && echo "$m"
done > "$tmp/out/modules.load"
[ -s "$tmp/out/modules.load" ] || lab_die "none of the guest's modules are modules in $pkg"

# Older stock kernels of the same line are superseded; drop them so the cache does not grow with every update.
for old in "$stock"/linux-image-"$LINE".*; do [ -d "$old" ] && [ "$old" != "$out" ] && rm -rf "$old"; done
rm -rf "$out"; mv "$tmp/out" "$out"
lab_log "stock kernel $kver ready in $(( $(date +%s) - start ))s: $out"
echo "$out"
