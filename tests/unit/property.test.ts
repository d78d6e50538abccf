/**
 * Property-based tests (fast-check) of the parsers and the bookkeeping that untrusted input or
 * failing syscalls reach:
 *
 * 1. lib/caps.ts `capabilityChain`, and `readRegionInfo` (lib/region.ts) over a stub kernel: any
 *    bytes, first offset and header size. It terminates, stays inside the buffer, moves forward, and
 *    throws only RangeError; results never depend on bytes outside the (sub)array it is given.
 * 2. lib/pci.ts `PciConfig` capability walks, MSI, MSI-X and BARs over any config space: they
 *    terminate, throw only RangeError, and never access config space out of bounds.
 * 3. lib/iova_allocator.ts `IovaAllocator` against a page bitmap model under random alloc, free,
 *    double free, foreign mappings and setRanges: allocations are disjoint, inside the ranges,
 *    aligned, below the limit and never page 0, first fit, and fail only when no hole exists.
 * 4. Random lifecycles through tests/unit/fake_sys.ts with injected syscall failures: every
 *    exception is a VfioError, RangeError, TypeError or AggregateError, and once everything is
 *    closed no fd, no mapping and no violation is left.
 *
 * Case counts: VFIO_TS_PROPERTY_RUNS is the total number of generated cases across all the
 * properties below (default 100000), split by each property's weight; `npm run soak` runs 1000000.
 * VFIO_TS_PROPERTY_SEED sets the seed (default fixed, for reproducible CI). On a failure fast-check
 * prints the seed, the path and the shrunk counterexample: rerun with that seed to replay it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import fc from "fast-check";
import { capabilityChain, type CapHeader } from "../../lib/caps.ts";
import type { VfioContainer } from "../../lib/container.ts";
import type { VfioDevice } from "../../lib/device.ts";
import { type DmaBuffer, DmaPool } from "../../lib/dma.ts";
import { VfioError } from "../../lib/errors.ts";
import { OwnedFd } from "../../lib/fd.ts";
import { VfioGroup } from "../../lib/group.ts";
import type { IommuBackend, IovaRange } from "../../lib/iommu.ts";
import { IovaAllocator, type IovaAllocOptions } from "../../lib/iova_allocator.ts";
import type { VfioIrq } from "../../lib/irq.ts";
import type { Registers } from "../../lib/mmio.ts";
import { openIommu, openPciDevice } from "../../lib/open.ts";
import { type ConfigIo, PciConfig } from "../../lib/pci.ts";
import { readRegionInfo } from "../../lib/region.ts";
import type { Sys } from "../../lib/sys.ts";
import * as V from "../../lib/uapi/vfio.ts";
import { type FailOp, FakeSys } from "./fake_sys.ts";

// --- run counts and seeds ---------------------------------------------------------------------

const TOTAL = positiveInt("VFIO_TS_PROPERTY_RUNS", 100_000);
const SEED = integer("VFIO_TS_PROPERTY_SEED", 0x5eed);
// Each property's share of TOTAL; they add up to 1.
const WEIGHT = { caps: 0.25, regionInfo: 0.1, pci: 0.25, iova: 0.2, lifecycle: 0.2 };
// Bun stops a test after 5 s unless told otherwise; a soak run takes minutes.
const TIMEOUT = 4 * 60 * 60 * 1000;

function positiveInt(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === "") return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`${name}=${v}: expected a positive integer`);
  return n;
}

function integer(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === "") return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new RangeError(`${name}=${v}: expected an integer`);
  return n | 0; // fast-check seeds are 32-bit
}

/** Registers a test that checks `predicate` on `TOTAL * weight` generated values. */
function property<T>(
  name: string,
  weight: number,
  arb: fc.Arbitrary<T>,
  predicate: (value: T) => void,
): void {
  const numRuns = Math.max(1, Math.round(TOTAL * weight));
  test(`property: ${name}`, { timeout: TIMEOUT }, () => {
    let cases = 0;
    const start = performance.now();
    fc.assert(
      fc.property(arb, (value) => {
        cases++;
        predicate(value);
      }),
      { numRuns, seed: SEED },
    );
    const ms = Math.round(performance.now() - start);
    console.log(`property: ${name}: ${cases} cases in ${ms} ms (seed ${SEED})`);
  });
}

type Outcome<T> = { ok: T } | { error: string };

function outcome<T>(
  fn: () => T,
  allowed: (e: unknown) => boolean = (e) => e instanceof RangeError,
): Outcome<T> {
  try {
    return { ok: fn() };
  } catch (e) {
    if (!allowed(e)) throw e;
    return { error: `${(e as Error).name}: ${(e as Error).message}` };
  }
}

// --- 1. capability chains -----------------------------------------------------------------------

