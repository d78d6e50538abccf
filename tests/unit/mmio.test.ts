/**
 * lib/mmio.ts: registers are bounds- and alignment-checked before any access, every access is
 * exactly one load or store of its width, and each goes to the fast path or the kernel.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { type MmioSegment, Registers } from "../../lib/mmio.ts";
import type { RawMmio } from "../../lib/sys.ts";
import { EDU, type FakeSys, openLegacy, regionOffset, withEdu } from "./fake_sys.ts";

/** A RawMmio that records each access as "name:offset[=value]" and reads back `value`. */
function recorder(name: string, log: string[], value = 0): RawMmio {
  const r = (w: number) => (o: number) => (log.push(`${name}:r${w}@${o}`), value);
  const w = (n: number) => (o: number, v: number | bigint) => void log.push(`${name}:w${n}@${o}=${v}`);
  return {
    read8: r(8),
    read16: r(16),
    read32: r(32),
    read64: (o) => (log.push(`${name}:r64@${o}`), BigInt(value)),
    write8: w(8),
    write16: w(16),
    write32: w(32),
    write64: w(64),
  };
}

/** 0x3000 bytes: [0x1000, 0x2000) on the fast path, the rest on the fallback. */
function regs(log: string[]) {
  const segments: MmioSegment[] = [{ start: 0x1000, length: 0x1000, io: recorder("fast", log, 7) }];
  let closed = 0;
  const r = new Registers("bar0", 0x3000, "mmap", segments, recorder("slow", log, 9), () => closed++);
  return { r, closed: () => closed };
}

/** The edu device opened with a BAR2 of 16 KiB, mmap-able in [0x1000, 0x3000). */
function edu(env: Record<string, string> = {}) {
  const fake = withEdu({ regions: [{ index: 2, size: 0x4000, sparse: [{ offset: 0x1000, size: 0x2000 }] }] });
  fake.env = env;
  const { container, group, device } = openLegacy(fake);
  const bar = fake.device(EDU).regions[2]!.data;
  const done = () => {
    device.close();
    group.close();
    container.close();
    assert.deepEqual(fake.leaks(), []);
  };
  return { fake, device, bar, [Symbol.dispose]: done };
}

const io = (fake: FakeSys) =>
  fake.calls.filter((c) => /^(pread|pwrite|mmio\.)/.test(c.op)).map((c) => `${c.op}@${c.offset}/${c.length}`);

test("mmio: accesses inside a segment use its accessor with the offset rebased", () => {
  const log: string[] = [];
  const { r } = regs(log);
  assert.equal(r.read32(0x1004), 7);
  r.write16(0x1ffe, 0xbeef);
  assert.equal(r.read64(0x1ff8), 7n);
  assert.deepEqual(log, ["fast:r32@4", "fast:w16@4094=48879", "fast:r64@4088"]);
});

test("mmio: accesses outside the segments use the fallback at the region offset", () => {
  const log: string[] = [];
  const { r } = regs(log);
  assert.equal(r.read8(0), 9);
  r.write32(0x2000, 1);
  r.write64(0x2ff8, 2n);
  assert.deepEqual(log, ["slow:r8@0", "slow:w32@8192=1", "slow:w64@12280=2"]);
});

test("mmio: out-of-bounds accesses are RangeErrors and touch nothing", () => {
  const log: string[] = [];
  const { r } = regs(log);
  assert.throws(
    () => r.read32(0x3000),
    /Cannot access 32 bits at offset 12288 of bar0: the region is 12288 bytes/,
  );
  assert.throws(() => r.read64(0x2ffc), RangeError);
  assert.throws(() => r.write8(0x3000, 0), RangeError);
  assert.throws(() => r.read16(-2), RangeError);
  assert.throws(() => r.read32(4.5), RangeError);
  assert.throws(() => r.read32(Number.NaN), RangeError);
  assert.deepEqual(log, []);
});

test("mmio: unaligned accesses are RangeErrors and touch nothing", () => {
  const log: string[] = [];
  const { r } = regs(log);
  assert.throws(() => r.read16(0x1001), /Cannot access 16 bits at offset 4097 of bar0: it is unaligned/);
  assert.throws(() => r.read32(0x1002), /unaligned/);
  assert.throws(() => r.write64(0x1004, 0n), /unaligned/);
  assert.throws(() => r.write32(2, 0), /unaligned/);
  assert.deepEqual(log, []);
});

test("mmio: values that do not fit the width are RangeErrors; signed spellings are accepted", () => {
  const log: string[] = [];
  const { r } = regs(log);
  assert.throws(() => r.write8(0, 0x100), /Cannot write 256: it does not fit in 8 bits/);
  assert.throws(() => r.write16(0, 0x10000), RangeError);
  assert.throws(() => r.write32(0, 2 ** 32), RangeError);
  assert.throws(() => r.write32(0, -(2 ** 31) - 1), RangeError);
  assert.throws(() => r.write32(0, 1.5), /expected an integer/);
  assert.throws(() => r.write64(0, -1n), /expected a bigint in 0..2\^64-1/);
  assert.throws(() => r.write64(0, 1n << 64n), RangeError);
  assert.throws(() => r.write64(0, 5 as unknown as bigint), RangeError);
  assert.deepEqual(log, []);
  r.write32(0, ~0);
  r.write8(0, -1);
  r.write16(0, -0x8000);
  assert.deepEqual(log, ["slow:w32@0=4294967295", "slow:w8@0=255", "slow:w16@0=32768"]);
});

