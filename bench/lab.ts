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
 * - `dma.map_unmap_4k.cached_info`: the same with the IOMMU info read once (diagnostic);
 * - `dma.map_unmap_4k.live_N`: the same pair with N other mappings live (the scaling curve).
 *
 * `--part irq` (the same edu device, in a process of its own so that bench/lab.sh can give it runtime
 * options: see the notes of its rows):
 * - `irq.msi.wait.*`: write 0x60 → MSI → eventfd → `irq.wait()` (poll(2) on this thread);
 * - `irq.msi.next.*`: the same, awaited with `irq.next()` (the interrupt is usually pending by then,
 *   so it is read at once; otherwise the read runs off the JS thread);
 * - `irq.msi.{wait,next}.alloc_bytes` (Deno) / `.alloc_cells` (Bun): heap allocation per wake-up over
 *   10,000 wake-ups (bench/_alloc.ts); next()'s less the caller's own await, which is the diagnostic
 *   `irq.msi.await.alloc_*`, as is `irq.msi.next_hop.alloc_*` (the read off the thread);
 * - diagnostics: `*.raw` (the accessor, or the ioctls/poll/read with prebuilt buffers, without the
 *   library's layers above them), `irq.msi.wait0_next.*` (`irq.wait({ timeoutMs: 0 }) || await irq.next()`)
 *   and `irq.msi.next_hop.*` (next() called before the device raises: always the thread hop).
 *
 * `--part nvme` (0000:00:05.0): random 4 KiB reads at queue depths 1 to 64 through the asynchronous
 * driver of examples/nvme.ts (MSI-X on one and two queues, polled), the blocking driver, and the
 * lean queue of bench/nvme_queue.ts; bench/lab_nvme.ts describes the rows. `--nvme-reps N` timed
 * repetitions of `--io-ms` each per point (default 3).
 *
 * ```sh
 * deno run -A bench/lab.ts --part edu|irq|nvme [--reps 5] [--target-ms 100] [--warmup-ms 100]
 * ```
 *
 * @module
 */
import { readdirSync, readFileSync } from "node:fs";
import process from "node:process";
import { loadSys } from "../ffi/mod.ts";
import { VfioContainer } from "../lib/container.ts";
import type { VfioDevice } from "../lib/device.ts";
import type { IrqWaitOptions, VfioIrq } from "../lib/irq.ts";
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
import { allocCounter, allocPerOp } from "./_alloc.ts";
import { emitFloor, ioctlVariants } from "./_ffi_floor.ts";
import { argValue, emit, log, optionsFromArgs, percentile, runtime, sink, timeOps } from "./_harness.ts";
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

// The CPU time of this process's threads between start() and stop(), summed over the intervals, from
// /proc/self/task/*/schedstat (ns on the CPU, ns runnable but waiting for it): on a one-vCPU guest,
// whatever another thread runs while this one waits for an interrupt delays the wake-up.
class ThreadTimes {
  #at = new Map<string, [number, number]>();
  #ran = new Map<string, number>();
  #mainWaited = 0;
  #mainRan = 0;

  #read(): Map<string, [number, number]> {
    const out = new Map<string, [number, number]>();
    for (const tid of readdirSync("/proc/self/task")) {
      try {
        const [cpu, wait] = readFileSync(`/proc/self/task/${tid}/schedstat`, "utf8").split(" ").map(Number);
        out.set(tid, [cpu!, wait!]);
      } catch {
        // The thread ended meanwhile.
      }
    }
    return out;
  }

  start(): void {
    this.#at = this.#read();
  }

  stop(): void {
    const main = String(process.pid);
    for (const [tid, [cpu, wait]] of this.#read()) {
      const [cpu0, wait0] = this.#at.get(tid) ?? [0, 0];
      if (tid === main) {
        this.#mainRan += cpu - cpu0;
        this.#mainWaited += wait - wait0;
      } else if (cpu > cpu0) {
        let name = tid;
        try {
          name = readFileSync(`/proc/self/task/${tid}/comm`, "utf8").trim();
        } catch {
          // Ended: keep the id.
        }
        this.#ran.set(name, (this.#ran.get(name) ?? 0) + cpu - cpu0);
      }
    }
  }

  summary(): string {
    const us = (ns: number) => `${(ns / 1000).toFixed(0)} µs`;
    const others = [...this.#ran].sort((a, b) => b[1] - a[1]);
    const total = others.reduce((n, [, t]) => n + t, 0);
    return `this thread ran ${us(this.#mainRan)} and waited ${us(this.#mainWaited)} for the CPU; ` +
      `its other threads ran ${us(total)}` +
      (others.length ? ` (${others.map(([n, t]) => `${n} ${us(t)}`).join(", ")})` : "");
  }
}

// Runtime options given to this process that change the interrupt rows, for their notes.
const RUNTIME_OPTIONS = process.env.BUN_JSC_useConcurrentJIT === "0" && runtime === "bun"
  ? "; run with BUN_JSC_useConcurrentJIT=0 (bench/lab.sh), an option a latency-bound driver can set as well: " +
    "JSC then compiles on this thread; by default its JITWorker threads take the one vCPU from the thread " +
    "waiting for the interrupt, and p99 is several times higher"
  : "";

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
} else if (part === "nvme") {
  await nvmeBenches({ sys, bdf: NVME, o, reps: nvmeReps, ioMs, section });
} else if (part === "irq") {
  using vfio = openPciDevice(sys, EDU, { backend: "legacy" });
  await irqBenches(vfio.device);
} else {
  throw new TypeError(`Cannot run part ${part}: expected edu, irq or nvme`);
}