const u16 = (b: Uint8Array, at: number) => at >= 0 && at + 2 <= b.length ? b[at]! | (b[at + 1]! << 8) : -1;
const u32 = (b: Uint8Array, at: number) =>
  at >= 0 && at + 4 <= b.length
    ? (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0
    : -1;

function put(b: Uint8Array, at: number, value: number, width: number): void {
  for (let i = 0; i < width; i++) {
    if (at + i >= 0 && at + i < b.length) b[at + i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
  }
}

/** A pointer: to one of the planted entries (often, so that chains and cycles form), or any value. */
const pointer = (max: number) =>
  fc.oneof(
    { arbitrary: fc.record({ entry: fc.nat(15) }), weight: 4 },
    { arbitrary: fc.constant({ raw: 0 }), weight: 2 },
    { arbitrary: fc.record({ raw: fc.nat(max) }), weight: 2 },
    { arbitrary: fc.record({ raw: fc.nat(0xffffffff) }), weight: 1 },
  );
type Pointer = { entry: number } | { raw: number };
const resolve = (p: Pointer, ats: number[]) =>
  "raw" in p ? p.raw : ats.length ? ats[p.entry % ats.length]! : 0;

const weird = fc.constantFrom(NaN, -4, -8, 4.5, Infinity, 2 ** 32 - 4, 2 ** 53).map((raw) => ({ raw }));

// A well-formed chain (each capability 8 + 4 * gap bytes after the previous), then a few
// mutations of its `next` pointers (forward, backward, onto itself, anywhere) and of its bytes.
const capsCase = fc.record({
  length: fc.oneof(
    { arbitrary: fc.integer({ min: 64, max: 512 }), weight: 4 },
    { arbitrary: fc.integer({ min: 0, max: 64 }), weight: 1 },
  ),
  headerSize: fc.oneof(
    { arbitrary: fc.constantFrom(0, 16, 24, 32), weight: 4 },
    { arbitrary: fc.integer({ min: -16, max: 520 }), weight: 1 },
  ),
  seed: fc.integer(),
  random: fc.boolean(), // random bytes underneath, or zeros
  gaps: fc.array(fc.nat(8), { maxLength: 16 }),
  mutations: fc.array(fc.record({ entry: fc.nat(15), next: pointer(600) }), { maxLength: 2 }),
  pokes: fc.array(fc.tuple(fc.nat(511), fc.nat(255)), { maxLength: 4 }),
  first: fc.oneof(
    { arbitrary: fc.constant(undefined), weight: 8 },
    { arbitrary: pointer(600), weight: 2 },
    { arbitrary: weird, weight: 1 },
  ),
  padBefore: fc.nat(24),
  padAfter: fc.nat(24),
});
type CapsCase = typeof capsCase extends fc.Arbitrary<infer T> ? T : never;

/** Fills `b` from a small seed (xorshift), cheaper to generate and to shrink than the bytes themselves. */
function noise(b: Uint8Array, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < b.length; i++) {
    x ^= x << 13, x ^= x >>> 17, x ^= x << 5;
    b[i] = x & 0xff;
  }
}

function capsBytes(c: CapsCase): { bytes: Uint8Array; first: number } {
  const bytes = new Uint8Array(c.length);
  if (c.random) noise(bytes, c.seed);
  for (const [at, v] of c.pokes) if (at < bytes.length) bytes[at] = v;
  const ats: number[] = [];
  let at = Math.ceil(Math.max(c.headerSize, 0) / 4) * 4;
  for (const gap of c.gaps) {
    at += 4 * gap;
    if (at + 8 > bytes.length) break;
    ats.push(at);
    at += 8;
  }
  ats.forEach((at, i) => {
    put(bytes, at, (c.seed + i) & 0xffff, 2),
      put(bytes, at + 2, i, 2),
      put(bytes, at + 4, ats[i + 1] ?? 0, 4);
  });
  for (const m of c.mutations) {
    if (ats.length) put(bytes, ats[m.entry % ats.length]! + 4, resolve(m.next, ats), 4);
  }
  return { bytes, first: c.first === undefined ? ats[0] ?? 0 : resolve(c.first, ats) };
}

/** What a valid chain must look like, checked against the bytes independently of the parser. */
function checkChain(caps: CapHeader[], bytes: Uint8Array, first: number, headerSize: number): void {
  assert.equal(caps.length === 0, first === 0, "no capabilities exactly when the first offset is 0");
  let floor = headerSize;
  caps.forEach((c, i) => {
    assert.ok(Number.isInteger(c.offset) && c.offset % 4 === 0, `offset ${c.offset} is a dword`);
    assert.ok(c.offset >= headerSize && c.offset >= floor, `offset ${c.offset} is past ${floor}`);
    assert.ok(c.length >= 8 && c.offset + c.length <= bytes.length, `cap ${i} fits in ${bytes.length}`);
    assert.equal(c.id, u16(bytes, c.offset));
    assert.equal(c.version, u16(bytes, c.offset + 2));
    const next = u32(bytes, c.offset + 4);
    assert.equal(
      i === 0 ? first : caps[i - 1]!.offset + caps[i - 1]!.length,
      c.offset,
      "the chain is followed",
    );
    if (i + 1 < caps.length) {
      assert.equal(next, caps[i + 1]!.offset, "next is the following capability");
      assert.ok(caps[i + 1]!.offset > c.offset, "offsets strictly increase");
    } else assert.equal(next, 0, "the last capability ends the chain");
    floor = c.offset + 8;
  });
}

/** Whether walking from `first` really reaches a bad pointer (the parser may refuse only then). */
function chainIsBad(bytes: Uint8Array, first: number, headerSize: number): boolean {
  let floor = headerSize;
  for (let at = first; at !== 0;) {
    if (!Number.isInteger(at) || at < 0 || at < floor || at % 4 !== 0 || at + 8 > bytes.length) return true;
    floor = at + 8;
    at = u32(bytes, at + 4);
  }
  return false;
}

property(
  "caps: capabilityChain terminates, stays inside the buffer and throws only RangeError",
  WEIGHT.caps,
  capsCase,
  (c) => {
    const { bytes, first } = capsBytes(c);
    // The same bytes as a subarray of a larger buffer, whose outside holds one sentinel, then another.
    const big = new Uint8Array(c.padBefore + bytes.length + c.padAfter).fill(0xa5);
    big.set(bytes, c.padBefore);
    const sub = big.subarray(c.padBefore, c.padBefore + bytes.length);
    const run = (b: Uint8Array) => outcome(() => capabilityChain(b, first, c.headerSize));
    const alone = run(bytes);
    const inside = run(sub);
    big.fill(0x5a, 0, c.padBefore), big.fill(0x5a, c.padBefore + bytes.length);
    const inside2 = run(sub);
    assert.deepEqual(inside, alone, "a subarray parses as the same bytes alone");
    assert.deepEqual(inside2, alone, "bytes outside the subarray do not matter");
    assert.deepEqual(sub, bytes, "the buffer is not written");
    if ("ok" in alone) checkChain(alone.ok, bytes, first, c.headerSize);
    else assert.ok(chainIsBad(bytes, first, c.headerSize), `refused a good chain: ${alone.error}`);
  },
);

// readRegionInfo over a stub kernel: the argsz protocol, then the chain and the capabilities in it.
const regionCase = fc.record({
  flags: fc.nat(0xff),
  size: fc.oneof(
    { arbitrary: fc.bigInt({ min: 0n, max: 1n << 20n }), weight: 4 },
    { arbitrary: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), weight: 1 },
  ),
  caps: fc.array(
    fc.oneof(
      fc.record({
        id: fc.constant(V.VFIO_REGION_INFO_CAP_SPARSE_MMAP),
        nr: fc.oneof({ arbitrary: fc.constant(-1), weight: 4 }, { arbitrary: fc.nat(0xffffffff), weight: 1 }),
        areas: fc.array(
          fc.tuple(fc.bigInt({ min: 0n, max: 1n << 20n }), fc.bigInt({ min: 0n, max: 1n << 19n })),
          {
            maxLength: 4,
          },
        ),
      }),
      fc.record({
        id: fc.constant(V.VFIO_REGION_INFO_CAP_TYPE),
        nr: fc.nat(0xffffffff),
        areas: fc.constant([]),
      }),
      fc.record({ id: fc.nat(8), nr: fc.nat(3), areas: fc.constant([]) }),
    ),
    { maxLength: 4 },
  ),
  corrupt: fc.oneof(
    { arbitrary: fc.constant([]), weight: 3 },
    { arbitrary: fc.array(fc.tuple(fc.nat(200), fc.nat(255)), { minLength: 1, maxLength: 3 }), weight: 1 },
  ),
  capOffset: fc.oneof(fc.constant(undefined), fc.nat(300)),
  // What the stub answers to the first, too small argsz: the truth, or a lie.
  argsz: fc.oneof(fc.constant(undefined), fc.nat(300), fc.constant(1 << 17)),
});

