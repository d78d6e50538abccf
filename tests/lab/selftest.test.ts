// The scenarios of the kernel's VFIO selftests (tools/testing/selftests/vfio) that the other lab
// files do not cover, against the real kernel, under each backend:
// - vfio_pci_driver_test memcpy_{from,to}_unmapped_iova and mix_and_match: edu's DMA aimed at IOVAs
//   that are not mapped, then a good DMA that shows the device still works;
// - vfio_dma_mapping_test's vfio_dma_map_limit_test (unmap_range, unmap_all, overflow): a page at
//   each edge of each reported IOVA range, the kernel's own refusals past them, and the u64 wrap;
// - the exclusive open behind vfio_pci_device_init: several processes open one device at once;
// - vfio_pci_device_test reset with vfio_pci_irq_test's trigger: interrupts after a reset, raised by
//   the device and by the loopback trigger, with no re-arm.
import { test } from "node:test";
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, readlinkSync } from "node:fs";
import { basename } from "node:path";
import process from "node:process";
import { VfioContainer } from "../../lib/container.ts";
import type { IommuBackend } from "../../lib/iommu.ts";
import { IommufdIoas } from "../../lib/iommufd.ts";
import { kernelOlderThan } from "../../lib/kernel_version.ts";
import type { Registers } from "../../lib/mmio.ts";
import { openPciDevice } from "../../lib/open.ts";
import type { Sys } from "../../lib/sys.ts";
import { deviceCdev } from "../../lib/sysfs.ts";
import {
  IOMMU_IOAS_MAP,
  iommu_ioas_map,
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  IOMMU_IOAS_UNMAP,
  iommu_ioas_unmap,
} from "../../lib/uapi/iommufd.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../../lib/uapi/libc.ts";
import {
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_IOMMU_MAP_DMA,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_PCI_MSI_IRQ_INDEX,
} from "../../lib/uapi/vfio.ts";
import { backends, EDU, edu, EDU_BEHIND_PORT, HAS_IOMMU, LONG, quiesceEdu, sleep, sys } from "./_fixture.ts";

const NO_IOMMU = !HAS_IOMMU && "no-IOMMU mode has no IOVAs: the device sees physical addresses";
const EINVAL = 22, EOVERFLOW = 75;
const U64_MAX = 0xffffffffffffffffn;
/** edu's DMA_IRQ bit in its interrupt status (hw/misc/edu.c). */
const EDU_IRQ_DMA = 0x100;
/** How long an interrupt that should not come is given to come anyway. */
const ABSENCE_MS = 500;

/**
 * Runs one edu DMA and waits for its end (DMA_CMD's start bit clears; edu's timer fires 100 ms of
 * virtual time after the start).
 */
async function eduDma(bar0: Registers, src: bigint, dst: bigint, count: number, cmd: number): Promise<void> {
  bar0.write64(edu.DMA_SRC, src);
  bar0.write64(edu.DMA_DST, dst);
  bar0.write64(edu.DMA_COUNT, BigInt(count));
  bar0.write64(edu.DMA_CMD, BigInt(edu.DMA_START | cmd));
  const deadline = Date.now() + 10_000;
  while (bar0.read64(edu.DMA_CMD) & BigInt(edu.DMA_START)) {
    assert.ok(Date.now() < deadline, "edu DMA finished");
    await sleep(5);
  }
}

/** Anonymous memory of `size` bytes filled with `fill`, and what unmaps it. */
function anonymous(size: number, fill: number): { address: bigint; bytes: Uint8Array; free(): void } {
  const address = sys.mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert.ok(address > 0n, `mmap: ${address}`);
  // SAFETY: `size` bytes are mapped at `address` until free(), which detaches the view first.
  const buffer = sys.memory(address, size);
  const bytes = new Uint8Array(buffer).fill(fill);
  return {
    address,
    bytes,
    free: () => {
      buffer.transfer(0);
      sys.munmap(address, size);
    },
  };
}

