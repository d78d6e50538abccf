/**
 * lib/uapi/struct.ts: struct layouts, argsz/size filling, little-endian field access, bounds.
 * (tests/conformance checks the layouts themselves against the kernel headers.)
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { _IO } from "../../lib/uapi/ioctl.ts";
import { iommu_ioas_alloc } from "../../lib/uapi/iommufd.ts";
import { pollfd } from "../../lib/uapi/libc.ts";
import { StructDef } from "../../lib/uapi/struct.ts";
import {
  VFIO_GET_API_VERSION,
  vfio_group_status,
  vfio_iommu_type1_dma_map,
  vfio_region_info,
} from "../../lib/uapi/vfio.ts";

test("struct: alloc zeroes the buffer and sets argsz to the whole length, extra included", () => {
  const s = vfio_region_info.alloc(40);
  assert.equal(s.bytes.length, 72);
  assert.equal(s.get("argsz"), 72);
  assert.deepEqual([...s.bytes.subarray(4)], new Array(68).fill(0));
});

test("struct: alloc fills an iommufd struct's leading size field", () => {
  assert.equal(iommu_ioas_alloc.alloc().get("size"), 12);
});

test("struct: alloc leaves a struct without argsz or size untouched", () => {
  assert.deepEqual([...pollfd.alloc().bytes], new Array(8).fill(0));
});

test("struct: fields are little-endian at their declared offsets", () => {
  const m = vfio_iommu_type1_dma_map.alloc();
  m.set("flags", 3).set("vaddr", 0x1122334455667788n).set("iova", 0x100000n).set("size", 0x2000n);
  const v = new DataView(m.bytes.buffer);
  assert.equal(v.getUint32(4, true), 3);
  assert.equal(v.getBigUint64(8, true), 0x1122334455667788n);
  assert.equal(m.bytes[8], 0x88);
  assert.equal(v.getBigUint64(16, true), 0x100000n);
  assert.equal(m.get("size"), 0x2000n);
});

test("struct: every field type round-trips, s16 and s32 keep their sign", () => {
  const def = new StructDef("t", 24, {
    a: ["u8", 0],
    b: ["u16", 2],
    c: ["s16", 4],
    d: ["u32", 8],
    e: ["s32", 12],
    f: ["u64", 16],
  });
  const s = def.alloc();
  s.set("a", 0xff).set("b", 0xfffe).set("c", -2).set("d", 0xfffffffd).set("e", -4).set("f", 2n ** 64n - 1n);
  assert.deepEqual(
    [s.get("a"), s.get("b"), s.get("c"), s.get("d"), s.get("e"), s.get("f")],
    [0xff, 0xfffe, -2, 0xfffffffd, -4, 2n ** 64n - 1n],
  );
  assert.equal(new DataView(s.bytes.buffer).getUint16(4, true), 0xfffe);
});

test("struct: setU64 writes a u64 from any non-negative safe integer, and nothing else", () => {
  const s = vfio_iommu_type1_dma_map.alloc();
  for (const n of [0, 1, 0xffffffff, 0x1_0000_0000, 0x1_2345_6789_abcd, Number.MAX_SAFE_INTEGER]) {
    assert.equal(s.setU64("size", n).get("size"), BigInt(n));
  }
  s.set("iova", 0n);
  assert.throws(() => s.setU64("size", -1), RangeError);
  assert.throws(() => s.setU64("size", 2 ** 53), RangeError);
  assert.throws(() => s.setU64("size", 1.5), RangeError);
  assert.throws(() => s.setU64("flags", 1), /it is a u32/);
  assert.equal(s.get("size"), BigInt(Number.MAX_SAFE_INTEGER), "a refused write leaves the field");
  assert.equal(s.get("iova"), 0n, "and its neighbours");
});

test("struct: at() views existing bytes and shares memory with them", () => {
  const bytes = new Uint8Array(16);
  const s = vfio_group_status.at(bytes, 8);
  s.set("flags", 5);
  assert.equal(bytes[12], 5);
  assert.equal(s.get("argsz"), 0);
});

test("struct: at() rejects a struct that would run past the buffer, and bad offsets", () => {
  const bytes = new Uint8Array(16);
  assert.throws(() => vfio_group_status.at(bytes, 9), RangeError);
  assert.throws(() => vfio_group_status.at(bytes, -1), RangeError);
  assert.throws(() => vfio_group_status.at(bytes, 1.5), RangeError);
  assert.throws(() => vfio_region_info.at(bytes), /needs 32 bytes and 16 are available/);
});

test("struct: a declaration whose field does not fit is refused", () => {
  assert.throws(
    () => new StructDef("bad", 8, { x: ["u64", 4] }),
    /Cannot declare bad.x: offset 4 is outside 8 bytes/,
  );
  assert.throws(() => new StructDef("neg", 8, { x: ["u8", -1] }), RangeError);
});

test("ioctl: _IO encodes type and number with no size or direction", () => {
  assert.equal(_IO(";", 100), 0x3b64);
  assert.equal(VFIO_GET_API_VERSION, 0x3b64);
});