property(
  "caps: readRegionInfo parses any chain and argsz answer, throwing only RangeError",
  WEIGHT.regionInfo,
  regionCase,
  (c) => {
    // The chain as the kernel lays it out after the 32-byte struct, then corrupted.
    const parts = c.caps.map((k) => {
      const b = new Uint8Array(16 + 16 * k.areas.length);
      const v = new DataView(b.buffer);
      v.setUint16(0, k.id, true);
      v.setUint16(2, 1, true);
      v.setUint32(8, k.nr < 0 ? k.areas.length : k.nr, true); // -1: the true count
      k.areas.forEach(([offset, size], i) => {
        v.setBigUint64(16 + 16 * i, offset, true), v.setBigUint64(24 + 16 * i, size, true);
      });
      return b;
    });
    const chain = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    parts.forEach((p, i) => {
      chain.set(p, at);
      put(chain, at + 4, i + 1 < parts.length ? 32 + at + p.length : 0, 4);
      at += p.length;
    });
    for (const [o, v] of c.corrupt) if (o < chain.length) chain[o] = v;
    let calls = 0;
    const stub = {
      ioctlPtr(_fd: number, request: number, arg: Uint8Array): number {
        assert.equal(request, V.VFIO_DEVICE_GET_REGION_INFO);
        assert.ok(++calls <= 2, "at most two queries");
        const s = V.vfio_region_info.at(arg);
        assert.equal(s.get("argsz"), arg.length, "argsz is the buffer's length");
        const caps = chain.length ? V.VFIO_REGION_INFO_FLAG_CAPS : 0;
        s.set("flags", c.flags | caps).set("size", c.size).set("offset", 7n << 40n).set("cap_offset", 0);
        if (chain.length && arg.length < 32 + chain.length) s.set("argsz", c.argsz ?? 32 + chain.length);
        else if (chain.length) arg.set(chain, 32), s.set("cap_offset", c.capOffset ?? 32);
        return 0;
      },
    } as unknown as Sys;
    const r = outcome(() => readRegionInfo(new OwnedFd(stub, 3, "stub"), 7));
    if (!("ok" in r)) return;
    const info = r.ok;
    assert.ok(info.size >= 0 && Number.isSafeInteger(info.size) && BigInt(info.size) === c.size);
    for (const a of info.sparse ?? []) {
      assert.ok(Number.isSafeInteger(a.offset) && Number.isSafeInteger(a.size), "areas are safe integers");
      assert.ok(a.size > 0 && a.offset >= 0 && a.offset + a.size <= info.size, "areas lie inside the region");
    }
  },
);

// --- 2. PCI config space ------------------------------------------------------------------------

