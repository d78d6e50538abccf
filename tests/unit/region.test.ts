/**
 * lib/region.ts: region info with the argsz re-query and its capabilities, pread/pwrite access,
 * mmap of the mmap-able areas, and the register accessor built on them.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { VfioError } from "../../lib/errors.ts";
import {
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  VFIO_REGION_TYPE_PCI_VENDOR_TYPE,
} from "../../lib/uapi/vfio.ts";
import { EDU, type FakeDeviceOptions, openLegacy, regionOffset, withEdu } from "./fake_sys.ts";

const RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
const RWM = RW | VFIO_REGION_INFO_FLAG_MMAP;

/** The edu device with the given regions, opened; `done()` closes everything and checks for leaks. */
function open(regions: FakeDeviceOptions["regions"] = []) {
  const fake = withEdu({ regions });
  const { container, group, device } = openLegacy(fake);
  fake.calls = [];
  const done = () => {
    device.close();
    container.close();
    group.close();
    assert.deepEqual(fake.leaks(), []);
  };
  return { fake, device, done, [Symbol.dispose]: done };
}

const regionInfoCalls = (fake: { calls: { name?: string }[] }) =>
  fake.calls.filter((c) => c.name === "VFIO_DEVICE_GET_REGION_INFO").length;

test("region: info without capabilities takes one ioctl", () => {
  using t = open();
  const info = t.device.regionInfo(0);
  assert.equal(regionInfoCalls(t.fake), 1);
  assert.deepEqual(info, {
    index: 0,
    flags: RWM,
    size: 0x1000,
    offset: regionOffset(0),
    readable: true,
    writable: true,
    mmap: true,
    sparse: undefined,
    type: undefined,
    msixMappable: false,
    capabilities: [],
  });
});

test("region: capabilities that do not fit are re-queried with the argsz the kernel asks for", () => {
  using t = open([{
    index: 2,
    size: 0x4000,
    sparse: [{ offset: 0, size: 0x1000 }, { offset: 0x3000, size: 0x1000 }],
    type: { type: VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x8086, subtype: 7 },
    msixMappable: true,
  }]);
  const info = t.device.regionInfo(2);
  assert.equal(regionInfoCalls(t.fake), 2);
  assert.equal(info.flags, RWM | VFIO_REGION_INFO_FLAG_CAPS);
  assert.deepEqual(info.sparse, [{ offset: 0, size: 0x1000 }, { offset: 0x3000, size: 0x1000 }]);
  assert.deepEqual(info.type, { type: 0x80008086, subtype: 7 });
  assert.equal(info.msixMappable, true);
  assert.deepEqual(info.capabilities, [
    VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_CAP_TYPE,
    VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  ]);
});

test("region: empty and out-of-region sparse areas are dropped", () => {
  using t = open([{
    index: 0,
    size: 0x2000,
    sparse: [{ offset: 0, size: 0 }, { offset: 0x1000, size: 0x1000 }, { offset: 0x1000, size: 0x2000 }],
  }]);
  assert.deepEqual(t.device.regionInfo(0).sparse, [{ offset: 0x1000, size: 0x1000 }]);
  assert.deepEqual(t.device.region(0).mmapAreas, [{ offset: 0x1000, size: 0x1000 }]);
});

test("region: a sparse area count that overruns its capability is a RangeError", () => {
  const cap = new Uint8Array(32);
  const v = new DataView(cap.buffer);
  v.setUint16(0, VFIO_REGION_INFO_CAP_SPARSE_MMAP, true);
  v.setUint32(8, 5, true); // five areas claimed, room for one
  using t = open([{ index: 0, size: 0x1000, rawCaps: cap }]);
  assert.throws(
    () => t.device.regionInfo(0),
    /Cannot parse region 0 sparse mmap capability: 5 areas overrun it/,
  );
});

test("region: a cyclic capability chain from the kernel is a RangeError", () => {
  const cap = new Uint8Array(16);
  new DataView(cap.buffer).setUint32(4, 32, true); // points at itself
  using t = open([{ index: 0, size: 0x1000, rawCaps: cap }]);
  assert.throws(() => t.device.regionInfo(0), /cyclic chain/);
});

test("region: an index the device lacks is a RangeError, one the kernel refuses a VfioError", () => {
  using t = open();
  assert.throws(() => t.device.region(9), /Cannot use region 9 of 0000:00:04.0: it has regions 0..8/);
  assert.throws(() => t.device.region(-1), RangeError);
  assert.throws(() => t.device.region(0.5), RangeError);
  using _ = t.fake.fail("ioctl", "VFIO_DEVICE_GET_REGION_INFO", "EINVAL");
  assert.throws(
    () => t.device.region(1),
    (e: unknown) => e instanceof VfioError && /get info of region 1/.test(e.message),
  );
});