// The interrupt round trip on edu's MSI (write 0x60 raises it, 0x64 acknowledges): latency
// percentiles per variant, then what a wake-up allocates. Run within `--part edu`, or alone as
// `--part irq`.
async function irqBenches(device: VfioDevice): Promise<void> {
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
    // Made once, as a driver's hot loop would: an options literal per call is the caller's garbage.
    const waitOptions = { timeoutMs: 1000 };
    // Each variant times one round trip in µs; the synchronous ones are called without `await`,
    // which would allocate and yield to the event loop on every call.
    type Variant = { sync: () => number } | { async: () => Promise<number> };
    const variants: [string, Variant][] = [
      ["wait", {
        sync: () => {
          const t0 = performance.now();
          bar.write32(0x60, 1);
          const n = irq.wait(waitOptions);
          const dt = performance.now() - t0;
          if (n === 0) throw new Error("no MSI within 1 s");
          bar.write32(0x64, 1);
          return dt * 1000;
        },
      }],
      ["next", {
        async: async () => {
          const t0 = performance.now();
          bar.write32(0x60, 1);
          const n = await irq.next();
          const dt = performance.now() - t0;
          if (n === 0) throw new Error("the IRQ closed while waiting");
          bar.write32(0x64, 1);
          return dt * 1000;
        },
      }],
      // The async handler with a synchronous look first (public API only).
      ["wait0_next", {
        async: async () => {
          const t0 = performance.now();
          bar.write32(0x60, 1);
          const n = irq.wait({ timeoutMs: 0 }) || await irq.next();
          const dt = performance.now() - t0;
          if (n === 0) throw new Error("the IRQ closed while waiting");
          bar.write32(0x64, 1);
          return dt * 1000;
        },
      }],
      // next() called before the device raises: nothing is pending, so the read goes to another
      // thread and the wake-up crosses back to this one (diagnostic).
      ["next_hop", {
        async: async () => {
          const t0 = performance.now();
          const pending = irq.next();
          bar.write32(0x60, 1);
          const n = await pending;
          const dt = performance.now() - t0;
          if (n === 0) throw new Error("the IRQ closed while waiting");
          bar.write32(0x64, 1);
          return dt * 1000;
        },
      }],
    ];
    if (raw) {
      variants.push(["raw", {
        sync: () => {
          const t0 = performance.now();
          raw.write32(0x60, 1);
          const r = sys.poll(pfd.bytes, 1, 1000);
          const n = r === 1 ? sys.read(efd, count) : r;
          const dt = performance.now() - t0;
          if (n !== 8) throw new Error(`no MSI within 1 s (${r}, ${n})`);
          raw.write32(0x64, 1);
          return dt * 1000;
        },
      }]);
    }
    try {
      const lat = new Float64Array(irqEvents);
      const counter = await allocCounter();
      for (const [name, v] of variants) {
        const end = performance.now() + o.warmupMs;
        while (performance.now() < end) {
          if ("sync" in v) v.sync();
          else await v.async();
        }
        const p50: number[] = [], p99: number[] = [];
        // Where the tail can come from, over the timed wake-ups: collections, this thread waiting
        // for the (single) CPU, and the runtime's other threads running on it.
        let collected = 0, timedMs = 0;
        const threads = new ThreadTimes();
        for (let r = 0; r < o.reps; r++) {
          const before = counter.probe(), t0 = performance.now();
          threads.start();
          if ("sync" in v) { for (let i = 0; i < irqEvents; i++) lat[i] = v.sync(); }
          else for (let i = 0; i < irqEvents; i++) lat[i] = await v.async();
          threads.stop();
          timedMs += performance.now() - t0;
          if (counter.probeCollected(before, counter.probe())) collected++;
          p50.push(percentile([...lat], 50));
          p99.push(percentile([...lat], 99));
        }
        const note =
          `${o.reps} × ${irqEvents} wake-ups in ${timedMs.toFixed(0)} ms; collections in ${collected} ` +
          `of ${o.reps} repetitions; ${threads.summary()}${RUNTIME_OPTIONS}`;
        emit({
          bench: `irq.msi.${name}.p50`,
          baseline: "irq.msi.p50",
          unit: "us",
          samples: p50,
          ...(RUNTIME_OPTIONS ? { note: RUNTIME_OPTIONS.slice(2) } : {}),
        });
        emit({ bench: `irq.msi.${name}.p99`, baseline: "irq.msi.p99", unit: "us", samples: p99, note });
      }
    } finally {
      device.region(0).unmap(m);
    }
    await irqAllocation(bar, irq, waitOptions);
  });
}

