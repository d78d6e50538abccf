#!/usr/bin/env bash
# Boot one throwaway QEMU guest with real VFIO and run a shell command inside it, in the repo.
#
# usage: scripts/lab/run.sh [options] [--] 'shell command'
#   --kernel stock|stock7|custom|custom7
#                           stock: Debian's linux-image-6.12.*-amd64-unsigned from bookworm-security (legacy
#                           container/group API only); stock7: Debian's newest 7.x from trixie-backports
#                           (legacy only, plus the dma-buf export); custom: `scripts/lab/kernel.sh 6.12`,
#                           Debian's 6.12 source with IOMMUFD, the vfio device cdev and noiommu; custom7:
#                           `kernel.sh 7.3`, Debian's 7.3 source with the same plus the VFIO PCI dma-buf
#                           export. Env VFIO_LAB_KERNEL; default stock.
#   --iommu intel|none      intel: emulated VT-d with interrupt remapping, guest intel_iommu=on;
#                           none: no IOMMU, guest vfio.enable_unsafe_noiommu_mode=1 (custom kernels only).
#                           Env VFIO_LAB_IOMMU; default intel.
#   --timeout SECONDS       wall-clock limit for the whole guest, boot included. Env VFIO_LAB_TIMEOUT;
#                           default 900.
#   --name NAME             names the console log. Env VFIO_LAB_NAME; default <kernel>-<iommu>.
#   --mem MB                guest memory. Env VFIO_LAB_MEM; default 2048.
#   --smp N                 guest vCPUs. Env VFIO_LAB_SMP; default 1: with more than one under TCG, about
#                           1 boot in 10 oopsed (6.12, int3 in sched_clock_cpu), and interrupt latency is
#                           bimodal (edu MSI round trip 4 or 37 µs in C, as the vCPUs fall), so use it only
#                           for a run that needs it (e.g. to give a runtime's own threads a CPU of their own).
#   --keep                  keep the run directory (command, NVMe image). Env VFIO_LAB_KEEP=1.
#   Env VFIO_LAB_QUIET=1    the console goes only to the log file, not to stderr (lab: lines still do).
#
# The guest chroots into the host's root (shared read-only over virtio-9p), so host paths, glibc and the
# repo's pinned runtimes work unchanged. The repo is shared read-write (uncached) and the command runs
# there under bash, with stdin at /dev/null. Its environment:
#   HOME=/tmp DENO_DIR=/tmp/deno-dir PATH=/run/vfio-ts/bin:<system dirs> (deno and bun from node_modules)
#   VFIO_TS_LAB=1 VFIO_TS_LAB_KERNEL=stock|stock7|custom|custom7 VFIO_TS_LAB_IOMMU=intel|none
#   VFIO_TS_NVME_IMAGE=<host path of the NVMe backing image, 64 MiB of zeros at boot, readable in the guest>
#   plus every VFIO_TS_* variable set by the caller.
#
# Guest PCI topology, the same in every mode (tests rely on it):
#   0000:00:04.0  QEMU edu 1234:11e8                                  -> vfio-pci
#   0000:00:05.0  QEMU NVMe 1b36:0010, backed by $VFIO_TS_NVME_IMAGE   -> vfio-pci
#   0000:00:06.0  QEMU edu 1234:11e8, multifunction                   -> vfio-pci
#   0000:01:00.0  QEMU edu 1234:11e8, alone behind the PCIe root port 0000:00:07.0, so that a bus
#                 (hot) reset is possible                             -> vfio-pci
#   0000:00:06.1  virtio-rng 1af4:1005, left on virtio-pci. Conventional PCI functions without ACS
#                 share an IOMMU group, so the group of 00:06.0 is not viable under intel-iommu.
#   0000:00:08.0  QEMU edu 1234:11e8, a peer for 00:04.0 (peer-to-peer DMA)  -> vfio-pci
#   0000:00:0a.0  Intel 82576 (QEMU igb) 8086:10c9, MAC 52:54:00:12:34:0a    -> vfio-pci
#   0000:00:0c.0  the same, MAC 52:54:00:12:34:0c. Both ports sit on one QEMU hub, so what one sends
#                 the other receives. Each is an SR-IOV PF with up to 8 VFs (8086:10ca), which appear at
#                 devfn + 0x80, stride 2 (00:1a.0-00:1b.6 and 00:1c.0-00:1d.6) once sriov_numvfs is
#                 written; the guest boots with vfio-pci.enable_sriov=1, so that works on the vfio-bound
#                 PF and the VFs come up on vfio-pci too (kernels with CONFIG_PCI_IOV: all but custom).
#
# Exit status: the command's; 124 when the guest timed out; 125 when the guest never reported a
# status (boot failure, kernel panic, QEMU error); 1 when the host side failed (kernel fetch or build,
# an impossible combination), with a "lab: error:" line; 2 on bad usage. The console streams to stderr and a
# copy stays in $VFIO_LAB_CACHE/logs/<name>.log (older runs: <name>-<time>.log).
# Host needs: apt (installs busybox-static cpio kmod xz-utils zstd when missing) and QEMU 10 or newer
# (QEMU 7.2 has no igb): on Debian 12 it is installed from bookworm-backports when older.
# KVM is not used: nested hosts fail with stock kernels, and TCG boots in a few seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
repo=$(cd "$here/../.." && pwd -P)

