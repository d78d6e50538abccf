/**
 * The NVMe part of the lab benchmarks (`bench/lab.ts --part nvme`, 0000:00:05.0): random 4 KiB reads
 * over the whole namespace, IOPS, at queue depths 1, 4, 16, 32 and 64. The baseline of every row is
 * the kernel's nvme driver under fio (io_uring, direct, one job) at the same depth, measured by
 * bench/lab.sh in the same boot.
 *
 * - `nvme.randread4k.irq.qdN.q1` and `.q2`: the asynchronous driver ({@link Nvme}) with MSI-X, on one
 *   or two I/O queues (round robin): N loops, each awaiting one read into its own page of a DMA
 *   buffer before it submits the next (what fio's io_uring engine keeps in flight at iodepth N);
 * - `nvme.randread4k.poll.qdN`: the same, polled, one queue;
 * - `nvme.randread4k.blocking.qd1`: the blocking driver ({@link NvmeController}), MSI-X;
 * - `nvme.randread4k.lean.{spin,wait,next}.qd{1,32}`: bench/nvme_queue.ts, a queue pair with no
 *   driver in between, polled (`spin`), or with MSI-X waited for with `irq.wait()` on this thread
 *   (`wait`: no thread hop, but the event loop is blocked) or `await irq.next()` (`next`: the read
 *   off the thread, as the driver waits). They bound the driver's rows from below.
 *
 * Each configuration brings the controller up once and warms up (JIT tiers settle slowly under
 * TCG), then each depth runs briefly before its timed repetitions.
 *
 * @module
 */
import type { Sys } from "../lib/sys.ts";
import { openPciDevice } from "../lib/open.ts";
import { VFIO_PCI_MSIX_IRQ_INDEX } from "../lib/uapi/vfio.ts";
import type { DmaBuffer } from "../mod.ts";
import { Nvme, NvmeController, PAGE } from "../examples/nvme.ts";
import { type BenchOptions, emit, log } from "./_harness.ts";
import { BenchQueue, type QueueWait } from "./nvme_queue.ts";

/** Queue depths of the matrix. */
export const QUEUE_DEPTHS: readonly number[] = [1, 4, 16, 32, 64];

/** What the NVMe benchmarks need from bench/lab.ts. */
export interface NvmeBenchContext {
  sys: Sys;
  /** The controller's PCI address. */
  bdf: string;
  /** Warm-up per configuration (`warmupMs`, at least half of `ioMs`). */
  o: BenchOptions;
  /** Timed repetitions per point. */
  reps: number;
  /** Length of one repetition, in ms. */
  ioMs: number;
  /** Runs one section; a failure is reported as a result line and the next section runs. */
  section: (bench: string, fn: () => void | Promise<void>) => Promise<void>;
}

const SETTLE_MS = 200; // each depth runs this long before its repetitions