// A well-formed standard list (dword positions in 0x40..0xfc, linked in any order) and extended list
// (from 0x100), mostly valid MSI / MSI-X fields, then a few mutations of the next pointers.
const msiFlags = fc.oneof(
  fc.nat(0xffff),
  fc.tuple(fc.nat(0xffff), fc.nat(5), fc.nat(5)).map(([bits, capable, enabled]) =>
    (bits & ~0x7e) | (capable << 1) | (enabled << 4)
  ),
);
const bir = fc.oneof(
  fc.nat(0xffffffff),
  fc.tuple(fc.nat(0xffffffff), fc.nat(5)).map(([v, b]) => ((v & ~7) | b) >>> 0),
);
const pciCase = fc.record({
  size: fc.constantFrom(256, 4096),
  seed: fc.integer(),
  fill: fc.constantFrom("zero", "ones", "noise"),
  pokes: fc.array(fc.tuple(fc.nat(4095), fc.nat(255)), { maxLength: 6 }),
  capList: fc.oneof({ arbitrary: fc.constant(true), weight: 6 }, {
    arbitrary: fc.constant(false),
    weight: 1,
  }),
  headerType: fc.oneof({ arbitrary: fc.constantFrom(0, 0x80), weight: 6 }, {
    arbitrary: fc.nat(255),
    weight: 1,
  }),
  bars: fc.array(fc.oneof(fc.nat(0xffffffff), fc.constantFrom(0, 1, 4, 0xc, 0xfe000004, 0xffffffff)), {
    minLength: 6,
    maxLength: 6,
  }),
  caps: fc.uniqueArray(
    fc.record({
      dword: fc.integer({ min: 0x10, max: 0x3f }),
      id: fc.oneof(
        { arbitrary: fc.constantFrom(0x05, 0x11, 0x10, 0x01, 0x09, 0), weight: 10 },
        { arbitrary: fc.nat(255), weight: 4 },
        { arbitrary: fc.constant(0xff), weight: 1 },
      ),
      flags: msiFlags,
      table: bir,
      pba: bir,
    }),
    { selector: (k) => k.dword, maxLength: 12 },
  ),
  first: fc.oneof({ arbitrary: fc.constant(undefined), weight: 8 }, { arbitrary: pointer(255), weight: 1 }),
  capMutations: fc.array(fc.record({ entry: fc.nat(15), next: pointer(255) }), { maxLength: 2 }),
  ext: fc.uniqueArray(
    fc.record({
      dword: fc.integer({ min: 0x41, max: 0x3ff }),
      id: fc.oneof(fc.constantFrom(0, 1, 3, 0x10, 0xffff), fc.nat(0xffff)),
      version: fc.nat(15),
    }),
    { selector: (e) => e.dword, maxLength: 12 },
  ),
  extMutations: fc.array(fc.record({ entry: fc.nat(15), next: pointer(0xfff) }), { maxLength: 2 }),
  extEnd: fc.oneof(
    { arbitrary: fc.constant("none"), weight: 8 },
    { arbitrary: fc.constantFrom("zero", "ones"), weight: 1 },
  ),
  sizes: fc.oneof(
    {
      arbitrary: fc.array(fc.oneof(fc.constant(0), fc.nat(1 << 30)), { minLength: 6, maxLength: 6 }),
      weight: 8,
    },
    { arbitrary: fc.array(fc.oneof(fc.integer(), fc.double()), { maxLength: 8 }), weight: 1 },
  ),
});

property(
  "pci: capability walks, MSI, MSI-X and BARs stay in config space and throw only RangeError",
  WEIGHT.pci,
  pciCase,
  (c) => {
    const bytes = new Uint8Array(c.size);
    if (c.fill === "ones") bytes.fill(0xff);
    else if (c.fill === "noise") noise(bytes, c.seed);
    for (const [at, v] of c.pokes) if (at < c.size) bytes[at] = v;
    c.bars.forEach((b, i) => put(bytes, 0x10 + 4 * i, b, 4));
    const ats = c.caps.map((k) => k.dword * 4);
    c.caps.forEach((k, i) => {
      put(bytes, ats[i]!, k.id | ((ats[i + 1] ?? 0) << 8), 2);
      put(bytes, ats[i]! + 2, k.flags, 2),
        put(bytes, ats[i]! + 4, k.table, 4),
        put(bytes, ats[i]! + 8, k.pba, 4);
    });
    for (const m of c.capMutations) {
      if (ats.length) put(bytes, ats[m.entry % ats.length]! + 1, resolve(m.next, ats), 1);
    }
    put(bytes, 0x34, c.first === undefined ? ats[0] ?? 0 : resolve(c.first, ats), 1);
    const extAts = c.ext.map((e, i) => i === 0 ? 0x100 : e.dword * 4);
    c.ext.forEach((e, i) =>
      put(bytes, extAts[i]!, e.id + e.version * 0x10000 + (extAts[i + 1] ?? 0) * 0x100000, 4)
    );
    for (const m of c.extMutations) {
      if (!extAts.length) continue;
      const at = extAts[m.entry % extAts.length]!;
      put(bytes, at, (u32(bytes, at) & 0xfffff) + (resolve(m.next, extAts) & 0xfff) * 0x100000, 4);
    }
    if (c.extEnd !== "none") put(bytes, 0x100, c.extEnd === "ones" ? 0xffffffff : 0, 4);
    bytes[0x06] = (bytes[0x06]! & ~0x10) | (c.capList ? 0x10 : 0);
    bytes[0x0e] = c.headerType;

    const bad: string[] = [];
    const io: ConfigIo = {
      info: { size: c.size },
      read(offset, length) {
        if (
          !Number.isInteger(offset) || ![1, 2, 4].includes(length) || offset < 0 ||
          offset + length > c.size ||
          offset % length !== 0
        ) {
          bad.push(`read(${offset}, ${length})`);
          return new Uint8Array(length);
        }
        return bytes.slice(offset, offset + length);
      },
      write(offset, data) {
        bad.push(`write(${offset}, ${data.length})`);
      },
    };
    const config = new PciConfig(io);
    const caps = outcome(() => config.capabilities());
    const ext = outcome(() => config.extendedCapabilities());
    const msi = outcome(() => config.msi());
    const msix = outcome(() => config.msix());
    const bars = outcome(() => config.bars(c.sizes));
    assert.deepEqual(bad, [], "config space is only read, in bounds and naturally aligned");

    if ("ok" in caps) {
      if (!c.capList) assert.deepEqual(caps.ok, []);
      const offsets = caps.ok.map((k) => k.offset);
      assert.equal(new Set(offsets).size, offsets.length, "no capability twice");
      caps.ok.forEach((k, i) => {
        assert.ok(
          k.offset >= 0x40 && k.offset <= 0xfc && k.offset % 4 === 0,
          `standard capability at ${k.offset}`,
        );
        assert.equal(k.id, bytes[k.offset]);
        assert.notEqual(k.id, 0xff);
        const from = i === 0 ? bytes[0x34]! : bytes[caps.ok[i - 1]!.offset + 1]!;
        assert.equal(k.offset, from & ~3, "the list is followed");
      });
      const last = caps.ok.at(-1);
      if (last) assert.equal(bytes[last.offset + 1]! & ~3, 0, "the list ends at a 0 pointer");
    }
    if ("ok" in ext) {
      if (c.size === 256) assert.deepEqual(ext.ok, []);
      const offsets = ext.ok.map((k) => k.offset);
      assert.equal(new Set(offsets).size, offsets.length, "no extended capability twice");
      for (const k of ext.ok) {
        assert.ok(
          k.offset >= 0x100 && k.offset + 4 <= c.size && k.offset % 4 === 0,
          `extended cap at ${k.offset}`,
        );
        assert.ok(k.id !== 0 && k.id === u16(bytes, k.offset));
      }
    }
    if ("ok" in msi && msi.ok) {
      assert.ok("ok" in caps && caps.ok.find((k) => k.id === 0x05)?.offset === msi.ok.offset);
      assert.ok(msi.ok.offset + 4 <= 256);
      assert.ok(
        [1, 2, 4, 8, 16, 32].includes(msi.ok.vectors) && [1, 2, 4, 8, 16, 32].includes(msi.ok.enabledVectors),
      );
    }
    if ("ok" in msix && msix.ok) {
      assert.ok("ok" in caps && caps.ok.find((k) => k.id === 0x11)?.offset === msix.ok.offset);
      assert.ok(msix.ok.offset + 12 <= 256);
      assert.ok(msix.ok.tableBir < 6 && msix.ok.pbaBir < 6);
      assert.ok(msix.ok.tableSize >= 1 && msix.ok.tableSize <= 2048);
    }
    if ("ok" in bars) {
      let prev = -1;
      for (const b of bars.ok) {
        assert.ok(b.index > prev && b.index < 6, "BARs in order, each once");
        assert.ok(b.size > 0 && b.size === c.sizes[b.index]);
        assert.ok(b.address >= 0n && b.address < 1n << 64n);
        prev = b.is64 ? b.index + 1 : b.index;
      }
    }
  },
);

