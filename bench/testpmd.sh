#!/usr/bin/env bash
# The C peer of bench/igb.ts: DPDK's testpmd (Debian's dpdk-dev, installed on the host by
# scripts/bench.mjs) drives the lab's igb NICs through vfio-pci with its net_e1000_igb PMD. Runs
# inside the guest of scripts/lab/run.sh, where the devices are already bound to vfio-pci.
#
# usage: bench/testpmd.sh --mode txonly|fwd [--seconds S] [--warmup W] [--igb0 BDF] [--igb1 BDF]
#   txonly: 64-byte frames out of IGB0 (0000:00:0a.0), packets/s transmitted;
#   fwd:    io forwarding between IGB0 and IGB1 (0000:00:0c.0), which sit on one QEMU hub; each port
#           first sends one burst (--tx-first), then every packet received on one port goes out of
#           the other; packets/s transmitted on both ports together.
# Prints one JSON line, as bench/_harness.ts `emit` does:
#   {"bench":"igb.txonly64"|"igb.fwd64","side":"dpdk","unit":"pps","samples":[...],"note":...}
# with one sample per second of testpmd's own throughput counter (its "Tx-pps", measured against
# CLOCK_MONOTONIC between two displays of the port statistics). The first display has no rate and
# the next W are warm-up; S samples follow, then testpmd is stopped with SIGINT. When testpmd is
# missing or fails, the line has "error" and no samples, and the exit status is 1.
#
# testpmd runs non-interactively with --stats-period 1. The guest has one vCPU: forwarding needs an
# lcore besides the main one, so both lcores share CPU 0 (--lcores 0@0,1@0); the main lcore sleeps
# between displays. Memory: 256 MiB of 2 MiB hugepages (--in-memory, no hugetlbfs mount needed),
# reserved for the run when not free and given back after. Measured in the lab, io forwarding ran
# 1.3-2x faster on them than with --no-huge (4 KiB pages), and txonly the same; --no-huge remains
# the fallback when the pages cannot be had, and the note says which memory was used.
# Rings of 512 descriptors and bursts of 32 (testpmd's defaults for igb, spelled out) match
# bench/igb.ts.
set -uo pipefail
mode="" seconds=3 warmup=1 igb0=0000:00:0a.0 igb1=0000:00:0c.0
while [ $# -gt 0 ]; do
  case $1 in
    --mode) mode=${2:-}; shift 2 ;;
    --seconds) seconds=${2:-}; shift 2 ;;
    --warmup) warmup=${2:-}; shift 2 ;;
    --igb0) igb0=${2:-}; shift 2 ;;
    --igb1) igb1=${2:-}; shift 2 ;;
    *) echo "usage: bench/testpmd.sh --mode txonly|fwd [--seconds S] [--warmup W]" >&2; exit 2 ;;
  esac
done
case $mode in
  txonly) bench=igb.txonly64 ;;
  fwd) bench=igb.fwd64 ;;
  *) echo "bench/testpmd.sh: --mode must be txonly or fwd" >&2; exit 2 ;;
esac
case "$seconds$warmup" in
  *[!0-9]*) echo "bench/testpmd.sh: --seconds and --warmup take whole seconds" >&2; exit 2 ;;
esac
[ "$seconds" -ge 1 ] || { echo "bench/testpmd.sh: --seconds must be at least 1" >&2; exit 2; }

note="DPDK $(dpkg-query -W -f='${Version}' dpdk 2>/dev/null || echo '?') testpmd, net_e1000_igb PMD, vfio-pci"
json_string() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\n\t' '  ')"; }
fail() {
  echo "bench(dpdk): $bench: $1" >&2
  printf '{"bench":"%s","side":"dpdk","unit":"pps","samples":[],"note":%s,"error":%s}\n' \
    "$bench" "$(json_string "$note")" "$(json_string "$1")"
  exit 1
}
command -v dpdk-testpmd > /dev/null ||
  fail "dpdk-testpmd is not installed on the host (scripts/bench.mjs installs dpdk-dev with apt-get)"

log=$(mktemp /tmp/testpmd-XXXXXX.log)
hp=/sys/kernel/mm/hugepages/hugepages-2048kB pages=128 restore=""
cleanup() {
  rm -f "$log"
  [ -z "$restore" ] || { echo "$restore" > "$hp/nr_hugepages"; } 2> /dev/null
}
trap cleanup EXIT
mem=(--no-huge -m 256) memnote="--no-huge"
if [ -w "$hp/nr_hugepages" ]; then
  free=$(cat "$hp/free_hugepages")
  if [ "$free" -lt "$pages" ]; then
    restore=$(cat "$hp/nr_hugepages")
    { echo $((restore + pages - free)) > "$hp/nr_hugepages"; } 2> /dev/null
  fi
  [ "$(cat "$hp/free_hugepages")" -ge "$pages" ] && mem=(--in-memory -m 256) memnote="2 MiB hugepages"
fi
note+=", $memnote"
eal=(--lcores 0@0,1@0 -n 1 "${mem[@]}" --no-telemetry --file-prefix vfio-ts-bench -a "$igb0")
app=(--total-num-mbufs=8192 --rxd=512 --txd=512 --burst=32 --txpkts=64 --stats-period 1)
ports=1
if [ "$mode" = txonly ]; then
  app+=(--forward-mode=txonly)
else
  ports=2
  eal+=(-a "$igb1")
  app+=(--forward-mode=io --tx-first)
fi
echo "bench(dpdk): dpdk-testpmd ${eal[*]} -- ${app[*]}" >&2
dpdk-testpmd "${eal[@]}" -- "${app[@]}" > "$log" 2>&1 &
pid=$!
# Each display starts with "Port statistics"; stop after the rate-less one, the warm-up and S more.
want=$((1 + warmup + seconds))
deadline=$((SECONDS + 60 + want))
while kill -0 "$pid" 2> /dev/null; do
  [ "$(grep -c '^Port statistics' "$log")" -ge "$want" ] && break
  if [ "$SECONDS" -ge "$deadline" ]; then
    kill -KILL "$pid" 2> /dev/null
    wait "$pid" 2> /dev/null
    fail "testpmd printed fewer than $want statistics displays in $((60 + want)) s: $(tail -5 "$log")"
  fi
  sleep 0.2
done
kill -INT "$pid" 2> /dev/null
wait "$pid"
rc=$?
# The rate of each display: Tx-pps summed over the ports (one port for txonly, two for fwd).
samples=$(awk -v skip=$((1 + warmup)) -v n="$seconds" '
  /^Port statistics/ { d++; next }
  /Tx-pps:/ && d { sum[d] += $2 }
  END {
    out = ""
    for (i = skip + 1; i <= skip + n && i <= d; i++) out = out (out == "" ? "" : ",") sum[i] + 0
    print out
  }' "$log")
why=$(grep -E 'Cause:|No probed|EAL: .*(cannot|[Ff]ail|Error)' "$log" | head -3)
if [ "$(grep -c 'NIC statistics for port' "$log")" -lt $((want * ports)) ]; then
  fail "testpmd did not drive $ports port(s) through $want statistics displays (status $rc): $why"
fi
# The run's totals (the "Accumulated forward statistics" testpmd prints on the way out).
grep -E '^ *(TX|RX)-packets:.*-total' "$log" | tail -2 | sed 's/^ */bench(dpdk): total /' >&2
printf '{"bench":"%s","side":"dpdk","unit":"pps","samples":[%s],"note":%s}\n' \
  "$bench" "$samples" "$(json_string "$note")"