test("region: read and write go through pread and pwrite at the region's offset", () => {
  using t = open();
  const cfg = t.device.region(7);
  assert.deepEqual([...cfg.read(0, 4)], [0x34, 0x12, 0xe8, 0x11]);
  cfg.write(0x40, new Uint8Array([1, 2, 3]));
  assert.deepEqual([...t.fake.device(EDU).regions[7]!.data.subarray(0x40, 0x43)], [1, 2, 3]);
  assert.deepEqual(
    t.fake.calls.filter((c) => c.op === "pread" || c.op === "pwrite").map((c) => [c.op, c.offset, c.length]),
    [["pread", regionOffset(7), 4], ["pwrite", regionOffset(7) + 0x40, 3]],
  );
});

test("region: accesses outside the region are RangeErrors with no syscall", () => {
  using t = open();
  const cfg = t.device.region(7);
  t.fake.calls = [];
  assert.throws(
    () => cfg.read(250, 8),
    /Cannot read 0000:00:04.0 region 7 at 250..258: the region is 256 bytes/,
  );
  assert.throws(() => cfg.write(256, new Uint8Array(1)), RangeError);
  assert.throws(() => cfg.read(-1, 1), RangeError);
  assert.throws(() => cfg.read(1.5, 1), RangeError);
  assert.deepEqual(t.fake.calls, []);
});

test("region: a short read is a VfioError with no errno (ERR_VFIO_SHORT_TRANSFER) saying how much was transferred", () => {
  using t = open();
  const r = t.device.region(7);
  t.fake.device(EDU).regions[7]!.size = 254; // the kernel's idea of the size shrank
  assert.throws(() => r.read(252, 4), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.equal(e.errno, undefined); // pread succeeded: the library invents no EIO
    assert.equal(e.code, "ERR_VFIO_SHORT_TRANSFER");
    assert.equal(e.op, "pread");
    assert.match(
      e.message,
      /^Cannot read 4 bytes at 252 of 0000:00:04.0 region 7 on .*: only 2 bytes were transferred$/,
    );
    return true;
  });
});

test("region: reading a region without the READ flag is a TypeError", () => {
  using t = open([{ index: 1, size: 0x1000, flags: VFIO_REGION_INFO_FLAG_WRITE }]);
  assert.throws(() => t.device.region(1).read(0, 4), /the region is not readable/);
  t.device.region(1).write(0, new Uint8Array(4));
  using u = open([{ index: 1, size: 0x1000, flags: VFIO_REGION_INFO_FLAG_READ }]);
  assert.throws(() => u.device.region(1).write(0, new Uint8Array(4)), /the region is not writable/);
});

test("region: map needs a page-aligned range inside an mmap-able area", () => {
  using t = open([{ index: 0, size: 0x4000, sparse: [{ offset: 0x2000, size: 0x2000 }] }]);
  const bar = t.device.region(0);
  assert.throws(() => bar.map(0x2800, 0x800), /the offset must be page-aligned/);
  assert.throws(() => bar.map(0, 0x1000), /not inside an mmap-able area/);
  assert.throws(() => bar.map(0x2000, 0x3000), RangeError);
  assert.throws(() => bar.map(0x2000, 0), RangeError);
  assert.ok(!t.fake.calls.some((c) => c.op === "mmap"));
  const m = bar.map(0x3000, 0x1000);
  assert.equal(m.offset, 0x3000);
  assert.deepEqual(t.fake.calls.filter((c) => c.op === "mmap").map((c) => c.offset), [
    regionOffset(0) + 0x3000,
  ]);
  bar.unmap(m);
});

test("region: a region without the MMAP flag has no mmap-able areas", () => {
  using t = open([{ index: 1, size: 0x1000, flags: RW }]);
  assert.deepEqual(t.device.region(1).mmapAreas, []);
  assert.deepEqual(t.device.region(3).mmapAreas, []); // size 0
  assert.throws(() => t.device.region(1).map(0, 0x1000), /not inside an mmap-able area/);
});

test("region: a failing mmap is a VfioError and leaves nothing mapped", () => {
  using t = open();
  using _ = t.fake.fail("mmap", undefined, "ENOMEM");
  assert.throws(() => t.device.region(0).map(0, 0x1000), /Cannot map 4096 bytes of .* \(mmap: ENOMEM\)/);
});

