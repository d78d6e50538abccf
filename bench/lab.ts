/**
 * Lab benchmarks: run inside the QEMU guest of scripts/lab/run.sh by bench/lab.sh, under Deno and
 * Bun. The C side is bench/lab_baseline.c (edu) and the kernel's nvme driver under fio (NVMe).
 *
 * `--part edu` (0000:00:04.0, legacy container so that the C baseline's ioctls are the same ones):
 * - `ioctl.group_status`: `sys.ioctlPtr(group fd, VFIO_GROUP_GET_STATUS)`, and
 *   `ioctl.group_status.floor.*`: the same ioctl straight through the runtime's FFI (bench/_ffi_floor.ts);
 * - `mmio.mmap.*32`: `device.registers(0)` (the mmap fast path), 0x00 ident and 0x04 liveness;
 * - `mmio.pread.*32`: `device.registers(0, { path: "pread" })`;
 * - `dma.map_unmap_4k`: `backend.mapDma` + `backend.unmapDma` of one 4 KiB page, pairs/s;
 * - `irq.msi.wait.*`: write 0x60 → MSI → eventfd → `irq.wait()` (poll(2) on this thread);
 * - `irq.msi.next.*`: the same, awaited with `irq.next()` (the read runs off the JS thread);
 * - diagnostics: `*.raw` (the accessor, or the ioctls/poll/read with prebuilt buffers, without the
 *   library's layers above them) and `irq.msi.wait0_next.*` (`irq.wait({ timeoutMs: 0 }) || await irq.next()`).
 *
 * - `dma.map_unmap_4k.cached_info`: the same with the IOMMU info read once (diagnostic);
 * - `dma.map_unmap_4k.live_N`: the same pair with N other mappings live (the scaling curve).
 *
 * `--part nvme` (0000:00:05.0): random 4 KiB reads at queue depths 1 to 64 through the asynchronous
 * driver of examples/nvme.ts (MSI-X on one and two queues, polled), the blocking driver, and the
 * lean queue of bench/nvme_queue.ts; bench/lab_nvme.ts describes the rows. `--nvme-reps N` timed
 * repetitions of `--io-ms` each per point (default 3).
 *
 * ```sh
 * deno run -A bench/lab.ts --part edu|nvme [--reps 5] [--target-ms 100] [--warmup-ms 100]
 * ```
 *
 * @module
 */
import process from "node:process";
import { loadSys } from "../ffi/mod.ts";
import { VfioContainer } from "../lib/container.ts";
import { openPciDevice } from "../lib/open.ts";
import type { RawMmio } from "../lib/sys.ts";
import {
  MAP_ANONYMOUS,
  MAP_POPULATE,
  MAP_PRIVATE,
  pollfd,
  POLLIN,
  PROT_READ,
  PROT_WRITE,
} from "../lib/uapi/libc.ts";
import {
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_GROUP_GET_STATUS,
  VFIO_IOMMU_MAP_DMA,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_PCI_MSI_IRQ_INDEX,
} from "../lib/uapi/vfio.ts";
import { PAGE } from "../examples/nvme.ts";
import { emitFloor, ioctlVariants } from "./_ffi_floor.ts";
import { argValue, emit, log, optionsFromArgs, percentile, sink, timeOps } from "./_harness.ts";
import { nvmeBenches } from "./lab_nvme.ts";

const EDU = argValue("edu") ?? "0000:00:04.0";
const NVME = argValue("nvme") ?? "0000:00:05.0";
const o = optionsFromArgs({ reps: 5, targetMs: 100, warmupMs: 100 });
const irqEvents = Number(argValue("irq-events") ?? 500);
const ioMs = Number(argValue("io-ms") ?? 1000);
const nvmeReps = Number(argValue("nvme-reps") ?? 3);
const sys = await loadSys();
const part = argValue("part") ?? "edu";

// read32 at 0x00 (ident) and write32 at 0x04 (liveness), through Registers or a raw accessor.
function mmioBenches(prefix: string, io: Pick<RawMmio, "read32" | "write32">, suffix = ""): void {
  emit({
    bench: `${prefix}.read32${suffix}`,
    unit: "ns",
    samples: timeOps((n) => {
      let s = 0;
      for (let i = 0; i < n; i++) s += io.read32(0x00);
      sink.value = s;
    }, o),
  });
  emit({
    bench: `${prefix}.write32${suffix}`,
    unit: "ns",
    samples: timeOps((n) => {
      for (let i = 0; i < n; i++) io.write32(0x04, i & 0xffff);
    }, o),
  });
}

// Runs one benchmark section; a failure is reported as a result line and the next section runs.
async function section(bench: string, fn: () => void | Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    log(`${bench} failed: ${e instanceof Error ? e.stack : e}`);
    process.stdout.write(JSON.stringify({ bench, side: sys.name, error: String(e) }) + "\n");
  }
}

