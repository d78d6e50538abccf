/**
 * The igb packet benchmark, the JS side of DPDK's testpmd (bench/testpmd.sh), on the driver in
 * examples/igb.ts. Runs inside the lab guest, repo as cwd:
 *
 * ```sh
 * deno run -A bench/igb.ts --mode txonly|fwd --seconds S     # or: bun bench/igb.ts …
 * ```
 *
 * - `txonly`: 64-byte IPv4/UDP frames out of IGB0 as fast as possible, like testpmd's txonly: bursts
 *   of 32, transmit descriptors reclaimed by polling their write-backs, one TDT write per burst.
 *   Packets/s as the NIC counts them (GPTC), checked against the driver's own count.
 * - `fwd`: io forwarding between IGB0 and IGB1, like `testpmd --forward-mode=io --tx-first`: each
 *   port first sends a burst of 32 frames, then each port's received burst goes out of the other
 *   port, zero-copy (both ports share one IOMMU backend and DMA pool, and a received buffer swaps
 *   places with an already-sent transmit buffer). Packets/s forwarded, summed over both ports (GPTC).
 *
 * Both poll, with no interrupts, and prebuild everything: frames are written into the transmit
 * buffers once, and the loop allocates nothing. Output: one JSON line on stdout through `emit`,
 * `{bench: "igb.txonly64" | "igb.fwd64", unit: "pps", samples}`, one sample per second after
 * `--warmup` seconds (default 3: under TCG the JIT's optimising tiers take seconds to settle, longer
 * on Bun, as measured in the lab); diagnostics on stderr. Exit status 0, 1 when the traffic stopped or the NIC's
 * count disagrees with the driver's, 2 on bad usage.
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { DmaPool, loadSys, openIommu } from "../mod.ts";
import { buildFrame, DEFAULT_BDF, DEFAULT_PEER, Igb, type IgbQueue } from "../examples/igb.ts";
import { emit, log } from "./_harness.ts";

const USAGE = "usage: bench/igb.ts --mode txonly|fwd --seconds S [--warmup S] [--ring N] [--burst N]";
const FRAME = 64; // bytes without FCS, as testpmd's --txpkts=64

interface Args {
  mode: "txonly" | "fwd";
  seconds: number;
  warmup: number;
  ring: number;
  burst: number;
}

function parse(): Args {
  const { values: v } = parseArgs({
    args: process.argv.slice(2),
    options: {
      mode: { type: "string" },
      seconds: { type: "string", default: "3" },
      warmup: { type: "string", default: "3" },
      ring: { type: "string", default: "512" },
      burst: { type: "string", default: "32" },
    },
  });
  const int = (name: string, s: string, min: number) => {
    const n = Number(s);
    if (!/^\d+$/.test(s) || n < min) {
      throw new TypeError(`--${name} ${s}: expected an integer of at least ${min}`);
    }
    return n;
  };
  if (v.mode !== "txonly" && v.mode !== "fwd") throw new TypeError(`--mode must be txonly or fwd`);
  return {
    mode: v.mode,
    seconds: int("seconds", v.seconds, 1),
    warmup: int("warmup", v.warmup, 0),
    ring: int("ring", v.ring, 8),
    burst: int("burst", v.burst, 1),
  };
}

/** A rate sampled once a second after `warmupMs`: when `due(now)`, `take(total, now)` with a running total. */
class PerSecond {
  readonly samples: number[] = [];
  #t: number;
  #last = 0;
  #warm = true;
  constructor(readonly seconds: number, warmupMs: number, start: number) {
    this.#t = start + warmupMs;
  }
  /** Whether a second has passed: then `take(total)` must be called. */
  due(now: number): boolean {
    return now >= this.#t;
  }
  /** Records the second that ended; returns true when all samples are in. */
  take(total: number, now: number): boolean {
    if (this.#warm) this.#warm = false; // the warm-up's end: the first interval starts here
    else this.samples.push((total - this.#last) / ((now - this.#t + 1000) / 1000));
    this.#last = total;
    this.#t = now + 1000;
    return this.samples.length >= this.seconds;
  }
}

async function txonly({ seconds, warmup, ring, burst }: Args): Promise<void> {
  await using port = await Igb.open(DEFAULT_BDF, { poll: true, ringSize: ring });
  const q = port.queues[0]!;
  // Every transmit buffer holds the frame once and for all; the loop only writes descriptors.
  for (let k = 0; k < q.size; k++) {
    buildFrame(q.txFrame(k), { dst: "02:00:00:00:00:01", src: port.mac, size: FRAME, seq: k });
  }
  log(
    `igb.txonly64: ${port.name} (${port.dma.backend.kind}), ring ${ring}, burst ${burst}, ${warmup} s warm-up, ${seconds} s`,
  );
  const rate = new PerSecond(seconds, 1000 * warmup, performance.now());
  let sent = 0, counted = 0, iterations = 0;
  for (;;) {
    const free = q.txFree();
    const n = free < burst ? free : burst;
    for (let k = 0; k < n; k++) q.txPrepare(k, FRAME);
    q.txFlush(n);
    sent += n;
    if ((++iterations & 15) === 0) {
      const now = performance.now();
      if (rate.due(now)) {
        counted = port.counters().gptc;
        if (rate.take(counted, now)) break;
      }
    }
  }
  await q.waitTx();
  counted = port.counters().gptc;
  finish("igb.txonly64", rate.samples, sent, counted, `${port.name}, ring ${ring}, burst ${burst}`);
}

async function fwd({ seconds, warmup, ring, burst }: Args): Promise<void> {
  const sys = await loadSys();
  // One IOMMU address space and one DMA pool for both ports: a received buffer can then be sent
  // from the other port as it is.
  using backend = openIommu(sys);
  // Devices before the pool: the legacy container learns its IOVA ranges when the first group joins.
  const devices = [backend.openDevice(DEFAULT_BDF), backend.openDevice(DEFAULT_PEER)] as const;
  using dma = new DmaPool(sys, backend);
  const options = { poll: true, promiscuous: true, ringSize: ring };
  await using a = await Igb.attach(devices[0], dma, options);
  await using b = await Igb.attach(devices[1], dma, options);
  const qa = a.queues[0]!, qb = b.queues[0]!;
  log(
    `igb.fwd64: ${a.name} <-> ${b.name} (${backend.kind}), ring ${ring}, burst ${burst}, ${warmup} s warm-up, ${seconds} s`,
  );
  // --tx-first: one burst out of each port.
  const first = (from: IgbQueue, src: Igb, dst: Igb) => {
    for (let k = 0; k < burst; k++) {
      buildFrame(from.txFrame(k), { dst: dst.mac, src: src.mac, size: FRAME, seq: k });
      from.txPrepare(k, FRAME);
    }
    from.txFlush(burst);
  };
  first(qa, a, b);
  first(qb, b, a);
  const gptc = () => a.counters().gptc + b.counters().gptc;
  const rate = new PerSecond(seconds, 1000 * warmup, performance.now());
  let forwarded = 0, iterations = 0, idle = 0;
  for (;;) {
    const n = qa.forwardTo(qb, burst) + qb.forwardTo(qa, burst);
    forwarded += n;
    idle = n === 0 ? idle + 1 : 0;
    if ((++iterations & 15) === 0) {
      const now = performance.now();
      if (rate.due(now)) {
        if (idle > 1000) {
          throw new Error("Cannot forward: no frame arrived on either port for a while (all lost?)");
        }
        if (rate.take(gptc() - 2 * burst, now)) break;
      }
    }
  }
  await qa.waitTx();
  await qb.waitTx();
  finish(
    "igb.fwd64",
    rate.samples,
    forwarded,
    gptc() - 2 * burst,
    `${a.name} <-> ${b.name}, ring ${ring}, burst ${burst}`,
  );
}

function finish(bench: string, samples: number[], own: number, nic: number, what: string): void {
  const mean = samples.reduce((x, y) => x + y, 0) / samples.length;
  log(
    `${bench}: ${samples.map((s) => Math.round(s)).join(", ")} pps (mean ${Math.round(mean)}); ` +
      `driver counted ${own} packets, the NIC (GPTC) ${nic}`,
  );
  emit({ bench, unit: "pps", samples, note: `examples/igb.ts, polled, ${what}; GPTC ${nic}, driver ${own}` });
  if (own !== nic) {
    log(`error: ${bench}: the driver sent ${own} packets but the NIC counted ${nic}`);
    process.exitCode = 1;
  }
}

let args: ReturnType<typeof parse>;
try {
  args = parse();
} catch (e) {
  console.error(`bench/igb.ts: ${e instanceof Error ? e.message : e}\n${USAGE}`);
  process.exit(2);
}
try {
  await (args.mode === "txonly" ? txonly(args) : fwd(args));
} catch (e) {
  log(`error: igb.${args.mode}64: ${e instanceof Error ? e.message : e}`);
  process.exitCode = 1;
}
