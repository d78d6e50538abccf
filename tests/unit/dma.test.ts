/**
 * lib/dma.ts: DMA buffers from anonymous mmap, given IOVAs inside the IOMMU's ranges and below the
 * device's limit, unmapped and freed once, with views that detach.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { VfioContainer } from "../../lib/container.ts";
import { DmaPool } from "../../lib/dma.ts";
import { VfioError } from "../../lib/errors.ts";
import { VfioGroup } from "../../lib/group.ts";
import { VFIO_DMA_MAP_FLAG_READ } from "../../lib/uapi/vfio.ts";
import { type FakeSys, withEdu } from "./fake_sys.ts";

/** A type1v2 container with the edu group attached; disposing closes it and checks for leaks. */
function setup(fake: FakeSys = withEdu()) {
  const container = VfioContainer.open(fake);
  const group = VfioGroup.open(fake, 4);
  group.setContainer(container);
  container.setIommu();
  const kernel = fake.containers[0]!;
  const done = () => {
    container.close();
    group.close();
    assert.deepEqual(fake.leaks(), []);
  };
  return { fake, container, group, kernel, [Symbol.dispose]: done };
}

test("dma: alloc maps page-rounded, zeroed memory at an IOVA inside the IOMMU's ranges", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  const buf = pool.alloc(5000);
  assert.equal(buf.size, 8192);
  assert.equal(buf.iova, 0x1000n); // page 0 is never handed out
  assert.deepEqual(t.kernel.mappings.get(buf.iova), {
    iova: 0x1000n,
    size: 8192n,
    vaddr: buf.vaddr,
    flags: 3,
  });
  assert.equal(buf.bytes.length, 8192);
  assert.ok(buf.bytes.every((b) => b === 0));
  assert.deepEqual(t.fake.mappings().map((m) => [m.address, m.length]), [[buf.vaddr, 8192]]);
});

test("dma: IOVAs skip the holes between reported ranges", () => {
  const fake = withEdu();
  fake.iovaRanges = [{ start: 0x100000n, last: 0x101fffn }, { start: 0x200000n, last: 0x2fffffn }];
  using t = setup(fake);
  using pool = new DmaPool(fake, t.container);
  assert.equal(pool.alloc(0x2000).iova, 0x100000n);
  assert.equal(pool.alloc(0x1000).iova, 0x200000n);
  for (const [iova, m] of t.kernel.mappings) {
    assert.ok(fake.iovaRanges.some((r) => iova >= r.start && iova + m.size - 1n <= r.last));
  }
});

test("dma: a limit keeps buffers below the device's DMA mask, and running out is a RangeError", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container, { limit: 0x4fffn });
  const a = pool.alloc(0x2000);
  const b = pool.alloc(0x2000);
  assert.ok(a.iova + 0x2000n - 1n <= 0x4fffn && b.iova + 0x2000n - 1n <= 0x4fffn);
  assert.throws(() => pool.alloc(0x1000), /Cannot allocate 4096 bytes of IOVA space below 0x4fff/);
  assert.equal(t.fake.mappings().length, 2); // the third buffer's memory was unmapped again
});

test("dma: free unmaps the IOVA, then unmaps the memory, and detaches every view", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  const buf = pool.alloc(4096);
  const bytes = buf.bytes;
  const words = buf.view(Uint32Array, { byteOffset: 16, length: 4 });
  words[0] = 0xdeadbeef;
  assert.equal(bytes[16], 0xef);
  t.fake.calls = [];
  buf.free();
  assert.deepEqual(t.fake.calls.map((c) => c.name ?? c.op), ["VFIO_IOMMU_UNMAP_DMA", "munmap"]);
  assert.equal(bytes.length, 0);
  assert.equal(words.length, 0);
  assert.equal(buf.freed, true);
  assert.equal(t.kernel.mappings.size, 0);
  assert.equal(pool.buffers.size, 0);
  assert.throws(() => buf.bytes, /Cannot use the DMA buffer at iova 0x1000: it was freed/);
  assert.throws(() => buf.view(Uint8Array), TypeError);
  buf.free();
  assert.equal(t.fake.calls.length, 2);
});

test("dma: a freed IOVA is reused", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  const a = pool.alloc(4096);
  const iova = a.iova;
  a.free();
  assert.equal(pool.alloc(4096).iova, iova);
});

test("dma: closing the backend frees every buffer first, while the mappings exist", () => {
  const t = setup();
  const pool = new DmaPool(t.fake, t.container);
  const bufs = [pool.alloc(4096), pool.alloc(8192), pool.alloc(4096)];
  const views = bufs.map((b) => b.bytes);
  t.fake.calls = [];
  t.container.close();
  assert.ok(bufs.every((b) => b.freed));
  assert.ok(views.every((v) => v.length === 0));
  // Newest first, each IOVA unmapped before its memory.
  assert.deepEqual(
    t.fake.calls.slice(0, 6).map((c) => c.name ?? c.op),
    ["VFIO_IOMMU_UNMAP_DMA", "munmap", "VFIO_IOMMU_UNMAP_DMA", "munmap", "VFIO_IOMMU_UNMAP_DMA", "munmap"],
  );
  assert.deepEqual(t.fake.calls.filter((c) => c.op === "munmap").map((c) => c.length), [4096, 8192, 4096]);
  assert.deepEqual(t.fake.mappings(), []);
  assert.throws(() => pool.alloc(4096), /Cannot allocate DMA memory: the pool is closed/);
  t[Symbol.dispose]();
});

