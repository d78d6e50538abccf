/**
 * A small NVMe driver over VFIO: reset, admin queue, identify, several I/O queue pairs signalling
 * one MSI-X vector (or polled), and asynchronous block reads and writes described by PRPs, many
 * commands in flight per queue.
 *
 * ```sh
 * deno run --allow-ffi examples/nvme.ts [options] BDF
 * bun examples/nvme.ts [options] BDF
 * ```
 *
 * ```ts ignore
 * using vfio = await open("0000:00:05.0");
 * await using nvme = Nvme.init(vfio, { queues: 2 }); // I/O queues 1 and 2, both on MSI-X vector 1
 * const block0 = await nvme.read(0, 1); // resolves to a copy; or read(lba, blocks, dmaBuffer)
 * await Promise.all(Array.from({ length: 64 }, (_, i) => nvme.write(8 * i, block0))); // round robin
 * await nvme.flush();
 * await nvme.read(0, 8, undefined, { queue: 2, timeoutMs: 500 }); // else NvmeTimeoutError at 500 ms
 * ```
 *
 * The controller must be bound to vfio-pci first. What happens, top to bottom (the NVMe Base
 * Specification describes each step under the names used here):
 * 1. open the device through VFIO (the library picks the container or iommufd) and allocate every
 *    queue and buffer from its DMA pool, before the controller is touched, so that nothing can be
 *    freed while the controller may still write to it;
 * 2. enable bus mastering and, unless `poll`, MSI-X vectors 0 (admin) and 1 (every I/O queue: one
 *    thread reaps them all, so one wake-up serves them all);
 * 3. reset the controller (CC.EN=0, wait CSTS.RDY=0), point AQA/ASQ/ACQ at the admin queue, enable
 *    it (CC.EN=1 with the queue entry sizes and page size, wait CSTS.RDY=1, at most CAP.TO);
 * 4. Identify Controller and Identify Namespace 1;
 * 5. Set Features (Number of Queues) for N pairs, and as many as the controller grants: Create I/O
 *    Completion Queue i (vector 1), Create I/O Submission Queue i;
 * 6. read and write blocks: each call becomes commands of at most MDTS, each described by PRP1 and
 *    PRP2, or PRP1 and a PRP list (a page per command ID) when it spans more than two pages; data
 *    without a DMA buffer goes through a bounce page per command ID, or driver memory above a page;
 * 7. on close: fail what never reached the controller, delete each I/O submission queue (the
 *    controller finishes or aborts what it took), reap its completion queue and delete it, shut
 *    down (CC.SHN), disable (CC.EN=0), fail what is left, and only then disable MSI-X and free
 *    the DMA memory.
 *
 * Commands complete by posting a 16-byte entry to a completion queue whose phase bit flips on each
 * pass through the queue; the driver consumes entries while the phase matches (read through the
 * buffer's volatile accessor, never a typed array), settles the calls whose commands are all done,
 * submits waiting commands into the freed command IDs, then writes the queue head to the completion
 * doorbell.
 *
 * {@link Nvme} is the asynchronous driver:
 * - `read(lba, blocks, buf?, options?)`, `write(lba, data, options?)` and `flush(options?)` return
 *   Promises. A call goes to one queue, round robin or `options.queue`; up to depth - 1 commands
 *   per queue are in the controller, and the rest wait in the driver for a command ID. Doorbells
 *   are rung once per burst of calls (a microtask).
 * - Reaping: one loop for every queue, while commands are in flight. It reaps whatever the
 *   completion queues hold (one completion doorbell write per queue and look), yields to
 *   microtasks so that the callers' continuations submit their next commands (one submission
 *   doorbell write per burst), and looks again; only when every queue is empty does it ring the
 *   doorbells and wait for vector 1 (`irq.next()`: an interrupt already counted is taken at once,
 *   otherwise the eventfd is read off the JavaScript thread). With `poll: true` it spins on the
 *   busy queues for up to 0.25 ms after an empty look and then yields to the event loop
 *   (setImmediate). A call of one command allocates its Promise, one record and (for a read into a
 *   DMA buffer) its result view; PRPs and LBAs travel as numbers.
 * - Timeouts: one timer, set for the earliest deadline of the calls in flight. A call past its
 *   deadline rejects with {@link NvmeTimeoutError}; its commands keep their command IDs and memory
 *   until the controller completes them or their queue is deleted (`error.released`). The NVMe
 *   Abort command is not sent: it is best-effort in the spec (the controller may answer "not
 *   aborted"), and it cannot reach a command whose doorbell the controller never saw. Abort here
 *   means the caller is released, never that a command ID or memory is reused early.
 * - Close (`using`, or `await using` to also wait for the reaper loop): every pending call
 *   settles, successful if the controller completed it while its queue was deleted, otherwise with
 *   {@link NvmeError} kind `"closed"`.
 *
 * {@link NvmeController} is the blocking driver on the same machinery: `read({ lba, blocks,
 * buffer })` submits and waits, blocking the thread, on I/O queue 1.
 *
 * The command line (`--verify`, two queues by default) on QEMU's controller in the lab (emulated VT-d, TCG):
 * ```text
 * 0000:00:05.0: IOMMU backend type1v2, MSI-X interrupts
 * 0000:00:05.0: controller ready in 2.8 ms (CAP.TO 7500 ms, doorbell stride 4, up to 2048 queue entries)
 * model QEMU NVMe Ctrl, serial vfiotslab0001, firmware 10.0.2, NVMe 1.4.0
 * namespace 1: 131072 blocks of 512 bytes (64 MiB)
 * I/O queues 1-2: 64 entries each, MSI-X vector 1; max transfer 512 KiB per command
 * block 0 begins 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
 * verify: wrote 2048 blocks at LBA 1024 (1 MiB) and flushed: 100.2 ms, 10.0 MiB/s
 * verify: read them back: 30.6 ms, 32.7 MiB/s; they match
 * verify: read them again in 11 pieces of growing size at buffer offset 388, all at once over 2 queues; they match
 * 24 commands, 14 interrupts
 * controller shut down and disabled in 7.8 ms
 * ```
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { type DmaBuffer, open } from "../mod.ts";
import { formatBytes, Nvme } from "./nvme/driver.ts";
import { checkPattern, fillPattern } from "./nvme/pattern.ts";
import { type ControllerInfo, type NamespaceInfo, PAGE } from "./nvme/spec.ts";

export {
  type DmaSpan,
  type IoOptions,
  Nvme,
  NvmeBase,
  NvmeController,
  type NvmeOptions,
  type QueueState,
  type Transfer,
} from "./nvme/driver.ts";
export { checkPattern, fillPattern } from "./nvme/pattern.ts";
export {
  ADMIN,
  type Capabilities,
  type Command,
  type Completion,
  type ControllerInfo,
  decodeStatus,
  type NamespaceInfo,
  NVM,
  NvmeError,
  type NvmeStatus,
  NvmeTimeoutError,
  PAGE,
  REG,
} from "./nvme/spec.ts";

// --- The command line -----------------------------------------------------------------------------

const USAGE = `usage: nvme.ts [options] BDF

Brings up an NVMe controller bound to vfio-pci, prints what Identify says, and reads block 0.

options:
  --poll               poll for completions instead of waiting for MSI-X interrupts
  --queues N           I/O queue pairs, all on MSI-X vector 1 (default 2)
  --verify             write the test pattern to --blocks blocks at --lba, flush, and read it back,
                       whole and, concurrently over the queues, in pieces of growing size at an
                       unaligned buffer offset
  --lba N              first block for --verify (default 1024)
  --blocks N           blocks for --verify (default 2048, several PRP lists and commands)
  --seed N             pattern seed for --verify and --expect (default 1)
  --expect LBA:N[:S]   check that N blocks at LBA hold the pattern with seed S (written by someone
                       else, e.g. the host into the backing image); may be repeated
  --timeout MS         command timeout (default 10000)
  --backend B          IOMMU backend: auto, legacy or iommufd (default auto)
  --json               print one JSON object instead of the transcript
  -h, --help           this text`;

/** What the command line did, as --json prints it. */
export interface Report {
  device: string;
  ok: boolean;
  backend?: string;
  mode?: "msix" | "poll";
  queues?: number;
  controller?: ControllerInfo;
  namespace?: NamespaceInfo & { bytes: number };
  timings?: Record<string, number>;
  block0?: string;
  verify?: { lba: number; blocks: number; bytes: number; writeMs: number; readMs: number; pieces: number };
  expect?: { lba: number; blocks: number; seed: number }[];
  stats?: { commands: number; interrupts: number };
  error?: { name: string; message: string };
}

