#!/usr/bin/env bash
# Install (once per machine) the uapi headers of a lab kernel line, for the conformance test to compile
# against: the distro's linux-libc-dev is older and lacks iommufd.h and the newer VFIO ioctls.
#   headers.sh 6.12   Debian 12's linux-source-6.12 (the default)
#   headers.sh 7.3    linux-source-7.3 from trixie-backports (downloaded into the cache, not installed)
# The result is cached under $VFIO_LAB_CACHE/headers/<key>/include; the key covers the source tarball and
# this script's recipe, so a new tarball installs new headers.
# Prints the include directory on stdout; progress goes to stderr.
#
# Only the part of the tree that `make headers` reads is unpacked (about 35 MB of the 1.5 GB), and
# it is unpacked here rather than reusing kernel.sh's build tree, which may be compiling.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

RECIPE=1 # bump when the steps below change what ends up in the include dir

LINE=${1:-6.12}
case $LINE in 6.12|7.3) ;; *) lab_die "usage: headers.sh [6.12|7.3]" ;; esac
lab_need_apt make gcc libc6-dev xz-utils
src=$(lab_kernel_source "$LINE") || lab_die "cannot get the $LINE kernel source"

# The kernel's name for the host architecture: the headers' asm/ must match the compiler's target.
case "$(uname -m)" in
  x86_64 | i?86) karch=x86 ;;
  aarch64) karch=arm64 ;;
  riscv64) karch=riscv ;;
  *) lab_die "no kernel ARCH known for $(uname -m)" ;;
esac

key=$( { echo "$RECIPE $karch"; stat -c '%s %Y %n' "$src"; } | sha256sum | cut -c1-16)
dir=$VFIO_LAB_CACHE/headers/$key
if [ -f "$dir/include/linux/vfio.h" ]; then echo "$dir/include"; exit 0; fi

mkdir -p "$VFIO_LAB_CACHE/headers"
# Serialize concurrent callers (deno and bun test runs started together) so only one unpacks.
exec 9>"$VFIO_LAB_CACHE/headers/.lock"
flock 9
if [ -f "$dir/include/linux/vfio.h" ]; then echo "$dir/include"; exit 0; fi

start=$(date +%s)
work=$VFIO_LAB_CACHE/headers/$key.work
rm -rf "$work" "$dir.tmp"
mkdir -p "$work" "$dir.tmp"
trap 'rm -rf "$work" "$dir.tmp"' EXIT

lab_log "installing the $LINE uapi headers from $src (once)"
top=$(tar tf "$src" 2>/dev/null | head -1 | cut -d/ -f1) || true
[ -n "$top" ] || lab_die "cannot list $src"
# `make headers` needs the top Makefile and scripts/ (Kbuild, unifdef), the uapi trees, the arch dir
# (its Makefile, generated syscall headers) and tools/include (x86's archscripts builds relocs).
parts=("$top/Makefile" "$top/scripts/*" "$top/include/uapi/*" "$top/arch/$karch/*" "$top/tools/include/*")
if [[ $src == *.xz ]]; then
  xz -T0 -dc "$src" | tar x -C "$work" --strip-components=1 --wildcards "${parts[@]}" # xz -T0: 2x faster
else
  tar xaf "$src" -C "$work" --strip-components=1 --wildcards "${parts[@]}"
fi

# `make headers` rather than headers_install: the latter only adds an rsync of the same tree, and
# rsync is not installed everywhere. Clear variables that would redirect or reconfigure Kbuild.
env -u O -u KBUILD_OUTPUT -u CROSS_COMPILE -u MAKEFLAGS -u MFLAGS \
  make -s -j"$(nproc)" -C "$work" ARCH="$karch" headers >&2 || lab_die "make headers failed"
# Keep only the headers: Kbuild leaves .cmd files beside them.
(cd "$work/usr" && find include -name '*.h' -print0 | tar c --null -T -) | tar x -C "$dir.tmp"
[ -f "$dir.tmp/include/linux/vfio.h" ] || lab_die "make headers produced no linux/vfio.h"

rm -rf "$dir"
mv "$dir.tmp" "$dir"
lab_log "uapi headers installed in $(( $(date +%s) - start ))s: $dir/include"
echo "$dir/include"
