#!/usr/bin/env bash
# Build (once per machine) the lab's custom guest kernel: Debian's linux-source-6.12 with IOMMUFD,
# VFIO_DEVICE_CDEV and VFIO_NOIOMMU, everything built in (no modules). The result is cached outside the
# repo under $VFIO_LAB_CACHE/kernels/<config hash>/bzImage; the hash covers this script's option list
# and the source tarball, so a change to either builds a new kernel.
# Prints the path of the bzImage on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

lab_need_apt linux-source-6.12 flex bison libelf-dev bc libssl-dev make gcc
src=$(ls /usr/src/linux-source-6.12.tar.* 2>/dev/null | head -1)
[ -n "$src" ] || lab_die "linux-source-6.12 installed no tarball under /usr/src"

OPTS=(-d MODULES -e PCI -e PCI_MSI -e IOMMU_SUPPORT -e INTEL_IOMMU -e IRQ_REMAP -e VIRTIO_IOMMU
  -e IOMMUFD -e VFIO -e VFIO_GROUP -e VFIO_CONTAINER -e VFIO_IOMMU_TYPE1 -e VFIO_NOIOMMU -e VFIO_DEVICE_CDEV
  -e VFIO_PCI_CORE -e VFIO_PCI -e VFIO_PCI_MMAP -e VFIO_PCI_INTX -e VFIO_VIRQFD -e EVENTFD
  -e NET_9P -e NET_9P_VIRTIO -e 9P_FS -e 9P_FS_POSIX_ACL -e NETFS_SUPPORT -e VIRTIO_PCI -e VIRTIO
  -e BLK_DEV_NVME -e DEVTMPFS -e BLK_DEV_INITRD -e RD_GZIP -e TMPFS -e DEVPORT -e SERIAL_8250
  -e SERIAL_8250_CONSOLE -e IO_URING
  -d DRM -d SOUND -d USB_SUPPORT -d WLAN -d WIRELESS -d CFG80211 -d HID -d INPUT_MOUSE -d INPUT_JOYSTICK
  -d ETHERNET -d NETFILTER -d AGP -d FB -d DEBUG_INFO -d DEBUG_INFO_BTF -d SECURITY_SELINUX
  -d MD -d ATA -d SCSI -d NFS_FS -d EXT4_FS -d HIBERNATION -d SUSPEND -d KVM -d XEN -d HYPERV)

key=$( { printf '%s\n' "${OPTS[@]}"; stat -c '%s %Y' "$src"; } | sha256sum | cut -c1-16)
out=$VFIO_LAB_CACHE/kernels/$key
if [ -f "$out/bzImage" ]; then echo "$out/bzImage"; exit 0; fi

tree=$VFIO_LAB_CACHE/build/linux-6.12
mkdir -p "$VFIO_LAB_CACHE/build" "$out"
# One build at a time per cache: a second run (another clone, the benchmark) waits, then reuses it.
exec 9>"$VFIO_LAB_CACHE/build/.lock"
flock 9
if [ -f "$out/bzImage" ]; then echo "$out/bzImage"; exit 0; fi
if [ ! -d "$tree" ]; then
  lab_log "unpacking $src (once)"
  rm -rf "$tree.tmp"; mkdir -p "$tree.tmp"
  tar xf "$src" -C "$tree.tmp" --strip-components=1
  mv "$tree.tmp" "$tree"
fi
cd "$tree"
make -s x86_64_defconfig >&2
make -s kvm_guest.config >&2
./scripts/config "${OPTS[@]}"
make -s olddefconfig >&2
for o in IOMMUFD VFIO_DEVICE_CDEV VFIO_NOIOMMU VFIO_PCI INTEL_IOMMU; do
  grep -q "^CONFIG_$o=y" .config || lab_die "kernel config lost CONFIG_$o"
done
log=$VFIO_LAB_CACHE/build/kbuild-$key.log
lab_log "building the custom 6.12 kernel (about 7 minutes on 2 idle cores, once per machine; log: $log)"
start=$(date +%s)
make -j"$(nproc)" bzImage > "$log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 15
  lab_progress "kernel build: $(( $(date +%s) - start ))s, $(grep -c '^  CC' "$log" 2>/dev/null || echo 0) files compiled"
done
wait "$pid" || { tail -30 "$log" >&2; lab_die "kernel build failed (log: $log)"; }
lab_progress_done
cp arch/x86/boot/bzImage "$out/bzImage.tmp" && mv "$out/bzImage.tmp" "$out/bzImage"
cp .config "$out/config"
lab_log "kernel built in $(( $(date +%s) - start ))s: $out/bzImage"
echo "$out/bzImage"
