/**
 * lib/caps.ts: walking a VFIO capability chain that cannot be trusted.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { capabilityChain } from "../../lib/caps.ts";
import { capChain } from "./fake_sys.ts";

const HEADER = 32; // sizeof(struct vfio_region_info)

function info(chain: Uint8Array): Uint8Array {
  const b = new Uint8Array(HEADER + chain.length);
  b.set(chain, HEADER);
  return b;
}

function capAt(b: Uint8Array, offset: number, id: number, next: number): void {
  const v = new DataView(b.buffer);
  v.setUint16(offset, id, true);
  v.setUint16(offset + 2, 1, true);
  v.setUint32(offset + 4, next, true);
}

test("caps: walks a chain in order, each capability spanning up to the next", () => {
  const a = new Uint8Array(24), b = new Uint8Array(8);
  a[0] = 1, b[0] = 3;
  const bytes = info(capChain([a, b], HEADER));
  assert.deepEqual(capabilityChain(bytes, HEADER, HEADER), [
    { id: 1, version: 0, offset: 32, length: 24 },
    { id: 3, version: 0, offset: 56, length: 8 },
  ]);
});

test("caps: cap_offset 0 means no capabilities", () => {
  assert.deepEqual(capabilityChain(new Uint8Array(64), 0, HEADER), []);
});

test("caps: a chain pointing into the fixed struct is refused", () => {
  const b = new Uint8Array(64);
  capAt(b, 32, 1, 0);
  assert.throws(() => capabilityChain(b, 16, HEADER), /offset 16 is outside 32..64/);
});

test("caps: a chain pointing past the buffer is refused", () => {
  const b = new Uint8Array(64);
  capAt(b, 32, 1, 60); // 60 + 8 > 64
  assert.throws(() => capabilityChain(b, 32, HEADER), /offset 60 is outside 40..64/);
  assert.throws(() => capabilityChain(b, 64, HEADER), RangeError);
});

test("caps: a cyclic chain ends with a RangeError instead of looping", () => {
  const self = new Uint8Array(64);
  capAt(self, 32, 1, 32);
  assert.throws(() => capabilityChain(self, 32, HEADER), /a corrupt or cyclic chain/);
  const loop = new Uint8Array(64);
  capAt(loop, 32, 1, 48);
  capAt(loop, 48, 2, 32);
  assert.throws(() => capabilityChain(loop, 32, HEADER), RangeError);
});

test("caps: a misaligned offset is refused", () => {
  const b = new Uint8Array(64);
  capAt(b, 32, 1, 42);
  assert.throws(() => capabilityChain(b, 32, HEADER), /offset 42/);
});

test("caps: the last capability's length runs to the end of the buffer", () => {
  const b = new Uint8Array(80);
  capAt(b, 32, 7, 0);
  assert.deepEqual(capabilityChain(b, 32, HEADER), [{ id: 7, version: 1, offset: 32, length: 48 }]);
});
