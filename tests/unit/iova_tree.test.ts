/**
 * lib/iova_tree.ts: the ordered set of live DMA mappings, checked against a plain array model under
 * random add/delete/query sequences (fast-check), and at the sizes the DMA path meets (60,000).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { IovaIntervals } from "../../lib/iova_tree.ts";

const PAGE = 4096;
type Op = { op: "add" | "delete" | "query"; page: number; pages: number };

// The model: a plain list of [first page, page count], scanned.
function modelOverlap(model: [number, number][], page: number, pages: number): [number, number] | undefined {
  return model.find(([p, n]) => p <= page + pages - 1 && page <= p + n - 1);
}

// Low IOVAs, and IOVAs that cross 2^53, where page numbers come from bigint shifts, not doubles.
for (const [where, base] of [["low IOVAs", 0], ["IOVAs across 2^53", 2 ** 41 - 1500]] as const) {
  test(`iova_tree: add, delete, get and overlapping agree with a scanned list under random sequences (${where})`, () => {
    const op = fc.record({
      op: fc.constantFrom<Op["op"]>("add", "add", "delete", "query"),
      page: fc.integer({ min: 1, max: 3000 }),
      pages: fc.integer({ min: 1, max: 16 }),
    });
    const iovaOf = (page: number) => BigInt(base + page) * BigInt(PAGE);
    fc.assert(
      fc.property(fc.array(op, { maxLength: 1200 }), (ops) => {
        const set = new IovaIntervals();
        let model: [number, number][] = [];
        for (const o of ops) {
          const iova = iovaOf(o.page), size = o.pages * PAGE;
          const expected = modelOverlap(model, o.page, o.pages);
          const got = set.overlapping(iova, size);
          assert.equal(got === undefined, expected === undefined);
          if (got && expected) {
            // The reported interval really overlaps, and is one the model holds.
            assert.ok(model.some(([p, n]) => iovaOf(p) === got.iova && n * PAGE === got.size));
            const [p, n] = [Number(got.iova / BigInt(PAGE)) - base, got.size / PAGE];
            assert.ok(p <= o.page + o.pages - 1 && o.page <= p + n - 1);
          }
          // A query that starts one byte into the page still finds the same interval.
          assert.equal(set.overlapping(iova + 1n, size - 1) === undefined, expected === undefined);
          if (o.op === "add" && !expected) {
            set.add(iova, size);
            model.push([o.page, o.pages]);
          } else if (o.op === "delete") {
            const had = model.some(([p]) => p === o.page);
            assert.equal(set.delete(iova), had);
            model = model.filter(([p]) => p !== o.page);
          }
          assert.equal(set.size, model.length);
          assert.equal(set.get(iova), model.find(([p]) => p === o.page)?.[1]! * PAGE || undefined);
        }
        const sorted = [...model].sort((a, b) => a[0] - b[0]).map(([p, n]) => [iovaOf(p), n * PAGE]);
        assert.deepEqual([...set.entries()], sorted);
      }),
      { numRuns: 300, seed: 0x5eed },
    );
  });
}

test("iova_tree: IOVAs above 2^53 stay exact (page numbers, not addresses, are kept as numbers)", () => {
  const set = new IovaIntervals();
  const high = (1n << 63n) + 0x1000n;
  set.add(high, PAGE);
  set.add(high + 0x2000n, PAGE);
  assert.equal(set.get(high), PAGE);
  assert.equal(set.get(high + 0x1000n), undefined);
  assert.deepEqual(set.overlapping(high + 0x1000n, PAGE), undefined);
  assert.deepEqual(set.overlapping(high + 0x1000n, 2 * PAGE), { iova: high + 0x2000n, size: PAGE });
  assert.deepEqual([...set.entries()].map(([i]) => i), [high, high + 0x2000n]);
});

test("iova_tree: 60,000 intervals added in random order, then deleted, keep the set consistent", () => {
  const set = new IovaIntervals();
  const n = 60_000;
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = (i * 7919) % (i + 1); // a fixed shuffle
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  for (const i of order) set.add(BigInt((2 * i + 1) * PAGE), PAGE);
  assert.equal(set.size, n);
  assert.equal(set.overlapping(BigInt(2 * PAGE), PAGE), undefined); // the gaps stay free
  assert.deepEqual(set.overlapping(BigInt(2 * PAGE), 2 * PAGE), { iova: BigInt(3 * PAGE), size: PAGE });
  let previous = 0n;
  for (const [iova] of set.entries()) {
    assert.ok(iova > previous);
    previous = iova;
  }
  for (const i of order) assert.equal(set.delete(BigInt((2 * i + 1) * PAGE)), true);
  assert.equal(set.size, 0);
  assert.deepEqual([...set.entries()], []);
});