// --- 3. the IOVA allocator against a page bitmap ------------------------------------------------

const PAGES = 256; // the modelled address space, in pages; every range lies inside it

const slack = (pageSize: number) =>
  fc.oneof({ arbitrary: fc.constant(0), weight: 3 }, { arbitrary: fc.nat(pageSize - 1), weight: 1 });

const byteRange = (pageSize: number, maxPages = PAGES) =>
  fc.record({
    start: fc.nat(PAGES * pageSize - 1),
    pages: fc.integer({ min: 0, max: maxPages }),
    // Mostly page-aligned; sometimes a ragged start or end.
    startSlack: slack(pageSize),
    endSlack: slack(pageSize),
  }).map(({ start, pages, startSlack, endSlack }) => {
    const s = Math.floor(start / pageSize) * pageSize + startSlack;
    const last = Math.min(PAGES * pageSize - 1, s + pages * pageSize - 1 - endSlack);
    return { start: BigInt(s), last: BigInt(last) };
  });

const show = (ranges: readonly IovaRange[]) => ranges.map((r) => `${r.start}..${r.last}`).join(", ");

/** Ranges as a kernel reports them: disjoint and not touching (any order). */
function disjoint(raw: IovaRange[]): IovaRange[] {
  const kept: IovaRange[] = [];
  for (const r of [...raw].sort((a, b) => (a.start < b.start ? -1 : 1))) {
    const prev = kept.at(-1);
    if (r.start <= r.last && (!prev || r.start > prev.last + 1n)) kept.push(r);
  }
  return raw.filter((r) => kept.includes(r));
}

/** The whole modelled space, or up to four random ranges. */
const ranges = (pageSize: number) =>
  fc.oneof(
    { arbitrary: fc.constant<IovaRange[]>([{ start: 0n, last: BigInt(PAGES * pageSize - 1) }]), weight: 1 },
    { arbitrary: fc.array(byteRange(pageSize), { maxLength: 4 }).map(disjoint), weight: 3 },
  );

const iovaOp = (pageSize: number) =>
  fc.oneof(
    {
      weight: 8,
      arbitrary: fc.record({
        op: fc.constant("alloc" as const),
        size: fc.oneof(
          { arbitrary: fc.integer({ min: 1, max: 4 * pageSize }), weight: 8 },
          { arbitrary: fc.integer({ min: 1, max: 32 * pageSize }), weight: 2 },
          { arbitrary: fc.integer({ min: 1, max: 3 }).map((n) => n * pageSize), weight: 4 },
          { arbitrary: fc.constantFrom(0, -1, 1.5, NaN, 2 ** 53, 2 ** 40), weight: 1 },
        ),
        align: fc.oneof(
          { arbitrary: fc.constant(undefined), weight: 4 },
          { arbitrary: fc.nat(Math.log2(pageSize) + 6).map((k) => 2 ** k), weight: 4 },
          { arbitrary: fc.constantFrom(0, 3, 2 ** 60), weight: 1 },
        ),
        limit: fc.oneof(
          { arbitrary: fc.constant(undefined), weight: 6 },
          { arbitrary: fc.bigInt({ min: 0n, max: BigInt((PAGES + 1) * pageSize) }), weight: 2 },
          { arbitrary: fc.nat(PAGES + 1).map((p) => BigInt(p * pageSize) - 1n), weight: 2 },
        ),
      }),
    },
    { weight: 3, arbitrary: fc.record({ op: fc.constant("free" as const), pick: fc.nat() }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant("stale" as const), pick: fc.nat() }) },
    {
      weight: 2,
      arbitrary: fc.record({ op: fc.constant("foreign" as const), range: byteRange(pageSize, 8) }),
    },
    { weight: 1, arbitrary: fc.record({ op: fc.constant("unforeign" as const), pick: fc.nat() }) },
    {
      weight: 1,
      arbitrary: fc.record({
        op: fc.constant("setRanges" as const),
        ranges: ranges(pageSize),
      }),
    },
  );