test("dma: buffers freed after their group left the container skip the unmap ioctl", () => {
  using t = setup();
  const pool = new DmaPool(t.fake, t.container);
  const buf = pool.alloc(4096);
  t.group.close(); // the last group: the kernel drops the IOMMU and its mappings
  t.fake.calls = [];
  buf.free();
  assert.deepEqual(t.fake.calls.map((c) => c.op), ["munmap"]);
});

test("dma: a refused MAP_DMA unmaps the memory and returns the IOVA; ENOMEM names the memlock limit", () => {
  const fake = withEdu();
  fake.memlock = 16n << 10n;
  using t = setup(fake);
  using pool = new DmaPool(fake, t.container);
  const before = pool.allocator.freeRanges;
  assert.throws(() => pool.alloc(32 << 10), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.equal(e.code, "ENOMEM");
    assert.match(e.hint!, /RLIMIT_MEMLOCK, which is 16 KiB; raise it with `ulimit -l unlimited`/);
    return true;
  });
  assert.deepEqual(fake.mappings(), []);
  assert.deepEqual(pool.allocator.freeRanges, before);
  assert.equal(pool.buffers.size, 0);
  assert.equal(pool.alloc(8192).iova, 0x1000n);
});

test("dma: a failing mmap is a VfioError that maps nothing", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  using _ = t.fake.fail("mmap", "anonymous", "ENOMEM");
  assert.throws(() => pool.alloc(4096), /Cannot allocate 4096 bytes of DMA memory \(mmap: ENOMEM\)/);
  assert.ok(!t.fake.ioctls().includes("VFIO_IOMMU_MAP_DMA"));
});

test("dma: hugepage sizes are checked and a failing hugepage mmap names the reservation", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  assert.throws(() => pool.alloc(4096, { hugepageSize: 3 << 20 }), /Cannot use hugepage size 3145728/);
  assert.throws(() => pool.alloc(4096, { hugepageSize: 2048 }), RangeError);
  using _ = t.fake.fail("mmap", "anonymous", "ENOMEM");
  assert.throws(
    () => pool.alloc(4096, { hugepageSize: 2 << 20 }),
    /no free 2097152-byte hugepages: reserve some/,
  );
  const mmaps = t.fake.calls.filter((c) => c.op === "mmap");
  assert.deepEqual(mmaps.map((c) => c.length), [2 << 20]);
});

test("dma: invalid sizes are RangeErrors", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  for (const n of [0, -1, 1.5, NaN, 2 ** 41]) assert.throws(() => pool.alloc(n), RangeError);
  assert.ok(!t.fake.calls.some((c) => c.op === "mmap"));
});

test("dma: access rights reach the kernel", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  const buf = pool.alloc(4096, { write: false });
  assert.equal(t.kernel.mappings.get(buf.iova)!.flags, VFIO_DMA_MAP_FLAG_READ);
});

test("dma: iovaAt and view are bounds-checked", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  const buf = pool.alloc(4096);
  assert.equal(buf.iovaAt(0x10), buf.iova + 0x10n);
  assert.throws(() => buf.iovaAt(4096), /Cannot take offset 4096 of a 4096-byte DMA buffer/);
  assert.throws(() => buf.iovaAt(-1), RangeError);
  assert.equal(buf.view(BigUint64Array).length, 512);
  assert.equal(buf.view(Uint32Array, { byteOffset: 4092 }).length, 1);
  assert.throws(
    () => buf.view(Uint32Array, { byteOffset: 4092, length: 2 }),
    /Cannot view 2 elements at 4092 of a 4096-byte DMA buffer/,
  );
  assert.throws(() => buf.view(Uint8Array, { byteOffset: -1 }), RangeError);
});

test("dma: pool close frees its buffers and is idempotent", () => {
  using t = setup();
  const pool = new DmaPool(t.fake, t.container);
  const a = pool.alloc(4096);
  pool.close();
  pool.close();
  assert.equal(a.freed, true);
  assert.equal(t.kernel.mappings.size, 0);
  assert.equal(t.fake.calls.filter((c) => c.op === "munmap").length, 1);
});

test("dma: a no-IOMMU container cannot make a pool", () => {
  const fake = withEdu({ noiommu: true });
  fake.extensions.add(8);
  using t = setup(fake);
  assert.throws(() => new DmaPool(fake, t.container), /no-IOMMU mode/);
});

