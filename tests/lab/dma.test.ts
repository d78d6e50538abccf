// DMA through the IOMMU against the real kernel: edu round trips in both directions, IOVA range
// limits, unmap-all, overflow, and the no-IOMMU refusal.
import { test } from "node:test";
import assert from "node:assert/strict";
import { DmaPool } from "../../lib/dma.ts";
import { VfioError } from "../../lib/errors.ts";
import { openIommu, openPciDevice } from "../../lib/open.ts";
import type { Registers } from "../../lib/mmio.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../../lib/uapi/libc.ts";
import { VFIO_IOMMU_MAP_DMA, vfio_iommu_type1_dma_map } from "../../lib/uapi/vfio.ts";
import { backends, EDU, edu, HAS_IOMMU, quiesceEdu, sleep, sys } from "./_fixture.ts";

async function eduDma(bar0: Registers, src: bigint, dst: bigint, count: number, toRam: boolean) {
  bar0.write64(edu.DMA_SRC, src);
  bar0.write64(edu.DMA_DST, dst);
  bar0.write64(edu.DMA_COUNT, BigInt(count));
  bar0.write64(edu.DMA_CMD, BigInt(edu.DMA_START | (toRam ? edu.DMA_TO_RAM : 0)));
  const deadline = Date.now() + 10_000;
  while (bar0.read64(edu.DMA_CMD) & BigInt(edu.DMA_START)) {
    assert.ok(Date.now() < deadline, "edu DMA finished");
    await sleep(5);
  }
}

if (!HAS_IOMMU) {
  test("noiommu: DMA mapping through the legacy no-IOMMU container is refused with an explanation", () => {
    using v = openPciDevice(sys, EDU, { backend: "legacy" });
    assert.equal(v.backend.kind, "noiommu");
    assert.equal(v.backend.translates, false);
    assert.throws(() => v.dma.alloc(4096), (e: unknown) => {
      assert.ok(e instanceof VfioError);
      assert.match(e.message, /no-IOMMU mode/);
      return true;
    });
  });
}

for (const mode of HAS_IOMMU ? backends() : []) {
  test(`${mode.name}: edu DMA round trip, RAM to device and back, through the IOMMU`, async () => {
    using v = openPciDevice(sys, EDU, { ...mode.options, limit: edu.DMA_LIMIT });
    v.device.config.enableBusMaster();
    using bar0 = v.device.registers(0);
    quiesceEdu(bar0);
    using src = v.dma.alloc(4096);
    using dst = v.dma.alloc(4096);
    assert.ok(src.iova > 0n && src.iova + 4096n - 1n <= edu.DMA_LIMIT);
    const pattern = src.bytes;
    for (let i = 0; i < 4000; i++) pattern[i] = (i * 7 + 3) & 0xff;
    await eduDma(bar0, src.iova, BigInt(edu.DMA_BUFFER), 4000, false);
    await eduDma(bar0, BigInt(edu.DMA_BUFFER), dst.iova, 4000, true);
    assert.deepEqual(dst.bytes.subarray(0, 4000), pattern.subarray(0, 4000));
    assert.equal(dst.bytes[4000], 0, "nothing past the count was written");
  });

  test(`${mode.name}: mappings outside the reported IOVA ranges or overlapping are refused`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    const ranges = v.backend.iovaRanges();
    const last = ranges[ranges.length - 1]!;
    const addr = sys.mmap(8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    try {
      if (last.last < 0xffffffffffffffffn) {
        assert.throws(() => v.backend.mapDma(addr, last.last + 1n, 4096), /outside the IOMMU's IOVA ranges/);
      }
      assert.throws(() => v.backend.mapDma(addr, 0xfee00000n, 4096), /outside the IOMMU's IOVA ranges/);
      assert.throws(() => v.backend.mapDma(addr + 1n, 0x100000n, 4096), /multiples of the IOMMU page size/);
      v.backend.mapDma(addr, 0x100000n, 8192);
      assert.throws(() => v.backend.mapDma(addr, 0x101000n, 4096), /overlaps/);
      assert.throws(() => v.backend.unmapDma(0x100000n, 4096), /no mapping starts there/);
      v.backend.unmapDma(0x100000n, 8192);
      assert.equal(v.backend.mappings.size, 0);
    } finally {
      sys.munmap(addr, 8192);
    }
  });

  test(`${mode.name}: unmap-all removes every mapping and the IOVAs can be mapped again`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    const addr = sys.mmap(16384, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    try {
      for (let i = 0n; i < 4n; i++) v.backend.mapDma(addr + i * 4096n, 0x200000n + i * 0x10000n, 4096);
      assert.equal(v.backend.mappings.size, 4);
      v.backend.unmapAll();
      assert.equal(v.backend.mappings.size, 0);
      v.backend.mapDma(addr, 0x200000n, 16384); // the kernel accepts it again: it really was unmapped
      v.backend.unmapDma(0x200000n, 16384);
    } finally {
      sys.munmap(addr, 16384);
    }
  });

  test(`${mode.name}: the kernel rejects a mapping whose end overflows, and so do we`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    const addr = sys.mmap(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    try {
      assert.throws(() => v.backend.mapDma(addr, 0xfffffffffffff000n, 0x2000), RangeError);
      if (mode.name === "legacy") {
        // Straight to the kernel, bypassing our checks: iova + size wraps around 2^64.
        const m = vfio_iommu_type1_dma_map.alloc();
        m.set("flags", 3).set("vaddr", addr).set("iova", 0xfffffffffffff000n).set("size", 0x2000n);
        const { fd } = v.backend as unknown as { fd: number };
        const r = sys.ioctlPtr(fd, VFIO_IOMMU_MAP_DMA, m.bytes);
        assert.ok([-22, -75].includes(r), `kernel answered ${r}`); // EINVAL or EOVERFLOW
      }
    } finally {
      sys.munmap(addr, 4096);
    }
  });

  test(`${mode.name}: DMA buffers are freed with the backend and their views detach`, () => {
    const backend = openIommu(sys, mode.options);
    const v = backend.openDevice(EDU);
    const pool = new DmaPool(sys, backend);
    const buf = pool.alloc(8192);
    const view = buf.view(Uint32Array);
    view[0] = 0xdeadbeef;
    assert.equal(backend.mappings.size, 1);
    backend.close();
    assert.equal(buf.freed, true);
    assert.equal(view.length, 0, "the typed array detached instead of dangling");
    assert.throws(() => buf.bytes, /freed/);
    assert.equal(v.closed, true);
  });
}
