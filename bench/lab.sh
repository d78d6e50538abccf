#!/usr/bin/env bash
# The lab half of `npm run bench`: runs inside the guest of scripts/lab/run.sh, in the repo, after
# scripts/bench.mjs has built bench/build/ on the host. Writes, under OUT:
#   results.jsonl      one JSON line per benchmark and side (C, deno, bun)
#   fio-qdN-R.json     fio's report of each kernel-driver run (QD 1, 4, 16, 32 and 64)
#   machine            what ran it
# Every group is opened by one process at a time: the C baseline (for igb: DPDK's testpmd, side
# "dpdk", through bench/testpmd.sh) and the two runtimes take turns.
#
# usage: bench/lab.sh OUT   (env: BENCH_ROUNDS BENCH_REPS BENCH_TARGET_MS BENCH_WARMUP_MS BENCH_IO_MS
#                            BENCH_C_WARMUP_MS BENCH_IRQ_EVENTS BENCH_IGB_SECONDS BENCH_ONLY=edu|irq|nvme|igb
#                            BENCH_NVME_REPS)
# NVMe: every point (runtime, mode, queue depth; fio at each depth) is BENCH_NVME_REPS repetitions
# of BENCH_IO_MS.
# The JS warm-up (BENCH_WARMUP_MS) is seconds, because JIT tiers settle slowly under TCG; C needs none
# beyond page faults and caches (BENCH_C_WARMUP_MS).
set -uo pipefail
out=${1:?usage: bench/lab.sh OUT}
rounds=${BENCH_ROUNDS:-2} reps=${BENCH_REPS:-5} target=${BENCH_TARGET_MS:-100} warm=${BENCH_WARMUP_MS:-100}
c_warm=${BENCH_C_WARMUP_MS:-300} io_ms=${BENCH_IO_MS:-1000} events=${BENCH_IRQ_EVENTS:-500} only=${BENCH_ONLY:-}
nvme_reps=${BENCH_NVME_REPS:-3}
igb_s=${BENCH_IGB_SECONDS:-3}
edu=0000:00:04.0 nvme=0000:00:05.0
case $only in ""|edu|irq|nvme|igb) ;; *) echo "bench/lab.sh: BENCH_ONLY must be edu, irq, nvme or igb" >&2; exit 2 ;; esac
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
status=0
say() { echo "bench-lab: $*" >&2; }
opts=(--reps "$reps" --target-ms "$target" --warmup-ms "$warm" --irq-events "$events" --io-ms "$io_ms"
  --nvme-reps "$nvme_reps")
js() { # runtime part
  if [ "$1" = deno ]; then deno run -A bench/lab.ts --part "$2" "${opts[@]}" >> "$results" || status=1
  elif [ "$2" = irq ]; then
    # The interrupt rows run with JSC's JIT on the JS thread: on the one vCPU, its JITWorker threads
    # otherwise take the CPU from the thread waiting for the interrupt (the rows' notes say so).
    BUN_JSC_useConcurrentJIT=0 bun bench/lab.ts --part "$2" "${opts[@]}" >> "$results" || status=1
  else bun bench/lab.ts --part "$2" "${opts[@]}" >> "$results" || status=1; fi
}
echo "QEMU TCG guest (-cpu max, $(nproc) vCPU), kernel $(uname -r)" > "$out/machine"

if want edu; then
  for r in $(seq "$rounds"); do
    say "edu round $r/$rounds: C"
    bench/build/lab_baseline "$edu" "$reps" "$target" "$c_warm" "$events" >> "$results" || status=1
    for rt in deno bun; do say "edu round $r/$rounds: $rt"; js "$rt" edu; js "$rt" irq; done
  done
fi

# BENCH_ONLY=irq: the edu group's interrupt rows alone (bench/lab.ts --part irq, and the C baseline's
# irq lines), for the tail's diagnosis.
if [ "$only" = irq ]; then
  for r in $(seq "$rounds"); do
    say "irq round $r/$rounds: C"
    bench/build/lab_baseline "$edu" "$reps" "$target" "$c_warm" "$events" | grep '"bench":"irq\.' >> "$results" || status=1
    for rt in deno bun; do say "irq round $r/$rounds: $rt"; js "$rt" irq; done
  done
fi

