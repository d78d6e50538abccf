/**
 * lib/iova_allocator.ts: first fit inside the IOMMU's ranges, alignment, limits, merging on free.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { alignUp, IovaAllocator } from "../../lib/iova_allocator.ts";

const P = 4096;
const whole = () => new IovaAllocator([{ start: 0n, last: 0xffffffffn }], P);

test("iova_allocator: IOVA 0 is held back and allocations are page-aligned", () => {
  const a = whole();
  assert.equal(a.alloc(1), 0x1000n);
  assert.equal(a.alloc(P + 1), 0x2000n); // rounded up to two pages
  assert.equal(a.alloc(P), 0x4000n);
});

test("iova_allocator: allocations stay inside the ranges, skipping holes", () => {
  const a = new IovaAllocator([{ start: 0x10000n, last: 0x11fffn }, { start: 0x20000n, last: 0x2ffffn }], P);
  assert.equal(a.alloc(0x2000), 0x10000n);
  assert.equal(a.alloc(0x2000), 0x20000n); // the first range is full
  assert.throws(() => a.alloc(0x10000), /Cannot allocate 65536 bytes of IOVA space: no free IOVA range/);
});

test("iova_allocator: ranges are sorted and unaligned starts rounded up", () => {
  const a = new IovaAllocator([{ start: 0x20001n, last: 0x2ffffn }, { start: 0x8000n, last: 0x8fffn }], P);
  assert.deepEqual(a.freeRanges, [{ start: 0x8000n, last: 0x8fffn }, { start: 0x21000n, last: 0x2ffffn }]);
});

test("iova_allocator: alignment is honoured and the gap before it stays free", () => {
  const a = whole();
  assert.equal(a.alloc(P, { align: 0x10000 }), 0x10000n);
  assert.equal(a.alloc(P), 0x1000n);
  assert.throws(() => a.alloc(P, { align: 3000 }), /alignment must be a power of two/);
});

test("iova_allocator: the limit keeps the whole allocation below it", () => {
  const a = whole();
  assert.equal(a.alloc(0x3000, { limit: 0x3fffn }), 0x1000n);
  assert.throws(() => a.alloc(P, { limit: 0x3fffn }), /below 0x3fff/);
  assert.equal(a.alloc(P, { limit: 0x4fffn }), 0x4000n);
});

test("iova_allocator: freeing merges with both neighbours back into one range", () => {
  const a = whole();
  const before = a.freeRanges;
  const x = a.alloc(P), y = a.alloc(P), z = a.alloc(P);
  a.free(x, P);
  a.free(z, P);
  assert.equal(a.freeRanges.length, 2);
  a.free(y, P);
  assert.deepEqual(a.freeRanges, before);
});

test("iova_allocator: a double free or an overlapping free is refused", () => {
  const a = whole();
  const x = a.alloc(2 * P);
  a.free(x, 2 * P);
  assert.throws(() => a.free(x, 2 * P), /Cannot free IOVA 0x1000: no allocation of 8192 bytes starts there/);
  const y = a.alloc(P);
  assert.throws(() => a.free(y, 2 * P), RangeError);
  assert.throws(() => a.free(0x100000n, P), RangeError); // never allocated
});

test("iova_allocator: bad sizes and page sizes are RangeErrors", () => {
  assert.throws(() => whole().alloc(0), RangeError);
  assert.throws(() => whole().alloc(-1), RangeError);
  assert.throws(() => new IovaAllocator([], 3000), /page size 3000: it must be a power of two/);
  assert.throws(() => new IovaAllocator([], 0), RangeError);
});

test("iova_allocator: alignUp rounds to a power of two", () => {
  const p = BigInt(P);
  assert.equal(alignUp(0n, p), 0n);
  assert.equal(alignUp(1n, p), p);
  assert.equal(alignUp(p, p), p);
});
