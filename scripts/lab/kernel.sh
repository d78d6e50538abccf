#!/usr/bin/env bash
# Build (once per machine) one of the lab's custom guest kernels, everything built in (no modules):
#   kernel.sh 6.12   Debian 12's linux-source-6.12 with IOMMUFD, VFIO_DEVICE_CDEV and VFIO_NOIOMMU
#                    (run.sh --kernel custom; the default)
#   kernel.sh 7.3    linux-source-7.3 from trixie-backports with the same, plus the VFIO PCI dma-buf
#                    export (VFIO_PCI_DMABUF and the P2PDMA chain it needs) and SR-IOV (PCI_IOV)
#                    (run.sh --kernel custom7)
# The result is cached outside the repo under $VFIO_LAB_CACHE/kernels/<config hash>/bzImage; the hash
# covers the option list and the source tarball, so a change to either builds a new kernel. Every
# option asked for is checked in the final .config: Kconfig drops what it cannot satisfy silently.
# Prints the path of the bzImage on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

LINE=${1:-6.12}
case $LINE in
  6.12) MINUTES=7 ;;
  7.3) MINUTES=7 ;;
  *) lab_die "usage: kernel.sh [6.12|7.3]" ;;
esac

lab_need_apt flex bison libelf-dev bc libssl-dev make gcc xz-utils
src=$(lab_kernel_source "$LINE") || lab_die "cannot get the $LINE kernel source"

# The guest's needs: the IOMMU and VFIO stack, virtio 9p for the shares, NVMe, a serial console. What a
# TCG guest never uses is turned off to save build time.
OPTS=(-d MODULES -e PCI -e PCI_MSI -e IOMMU_SUPPORT -e INTEL_IOMMU -e IRQ_REMAP -e VIRTIO_IOMMU
  -e IOMMUFD -e VFIO -e VFIO_GROUP -e VFIO_CONTAINER -e VFIO_IOMMU_TYPE1 -e VFIO_NOIOMMU -e VFIO_DEVICE_CDEV
  -e VFIO_PCI_CORE -e VFIO_PCI -e VFIO_PCI_MMAP -e VFIO_PCI_INTX -e VFIO_VIRQFD -e EVENTFD
  -e NET_9P -e NET_9P_VIRTIO -e 9P_FS -e 9P_FS_POSIX_ACL -e NETFS_SUPPORT -e VIRTIO_PCI -e VIRTIO
  -e BLK_DEV_NVME -e DEVTMPFS -e BLK_DEV_INITRD -e RD_GZIP -e TMPFS -e DEVPORT -e SERIAL_8250
  -e SERIAL_8250_CONSOLE -e IO_URING
  -d DRM -d SOUND -d USB_SUPPORT -d WLAN -d WIRELESS -d CFG80211 -d HID -d INPUT_MOUSE -d INPUT_JOYSTICK
  -d ETHERNET -d NETFILTER -d AGP -d FB -d DEBUG_INFO -d DEBUG_INFO_BTF -d SECURITY_SELINUX
  -d MD -d ATA -d SCSI -d NFS_FS -d EXT4_FS -d HIBERNATION -d SUSPEND -d KVM -d XEN -d HYPERV)
if [ "$LINE" = 7.3 ]; then
  # VFIO_PCI_MMAP is gone in 7.x (BAR mmap is unconditional). VFIO_PCI_DMABUF is def_bool on
  # PCI_P2PDMA, which needs ZONE_DEVICE -> MEMORY_HOTREMOVE -> MEMORY_HOTPLUG (all off in
  # x86_64_defconfig), and on DMA_SHARED_BUFFER, which has no prompt: SYNC_FILE selects it.
  # IOMMUFD_NOIOMMU (the noiommu-vfioN cdev) comes with VFIO_NOIOMMU and VFIO_DEVICE_CDEV.
  opts=()
  for o in "${OPTS[@]}"; do
    if [ "$o" = VFIO_PCI_MMAP ]; then unset 'opts[-1]'; else opts+=("$o"); fi
  done
  OPTS=("${opts[@]}" -e MEMORY_HOTPLUG -e MEMORY_HOTREMOVE -e ZONE_DEVICE -e PCI_P2PDMA -e SYNC_FILE
    -e DMA_SHARED_BUFFER -e VFIO_PCI_DMABUF -e IOMMUFD_NOIOMMU -e PCI_IOV)
fi

key=$( { printf '%s\n' "${OPTS[@]}"; stat -c '%s %Y' "$src"; } | sha256sum | cut -c1-16)
out=$VFIO_LAB_CACHE/kernels/$key
if [ -f "$out/bzImage" ]; then echo "$out/bzImage"; exit 0; fi

tree=$VFIO_LAB_CACHE/build/linux-$LINE
mkdir -p "$VFIO_LAB_CACHE/build" "$out"
# One build at a time per cache: a second run (another clone, the benchmark) waits, then reuses it.
exec 9>"$VFIO_LAB_CACHE/build/.lock"
flock 9
if [ -f "$out/bzImage" ]; then echo "$out/bzImage"; exit 0; fi
# The tree is reused between builds of the same tarball (incremental), and unpacked afresh for a new one.
srcid=$(stat -c '%n %s %Y' "$src")
if [ ! -d "$tree" ] || [ "$(cat "$tree/.vfio-ts-source" 2>/dev/null)" != "$srcid" ]; then
  lab_log "unpacking $src (once per source version)"
  rm -rf "$tree" "$tree.tmp"; mkdir -p "$tree.tmp"
  xz -T0 -dc "$src" | tar x -C "$tree.tmp" --strip-components=1 || lab_die "cannot unpack $src"
  echo "$srcid" > "$tree.tmp/.vfio-ts-source"
  mv "$tree.tmp" "$tree"
fi
cd "$tree"
make -s x86_64_defconfig >&2
make -s kvm_guest.config >&2
./scripts/config "${OPTS[@]}"
make -s olddefconfig >&2
# Check every option asked for: -e must be =y, -d must be off.
lost="" flag=""
for o in "${OPTS[@]}"; do
  case $o in
    -e|-d) flag=$o; continue ;;
  esac
  if [ "$flag" = -e ]; then
    if ! grep -q "^CONFIG_$o=y\$" .config; then lost+=" $o"; fi
  elif grep -q "^CONFIG_$o=[ym]\$" .config; then
    lost+=" !$o"
  fi
done
[ -z "$lost" ] || lab_die "the $LINE kernel config did not take:$lost (dependencies missing? see $tree/.config)"
log=$VFIO_LAB_CACHE/build/kbuild-$key.log
lab_log "building the custom $LINE kernel (about $MINUTES minutes on 2 idle cores, once per machine; log: $log)"
start=$(date +%s)
make -j"$(nproc)" bzImage > "$log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 15
  lab_progress "kernel $LINE build: $(( $(date +%s) - start ))s, $(grep -c '^  CC' "$log" 2>/dev/null || echo 0) files compiled"
done
wait "$pid" || { tail -30 "$log" >&2; lab_die "kernel build failed (log: $log)"; }
lab_progress_done
cp arch/x86/boot/bzImage "$out/bzImage.tmp" && mv "$out/bzImage.tmp" "$out/bzImage"
cp .config "$out/config"
lab_log "kernel $LINE built in $(( $(date +%s) - start ))s: $out/bzImage"
echo "$out/bzImage"