KERNEL=${VFIO_LAB_KERNEL:-stock}
IOMMU=${VFIO_LAB_IOMMU:-intel}
TIMEOUT=${VFIO_LAB_TIMEOUT:-900}
NAME=${VFIO_LAB_NAME:-}
MEM=${VFIO_LAB_MEM:-2048}
SMP=${VFIO_LAB_SMP:-1}
KEEP=${VFIO_LAB_KEEP:-0}
QUIET=${VFIO_LAB_QUIET:-0}
BIND="0000:00:04.0 0000:00:05.0 0000:00:06.0 0000:01:00.0 0000:00:08.0 0000:00:0a.0 0000:00:0c.0"
NVME_SIZE=64M

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --kernel) KERNEL=${2:?}; shift 2 ;;
      --iommu) IOMMU=${2:?}; shift 2 ;;
      --timeout) TIMEOUT=${2:?}; shift 2 ;;
      --name) NAME=${2:?}; shift 2 ;;
      --mem) MEM=${2:?}; shift 2 ;;
      --smp) SMP=${2:?}; shift 2 ;;
      --keep) KEEP=1; shift ;;
      -h|--help) usage ;;
      --) shift; break ;;
      -*) echo "lab: unknown option $1" >&2; usage ;;
      *) break ;;
    esac
  done
  [ $# -eq 1 ] || usage
  CMD=$1
  case $KERNEL in stock|stock7|custom|custom7) ;; *) echo "lab: --kernel must be stock, stock7, custom or custom7" >&2; usage ;; esac
  case $IOMMU in intel|none) ;; *) echo "lab: --iommu must be intel or none" >&2; usage ;; esac
  case $KERNEL-$IOMMU in stock*-none) lab_die "noiommu mode needs a custom kernel: Debian's stock kernels have no CONFIG_VFIO_NOIOMMU" ;; esac
  case $TIMEOUT in ''|*[!0-9]*) lab_die "--timeout takes whole seconds" ;; esac
  case $SMP in ''|*[!0-9]*|0) lab_die "--smp takes a number of vCPUs, 1 or more" ;; esac
  NAME=${NAME:-$KERNEL-$IOMMU}
}

QEMU_MIN=10
qemu_major() { qemu-system-x86_64 --version 2>/dev/null | sed -n '1s/.*version \([0-9]*\)\..*/\1/p'; }