const iovaCase = fc.constantFrom(512, 4096, 65536).chain((pageSize) =>
  fc.record({
    pageSize: fc.constant(pageSize),
    ranges: ranges(pageSize),
    ops: fc.array(iovaOp(pageSize), { minLength: 1, maxLength: 40, size: "max" }),
  })
);

property(
  "iova: allocations are disjoint, in range, aligned, under the limit, first fit, and fail only when full",
  WEIGHT.iova,
  iovaCase,
  (c) => {
    const P = c.pageSize, Pn = BigInt(P);
    const a = new IovaAllocator(c.ranges, P);
    // The model, one byte per page: what the current ranges allow, and what live allocations hold.
    const usable = new Uint8Array(PAGES), held = new Uint8Array(PAGES);
    const setUsable = (ranges: IovaRange[]) => {
      usable.fill(0);
      for (const r of ranges) {
        const first = Number((r.start + Pn - 1n) / Pn), end = Number((r.last + 1n) / Pn); // whole pages only
        for (let p = Math.max(first, 1); p < Math.min(end, PAGES); p++) usable[p] = 1;
      }
    };
    setUsable(c.ranges);
    const live = new Map<bigint, { size: number; pages: number }>();
    const history: { iova: bigint; size: number }[] = [];
    const foreign: IovaRange[] = [];
    const unheld = () => {
      const out = new Uint8Array(PAGES);
      for (let p = 0; p < PAGES; p++) out[p] = usable[p]! & (held[p]! ^ 1);
      return out;
    };
    const hold = (iova: bigint, pages: number, v: number) =>
      held.fill(v, Number(iova / Pn), Number(iova / Pn) + pages);

    for (const op of c.ops) {
      if (op.op === "alloc") {
        const options: IovaAllocOptions = {
          avoid: (start, last) => foreign.find((f) => f.start <= last && start <= f.last)?.last,
        };
        if (op.align !== undefined) options.align = op.align;
        if (op.limit !== undefined) options.limit = op.limit;
        const before = show(a.freeRanges);
        const r = outcome(() => a.alloc(op.size, options));
        const validArgs = Number.isSafeInteger(op.size) && op.size > 0 &&
          (op.align === undefined ||
            (Number.isSafeInteger(op.align) && op.align > 0 && Number.isInteger(Math.log2(op.align))));
        // Brute force: the lowest aligned run of free pages, clear of foreign mappings, under the limit.
        const avail = unheld();
        for (const f of foreign) {
          avail.fill(0, Number(f.start / Pn), Math.min(PAGES, Number(f.last / Pn) + 1));
        }
        let expected: bigint | undefined;
        const pages = validArgs ? Math.ceil(op.size / P) : 0;
        if (validArgs) {
          const alignPages = Math.max(op.align ?? P, P) / P;
          for (let s = alignPages; expected === undefined && s + pages <= PAGES; s += alignPages) {
            if (op.limit !== undefined && BigInt(s + pages) * Pn - 1n > op.limit) break;
            let p = s;
            while (p < s + pages && avail[p]) p++;
            if (p === s + pages) expected = BigInt(s) * Pn;
          }
        }
        if ("error" in r) {
          assert.equal(
            expected,
            undefined,
            `alloc(${op.size}) failed but 0x${expected?.toString(16)} is free`,
          );
          assert.equal(show(a.freeRanges), before, "a failed alloc changes nothing");
          continue;
        }
        assert.ok(validArgs, `alloc(${op.size}, align ${op.align}) accepted invalid arguments`);
        const iova = r.ok;
        assert.equal(iova % BigInt(Math.max(op.align ?? P, P)), 0n, "aligned");
        assert.ok(iova >= Pn, "never page 0");
        if (op.limit !== undefined) assert.ok(iova + BigInt(pages) * Pn - 1n <= op.limit, "under the limit");
        for (let p = Number(iova / Pn); p < Number(iova / Pn) + pages; p++) {
          assert.ok(usable[p], `page ${p} is inside the ranges`);
          assert.ok(!held[p], `page ${p} is not allocated twice`);
          assert.ok(avail[p], `page ${p} is not mapped by someone else`);
        }
        assert.equal(iova, expected, "first fit: the lowest hole that fits");
        live.set(iova, { size: op.size, pages });
        hold(iova, pages, 1);
        history.push({ iova, size: op.size });
      } else if (op.op === "free") {
        if (live.size === 0) continue;
        const [iova, l] = [...live][op.pick % live.size]!;
        a.free(iova, l.size);
        live.delete(iova);
        hold(iova, l.pages, 0);
      } else if (op.op === "stale") {
        if (history.length === 0) continue;
        const h = history[op.pick % history.length]!;
        const l = live.get(h.iova);
        const r = outcome(() => a.free(h.iova, h.size));
        assert.equal(
          "ok" in r,
          l !== undefined && l.pages === Math.ceil(h.size / P),
          "a double free is refused",
        );
        if ("ok" in r) live.delete(h.iova), hold(h.iova, l!.pages, 0);
      } else if (op.op === "foreign") {
        if (op.range.start <= op.range.last) foreign.push(op.range);
      } else if (op.op === "unforeign") {
        if (foreign.length) foreign.splice(op.pick % foreign.length, 1);
      } else {
        a.setRanges(op.ranges);
        setUsable(op.ranges);
      }
      // The free list is exactly the usable pages less the live ones: sorted, disjoint, merged.
      const free = a.freeRanges;
      const inFree = new Uint8Array(PAGES);
      free.forEach((f, i) => {
        assert.ok(f.start <= f.last && f.start % Pn === 0n, "free blocks start on a page");
        if (i > 0) assert.ok(free[i - 1]!.last + 1n < f.start, "free blocks are sorted, disjoint and merged");
        inFree.fill(1, Number(f.start / Pn), Number((f.last + 1n) / Pn));
      });
      const model = unheld();
      for (let p = 0; p < PAGES; p++) {
        if (inFree[p] !== model[p]) {
          assert.fail(
            `page ${p} is ${inFree[p] ? "" : "not "}free: ${show(free)}, ${[...live.keys()]} allocated`,
          );
        }
      }
    }
  },
);