if (part === "edu") {
  using vfio = openPciDevice(sys, EDU, { backend: "legacy" });
  const { backend, device } = vfio;

  await section("ioctl.group_status", () => {
    if (!(backend instanceof VfioContainer)) throw new TypeError("expected the legacy container");
    const group = [...backend.groups][0]!;
    const status = new Uint8Array(8);
    new DataView(status.buffer).setUint32(0, 8, true); // argsz
    const fd = group.fd;
    emit({
      bench: "ioctl.group_status",
      unit: "ns",
      samples: timeOps((n) => {
        let s = 0;
        for (let i = 0; i < n; i++) s += sys.ioctlPtr(fd, VFIO_GROUP_GET_STATUS, status);
        sink.value = s;
      }, o),
    });
  });
  // The runtime's bare FFI call on the same fd, with no library code: the floor for sys.ioctlPtr.
  for (const v of await ioctlVariants()) {
    await section(`ioctl.group_status.floor.${v.name}`, () => {
      if (!(backend instanceof VfioContainer)) throw new TypeError("expected the legacy container");
      const status = new Uint8Array(8);
      new DataView(status.buffer).setUint32(0, 8, true); // argsz
      const call = v.make([...backend.groups][0]!.fd, VFIO_GROUP_GET_STATUS, status);
      if (call() !== 0) throw new Error(`Cannot benchmark ${v.name}: VFIO_GROUP_GET_STATUS failed`);
      emitFloor("ioctl.group_status", v, call, o);
    });
  }

  for (const path of ["mmap", "pread"] as const) {
    await section(`mmio.${path}`, () => {
      using bar = device.registers(0, { path: path === "mmap" ? "auto" : "pread" });
      if (bar.path !== path) throw new Error(`Cannot benchmark ${path}: the registers took ${bar.path}`);
      if (bar.read32(0) !== 0x010000ed) throw new Error(`${EDU} is not an edu device`);
      log(`mmio.${path} on ${EDU} BAR0`);
      mmioBenches(`mmio.${path}`, bar);
      // The accessor alone, without Registers' checks (diagnostic).
      const region = device.region(0);
      const m = path === "mmap" ? region.map(0, sys.pageSize) : undefined;
      try {
        const raw = m ? sys.mmio(m.address, m.length) : region.kernelIo;
        if (!raw) throw new Error("Cannot get the raw accessor");
        mmioBenches(`mmio.${path}`, raw, ".raw");
      } finally {
        if (m) region.unmap(m);
      }
    });
  }

  // Pairs of mapDma + unmapDma through the backend, and the same with the IOMMU info read once (a
  // diagnostic for the report: the container re-reads VFIO_IOMMU_GET_INFO on every mapDma).
  for (const variant of ["", ".cached_info", ".raw"]) {
    await section(`dma.map_unmap_4k${variant}`, () => {
      const page = sys.mmap(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
      if (page < 0n) throw new Error(`Cannot mmap a page (${page})`);
      const iova = 0x100000n, size = PAGE;
      let io: Pick<typeof backend, "mapDma" | "unmapDma"> = backend;
      if (variant === ".raw") {
        // The two ioctls alone, with their structs built once: the floor for the FFI.
        if (!(backend instanceof VfioContainer)) throw new TypeError("expected the legacy container");
        const map = vfio_iommu_type1_dma_map.alloc();
        map.set("flags", VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE);
        map.set("vaddr", page).set("iova", iova).set("size", BigInt(size));
        const unmap = vfio_iommu_type1_dma_unmap.alloc().set("iova", iova).set("size", BigInt(size));
        const fd = backend.fd;
        io = {
          mapDma: () => {
            if (sys.ioctlPtr(fd, VFIO_IOMMU_MAP_DMA, map.bytes) < 0) {
              throw new Error("VFIO_IOMMU_MAP_DMA failed");
            }
          },
          unmapDma: () => {
            if (sys.ioctlPtr(fd, VFIO_IOMMU_UNMAP_DMA, unmap.bytes) < 0) {
              throw new Error("VFIO_IOMMU_UNMAP_DMA failed");
            }
          },
        };
      } else if (variant) {
        // Shadows the prototype's members on this instance only; the library itself is unchanged.
        const pageSize = backend.iommuPageSize, ranges = backend.iovaRanges();
        Object.defineProperty(backend, "iommuPageSize", { value: pageSize, configurable: true });
        Object.defineProperty(backend, "iovaRanges", { value: () => ranges, configurable: true });
      }
      try {
        const ns = timeOps((n) => {
          for (let i = 0; i < n; i++) {
            io.mapDma(page, iova, size);
            io.unmapDma(iova, size);
          }
        }, o);
        emit({
          bench: `dma.map_unmap_4k${variant}`,
          baseline: "dma.map_unmap_4k",
          unit: "pairs/s",
          samples: ns.map((x) => 1e9 / x),
          note: backend.kind +
            (variant === ".cached_info"
              ? ", iommuPageSize and iovaRanges() read once (proposed fix)"
              : variant === ".raw"
              ? ", sys.ioctlPtr with prebuilt structs"
              : ""),
        });
      } finally {
        if (variant === ".cached_info") {
          delete (backend as { iommuPageSize?: unknown }).iommuPageSize;
          delete (backend as { iovaRanges?: unknown }).iovaRanges;
        }
        sys.munmap(page, PAGE);
      }
    });
  }

  // Scaling: one map+unmap pair while 1, 1,000, 10,000 or 60,000 other mappings are live (one page
  // mapped at many IOVAs; type1's default dma_entry_limit is 65,535). The bookkeeping's overlap check
  // is O(log n), so the curve should stay flat.
  for (const live of [1, 1_000, 10_000, 60_000]) {
    await section(`dma.map_unmap_4k.live_${live}`, () => {
      const page = sys.mmap(PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
      if (page < 0n) throw new Error(`Cannot mmap a page (${page})`);
      const base = 0x1000_0000n, probe = 0x100000n;
      let mapped = 0;
      try {
        for (; mapped < live; mapped++) backend.mapDma(page, base + BigInt(mapped) * BigInt(PAGE), PAGE);
        const ns = timeOps((n) => {
          for (let i = 0; i < n; i++) {
            backend.mapDma(page, probe, PAGE);
            backend.unmapDma(probe, PAGE);
          }
        }, o);
        emit({
          bench: `dma.map_unmap_4k.live_${live}`,
          baseline: "dma.map_unmap_4k",
          unit: "pairs/s",
          samples: ns.map((x) => 1e9 / x),
          note: `${backend.kind}, with ${live} other mappings live`,
        });
      } finally {
        for (let i = 0; i < mapped; i++) backend.unmapDma(base + BigInt(i) * BigInt(PAGE), PAGE);
        sys.munmap(page, PAGE);
      }
    });
  }

  await section("irq.msi", async () => {
    using bar = device.registers(0);
    device.config.enableBusMaster();
    using irq = device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
    // The lean floor (diagnostic): raw accessor, poll(2) and read(2) on prebuilt buffers.
    const efd = irq.eventfds[0]!;
    const pfd = pollfd.alloc().set("fd", efd).set("events", POLLIN);
    const count = new Uint8Array(8);
    const m = device.region(0).map(0, sys.pageSize);
    const raw = sys.mmio(m.address, m.length);
    const variants: [string, () => number | Promise<number>][] = [
      ["wait", () => {
        const t0 = performance.now();
        bar.write32(0x60, 1);
        const n = irq.wait({ timeoutMs: 1000 });
        const dt = performance.now() - t0;
        if (n === 0) throw new Error("no MSI within 1 s");
        bar.write32(0x64, 1);
        return dt * 1000;
      }],
      ["next", async () => {
        const t0 = performance.now();
        bar.write32(0x60, 1);
        const n = await irq.next();
        const dt = performance.now() - t0;
        if (n === 0) throw new Error("the IRQ closed while waiting");
        bar.write32(0x64, 1);
        return dt * 1000;
      }],
      // The async handler with a synchronous look first: when the interrupt has already arrived,
      // no thread hop (public API only).
      ["wait0_next", async () => {
        const t0 = performance.now();
        bar.write32(0x60, 1);
        const n = irq.wait({ timeoutMs: 0 }) || await irq.next();
        const dt = performance.now() - t0;
        if (n === 0) throw new Error("the IRQ closed while waiting");
        bar.write32(0x64, 1);
        return dt * 1000;
      }],
    ];
    if (raw) {
      variants.push(["raw", () => {
        const t0 = performance.now();
        raw.write32(0x60, 1);
        const r = sys.poll(pfd.bytes, 1, 1000);
        const n = r === 1 ? sys.read(efd, count) : r;
        const dt = performance.now() - t0;
        if (n !== 8) throw new Error(`no MSI within 1 s (${r}, ${n})`);
        raw.write32(0x64, 1);
        return dt * 1000;
      }]);
    }
    try {
      for (const [name, fn] of variants) {
        const end = performance.now() + o.warmupMs;
        while (performance.now() < end) await fn();
        const p50: number[] = [], p99: number[] = [];
        for (let r = 0; r < o.reps; r++) {
          const lat: number[] = [];
          for (let i = 0; i < irqEvents; i++) lat.push(await fn());
          p50.push(percentile(lat, 50));
          p99.push(percentile(lat, 99));
        }
        emit({ bench: `irq.msi.${name}.p50`, baseline: "irq.msi.p50", unit: "us", samples: p50 });
        emit({ bench: `irq.msi.${name}.p99`, baseline: "irq.msi.p99", unit: "us", samples: p99 });
      }
    } finally {
      device.region(0).unmap(m);
    }
  });
} else if (part === "nvme") {
  await nvmeBenches({ sys, bdf: NVME, o, reps: nvmeReps, ioMs, section });
} else {
  throw new TypeError(`Cannot run part ${part}: expected edu or nvme`);
}