host_tools() {
  lab_need_apt busybox-static cpio kmod xz-utils zstd
  local major codename pkgs p
  major=$(qemu_major)
  if [ "${major:-0}" -lt "$QEMU_MIN" ]; then
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    [ "$codename" = bookworm ] || lab_die "the lab needs QEMU $QEMU_MIN or newer (qemu-system-x86_64: ${major:-not installed}); install it"
    # QEMU 10 from bookworm-backports, installed whole: every installed package of the qemu source
    # moves with it (a 10.0 binary refuses 7.2's modules), and no recommends (they would upgrade mesa).
    lab_log "QEMU ${major:-(none)} is too old for the lab (igb needs 8, the lab is tested on 10): installing qemu-system-x86 from bookworm-backports"
    lab_apt_suite bookworm-backports
    pkgs=""
    for p in $(dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${source:Package}\n' 2>/dev/null \
      | awk '$1 == "ii" && $3 == "qemu" && $2 != "qemu-system-x86" {print $2}'); do
      apt-cache policy -t bookworm-backports "$p" 2>/dev/null | grep -q '^  Candidate: .*~bpo12' && pkgs+=" $p"
    done
    lab_need_apt_from bookworm-backports qemu-system-x86 $pkgs
    major=$(qemu_major)
    [ "${major:-0}" -ge "$QEMU_MIN" ] || lab_die "qemu-system-x86_64 is still version ${major:-unknown} after the install"
  fi
  # A dynamic busybox would need the host's libc inside the initramfs.
  ldd /bin/busybox >/dev/null 2>&1 && lab_die "/bin/busybox is not static (install busybox-static)"
  return 0
}

# Sets KIMG (kernel image) and MODDIR (stock module tree, empty for the custom kernel).
pick_kernel() {
  local dir
  if [ "$KERNEL" = custom ] || [ "$KERNEL" = custom7 ]; then
    local line=6.12; [ "$KERNEL" = custom7 ] && line=7.3
    KIMG=$("$here/kernel.sh" "$line") || lab_die "the custom $line kernel build failed"
    MODDIR=""
  else
    local line=6.12; [ "$KERNEL" = stock7 ] && line=7
    dir=$("$here/stock-kernel.sh" "$line") || lab_die "cannot fetch the stock $line kernel"
    KIMG=$dir/vmlinuz
    MODDIR=$dir
  fi
  [ -f "$KIMG" ] || lab_die "no kernel image at $KIMG"
}

# Sets INITRD: static busybox + guest-init.sh (+ the stock kernel's modules), cached by content.
build_initrd() {
  local key stage
  key=$( { sha256sum /bin/busybox "$here/guest-init.sh"; [ -z "$MODDIR" ] || (cd "$MODDIR" && find . -type f | sort); } \
    | sha256sum | cut -c1-16)
  INITRD=$VFIO_LAB_CACHE/initramfs/$KERNEL-$key.cpio.gz
  [ -f "$INITRD" ] && return 0
  lab_progress "building the $KERNEL initramfs"
  mkdir -p "$VFIO_LAB_CACHE/initramfs"
  stage=$(mktemp -d "$VFIO_LAB_CACHE/initramfs/.stage-XXXXXX")
  mkdir -p "$stage"/{bin,dev,proc,sys,etc,host,labrun}
  cp /bin/busybox "$stage/bin/busybox"
  cp "$here/guest-init.sh" "$stage/init"
  chmod 755 "$stage/init"
  if [ -n "$MODDIR" ]; then
    cp -r "$MODDIR/lib" "$stage/"
    cp "$MODDIR/modules.load" "$stage/etc/modules.load"
  fi
  (cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  rm -rf "$stage"
  # Initramfs images of older init scripts or kernels are dead weight.
  find "$VFIO_LAB_CACHE/initramfs" -name "$KERNEL-*.cpio.gz" ! -path "$INITRD" -delete
  lab_progress_done
  lab_log "initramfs: $INITRD"
}

# The run directory is shared read-write with the guest at its host path: guest.conf (read by the
# guest's /init), cmd.sh, the NVMe backing image and the status file rc.
make_run_dir() {
  mkdir -p "$VFIO_LAB_CACHE/runs"
  RUN=$(mktemp -d "$VFIO_LAB_CACHE/runs/$NAME-XXXXXX")
  truncate -s "$NVME_SIZE" "$RUN/nvme.img"
  local runtimes="" deno bun
  deno=$(readlink -f "$repo/node_modules/.bin/deno" 2>/dev/null || true)
  bun=$(readlink -f "$repo/node_modules/.bin/bun" 2>/dev/null || true)
  [ -f "$deno" ] && runtimes+="deno=$deno " || lab_log "warning: no deno in node_modules (run npm ci)"
  [ -f "$bun" ] && runtimes+="bun=$bun " || lab_log "warning: no bun in node_modules (run npm ci)"
  # guest.conf is sourced by busybox sh and split on spaces: keep paths plain.
  case "$repo$RUN$deno$bun" in *[[:space:]\'\\]*) lab_die "lab paths must not contain spaces, quotes or backslashes: $repo $RUN" ;; esac
  {
    printf "WORK='%s'\nRUN='%s'\nBIND='%s'\nRUNTIMES='%s'\nIOMMU='%s'\n" "$repo" "$RUN" "$BIND" "$runtimes" "$IOMMU"
  } > "$RUN/guest.conf"
  write_cmd > "$RUN/cmd.sh"
}

# The guest command as a bash script: environment, then the command in the repo.
write_cmd() {
  local v
  echo "# generated by scripts/lab/run.sh"
  for v in $(compgen -e | grep '^VFIO_TS_' || true); do printf 'export %s=%q\n' "$v" "${!v}"; done
  printf 'export %s\n' HOME=/tmp DENO_DIR=/tmp/deno-dir TERM=dumb NO_COLOR=1 DENO_NO_UPDATE_CHECK=1 LANG=C.UTF-8 \
    PATH=/run/vfio-ts/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VFIO_TS_LAB=1 VFIO_TS_LAB_KERNEL=$KERNEL VFIO_TS_LAB_IOMMU=$IOMMU ${EDU_DMA_MASK:+EDU_DMA_MASK=$EDU_DMA_MASK}
  printf 'export VFIO_TS_NVME_IMAGE=%q\n' "$RUN/nvme.img"
  printf 'cd %q || exit 125\n' "$repo"
  printf '%s\n' "$CMD"
}

qemu_args() {
  # vfio-pci.enable_sriov=1: SR-IOV on a PF bound to vfio-pci (the igb ports).
  local append="console=ttyS0 loglevel=4 panic=-1 vfio-pci.enable_sriov=1" machine=q35,accel=tcg edu
  QARGS=()
  # Without an IOMMU, edu is given physical addresses, and a 2 GiB guest's pages mostly lie above edu's
  # default 28-bit DMA mask: the no-IOMMU configurations widen it (EDU_DMA_MASK tells the guest).
  edu=edu${EDU_DMA_MASK:+,dma_mask=$EDU_DMA_MASK}
  if [ "$IOMMU" = intel ]; then
    # Interrupt remapping is required: without it VFIO_SET_IOMMU fails with EPERM. (QEMU wants the split
    # irqchip for intremap under KVM; under TCG it is harmless.) The IOMMU goes before the PCI devices.
    machine+=,kernel-irqchip=split
    QARGS+=(-device intel-iommu,intremap=on)
    append+=" intel_iommu=on"
  else
    append+=" vfio.enable_unsafe_noiommu_mode=1"
  fi
  QARGS+=(
    -machine "$machine" -cpu max -smp "$SMP" -m "$MEM"
    -device "$edu,addr=04.0"
    -drive "file=$RUN/nvme.img,if=none,id=nvm,format=raw"
    -device nvme,serial=vfiotslab0001,drive=nvm,addr=05.0
    -device "$edu,addr=06.0,multifunction=on"
    -device virtio-rng-pci,addr=06.1
    -device pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1,addr=07.0
    -device "$edu,bus=rp0,addr=00.0"
    -device "$edu,addr=08.0"
    # Each igb reserves the two slots 0x10 above it for its VFs (devfn + 0x80); the hub joins the two
    # ports (QEMU warns that hub 0 has no host network: none is wanted). No option ROM: nothing boots
    # from them.
    -netdev hubport,id=n0,hubid=0 -device igb,netdev=n0,mac=52:54:00:12:34:0a,romfile=,addr=0a.0
    -netdev hubport,id=n1,hubid=0 -device igb,netdev=n1,mac=52:54:00:12:34:0c,romfile=,addr=0c.0
    -kernel "$KIMG" -initrd "$INITRD" -append "$append"
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=$repo,mount_tag=work,security_model=none,multidevs=remap"
    -virtfs "local,path=$RUN,mount_tag=run,security_model=none"
    -device isa-debug-exit,iobase=0xf4,iosize=0x04
    -nic none -vga none -display none -monitor none -no-reboot
    -chardev "stdio,id=con,signal=off,logfile=$LOG" -serial chardev:con
  )
}

# Boots the guest under `timeout` (TCG; SMP 1 unless --smp: SMP>1 under TCG oopsed in about 1 boot of 10).
# Sets QRC to QEMU's exit status. Runs in the background so Ctrl-C can stop QEMU: `timeout` puts it in
# its own process group, out of reach of the terminal's signals.
boot() {
  local qpid
  if [ "$QUIET" = 1 ]; then
    timeout -k 10 "$TIMEOUT" qemu-system-x86_64 "${QARGS[@]}" < /dev/null > /dev/null &
  else
    timeout -k 10 "$TIMEOUT" qemu-system-x86_64 "${QARGS[@]}" < /dev/null >&2 &
  fi
  qpid=$!
  trap 'kill -TERM "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null; lab_die "interrupted (console log: $LOG)"' INT TERM HUP
  QRC=0
  wait "$qpid" || QRC=$?
  trap - INT TERM HUP
}

# The status file on the run share is authoritative; isa-debug-exit ((v << 1) | 1) is the backup.
# QEMU's own exit 1 (bad arguments) looks like debug-exit 0, so it counts only with the file missing
# and is treated as a failure.
guest_status() {
  RC=$(cat "$RUN/rc" 2>/dev/null || true)
  case $RC in ''|*[!0-9]*) ;; *) return 0 ;; esac
  if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
    lab_log "error: guest timed out after ${TIMEOUT}s and was killed (console log: $LOG)"; RC=124; return 0
  fi
  if [ $((QRC & 1)) = 1 ] && [ "$QRC" -gt 1 ] && [ "$QRC" -lt 124 ]; then RC=$((QRC >> 1)); return 0; fi
  if grep -q 'Kernel panic' "$LOG" 2>/dev/null; then
    lab_log "error: guest kernel panicked: $(grep -m1 'Kernel panic' "$LOG" | tr -d '\r') (console log: $LOG)"
  else
    lab_log "error: guest did not report a status (qemu exit $QRC; console log: $LOG)"
  fi
  RC=125
}

keep_log() {
  local dir=$VFIO_LAB_CACHE/logs
  # The newest log of each name is <name>.log; the previous few stay as <name>-<time>.log.
  [ -f "$dir/$NAME.log" ] && mv "$dir/$NAME.log" "$dir/$NAME-$(date -r "$dir/$NAME.log" +%Y%m%d-%H%M%S).log"
  { ls -1t "$dir/$NAME"-*.log 2>/dev/null || true; } | tail -n +6 | while read -r f; do rm -f "$f"; done
  return 0
}

cleanup() { [ "$KEEP" = 1 ] || rm -rf "$RUN"; }

main() {
  parse_args "$@"
  EDU_DMA_MASK=""
  [ "$IOMMU" = none ] && EDU_DMA_MASK=0xffffffff # 32 bits: above the 2 GiB guest's RAM
  host_tools
  pick_kernel
  build_initrd
  mkdir -p "$VFIO_LAB_CACHE/logs"
  keep_log
  LOG=$VFIO_LAB_CACHE/logs/$NAME.log
  make_run_dir
  trap cleanup EXIT
  qemu_args
  lab_log "booting $NAME (kernel $KERNEL, iommu $IOMMU, $SMP vCPU, timeout ${TIMEOUT}s; console log: $LOG)"
  local start=$SECONDS
  boot
  guest_status
  lab_log "$NAME: guest command exited with status $RC after $((SECONDS - start))s (qemu exit $QRC)"
  exit "$RC"
}

main "$@"