// xorshift32: cheap and the same sequence every run.
function randomGenerator(): () => number {
  let x = 0x2545f491;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

/**
 * Keeps `qd` random 4 KiB reads in flight on the asynchronous driver for `ms`: `qd` loops, each
 * awaiting one read into its own page of `buf` before it submits the next.
 *
 * @returns Reads per second.
 */
async function asyncIops(
  nvme: Nvme,
  qd: number,
  ms: number,
  buf: DmaBuffer,
  random: () => number,
): Promise<number> {
  const per = PAGE / nvme.namespace.blockSize, slots = Math.floor(nvme.namespace.blocks / per);
  const spans = Array.from({ length: qd }, (_, i) => ({ buffer: buf, offset: i * PAGE }));
  let n = 0, stop = false;
  const loop = async (i: number) => {
    const span = spans[i]!;
    while (!stop) {
      await nvme.read((random() % slots) * per, per, span);
      n++;
    }
  };
  const t0 = performance.now();
  const timer = setTimeout(() => (stop = true), ms);
  try {
    await Promise.all(spans.map((_, i) => loop(i)));
  } finally {
    clearTimeout(timer);
  }
  return n / ((performance.now() - t0) / 1000);
}

/**
 * Runs every NVMe benchmark and prints its result lines.
 *
 * @param c What bench/lab.ts provides.
 */
export async function nvmeBenches(c: NvmeBenchContext): Promise<void> {
  const { sys, bdf, o, reps, ioMs, section } = c;
  const random = randomGenerator();
  const warmMs = Math.max(o.warmupMs, ioMs / 2);
  const maxDepth = Math.max(...QUEUE_DEPTHS);

  // The asynchronous driver: MSI-X on one and two queues, then polled.
  for (const [mode, queues] of [["irq", 1], ["irq", 2], ["poll", 1]] as const) {
    const id = (qd: number) => `nvme.randread4k.${mode}.qd${qd}${mode === "irq" ? `.q${queues}` : ""}`;
    await section(id(QUEUE_DEPTHS[0]!), async () => {
      using vfio = openPciDevice(sys, bdf);
      // Deep enough for every depth on one queue (depth - 1 commands in flight).
      await using nvme = Nvme.init(vfio, {
        poll: mode === "poll",
        queues,
        ioDepth: 2 * maxDepth,
        timeoutMs: 3000,
      });
      using buf = vfio.dma.alloc(maxDepth * PAGE);
      log(`nvme ${mode}, ${nvme.queueCount} queue(s) on ${bdf}: ${vfio.backend.kind}`);
      await asyncIops(nvme, 32, warmMs, buf, random);
      for (const qd of QUEUE_DEPTHS) {
        await asyncIops(nvme, qd, SETTLE_MS, buf, random);
        const before = nvme.stats;
        const samples: number[] = [];
        for (let r = 0; r < reps; r++) samples.push(await asyncIops(nvme, qd, ioMs, buf, random));
        const after = nvme.stats;
        const perInterrupt = (after.commands - before.commands) /
          Math.max(1, after.interrupts - before.interrupts);
        emit({
          bench: id(qd),
          baseline: `nvme.randread4k.qd${qd}`,
          unit: "IOPS",
          samples,
          note: `Nvme.read, ${
            mode === "irq"
              ? `MSI-X, ${queues} queue(s), ${perInterrupt.toFixed(1)} reads per interrupt`
              : "polled"
          }, ${vfio.backend.kind}; kernel: fio, 1 job`,
        });
      }
    });
  }

  // The blocking driver at QD1, MSI-X.
  await section("nvme.randread4k.blocking.qd1", () => {
    using vfio = openPciDevice(sys, bdf);
    using nvme = NvmeController.init(vfio, { timeoutMs: 3000 });
    using buf = vfio.dma.alloc(PAGE);
    const per = PAGE / nvme.namespace.blockSize, slots = Math.floor(nvme.namespace.blocks / per);
    const transfer = { lba: 0, blocks: per, buffer: buf };
    const run = (ms: number) => {
      let n = 0;
      const t0 = performance.now(), end = t0 + ms;
      let now = t0;
      for (; now < end; n++, now = performance.now()) {
        transfer.lba = (random() % slots) * per;
        nvme.read(transfer);
      }
      return n / ((now - t0) / 1000);
    };
    run(warmMs);
    const samples: number[] = [];
    for (let r = 0; r < reps; r++) samples.push(run(ioMs));
    emit({
      bench: "nvme.randread4k.blocking.qd1",
      baseline: "nvme.randread4k.qd1",
      unit: "IOPS",
      samples,
      note: `NvmeController.read, MSI-X, ${vfio.backend.kind}`,
    });
  });

  // The lean queue pair: polled, then with MSI-X (vector 1, enabled here: the controller is polled
  // and leaves MSI-X alone).
  await section("nvme.randread4k.lean.spin.qd1", async () => {
    using vfio = openPciDevice(sys, bdf);
    using nvme = NvmeController.init(vfio, { poll: true, timeoutMs: 3000 });
    using irq = vfio.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
    using polled = new BenchQueue(vfio, nvme, 2);
    using signalled = new BenchQueue(vfio, nvme, 3, 64, { irq, vector: 1 });
    log(
      `nvme lean queues ${polled.qid} (polled) and ${signalled.qid} (MSI-X) on ${bdf}: ${vfio.backend.kind}`,
    );
    for (const how of ["spin", "wait", "next"] as QueueWait[]) {
      const q = how === "spin" ? polled : signalled;
      await q.run(32, warmMs, how);
      for (const qd of [1, 32]) {
        await q.run(qd, SETTLE_MS, how);
        const samples: number[] = [];
        for (let r = 0; r < reps; r++) {
          const { ios, elapsedMs } = await q.run(qd, ioMs, how);
          samples.push(ios / (elapsedMs / 1000));
        }
        emit({
          bench: `nvme.randread4k.lean.${how}.qd${qd}`,
          baseline: `nvme.randread4k.qd${qd}`,
          unit: "IOPS",
          samples,
          note: `bench/nvme_queue.ts, ${
            how === "spin" ? "polled" : how === "wait" ? "MSI-X, irq.wait()" : "MSI-X, await irq.next()"
          }, ${vfio.backend.kind}`,
        });
      }
    }
  });
}