// --- 4. lifecycles with injected failures -------------------------------------------------------

/** FakeSys that remembers mappings whose munmap an injection refused: those are not the library's leak. */
class Fake extends FakeSys {
  readonly refused = new Set<bigint>();
  override munmap(address: bigint, length: number): number {
    const r = super.munmap(address, length);
    if (r < 0 && this.mappings().some((m) => m.address === address)) this.refused.add(address);
    return r;
  }
}

// Two devices sharing group 4, one alone in group 5, and one in group 6 that another driver spoils.
const BDFS = ["0000:00:04.0", "0000:00:04.1", "0000:00:05.0", "0000:00:06.0"];
const GROUPS = [4, 5, 6];
const SIZES = [1, 4096, 8192, 12288, 65536, 1 << 20, 3 << 20];

// What each call may fail on (undefined: every call of the kind), and with which errnos.
const FAILURES: Partial<Record<FailOp, { targets: string[]; errnos: string[] }>> = {
  open: {
    targets: ["/dev/vfio/vfio", "/dev/vfio/4", "/dev/vfio/5"],
    errnos: ["EBUSY", "EACCES", "ENOENT", "ENODEV", "EMFILE"],
  },
  ioctl: {
    targets: [
      "VFIO_GET_API_VERSION",
      "VFIO_CHECK_EXTENSION",
      "VFIO_SET_IOMMU",
      "VFIO_IOMMU_GET_INFO",
      "VFIO_IOMMU_MAP_DMA",
      "VFIO_IOMMU_UNMAP_DMA",
      "VFIO_GROUP_GET_STATUS",
      "VFIO_GROUP_SET_CONTAINER",
      "VFIO_GROUP_UNSET_CONTAINER",
      "VFIO_GROUP_GET_DEVICE_FD",
      "VFIO_DEVICE_GET_INFO",
      "VFIO_DEVICE_GET_REGION_INFO",
      "VFIO_DEVICE_GET_IRQ_INFO",
      "VFIO_DEVICE_SET_IRQS",
    ],
    errnos: ["EINVAL", "EBUSY", "ENOMEM", "EPERM", "ENODEV", "EFAULT", "EIO", "ENOSPC", "EEXIST", "ENOTTY"],
  },
  mmap: { targets: ["anonymous"], errnos: ["ENOMEM", "EINVAL", "EAGAIN"] },
  eventfd: { targets: ["eventfd"], errnos: ["EMFILE", "ENFILE", "ENOMEM"] },
  munmap: { targets: ["anonymous memory"], errnos: ["EINVAL", "ENOMEM"] },
  close: { targets: ["eventfd", "/dev/vfio/vfio", "/dev/vfio/4"], errnos: ["EIO", "EINTR"] },
};

const OPS = [
  "openPci",
  "openPci",
  "openIommu",
  "openDevice",
  "openDevice",
  "openGroup",
  "setContainer",
  "setIommu",
  "getDevice",
  "unsetContainer",
  "registers",
  "registers",
  "closeRegs",
  "enableIrq",
  "enableIrq",
  "closeIrq",
  "pool",
  "alloc",
  "alloc",
  "alloc",
  "free",
  "closePool",
  "unmapAll",
  "closeDevice",
  "closeGroup",
  "closeBackend",
] as const;
const KINDS = ["bufs", "irqs", "regs", "pools", "devices", "groups", "backends"] as const;

const lifecycleCase = fc.record({
  failures: fc.array(
    fc.constantFrom(...(Object.keys(FAILURES) as FailOp[])).chain((op) =>
      fc.record({
        op: fc.constant(op),
        // Half the time any call of the kind, else one target.
        target: fc.oneof(fc.constant(undefined), fc.constantFrom(...FAILURES[op]!.targets)),
        errno: fc.constantFrom(...FAILURES[op]!.errnos),
        after: fc.nat(8),
        times: fc.integer({ min: 1, max: 3 }),
      })
    ),
    { maxLength: 4, size: "max" },
  ),
  ops: fc.array(fc.record({ op: fc.constantFrom(...OPS), a: fc.nat(15), b: fc.nat(15) }), {
    minLength: 1,
    maxLength: 40,
    size: "max",
  }),
  closeOrder: fc.shuffledSubarray([...KINDS], { minLength: KINDS.length }),
});

/** Whether an exception is one the library documents: its own, or a RangeError / TypeError. */
function expected(e: unknown): boolean {
  if (e instanceof AggregateError) return e.errors.every(expected);
  return e instanceof VfioError || e instanceof RangeError || e instanceof TypeError;
}