if want nvme; then
  for rt in deno bun; do say "nvme: $rt"; js "$rt" nvme; done

  # The kernel's nvme driver on the same controller: rebind it, run fio (io_uring, one job: the
  # kernel's one I/O queue per vCPU serves it; the JS rows with two queues compare with it too),
  # give it back.
  d=/sys/bus/pci/devices/$nvme
  say "nvme: binding $nvme to the kernel nvme driver"
  [ -e "$d/driver" ] && echo "$nvme" > "$d/driver/unbind"
  echo nvme > "$d/driver_override"
  echo "$nvme" > /sys/bus/pci/drivers_probe
  dev=""
  for _ in $(seq 300); do
    for b in /sys/bus/pci/devices/$nvme/nvme/nvme*/nvme*n1; do [ -e "$b" ] && dev=/dev/${b##*/}; done
    [ -n "$dev" ] && [ -b "$dev" ] && break
    dev=""
    sleep 0.1
  done
  if [ -z "$dev" ]; then
    say "error: no namespace block device appeared for $nvme"
    status=1
  elif ! command -v fio > /dev/null; then
    say "error: fio is not installed on the host (scripts/bench.mjs installs it)"
    status=1
  else
    say "nvme: fio on $dev"
    secs=$(awk "BEGIN { printf \"%.3f\", $io_ms / 1000 }")
    for qd in 1 4 16 32 64; do
      for r in $(seq "$nvme_reps"); do
        # The first run of each depth carries the warm-up, as the JS side's.
        ramp=0; [ "$r" = 1 ] && ramp=$(awk "BEGIN { printf \"%.3f\", $io_ms / 2000 }")
        fio --name=randread --filename="$dev" --ioengine=io_uring --direct=1 --rw=randread --bs=4k \
          --iodepth="$qd" --numjobs=1 --time_based --runtime="${secs}s" --ramp_time="${ramp}s" \
          --norandommap --randrepeat=0 --output-format=json --output="$out/fio-qd$qd-$r.json" \
          || status=1
      done
    done
  fi
  say "nvme: giving $nvme back to vfio-pci"
  [ -e "$d/driver" ] && echo "$nvme" > "$d/driver/unbind"
  echo vfio-pci > "$d/driver_override"
  echo "$nvme" > /sys/bus/pci/drivers_probe
fi

# igb: DPDK's testpmd (the C peer, bench/testpmd.sh) and examples/igb.ts on each runtime
# (bench/igb.ts) take turns on the two hub-joined NICs, for 64-byte txonly and io forwarding.
# A runtime that is missing its benchmark file, crashes or prints no line gets an "error" line, so
# that its row reports the failure instead of vanishing.
igb_js() { # runtime txonly|fwd
  local bench=igb.${2}64 tmp rc
  if [ ! -f bench/igb.ts ]; then
    say "error: bench/igb.ts does not exist"
    printf '{"bench":"%s","side":"%s","unit":"pps","samples":[],"error":"%s"}\n' "$bench" "$1" \
      "bench/igb.ts does not exist" >> "$results"
    status=1
    return
  fi
  tmp=$(mktemp)
  if [ "$1" = deno ]; then deno run -A bench/igb.ts --mode "$2" --seconds "$igb_s" > "$tmp"
  else bun bench/igb.ts --mode "$2" --seconds "$igb_s" > "$tmp"; fi
  rc=$?
  cat "$tmp" >> "$results"
  if ! grep -q "\"bench\":\"$bench\"" "$tmp"; then
    printf '{"bench":"%s","side":"%s","unit":"pps","samples":[],"error":"%s"}\n' "$bench" "$1" \
      "bench/igb.ts --mode $2 exited with status $rc and printed no $bench line" >> "$results"
    status=1
  fi
  [ "$rc" = 0 ] || status=1
  rm -f "$tmp"
}
if want igb; then
  for r in $(seq "$rounds"); do
    for mode in txonly fwd; do
      say "igb $mode round $r/$rounds: dpdk"
      bash bench/testpmd.sh --mode "$mode" --seconds "$igb_s" >> "$results" || status=1
      for rt in deno bun; do say "igb $mode round $r/$rounds: $rt"; igb_js "$rt" "$mode"; done
    done
  done
fi
say "done (status $status)"
exit "$status"
