#!/bin/busybox sh
# /init of the lab guest (copied into the initramfs by run.sh; runs under static busybox, not on the host).
#
# 1. loads the stock kernel's modules (the custom kernel has everything built in);
# 2. mounts the host's root read-only over virtio-9p and chroots into it, so host glibc, deno and bun
#    work unchanged; the repo (tag "work") and this run's directory (tag "run") are mounted read-write
#    at their host paths;
# 3. binds the devices listed in guest.conf to vfio-pci by BDF (VFs of a vfio-bound PF, made later
#    through sriov_numvfs, are bound to vfio-pci by the kernel itself);
# 4. runs the command, then reports its status in <run>/rc and through isa-debug-exit, and powers off.
# Lines it prints start with "lab-guest:" so they stand out in the console log.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

log() { echo "lab-guest: [$(cut -d' ' -f1 /proc/uptime)] $*"; }
# isa-debug-exit (iobase 0xf4): QEMU exits with (value << 1) | 1. The backup channel for the status, for
# when the run share cannot be written.
debug_exit() { printf "\\$(printf %03o $(($1 & 0x7f)))" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null; }
report() {
  [ -d /labrun ] && { echo "$1" > /labrun/rc; sync; }
  debug_exit "$1"
  poweroff -f
}
die() { log "error: $*"; report 125; }

# Modules first: virtio_pci carries the 9p shares.
# busybox modprobe ignores module options on the kernel command line (vfio-pci.enable_sriov=1), so
# they are passed here.
if [ -f /etc/modules.load ]; then
  for m in $(cat /etc/modules.load); do
    mod=$(echo "$m" | tr - _)
    opts=$(for w in $(cat /proc/cmdline); do
      k=${w%%=*}; case $(echo "${k%%.*}" | tr - _) in "$mod") [ "$k" != "$w" ] && echo "${w#*.}" ;; esac
    done)
    modprobe "$m" $opts || log "modprobe $m $opts failed"
  done
fi

o=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /labrun
mount -t 9p -o $o,cache=none run /labrun || die "cannot mount the run share"
[ -f /labrun/guest.conf ] || die "no guest.conf in the run share"
. /labrun/guest.conf   # WORK RUN BIND RUNTIMES IOMMU

H=/host
mkdir -p $H
# The host root is read-mostly and big: cache=loose keeps binaries and libraries in the guest page cache.
mount -t 9p -o $o,ro,cache=loose hostroot $H || die "cannot mount the host root"
# deno and bun live in the repo's node_modules, which the work share (cache=none) hides below. Executing
# 100 MB binaries through an uncached share re-reads them over 9p, so expose them from the cached host
# root view instead. They are bound to /runtimes first, because the tmpfs mounts below would hide a
# repo that lies under /tmp or /run (CI clones anywhere).
mkdir -p /runtimes
for pair in $RUNTIMES; do
  name=${pair%%=*}; path=${pair#*=}
  if [ -f "$H$path" ]; then
    : > /runtimes/$name && mount -o bind,ro "$H$path" /runtimes/$name
  else
    log "runtime $name not found at $path"
  fi
done
mount -t tmpfs tmp $H/tmp
mount -t tmpfs run $H/run
mkdir -p $H/run/vfio-ts/bin
for f in /runtimes/*; do
  [ -f "$f" ] || continue
  : > $H/run/vfio-ts/bin/${f##*/} && mount -o bind,ro "$f" $H/run/vfio-ts/bin/${f##*/}
done
# The repo: uncached, so the host sees JUnit files and test output at once.
mkdir -p "$H$WORK" 2>/dev/null
mount -t 9p -o $o,cache=none work "$H$WORK" || die "cannot mount the work share at $WORK"
# This run's directory (command, status, NVMe backing image) at its host path too. It may lie under
# the repo or under /tmp, so it is bound last.
mkdir -p "$H$RUN" 2>/dev/null
mount -o bind /labrun "$H$RUN" || die "cannot bind the run share at $RUN"
mount -t proc proc $H/proc
mount -t sysfs sys $H/sys
mount -t devtmpfs dev $H/dev
mkdir -p $H/dev/pts $H/dev/shm
mount -t devpts devpts $H/dev/pts
mount -t tmpfs shm $H/dev/shm
# devtmpfs has no fd links; bash process substitution and /dev/stdout users need them.
ln -sf /proc/self/fd $H/dev/fd
ln -sf /proc/self/fd/0 $H/dev/stdin
ln -sf /proc/self/fd/1 $H/dev/stdout
ln -sf /proc/self/fd/2 $H/dev/stderr
ip link set lo up 2>/dev/null

# Bind by BDF, not by vendor:device, so tests know exactly which devices vfio-pci owns; 00:06.1 must
# stay on its own driver to make the group of 00:06.0 non-viable.
for bdf in $BIND; do
  d=/sys/bus/pci/devices/$bdf
  [ -d $d ] || { log "device $bdf is missing"; continue; }
  [ -e $d/driver ] && echo $bdf > $d/driver/unbind
  echo vfio-pci > $d/driver_override
  echo $bdf > /sys/bus/pci/drivers_probe
done
for d in /sys/bus/pci/devices/*; do
  drv=$(readlink $d/driver); grp=$(readlink $d/iommu_group)
  # SR-IOV PFs (the igb ports): how many VFs they offer (VFs come only when sriov_numvfs is written).
  vfs=; [ -f $d/sriov_totalvfs ] && vfs=" sriov_totalvfs=$(cat $d/sriov_totalvfs)"
  log "${d##*/} [$(cat $d/vendor):$(cat $d/device)] driver=${drv##*/} iommu_group=${grp##*/}$vfs"
done
[ -f /sys/module/vfio_pci/parameters/enable_sriov ] && \
  log "vfio-pci enable_sriov=$(cat /sys/module/vfio_pci/parameters/enable_sriov)"
for bdf in $BIND; do
  drv=$(readlink /sys/bus/pci/devices/$bdf/driver)
  [ "${drv##*/}" = vfio-pci ] || log "WARNING: $bdf is not bound to vfio-pci (driver: ${drv##*/})"
done
nodes=$(ls /dev/vfio | tr '\n' ' ')
[ -d /dev/vfio/devices ] && nodes="$nodes| devices: $(ls /dev/vfio/devices | tr '\n' ' ')"
[ -e /dev/iommu ] && nodes="$nodes| /dev/iommu"
log "ready: /dev/vfio: $nodes"

# A clean environment: cmd.sh sets everything the command may rely on. stdin is /dev/null so a command
# that reads it gets EOF instead of hanging on the console.
sh=/bin/bash; [ -x $H$sh ] || sh=/bin/sh
env -i chroot $H $sh "$RUN/cmd.sh" < /dev/null
rc=$?
log "command exited with status $rc"
report $rc