test("mmio: close runs the release once and later access is a TypeError", () => {
  const log: string[] = [];
  const { r, closed } = regs(log);
  r.close();
  r.close();
  assert.equal(closed(), 1);
  assert.equal(r.closed, true);
  assert.throws(() => r.read32(0x1000), /Cannot access bar0: its registers are closed/);
  assert.deepEqual(log, []);
});

test("mmio: each width is exactly one pread or pwrite of that size at the right offset", () => {
  using t = edu();
  const regs = t.device.registers(2);
  const base = regionOffset(2);
  new DataView(t.bar.buffer).setBigUint64(0x10, 0x8877665544332211n, true);
  t.fake.calls = [];
  assert.equal(regs.read8(0x11), 0x22);
  assert.equal(regs.read16(0x12), 0x4433);
  assert.equal(regs.read32(0x14), 0x88776655);
  assert.equal(regs.read64(0x10), 0x8877665544332211n);
  regs.write8(0x21, 0xaa);
  regs.write16(0x22, 0xbbcc);
  regs.write32(0x24, 0xddeeff00);
  regs.write64(0x28, 0x0123456789abcdefn);
  assert.deepEqual(io(t.fake), [
    `pread@${base + 0x11}/1`,
    `pread@${base + 0x12}/2`,
    `pread@${base + 0x14}/4`,
    `pread@${base + 0x10}/8`,
    `pwrite@${base + 0x21}/1`,
    `pwrite@${base + 0x22}/2`,
    `pwrite@${base + 0x24}/4`,
    `pwrite@${base + 0x28}/8`,
  ]);
  const v = new DataView(t.bar.buffer);
  assert.equal(v.getUint8(0x21), 0xaa);
  assert.equal(v.getUint16(0x22, true), 0xbbcc);
  assert.equal(v.getUint32(0x24, true), 0xddeeff00);
  assert.equal(v.getBigUint64(0x28, true), 0x0123456789abcdefn);
});

test("mmio: the mmap-able area goes through the fast accessor on the same memory", () => {
  using t = edu();
  const regs = t.device.registers(2);
  assert.equal(regs.path, "mmap");
  new DataView(t.bar.buffer).setUint32(0x1004, 0xcafef00d, true);
  t.fake.calls = [];
  assert.equal(regs.read32(0x1004), 0xcafef00d);
  regs.write64(0x2ff8, 0xfedcba9876543210n);
  regs.write8(0x1000, 0x5a);
  assert.equal(regs.read16(0x1000), 0x5a);
  assert.deepEqual(io(t.fake), [
    `mmio.read32@${0x1004}/4`,
    `mmio.write64@${0x2ff8}/8`,
    `mmio.write8@${0x1000}/1`,
    `mmio.read16@${0x1000}/2`,
  ]);
  assert.equal(new DataView(t.bar.buffer).getBigUint64(0x2ff8, true), 0xfedcba9876543210n);
});

test("mmio: outside the sparse areas the same registers fall back to pread", () => {
  using t = edu();
  const regs = t.device.registers(2);
  t.fake.calls = [];
  regs.read32(0x0ffc);
  regs.read32(0x1000);
  regs.read32(0x3000);
  const base = regionOffset(2);
  assert.deepEqual(io(t.fake), [
    `pread@${base + 0x0ffc}/4`,
    `mmio.read32@${0x1000}/4`,
    `pread@${base + 0x3000}/4`,
  ]);
});

test("mmio: VFIO_TS_MMIO=pread forces the kernel path and maps nothing", () => {
  using t = edu({ VFIO_TS_MMIO: "pread" });
  const regs = t.device.registers(2);
  assert.equal(regs.path, "pread");
  assert.deepEqual(t.fake.mappings(), []);
  t.fake.calls = [];
  regs.read32(0x1000);
  assert.deepEqual(io(t.fake), [`pread@${regionOffset(2) + 0x1000}/4`]);
});

test("mmio: the pread option does the same without the environment", () => {
  using t = edu();
  const regs = t.device.registers(2, { path: "pread" });
  assert.equal(regs.path, "pread");
  assert.equal(t.fake.calls.filter((c) => c.op === "mmap").length, 0);
});

test("mmio: closing the device closes its registers and unmaps them", () => {
  using t = edu();
  const regs = t.device.registers(2);
  assert.equal(t.fake.mappings().length, 1);
  t.device.close();
  assert.equal(regs.closed, true);
  assert.deepEqual(t.fake.mappings(), []);
  assert.throws(() => regs.read32(0x1000), TypeError);
});
