#!/usr/bin/env bash
# Runs inside the lab guest (scripts/demo.mjs boots it): the CLI's list, info and doctor, then the
# edu, NVMe and igb example drivers, as a short transcript. Its output goes to OUT (on the shared
# repo), which the host prints after the guest exits, away from the kernel's console messages.
set -uo pipefail
out=${1:?usage: demo.sh OUTFILE}
: > "$out"
status=0
step() { # TITLE COMMAND...
  local title=$1; shift
  printf '\n\033[1m== %s\033[0m\n$ %s\n' "$title" "$*" >> "$out"
  if ! "$@" >> "$out" 2>&1; then
    printf '(exit status %s)\n' "$?" >> "$out"
    status=1
  fi
}
step "PCI devices and their VFIO status (Bun)" bun cli/vfio.ts list
step "What VFIO says about the edu device (Deno)" deno run --allow-ffi cli/vfio.ts info 0000:00:04.0
step "Is this machine ready for VFIO? (Bun)" bun cli/vfio.ts doctor 0000:00:04.0
step "edu driver: MMIO, factorial by MSI, DMA both ways (Deno)" deno run --allow-ffi examples/edu.ts 0000:00:04.0
step "edu driver, same file (Bun)" bun examples/edu.ts 0000:00:04.0
step "NVMe driver: identify, I/O queues, write and verify LBAs (Bun)" \
  bun examples/nvme.ts --verify 0000:00:05.0
step "NVMe driver, polled completions (Deno)" deno run --allow-ffi examples/nvme.ts --poll --verify 0000:00:05.0
step "igb driver: 64 frames from one port to the other over a QEMU hub, byte-exact, NIC counters, MSI-X per queue (Deno)" \
  deno run --allow-ffi examples/igb.ts --count 64 0000:00:0a.0 0000:00:0c.0
step "igb driver: memcpy through the NIC's DMA with MAC loopback, completion by MSI-X (Bun)" \
  bun examples/igb.ts --memcpy 4096 --loopback 0000:00:0a.0
exit $status