const CLI_OPTIONS = {
  poll: { type: "boolean", default: false },
  queues: { type: "string", default: "2" },
  verify: { type: "boolean", default: false },
  lba: { type: "string", default: "1024" },
  blocks: { type: "string", default: "2048" },
  seed: { type: "string", default: "1" },
  expect: { type: "string", multiple: true, default: [] as string[] },
  timeout: { type: "string", default: "10000" },
  backend: { type: "string", default: "auto" },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

interface RunOptions {
  poll: boolean;
  queues: number;
  verify: boolean;
  lba: number;
  blocks: number;
  seed: number;
  expect: { lba: number; blocks: number; seed: number }[];
  timeoutMs: number;
  backend: "auto" | "legacy" | "iommufd";
}

/**
 * Runs the command line.
 *
 * @param args The arguments after the script name.
 * @returns The exit status: 0 done, 1 failed, 2 bad usage.
 */
export async function main(args: string[]): Promise<number> {
  let o: RunOptions, bdf: string, json: boolean;
  try {
    const { values: v, positionals } = parseArgs({ args, allowPositionals: true, options: CLI_OPTIONS });
    if (v.help) {
      console.log(USAGE);
      return 0;
    }
    if (positionals.length !== 1) throw new TypeError("expected one BDF");
    if (v.backend !== "auto" && v.backend !== "legacy" && v.backend !== "iommufd") {
      throw new TypeError(`unknown backend ${v.backend}`);
    }
    const int = (name: string, s: string) => {
      if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) {
        throw new TypeError(`--${name} ${s} is not a number`);
      }
      return Number(s);
    };
    const expect = v.expect.map((spec) => {
      const [lba = "", blocks = "", seed = v.seed] = spec.split(":");
      return { lba: int("expect", lba), blocks: int("expect", blocks), seed: int("expect", seed) };
    });
    [bdf, json] = [positionals[0]!, v.json];
    o = {
      ...v,
      queues: int("queues", v.queues),
      lba: int("lba", v.lba),
      blocks: int("blocks", v.blocks),
      seed: int("seed", v.seed),
      expect,
      timeoutMs: int("timeout", v.timeout),
      backend: v.backend,
    };
  } catch (e) {
    console.error(`nvme: ${e instanceof Error ? e.message : e}\n${USAGE}`);
    return 2;
  }
  const report: Report = { device: bdf, ok: false };
  try {
    await run(bdf, o, report, json ? () => {} : console.log);
    report.ok = true;
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    report.error = { name: err.name, message: err.message };
    console.error(`nvme: ${err.message}`);
  }
  if (json) console.log(JSON.stringify(report, (_, v) => (v === Infinity ? null : v)));
  return report.ok ? 0 : 1;
}