/** A Sys that counts ioctls, to show a refusal happened before any reached the kernel. */
function countingSys(inner: Sys): { sys: Sys; ioctls: () => number } {
  let n = 0;
  const counted = new Proxy(inner, {
    get(target, key) {
      if (key === "ioctlPtr" || key === "ioctlInt") {
        return (...args: [number, number, never]) => (n++, target[key](...args));
      }
      const value = Reflect.get(target, key);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { sys: counted, ioctls: () => n };
}

/** The errno of a Sys result, or 0 for success. */
const errnoOf = (ret: number) => ret < 0 ? -ret : 0;

/**
 * Maps straight through the kernel, past the library's checks: VFIO_IOMMU_MAP_DMA or
 * IOMMU_IOAS_MAP with a fixed IOVA. Returns the errno, or 0 when the kernel mapped it (the backend's
 * unmap-all removes it when it closes).
 */
function kernelMap(backend: IommuBackend, vaddr: bigint, iova: bigint, size: bigint): number {
  if (backend instanceof VfioContainer) {
    const m = vfio_iommu_type1_dma_map.alloc();
    m.set("flags", VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE).set("vaddr", vaddr).set("iova", iova)
      .set("size", size);
    return errnoOf(sys.ioctlPtr(backend.fd, VFIO_IOMMU_MAP_DMA, m.bytes));
  }
  assert.ok(backend instanceof IommufdIoas);
  const m = iommu_ioas_map.alloc();
  m.set("flags", IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE)
    .set("ioas_id", backend.ioasId).set("user_va", vaddr).set("length", size).set("iova", iova);
  return errnoOf(sys.ioctlPtr(backend.fd, IOMMU_IOAS_MAP, m.bytes));
}

/** Unmaps straight through the kernel: VFIO_IOMMU_UNMAP_DMA or IOMMU_IOAS_UNMAP. Returns the errno or 0. */
function kernelUnmap(backend: IommuBackend, iova: bigint, size: bigint): number {
  if (backend instanceof VfioContainer) {
    const u = vfio_iommu_type1_dma_unmap.alloc();
    u.set("iova", iova).set("size", size);
    return errnoOf(sys.ioctlPtr(backend.fd, VFIO_IOMMU_UNMAP_DMA, u.bytes));
  }
  assert.ok(backend instanceof IommufdIoas);
  const u = iommu_ioas_unmap.alloc();
  u.set("ioas_id", backend.ioasId).set("iova", iova).set("length", size);
  return errnoOf(sys.ioctlPtr(backend.fd, IOMMU_IOAS_UNMAP, u.bytes));
}

const hex = (n: bigint) => `0x${n.toString(16)}`;

/**
 * The lowest IOVA that no reserved region of EDU's IOMMU group covers (sysfs reserved_regions,
 * lines of "start last type"): where the kernel's IOVA ranges should begin.
 */
function lowestFreeIova(): bigint {
  const group = basename(readlinkSync(`/sys/bus/pci/devices/${EDU}/iommu_group`));
  const regions = readFileSync(`/sys/kernel/iommu_groups/${group}/reserved_regions`, "utf8").split("\n")
    .filter((line) => line.trim()).map((line) =>
      line.trim().split(/\s+/).slice(0, 2).map(BigInt) as [bigint, bigint]
    );
  let low = 0n;
  for (let moved = true; moved;) {
    moved = false;
    for (const [start, last] of regions) {
      if (low >= start && low <= last) [low, moved] = [last + 1n, true];
    }
  }
  return low;
}
const LOW_EDGE = HAS_IOMMU ? lowestFreeIova() : undefined;
const LOW_EDGE_SKIP = NO_IOMMU ||
  (LOW_EDGE! + 4095n > edu.DMA_LIMIT && `the lowest IOVA ${hex(LOW_EDGE!)} is beyond edu's DMA mask`);
/** The reset methods the PCI core found for EDU_BEHIND_PORT, e.g. "bus" (empty: none). */
const RESET_METHOD = (() => {
  try {
    return readFileSync(`/sys/bus/pci/devices/${EDU_BEHIND_PORT}/reset_method`, "utf8").trim();
  } catch {
    return ""; // the attribute is absent when the device has no reset method
  }
})();

for (const mode of backends()) {
  // vfio_pci_driver_test: memcpy_from_unmapped_iova, memcpy_to_unmapped_iova, mix_and_match.
  test(
    `${mode.name}: edu DMA to and from unmapped IOVAs writes nothing, raises only the interrupts asked for, and the device keeps working`,
    { skip: NO_IOMMU, ...LONG },
    async () => {
      using v = openPciDevice(sys, EDU, { ...mode.options, limit: edu.DMA_LIMIT });
      v.device.config.enableBusMaster();
      using bar0 = v.device.registers(0);
      quiesceEdu(bar0);
      using msi = v.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
      using src = v.dma.alloc(4096);
      using dst = v.dma.alloc(4096);
      const count = 2048, buffer = BigInt(edu.DMA_BUFFER);
      const completed = async (from: bigint, to: bigint, cmd: number, what: string) => {
        await eduDma(bar0, from, to, count, cmd | edu.DMA_IRQ);
        assert.equal(msi.wait({ timeoutMs: 5000 }), 1, `${what}: the completion interrupt`);
        assert.equal(bar0.read32(edu.IRQ_STATUS), EDU_IRQ_DMA, what);
        bar0.write32(edu.IRQ_ACK, EDU_IRQ_DMA);
      };
      const roundTrip = async (seed: number, what: string) => {
        for (let i = 0; i < count; i++) src.bytes[i] = (i * 13 + seed) & 0xff;
        dst.bytes.fill(0);
        await completed(src.iova, buffer, 0, `${what}: RAM to device`);
        await completed(buffer, dst.iova, edu.DMA_TO_RAM, `${what}: device to RAM`);
        assert.deepEqual(dst.bytes.subarray(0, count), src.bytes.subarray(0, count), `${what}: byte-exact`);
      };
      await roundTrip(1, "before");

      // Unmapped targets: the page just past the last mapping, and a hole left by an unmap whose
      // memory is still there, filled with 0x5a: a translation left behind in the IOTLB would let
      // edu's write land in it, or its read return it.
      const [lastIova, lastSize] = [...v.backend.mappings].at(-1)!;
      const past = lastIova + BigInt(lastSize);
      const stale = anonymous(4096, 0x5a);
      try {
        let hole = 0x8000000n; // 128 MiB: below edu's 28-bit mask, far from the pool's first IOVAs
        while (v.backend.findMapping(hole, 4096)) hole += 0x100000n;
        v.backend.mapDma(stale.address, hole, 4096);
        v.backend.unmapDma(hole, 4096);
        for (const [iova, what] of [[past, "past the last mapping"], [hole, "an unmapped hole"]] as const) {
          assert.equal(v.backend.findMapping(iova, 4096), undefined, `${hex(iova)} is unmapped`);
          assert.ok(iova + BigInt(count) - 1n <= edu.DMA_LIMIT, `${hex(iova)} is inside edu's DMA mask`);
          const [srcBefore, dstBefore] = [src.bytes.slice(), dst.bytes.slice()];

          // As the selftests' memcpy: no interrupt requested, so none may come (ASSERT_NO_MSI).
          await eduDma(bar0, buffer, iova, count, edu.DMA_TO_RAM);
          assert.equal(msi.wait({ timeoutMs: ABSENCE_MS }), 0, `device to ${what}: no interrupt`);
          // With DMA_IRQ set, edu raises its completion interrupt although the transfer faulted:
          // edu_dma_timer (QEMU hw/misc/edu.c) ignores what pci_dma_write returns and raises DMA_IRQ
          // whenever the command asked for it.
          await eduDma(bar0, buffer, iova, count, edu.DMA_TO_RAM | edu.DMA_IRQ);
          assert.equal(msi.wait({ timeoutMs: 5000 }), 1, `device to ${what}: edu signals completion anyway`);
          assert.equal(msi.wait({ timeoutMs: ABSENCE_MS }), 0, `device to ${what}: one interrupt only`);
          bar0.write32(edu.IRQ_ACK, EDU_IRQ_DMA);
          assert.ok(
            stale.bytes.every((b) => b === 0x5a),
            `device to ${what}: the unmapped page was not written`,
          );
          assert.deepEqual(src.bytes, srcBefore, `device to ${what}: the mapped buffers were not written`);
          assert.deepEqual(dst.bytes, dstBefore, `device to ${what}: the mapped buffers were not written`);

          // Reads from the unmapped IOVA: the same interrupts, and what reaches the device is not the
          // page that was there, nor any mapped byte: QEMU's IOMMU sends a faulting read to
          // io_mem_unassigned, which reads as zeros.
          await eduDma(bar0, iova, buffer, count, 0);
          assert.equal(msi.wait({ timeoutMs: ABSENCE_MS }), 0, `${what} to device: no interrupt`);
          await eduDma(bar0, iova, buffer, count, edu.DMA_IRQ);
          assert.equal(msi.wait({ timeoutMs: 5000 }), 1, `${what} to device: edu signals completion anyway`);
          bar0.write32(edu.IRQ_ACK, EDU_IRQ_DMA);
          await completed(buffer, dst.iova, edu.DMA_TO_RAM, `${what}: read back`);
          const read = dst.bytes.subarray(0, count);
          assert.ok(!read.includes(0x5a), `${what}: the read did not reach the unmapped page`);
          assert.deepEqual(read, new Uint8Array(count), `${what}: the faulting read gave zeros`);
        }
      } finally {
        stale.free();
      }
      await roundTrip(2, "after the faults");
    },
  );

  // vfio_dma_map_limit_test (unmap_range, unmap_all, overflow), at every edge of every range.
  test(
    `${mode.name}: a page maps at both edges of every reported IOVA range; past an edge, across a hole and over 2^64 the library refuses before any ioctl, as the kernel would`,
    { skip: NO_IOMMU, ...LONG },
    () => {
      const counter = countingSys(sys);
      using v = openPciDevice(counter.sys, EDU, mode.options);
      const backend = v.backend;
      const ranges = backend.iovaRanges();
      const page = BigInt(backend.iommuPageSize);
      assert.ok(ranges.length > 0, "the kernel reports IOVA ranges");
      const mem = anonymous(2 * Number(page), 0);
      try {
        const edges = ranges.map((r) => ({
          low: (r.start + page - 1n) / page * page,
          top: (r.last + 1n) / page * page - page,
          last: r.last,
        }));
        for (const { low, top } of edges) {
          for (const iova of low === top ? [low] : [low, top]) {
            backend.mapDma(mem.address, iova, Number(page));
            assert.deepEqual(backend.findMapping(iova, 1), { iova, size: Number(page) });
            backend.unmapDma(iova, Number(page)); // unmap_range
          }
        }
        const lastTop = edges.at(-1)!.top;
        backend.mapDma(mem.address, lastTop, Number(page));
        backend.unmapAll(); // unmap_all
        assert.equal(backend.mappings.size, 0);
        assert.equal(kernelMap(backend, mem.address, lastTop, page), 0, "unmap-all freed the top page");
        assert.equal(kernelUnmap(backend, lastTop, page), 0);

        // Refusals: each is a RangeError before any ioctl, and the kernel, asked directly, agrees.
        const refused: { iova: bigint; size: bigint; why: RegExp; errnos: number[] }[] = [];
        for (const [i, e] of edges.entries()) {
          if (e.last === U64_MAX) continue;
          refused.push({
            iova: e.top + page,
            size: page,
            why: /outside the IOMMU's IOVA ranges/,
            errnos: [EINVAL],
          });
          if (i + 1 < edges.length) {
            // A mapping from the top page of this range into the hole after it.
            refused.push({
              iova: e.top,
              size: 2n * page,
              why: /outside the IOMMU's IOVA ranges/,
              errnos: [EINVAL],
            });
          }
        }
        if (ranges[0]!.start > 0n) {
          refused.push({ iova: 0n, size: page, why: /outside the IOMMU's IOVA ranges/, errnos: [EINVAL] });
        }
        // overflow: iova + size wraps past 2^64. Type1 says EOVERFLOW since Linux 6.19 (EINVAL before);
        // iommufd has always said EOVERFLOW.
        const wraps = kernelOlderThan(sys, "6.19") && mode.name === "legacy" ? [EINVAL] : [EOVERFLOW];
        refused.push({ iova: U64_MAX & -page, size: 2n * page, why: /inside 64 bits/, errnos: wraps });
        for (const r of refused) {
          const before = counter.ioctls();
          const what = `${hex(r.iova)} + ${hex(r.size)}`;
          assert.throws(() => backend.mapDma(mem.address, r.iova, Number(r.size)), r.why, what);
          assert.equal(counter.ioctls(), before, `${what}: refused before any ioctl`);
          assert.ok(
            r.errnos.includes(kernelMap(backend, mem.address, r.iova, r.size)),
            `${what}: the kernel refuses`,
          );
        }
        // And unmapping the overflow range (the selftest's __iommu_unmap): refused as no mapping of
        // ours, before any ioctl; the kernel says EOVERFLOW too.
        const before = counter.ioctls();
        assert.throws(() => backend.unmapDma(U64_MAX & -page, 2 * Number(page)), /no mapping starts there/);
        assert.equal(counter.ioctls(), before);
        assert.ok(
          wraps.includes(kernelUnmap(backend, U64_MAX & -page, 2n * page)),
          "the kernel refuses the unmap",
        );
        assert.equal(backend.mappings.size, 0);
      } finally {
        mem.free();
      }
    },
  );

  test(
    `${mode.name}: edu DMA through a mapping at the lowest valid IOVA, in both directions`,
    { skip: LOW_EDGE_SKIP, ...LONG },
    async () => {
      using v = openPciDevice(sys, EDU, mode.options);
      const page = BigInt(v.backend.iommuPageSize);
      const first = v.backend.iovaRanges()[0]!;
      const low = (first.start + page - 1n) / page * page;
      assert.equal(
        low,
        LOW_EDGE,
        "the lowest IOVA the kernel reports is the first one no reserved region covers",
      );
      v.device.config.enableBusMaster();
      using bar0 = v.device.registers(0);
      quiesceEdu(bar0);
      const mem = anonymous(Number(page), 0);
      try {
        v.backend.mapDma(mem.address, low, Number(page));
        const half = 2048;
        for (let i = 0; i < half; i++) mem.bytes[i] = (i * 5 + 11) & 0xff;
        await eduDma(bar0, low, BigInt(edu.DMA_BUFFER), half, 0);
        await eduDma(bar0, BigInt(edu.DMA_BUFFER), low + BigInt(half), half, edu.DMA_TO_RAM);
        assert.deepEqual(
          mem.bytes.subarray(half, 2 * half),
          mem.bytes.subarray(0, half),
          `through IOVA ${hex(low)}`,
        );
        v.backend.unmapDma(low, Number(page));
      } finally {
        v.backend.unmapAll();
        mem.free();
      }
    },
  );

  // vfio_pci_device_test reset, then vfio_pci_irq_test's trigger and a device-raised MSI.
  for (const reset of ["function", "hot"] as const) {
    const skip = reset === "function" && !RESET_METHOD &&
      `${EDU_BEHIND_PORT} has no reset method (sysfs reset_method)`;
    test(
      `${mode.name}: after a ${reset} reset, edu's MSI arrives from the device and from the loopback trigger, with no re-arm`,
      { skip },
      () => {
        using v = openPciDevice(sys, EDU_BEHIND_PORT, mode.options);
        // vfio-pci sets VFIO_DEVICE_FLAGS_RESET when the PCI core found a reset method.
        assert.equal(v.device.info().reset, RESET_METHOD !== "");
        v.device.config.enableBusMaster();
        using bar0 = v.device.registers(0);
        quiesceEdu(bar0);
        using msi = v.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
        bar0.write32(edu.IRQ_RAISE, 1);
        assert.equal(msi.wait({ timeoutMs: 5000 }), 1, "before the reset");
        bar0.write32(edu.IRQ_ACK, 1);
        if (reset === "function") v.device.reset(); // VFIO_DEVICE_RESET
        else v.device.hotReset(); // VFIO_DEVICE_PCI_HOT_RESET
        assert.equal(bar0.read32(edu.IDENT), 0x010000ed, "the device answers after the reset");
        assert.equal(msi.wait({ timeoutMs: 0 }), 0, "nothing pending from the reset itself");
        bar0.write32(edu.IRQ_RAISE, 1);
        assert.equal(msi.wait({ timeoutMs: 5000 }), 1, "raised by the device after the reset");
        bar0.write32(edu.IRQ_ACK, 1);
        msi.trigger(); // VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER
        assert.equal(msi.wait({ timeoutMs: 5000 }), 1, "the loopback trigger after the reset");
      },
    );
  }
}

// The exclusive open: several processes open one device at the same moment (the selftests open
// devices from parallel threads, vfio_pci_device_init_perf_test). Each child loads the library,
// says "waiting", opens when the test writes "go" to all of them at once, reports how it went on a
// "result" line, and closes and exits when its stdin ends.
const CHILD = `
const { default: process } = await import("node:process");
const { open } = await import(${JSON.stringify(new URL("../../mod.ts", import.meta.url).href)});
const stdin = { text: "", ended: false, wake: () => {} };
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { stdin.text += chunk; stdin.wake(); });
process.stdin.on("end", () => { stdin.ended = true; stdin.wake(); });
const until = async (done) => { while (!done()) await new Promise((resolve) => (stdin.wake = resolve)); };
console.log("waiting");
await until(() => stdin.text.includes("go\\n") || stdin.ended);
let opened;
let result;
try {
  opened = await open(process.env.VFIO_TS_SELFTEST_BDF, { backend: process.env.VFIO_TS_SELFTEST_BACKEND });
  result = { ok: true, kind: opened.backend.kind };
} catch (e) {
  const { name, code, errno, op, path, message, hint } = e;
  result = { ok: false, name, code, errno, op, path, message, hint };
}
console.log("result " + JSON.stringify({ pid: process.pid, ...result }));
await until(() => stdin.ended);
opened?.close();
process.exit(0);
`;

interface OpenResult {
  pid: number;
  ok: boolean;
  kind?: string;
  name?: string;
  code?: string;
  errno?: number;
  op?: string;
  path?: string;
  message?: string;
  hint?: string;
}

/** A child that opens a device when told to (see CHILD). */
class Opener {
  readonly #child: ChildProcess;
  #stdout = "";
  #stderr = "";
  readonly exited: Promise<number | null>;

  constructor(readonly backend: "legacy" | "iommufd", bdf: string) {
    const args = "Deno" in globalThis ? ["eval", CHILD] : ["-e", CHILD];
    const env = { ...process.env, VFIO_TS_SELFTEST_BDF: bdf, VFIO_TS_SELFTEST_BACKEND: backend };
    this.#child = spawn(process.execPath, args, { env, stdio: ["pipe", "pipe", "pipe"] });
    this.#child.stdout!.setEncoding("utf8").on("data", (s: string) => (this.#stdout += s));
    this.#child.stderr!.setEncoding("utf8").on("data", (s: string) => (this.#stderr += s));
    this.exited = new Promise((resolve) => this.#child.on("exit", (code) => resolve(code)));
  }

  /** Everything it said, for assertion messages. */
  output(): string {
    return `${this.backend} child ${this.#child.pid}\nstdout:\n${this.#stdout}\nstderr:\n${this.#stderr}`;
  }

  /** Resolves once stdout has a line starting with `tag`, with the rest of that line. */
  async line(tag: string): Promise<string> {
    const deadline = Date.now() + 120_000;
    for (;;) {
      const found = this.#stdout.split("\n").find((l) => l.startsWith(tag));
      if (found !== undefined && this.#stdout.includes(`${found}\n`)) return found.slice(tag.length).trim();
      assert.equal(this.#child.exitCode, null, `the child exited before "${tag}"\n${this.output()}`);
      assert.ok(Date.now() < deadline, `no "${tag}" within 120 s\n${this.output()}`);
      await sleep(20);
    }
  }

  go(): void {
    this.#child.stdin!.write("go\n");
  }

  /** Ends its stdin: it closes what it opened and exits. */
  async finish(): Promise<number | null> {
    this.#child.stdin!.end();
    return await this.exited;
  }
}

/** Starts one child per backend named, lets them open EDU at once, and returns them with their results. */
async function openAtOnce(names: ("legacy" | "iommufd")[]): Promise<{ child: Opener; result: OpenResult }[]> {
  const children = names.map((name) => new Opener(name, EDU));
  try {
    for (const c of children) await c.line("waiting");
    for (const c of children) c.go();
    const results: OpenResult[] = [];
    for (const c of children) results.push(JSON.parse(await c.line("result ")));
    return children.map((child, i) => ({ child, result: results[i]! }));
  } catch (e) {
    await Promise.all(children.map((c) => c.finish()));
    throw e;
  }
}

// Opening needs no DMA, so iommufd takes part wherever EDU has a cdev: in no-IOMMU mode too
// (noiommu-vfioN, Linux 7.3+), which backends() leaves out.
const modes: ("legacy" | "iommufd")[] = backends().map((m) => m.name);
if (!modes.includes("iommufd") && deviceCdev(sys, EDU) && process.env.VFIO_TS_LAB_IOMMUFD !== "0") {
  modes.push("iommufd");
}
const openers: { title: string; names: ("legacy" | "iommufd")[] }[] = modes.map((name) => ({
  title: `${name}: of three processes opening edu at once, exactly one succeeds and the others are refused`,
  names: [name, name, name],
}));
if (modes.includes("iommufd")) {
  openers.push({
    title: "legacy and iommufd: of a group open and a cdev bind racing for edu, exactly one succeeds",
    names: ["legacy", "iommufd"],
  });
}

for (const { title, names } of openers) {
  test(`${title}; once the holder exits, the next open succeeds`, LONG, async () => {
    const all = await openAtOnce(names);
    try {
      const winners = all.filter((a) => a.result.ok);
      assert.equal(winners.length, 1, all.map((a) => a.child.output()).join("\n"));
      const { child: holder, result: held } = winners[0]!;
      for (const { child, result } of all.filter((a) => !a.result.ok)) {
        const why = `${child.output()}\nholder: ${holder.output()}`;
        assert.equal(result.name, "VfioError", why);
        if (child.backend === "legacy") {
          // vfio_group_fops_open: a group opens once, and not while a device of it is bound through
          // its cdev (cdev_device_open_cnt).
          assert.deepEqual([result.op, result.code, result.errno], ["open", "EBUSY", 16], why);
          if (holder.backend === "legacy") {
            assert.match(result.hint ?? "", new RegExp(`already open in \\S+ \\(pid ${held.pid}\\)`), why);
          }
        } else if (holder.backend === "legacy") {
          // vfio_device_block_group: a cdev cannot bind while its group is open the legacy way.
          assert.deepEqual(
            [result.op, result.code, result.errno],
            ["VFIO_DEVICE_BIND_IOMMUFD", "EBUSY", 16],
            why,
          );
          assert.match(
            result.hint ?? "",
            new RegExp(
              `group is open through the legacy container API \\(/dev/vfio/(noiommu-)?\\d+, held by .*\\(pid ${held.pid}\\)`,
            ),
            why,
          );
        } else {
          // The cdev itself opens any number of times; vfio_df_open lets one bind at a time, the
          // others get EINVAL ("only the group path allows the device to be opened multiple times").
          assert.deepEqual(
            [result.op, result.code, result.errno],
            ["VFIO_DEVICE_BIND_IOMMUFD", "EINVAL", 22],
            why,
          );
          assert.match(
            result.hint ?? "",
            new RegExp(`already bound to an iommufd.*held by .*\\(pid ${held.pid}\\)`),
            why,
          );
        }
      }
      assert.equal(await holder.finish(), 0, holder.output());
      // The holder is gone: the device opens again, here and with every backend.
      for (const backend of modes) {
        using v = openPciDevice(sys, EDU, { backend });
        assert.equal(v.device.config.vendorId, 0x1234);
      }
    } finally {
      const codes = await Promise.all(all.map((a) => a.child.finish()));
      assert.deepEqual(codes, all.map(() => 0), all.map((a) => a.child.output()).join("\n"));
    }
  });
}