test("dma: volatile accesses see what the device wrote, are bounds-checked, and close on free", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  const buf = pool.alloc(4096);
  // The "device" writes a completion entry's status word; the program polls it through volatile.
  new DataView(buf.bytes.buffer).setUint32(12, 0x00010001, true);
  assert.equal(buf.volatile.read32(12), 0x00010001);
  buf.volatile.write16(14, 0xbeef);
  assert.equal(buf.view(Uint16Array)[7], 0xbeef);
  assert.throws(() => buf.volatile.read32(4096), RangeError);
  assert.throws(() => buf.volatile.read32(2), /unaligned/);
  buf.free();
  assert.throws(() => buf.volatile.read32(0), /closed/);
});

test("dma: alloc(2**40) is a RangeError naming the 2^36 limit, before any mmap", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  t.fake.calls = [];
  assert.throws(() => pool.alloc(2 ** 40), (e: unknown) => {
    assert.ok(e instanceof RangeError);
    assert.match(e.message, /Cannot allocate 1099511627776 bytes of DMA memory: .* up to 68719476736/);
    return true;
  });
  assert.throws(() => pool.alloc(2 ** 36 + 4096), RangeError);
  assert.deepEqual(t.fake.calls, []);
});

test("dma: hugepageSize 2**32 + 4096 is a RangeError before any mmap", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  t.fake.calls = [];
  for (const huge of [2 ** 32 + 4096, 2 ** 32]) {
    assert.throws(
      () => pool.alloc(4096, { hugepageSize: huge }),
      new RegExp(
        `Cannot use hugepage size ${huge}: it must be a power of two above the page size, up to 1 GiB`,
      ),
    );
  }
  assert.deepEqual(t.fake.calls, []);
});

test("dma: new DmaPool with limit 0n is a RangeError before any mmap", () => {
  using t = setup();
  t.fake.calls = [];
  for (const limit of [0n, 0xfffn]) {
    assert.throws(() => new DmaPool(t.fake, t.container, { limit }), (e: unknown) => {
      assert.ok(e instanceof RangeError);
      assert.match(
        e.message,
        new RegExp(`Cannot create a DMA pool below IOVA ${limit}: the limit leaves no page to map`),
      );
      return true;
    });
  }
  // Only the IOMMU page-size query (VFIO_IOMMU_GET_INFO) the check itself needs: no mmap, no map.
  assert.deepEqual([...new Set(t.fake.calls.map((c) => c.name ?? c.op))], ["VFIO_IOMMU_GET_INFO"]);
  assert.deepEqual(t.fake.mappings(), []);
});

test("dma: iovaAt on a freed buffer is a TypeError", () => {
  using t = setup();
  using pool = new DmaPool(t.fake, t.container);
  const buf = pool.alloc(4096);
  buf.free();
  assert.throws(() => buf.iovaAt(0), (e: unknown) => {
    assert.ok(e instanceof TypeError);
    assert.match(e.message, /Cannot use the DMA buffer at iova 0x1000: it was freed/);
    return true;
  });
});

test("dma: with a 64 KiB IOMMU page, buffers are 64 KiB-aligned in the process and at the IOVA, trimmed and freed whole", () => {
  const fake = withEdu();
  fake.iovaPgsizes = 0x10000n; // the smallest IOMMU page is 64 KiB, above the CPU's 4 KiB
  using t = setup(fake);
  assert.equal(t.container.iommuPageSize, 0x10000);
  using pool = new DmaPool(t.fake, t.container);
  const buf = pool.alloc(4096);
  assert.equal(buf.size, 0x10000);
  assert.equal(buf.vaddr % 0x10000n, 0n, "type1 wants the process address aligned to the IOMMU page");
  assert.equal(buf.iova % 0x10000n, 0n);
  // Only the aligned 64 KiB stays mapped in the process: the slack mmap took was trimmed.
  assert.deepEqual(t.fake.mappings().map((m) => [m.address, m.length]), [[buf.vaddr, 0x10000]]);
  buf.free();
  assert.deepEqual(t.fake.mappings(), []);
  assert.deepEqual(t.fake.violations, []);
});

test("dma: a buffer whose unmap fails keeps its IOVA and memory until the backend closes, then both are released", () => {
  using t = setup();
  const pool = new DmaPool(t.fake, t.container);
  const buf = pool.alloc(4096);
  {
    using _ = t.fake.fail("ioctl", "VFIO_IOMMU_UNMAP_DMA", "EINVAL");
    assert.throws(() => buf.free(), (e: unknown) => e instanceof VfioError && e.code === "EINVAL");
    // The device may still reach it: neither the IOVA nor the memory is reused.
    assert.equal(t.kernel.mappings.size, 1);
    assert.equal(t.fake.mappings().length, 1);
    const other = pool.alloc(4096);
    assert.notEqual(other.iova, buf.iova);
    // pool.close() frees the other buffer (its unmap fails too) and tries the held one again: both
    // stay held, mapped for the device and in the process.
    assert.throws(() => pool.close());
    assert.equal(t.kernel.mappings.size, 2);
    assert.equal(t.fake.mappings().length, 2);
  }
  t.container.close(); // unmaps everything, then releases the held memory
  assert.deepEqual(t.fake.mappings(), []);
  assert.deepEqual(t.fake.violations, []);
});