property(
  "lifecycle: random interleavings with injected failures leak no fd and no mapping",
  WEIGHT.lifecycle,
  lifecycleCase,
  (c) => {
    const fake = new Fake();
    fake.addDevice({ bdf: BDFS[0]!, group: 4 });
    fake.addDevice({ bdf: BDFS[1]!, group: 4 });
    fake.addDevice({ bdf: BDFS[2]!, group: 5 });
    fake.addDevice({ bdf: BDFS[3]!, group: 6 });
    fake.addDevice({ bdf: "0000:00:06.1", group: 6, driver: "snd_hda_intel" });
    const injections = c.failures.map((f) =>
      fake.fail(f.op, f.target, f.errno, { after: f.after, times: f.times })
    );
    const w = {
      backends: [] as IommuBackend[],
      groups: [] as VfioGroup[],
      devices: [] as VfioDevice[],
      regs: [] as Registers[],
      irqs: [] as VfioIrq[],
      pools: [] as DmaPool[],
      bufs: [] as DmaBuffer[],
    };
    const pick = <T>(list: T[], n: number): T | undefined => list.length ? list[n % list.length] : undefined;
    const container = (n: number) => pick(w.backends, n) as VfioContainer | undefined;
    // Groups the test opened, and those a container opened for itself: once seen, the test holds
    // them, as a caller that took one from `container.groups` would.
    const seen = new Set<VfioGroup>();
    const groups = () => {
      for (const g of [...w.groups, ...w.backends.flatMap((b) => [...(b as VfioContainer).groups])]) {
        seen.add(g);
      }
      return [...seen];
    };

    c.ops.forEach(({ op, a, b }, step) => {
      try {
        switch (op) {
          case "openPci": {
            const h = openPciDevice(fake, BDFS[a % BDFS.length]!, { backend: "legacy" });
            w.backends.push(h.backend), w.devices.push(h.device);
            if (b % 2) w.pools.push(h.dma);
            break;
          }
          case "openIommu":
            w.backends.push(openIommu(fake, { backend: "legacy" }));
            break;
          case "openDevice": {
            const d = pick(w.backends, a)?.openDevice(BDFS[b % BDFS.length]!);
            if (d) w.devices.push(d);
            break;
          }
          case "openGroup":
            w.groups.push(VfioGroup.open(fake, GROUPS[a % GROUPS.length]!));
            break;
          case "setContainer": {
            const cont = container(b);
            if (cont) pick(groups(), a)?.setContainer(cont);
            break;
          }
          case "setIommu":
            container(a)?.setIommu();
            break;
          case "getDevice": {
            const d = pick(groups(), a)?.getDevice(BDFS[b % BDFS.length]!);
            if (d) w.devices.push(d);
            break;
          }
          case "unsetContainer":
            pick(groups(), a)?.unsetContainer();
            break;
          case "registers": {
            const r = pick(w.devices, a)?.registers(b % 3 === 2 ? V.VFIO_PCI_CONFIG_REGION_INDEX : 0, {
              path: b % 3 === 1 ? "pread" : "auto",
            });
            if (r) w.regs.push(r);
            break;
          }
          case "closeRegs":
            pick(w.regs, a)?.close();
            break;
          case "enableIrq": {
            const irq = pick(w.devices, a)?.enableIrq(b % 5, { count: 1 + (b >> 2) % 4 });
            if (irq) w.irqs.push(irq);
            break;
          }
          case "closeIrq":
            pick(w.irqs, a)?.close();
            break;
          case "pool": {
            const backend = pick(w.backends, a);
            if (backend) w.pools.push(new DmaPool(fake, backend));
            break;
          }
          case "alloc": {
            const buf = pick(w.pools, a)?.alloc(SIZES[b % SIZES.length]!);
            if (buf) w.bufs.push(buf);
            break;
          }
          case "free":
            pick(w.bufs, a)?.free();
            break;
          case "closePool":
            pick(w.pools, a)?.close();
            break;
          case "unmapAll":
            pick(w.backends, a)?.unmapAll();
            break;
          case "closeDevice":
            pick(w.devices, a)?.close();
            break;
          case "closeGroup":
            pick(groups(), a)?.close();
            break;
          case "closeBackend":
            pick(w.backends, a)?.close();
            break;
        }
      } catch (e) {
        if (!expected(e)) {
          throw new Error(`step ${step} (${op}) threw an undocumented ${(e as Error)?.name}`, { cause: e });
        }
      }
      assert.deepEqual(fake.violations, [], `no violation after step ${step} (${op})`);
    });

    // The failures were transient; now close everything, ignoring errors, in the generated order.
    for (const i of injections) i[Symbol.dispose]();
    const closers: Record<(typeof KINDS)[number], () => { close(): void }[]> = {
      bufs: () => w.bufs.map((x) => ({ close: () => x.free() })),
      irqs: () => w.irqs,
      regs: () => w.regs,
      pools: () => w.pools,
      devices: () => w.devices,
      groups,
      backends: () => w.backends,
    };
    for (const kind of c.closeOrder) {
      for (const x of [...closers[kind]()].reverse()) {
        try {
          x.close();
        } catch (e) {
          if (!expected(e)) {
            throw new Error(`closing ${kind} threw an undocumented ${(e as Error)?.name}`, {
              cause: e,
            });
          }
        }
      }
    }
    const leaks = [
      ...fake.openFds().map((f) => `fd ${f.fd} (${f.path}) is open`),
      ...fake.mappings().filter((m) => !fake.refused.has(m.address)).map((m) =>
        `${m.what} (${m.length} bytes) is mapped`
      ),
      ...fake.violations,
    ];
    assert.deepEqual(leaks, []);
  },
);