test("region: registers map every mmap-able area and unmap them on close", () => {
  using t = open([{
    index: 0,
    size: 0x4000,
    sparse: [{ offset: 0, size: 0x1000 }, { offset: 0x2000, size: 0x2000 }],
  }]);
  const regs = t.device.registers(0);
  assert.equal(regs.path, "mmap");
  assert.equal(t.fake.mappings().length, 2);
  regs.close();
  assert.equal(t.fake.mappings().length, 0);
});

test("region: when the second area fails to map, the first is unmapped", () => {
  using t = open([{
    index: 0,
    size: 0x4000,
    sparse: [{ offset: 0, size: 0x1000 }, { offset: 0x2000, size: 0x2000 }],
  }]);
  using _ = t.fake.fail("mmap", undefined, "ENOMEM", { after: 1 });
  assert.throws(() => t.device.registers(0), /mmap: ENOMEM/);
  assert.deepEqual(t.fake.mappings(), []);
});

test("region: without a fast accessor the mappings are dropped and registers use pread", () => {
  using t = open();
  t.fake.fastMmio = false;
  const regs = t.device.registers(0);
  assert.equal(regs.path, "pread");
  assert.deepEqual(t.fake.mappings(), []);
  t.fake.calls = [];
  regs.read32(0);
  assert.deepEqual(t.fake.calls.map((c) => c.op), ["pread"]);
});

test("region: registers of an unimplemented region are a RangeError", () => {
  using t = open();
  assert.throws(
    () => t.device.registers(3),
    /Cannot access 0000:00:04.0 region 3: the region is not implemented/,
  );
});

test("region: read with length 1.5, NaN or 2**40 is a RangeError before any pread or allocation", () => {
  using t = open();
  const cfg = t.device.region(7);
  t.fake.calls = [];
  // The library's own message, not the one Uint8Array gives for a bad length (NaN it would take as 0).
  assert.throws(
    () => cfg.read(0, 1.5),
    /^RangeError: Cannot read 0000:00:04.0 region 7: offset and length must be non-negative integers$/,
  );
  assert.throws(
    () => cfg.read(0, NaN),
    /^RangeError: Cannot read 0000:00:04.0 region 7: offset and length must be non-negative integers$/,
  );
  assert.throws(
    () => cfg.read(0, 2 ** 40),
    /^RangeError: Cannot read 0000:00:04.0 region 7 at 0..1099511627776: the region is 256 bytes$/,
  );
  assert.deepEqual(t.fake.calls, []);
});

test("region: a u64 region size above 2^53 is a RangeError", () => {
  using t = open();
  const regions = t.fake.device(EDU).regions;
  regions[2]!.size = 2 ** 53; // the reported size only: the fake keeps no bytes behind it
  assert.throws(() => t.device.regionInfo(2), (e: unknown) => {
    assert.ok(e instanceof RangeError);
    assert.match(e.message, /^Cannot use region 2 size 0x20000000000000: it exceeds 2\^53$/);
    return true;
  });
  regions[4]!.size = 2 ** 53 - 1; // the largest that fits a number exactly
  assert.equal(t.device.regionInfo(4).size, 2 ** 53 - 1);
});

test("region: registers keep a sparse area at a non-page-aligned offset on pread instead of throwing", () => {
  using t = open([{
    index: 0,
    size: 0x4000,
    sparse: [{ offset: 0x800, size: 0x800 }, { offset: 0x2000, size: 0x2000 }],
  }]);
  const data = t.fake.device(EDU).regions[0]!.data;
  new DataView(data.buffer).setUint32(0x800, 0x11223344, true);
  new DataView(data.buffer).setUint32(0x2000, 0x55667788, true);
  const regs = t.device.registers(0);
  assert.equal(regs.path, "mmap");
  const mmaps = t.fake.calls.filter((c) => c.op === "mmap");
  assert.deepEqual(mmaps.map((c) => [c.offset, c.length]), [[regionOffset(0) + 0x2000, 0x2000]]);
  t.fake.calls = [];
  assert.equal(regs.read32(0x800), 0x11223344);
  assert.deepEqual(t.fake.calls.map((c) => [c.op, c.offset]), [["pread", regionOffset(0) + 0x800]]);
  t.fake.calls = [];
  assert.equal(regs.read32(0x2000), 0x55667788);
  assert.deepEqual(t.fake.calls.map((c) => c.op), ["mmio.read32"]);
  regs.close();
  assert.deepEqual(t.fake.mappings(), []);
});
