/**
 * The program the reliability and privilege lab tests run in a child process, on the runtime
 * under test (`deno run --allow-ffi` or `bun`), often as another user: it needs nothing from the
 * test, and reads its own /proc status through the library's Sys seam (libc), so Deno needs no
 * permission but --allow-ffi.
 *
 * ```sh
 * _child.ts edu-dma BDF BYTES   # edu DMA round trips in a loop, forever; "ready {json}" after the first
 * _child.ts nvme-io BDF         # NVMe writes and reads in a loop, forever; "ready {json}" after the first
 * _child.ts map BDF BYTES...    # maps each size in turn, stops at the first failure; "result {json}"
 * ```
 *
 * The JSON carries the process's VmLck and VmPin (KiB) as the kernel reports them, the backend and,
 * for a failure, the library error's fields. The backend is the library's choice (VFIO_TS_BACKEND).
 *
 * @module
 */
import process from "node:process";
import { Edu, EDU_DMA_LIMIT } from "../../examples/edu.ts";
import { fillPattern, NvmeController } from "../../examples/nvme.ts";
import { loadSys, open, type OpenedDevice, VfioError } from "../../mod.ts";

const sys = await loadSys();

/** This process's pinned-memory counters, in KiB, from /proc/self/status. */
function pinned(): { vmLck: number; vmPin: number } {
  const status = sys.readText("/proc/self/status");
  const field = (name: string) =>
    typeof status === "string"
      ? Number(new RegExp(`^${name}:\\s*(\\d+)`, "m").exec(status)?.[1] ?? NaN)
      : NaN;
  return { vmLck: field("VmLck"), vmPin: field("VmPin") };
}

function say(tag: string, fields: Record<string, unknown>): void {
  console.log(`${tag} ${JSON.stringify({ pid: process.pid, uid: sys.getuid(), ...pinned(), ...fields })}`);
}

// Lets the runtime flush stdout between synchronous steps (Bun writes pipes asynchronously).
const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

async function eduDma(bdf: string, bytes: number): Promise<never> {
  using edu = await Edu.open(bdf, { limit: EDU_DMA_LIMIT });
  using src = edu.dma.alloc(bytes / 2);
  using dst = edu.dma.alloc(bytes / 2);
  for (let round = 1;; round++) {
    for (let i = 0; i < 2048; i++) src.bytes[i] = (i * 7 + round) & 0xff;
    // Each transfer takes edu 100 ms (its DMA timer), so the loop is nearly always inside one.
    await edu.dmaToDevice(src, 0, 2048);
    await edu.dmaFromDevice(0, dst, 2048);
    const bad = dst.bytes.subarray(0, 2048).findIndex((b, i) => b !== src.bytes[i]);
    if (bad >= 0) throw new Error(`round ${round}: DMA data differs at byte ${bad}`);
    if (round === 1) say("ready", { backend: edu.backend.kind, bytes });
  }
}

async function nvmeIo(bdf: string): Promise<never> {
  using vfio = await open(bdf);
  using nvme = NvmeController.init(vfio);
  const bs = nvme.namespace.blockSize, blocks = 128, lba = 60_000;
  using out = vfio.dma.alloc(blocks * bs);
  using back = vfio.dma.alloc(blocks * bs);
  for (let round = 1;; round++) {
    fillPattern(out.bytes, lba, bs, round);
    nvme.write({ lba, blocks, buffer: out });
    nvme.read({ lba, blocks, buffer: back });
    const bad = back.bytes.findIndex((b, i) => b !== out.bytes[i]);
    if (bad >= 0) throw new Error(`round ${round}: read back differs at byte ${bad}`);
    if (round === 1) say("ready", { backend: vfio.backend.kind, bytes: 2 * blocks * bs });
    await tick();
  }
}

async function map(bdf: string, sizes: number[]): Promise<void> {
  using vfio: OpenedDevice = await open(bdf, { limit: EDU_DMA_LIMIT });
  const mapped: number[] = [];
  for (const size of sizes) {
    try {
      vfio.dma.alloc(size); // freed with the pool when the device closes
      mapped.push(size);
    } catch (e) {
      if (!(e instanceof VfioError)) throw e;
      const { name, code, message, hint } = e;
      say("result", { backend: vfio.backend.kind, mapped, error: { name, code, message, hint } });
      return;
    }
  }
  say("result", { backend: vfio.backend.kind, mapped, error: null });
}

const [mode, bdf = "", ...rest] = process.argv.slice(2);
try {
  if (mode === "edu-dma") await eduDma(bdf, Number(rest[0]));
  else if (mode === "nvme-io") await nvmeIo(bdf);
  else if (mode === "map") await map(bdf, rest.map(Number));
  else throw new TypeError(`unknown mode ${mode}: expected edu-dma, nvme-io or map`);
} catch (e) {
  console.error(`child: ${e instanceof Error ? `${e.name}: ${e.message}` : e}`);
  process.exitCode = 1;
}