async function run(bdf: string, o: RunOptions, report: Report, say: (line: string) => void): Promise<void> {
  const { lba, blocks, seed } = o;
  using vfio = await open(bdf, { backend: o.backend });
  report.backend = vfio.backend.kind;
  report.mode = o.poll ? "poll" : "msix";
  say(`${bdf}: IOMMU backend ${vfio.backend.kind}, ${o.poll ? "polling" : "MSI-X interrupts"}`);
  await using nvme = Nvme.init(vfio, { poll: o.poll, queues: o.queues, timeoutMs: o.timeoutMs, log: say });
  const ns = nvme.namespace, bs = ns.blockSize;
  report.controller = nvme.controller;
  report.namespace = { ...ns, bytes: ns.blocks * bs };
  report.timings = { ...nvme.timings };
  report.queues = nvme.queueCount;
  const since = (t: number) => Math.round((performance.now() - t) * 10) / 10;

  const block0 = await nvme.read(0, 1);
  report.block0 = Array.from(block0.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join(" ");
  say(`block 0 begins ${report.block0}`);

  if (o.verify) {
    const bytes = blocks * bs, rate = (ms: number) => `${(bytes / 2 ** 20 / (ms / 1000)).toFixed(1)} MiB/s`;
    const out = new Uint8Array(bytes);
    fillPattern(out, lba, bs, seed);
    let t = performance.now();
    await nvme.write(lba, out); // copied into driver memory, split at MDTS
    await nvme.flush();
    const writeMs = since(t);
    say(
      `verify: wrote ${blocks} blocks at LBA ${lba} (${formatBytes(bytes)}) and flushed: ${writeMs} ms, ${
        rate(writeMs)
      }`,
    );
    t = performance.now();
    const back = await nvme.read(lba, blocks);
    const readMs = since(t);
    const bad = checkPattern(back, lba, bs, seed);
    if (bad) throw new Error(`Cannot verify ${blocks} blocks at LBA ${lba}: ${bad}`);
    say(`verify: read them back: ${readMs} ms, ${rate(readMs)}; they match`);
    // Again in pieces of 1, 3, 7, 15 … blocks, all at once over the queues, each into its place in
    // one DMA buffer that starts at an offset inside a page, so PRP1 carries an offset and pieces
    // cross page boundaries.
    const skew = 388;
    using whole: DmaBuffer = vfio.dma.alloc(bytes + PAGE);
    const reads: Promise<Uint8Array>[] = [];
    for (let done = 0, n = 1; done < blocks; done += n, n = 2 * n + 1) {
      const count = Math.min(n, blocks - done);
      reads.push(nvme.read(lba + done, count, { buffer: whole, offset: skew + done * bs }));
    }
    await Promise.all(reads);
    const again = checkPattern(whole.bytes.subarray(skew, skew + bytes), lba, bs, seed);
    if (again) {
      throw new Error(
        `Cannot verify ${blocks} blocks at LBA ${lba} read in pieces at offset ${skew}: ${again}`,
      );
    }
    say(
      `verify: read them again in ${reads.length} pieces of growing size at buffer offset ${skew}, ` +
        `all at once over ${nvme.queueCount} queues; they match`,
    );
    report.verify = { lba, blocks, bytes, writeMs, readMs, pieces: reads.length };
  }

  for (const e of o.expect) {
    const data = await nvme.read(e.lba, e.blocks);
    const bad = checkPattern(data, e.lba, bs, e.seed);
    if (bad) throw new Error(`Cannot confirm the pattern with seed ${e.seed} at LBA ${e.lba}: ${bad}`);
    say(`expect: ${e.blocks} blocks at LBA ${e.lba} hold the pattern with seed ${e.seed}`);
    (report.expect ??= []).push(e);
  }
  report.stats = nvme.stats;
  say(`${report.stats.commands} commands, ${report.stats.interrupts} interrupts`);
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