// Heap allocation per wake-up over 10,000 wake-ups (bench/_alloc.ts). wait() must make none. So
// must next() with the interrupt pending, beyond what the caller's own `await` makes (V8 allocates
// for an await even of a settled promise): its row is the `await irq.next()` loop less the same
// loop awaiting a settled promise, which has a diagnostic row of its own (`await`).
async function irqAllocation(
  bar: Pick<RawMmio, "write32">,
  irq: VfioIrq,
  waitOptions: IrqWaitOptions,
): Promise<void> {
  const counter = await allocCounter();
  const suffix = counter.unit === "B" ? "bytes" : "cells";
  const fail = () => {
    throw new Error("no MSI within 1 s, or the IRQ closed");
  };
  const settled = Promise.resolve(1);
  const loops: Record<"wait" | "await" | "next" | "next_hop", (n: number) => void | Promise<void>> = {
    wait: (n) => {
      for (let i = 0; i < n; i++) {
        bar.write32(0x60, 1);
        if (irq.wait(waitOptions) === 0) fail();
        bar.write32(0x64, 1);
      }
    },
    await: async (n) => {
      for (let i = 0; i < n; i++) {
        bar.write32(0x60, 1);
        if (irq.wait(waitOptions) === 0 || await settled === 0) fail();
        bar.write32(0x64, 1);
      }
    },
    next: async (n) => {
      for (let i = 0; i < n; i++) {
        bar.write32(0x60, 1);
        if (await irq.next() === 0) fail();
        bar.write32(0x64, 1);
      }
    },
    next_hop: async (n) => {
      for (let i = 0; i < n; i++) {
        const pending = irq.next();
        bar.write32(0x60, 1);
        if (await pending === 0) fail();
        bar.write32(0x64, 1);
      }
    },
  };
  const measure = async (loop: (n: number) => void | Promise<void>) => {
    const r = await allocPerOp(counter, loop, {
      reps: o.reps,
      opsPerRep: Math.ceil(10_000 / o.reps),
      warmupOps: 2000,
    });
    const census = r.census
      ? `; cells by type: ${Object.entries(r.census).map(([t, n]) => `${t} ${n}`).join(", ") || "none"}`
      : "";
    return { ...r, what: `${r.counted} of ${r.ran} wake-ups counted${census}` };
  };
  const unit = `${counter.unit}/wakeup`;
  const row = (name: string) => `irq.msi.${name}.alloc_${suffix}`;
  await section(row("wait"), async () => {
    const r = await measure(loops.wait);
    emit({
      bench: row("wait"),
      unit,
      samples: r.perOp,
      note: `irq.wait(options made once); ${counter.source}; ${r.what}`,
    });
  });
  await section(row("next"), async () => {
    const floor = await measure(loops.await);
    emit({
      bench: row("await"),
      unit,
      samples: floor.perOp,
      note:
        `irq.wait() then await of a settled promise: the caller's await alone; ${counter.source}; ${floor.what}`,
    });
    const next = await measure(loops.next);
    emit({
      bench: row("next"),
      unit,
      samples: next.perOp.map((x, i) => x - (floor.perOp[i] ?? NaN)),
      note:
        `await irq.next(), the interrupt already pending (as in irq.msi.next), less the caller's await: ` +
        `${next.perOp.map((x) => x.toFixed(1)).join(", ")} less ${
          floor.perOp.map((x) => x.toFixed(1)).join(", ")
        }; ` +
        `${counter.source}; ${next.what}`,
    });
  });
  await section(row("next_hop"), async () => {
    const r = await measure(loops.next_hop);
    emit({
      bench: row("next_hop"),
      unit,
      samples: r.perOp,
      note:
        `await irq.next() called before the interrupt: the read off the thread, and the caller's await; ` +
        `${counter.source}; ${r.what}`,
    });
  });
}
