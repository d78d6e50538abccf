/**
 * What a benchmark loop allocates on the JavaScript heap, from the runtime's own heap statistics.
 * The loop runs in batches; each batch is counted between two readings, less an empty batch counted
 * the same way just before it (the reading itself allocates its result, and calling an async batch
 * its promise). A batch that a collection ran through is dropped (its count is not what the loop
 * made), and each repetition reports the median batch, per operation: a background compilation
 * that lands in one batch, or a heap that grows, does not move it.
 *
 * - Deno (V8): bytes used in the object spaces (`node:v8` `getHeapSpaceStatistics()`: new, old and
 *   the large-object spaces), which between two collections grow by exactly the bytes allocated.
 *   The code and trusted spaces are left out (the JIT installs code and its metadata there whenever a
 *   compilation finishes), and so is `total_allocated_bytes`, which counts a whole linear allocation
 *   buffer at a time (tens of KiB) and cannot show a few bytes. A batch is dropped when the count
 *   went down: a scavenge frees all young garbage, always more than one batch makes.
 * - Bun (JavaScriptCore): JSC exposes no allocated-bytes counter (`heapSize` counts only cells
 *   marked at the last collection, `heapCapacity` whole 16 KiB blocks, and free cells of swept
 *   blocks are refilled before it grows). What it counts exactly is cells: the `heapStats()`
 *   `objectTypeCounts` census lists every cell allocated since the last collection, by type. So
 *   Bun's figure is cells; a batch is dropped when `heapSize` less `extraMemorySize` changed (only
 *   a collection changes it).
 *
 * @module
 */

/** One runtime's allocation counter. */
export interface AllocCounter {
  /** The unit of one count: `B` (bytes, Deno) or `cells` (JSC cells, Bun). */
  readonly unit: "B" | "cells";
  /** Where the count comes from, for the row's note. */
  readonly source: string;
  /** Operations per batch at first (halved while batches keep meeting a collection). */
  readonly batch: number;
  /** Called before each batch: notes the state a collection would change. */
  settle(): void;
  /** The counter now. */
  read(): number;
  /** Whether a collection ran since `settle()`, judged from two readings of `read()`. */
  collected(before: number, after: number): boolean;
  /** A cheap reading that a collection changes, for spotting one around a timed loop. */
  probe(): number;
  /** Whether a collection ran between two probes. */
  probeCollected(before: number, after: number): boolean;
  /** Bun: the census behind the last `read()`, cells by type, for the note. */
  lastCensus?(): Record<string, number>;
}

/**
 * The counter of the runtime this runs on.
 *
 * @returns V8's byte count under Deno, JSC's cell census under Bun.
 */
export async function allocCounter(): Promise<AllocCounter> {
  if ((globalThis as { Bun?: unknown }).Bun !== undefined) {
    const jsc = await import("bun:jsc");
    // heapSize counts the cells marked by the last collection, plus extra (non-cell) memory such as
    // ArrayBuffer contents, which grows without a collection: without it, it changes only when one runs.
    const marked = (h: { heapSize: number; extraMemorySize: number }) => h.heapSize - h.extraMemorySize;
    let markedAtSettle = 0, markedNow = 0, last: Record<string, number> = {};
    return {
      unit: "cells",
      source: "bun:jsc heapStats().objectTypeCounts (cells, shapes left out; JSC counts no bytes)",
      batch: 500,
      settle: () => {
        markedAtSettle = marked(jsc.heapStats());
      },
      read: () => {
        const stats = jsc.heapStats();
        markedNow = marked(stats);
        last = stats.objectTypeCounts as Record<string, number>;
        let n = 0;
        for (const [type, count] of Object.entries(last)) if (!SHAPES.has(type)) n += count;
        return n;
      },
      collected: () => markedNow !== markedAtSettle,
      // The census is slow (it walks the heap): heapSize alone, which ArrayBuffer contents also move.
      probe: () => jsc.heapSize(),
      probeCollected: (before, after) => after !== before,
      lastCensus: () => last,
    };
  }
  const v8 = (await import("node:v8")).default;
  const objectBytes = () => {
    let n = 0;
    for (const s of v8.getHeapSpaceStatistics()) if (OBJECT_SPACES.has(s.space_name)) n += s.space_used_size;
    return n;
  };
  return {
    unit: "B",
    source: "node:v8 getHeapSpaceStatistics(), bytes used in the object spaces",
    batch: 100,
    settle: () => {},
    read: objectBytes,
    collected: (before, after) => after < before,
    probe: objectBytes,
    probeCollected: (before, after) => after < before,
  };
}

/** What {@link allocPerOp} measured. */
export interface AllocResult {
  /** One value per repetition: the counter's units per operation in the median batch kept. */
  perOp: number[];
  /** Operations counted (the batches kept), out of all run. */
  counted: number;
  /** Operations run in all. */
  ran: number;
  /** Bun: the cells per operation by type (median over the last repetition's batches). */
  census?: Record<string, number>;
}

/**
 * Measures what one operation allocates: `reps` repetitions of `opsPerRep` operations, in batches of
 * `counter.batch`, after a warm-up of `warmupOps`.
 *
 * @param counter The runtime's counter.
 * @param runBatch Runs the operation `n` times (a plain loop: its own allocation is counted too, so
 *   it must make none: no closures, no array growth, no awaiting of a non-promise).
 * @param o Repetitions, operations per repetition, warm-up operations.
 * @returns Units per operation, one value per repetition.
 */
export async function allocPerOp(
  counter: AllocCounter,
  runBatch: (n: number) => void | Promise<void>,
  o: { reps: number; opsPerRep: number; warmupOps: number },
): Promise<AllocResult> {
  await runBatch(o.warmupOps);
  const perOp: number[] = [];
  let counted = 0, ran = 0, batch = counter.batch;
  let censuses: Record<string, number>[] = [];
  for (let r = 0; r < o.reps; r++) {
    const perBatch: number[] = [];
    let ops = 0;
    censuses = [];
    for (let done = 0; done < o.opsPerRep;) {
      const n = Math.min(batch, o.opsPerRep - done);
      // An empty batch first: what the readings and the batch call make by themselves (the promise
      // of an async batch, and its await) is taken off.
      counter.settle();
      const r0 = counter.read(), c0 = counter.lastCensus?.();
      await runBatch(0);
      const r1 = counter.read(), c1 = counter.lastCensus?.();
      await runBatch(n);
      const r2 = counter.read(), c2 = counter.lastCensus?.();
      done += n;
      ran += n;
      if (counter.collected(r0, r2)) {
        // Too much garbage for one batch between collections: smaller batches from now on.
        batch = Math.max(10, batch >> 1);
        continue;
      }
      perBatch.push((r2 - r1 - (r1 - r0)) / n);
      ops += n;
      if (c0 && c1 && c2) {
        const empty = diff(c0, c1), census: Record<string, number> = {};
        for (const [type, d] of Object.entries(diff(c1, c2))) census[type] = (d - (empty[type] ?? 0)) / n;
        censuses.push(census);
      }
    }
    counted += ops;
    if (perBatch.length) perOp.push(median(perBatch));
  }
  // The median of each type over the last repetition's batches, as for the totals.
  let census: Record<string, number> | undefined;
  if (censuses.length) {
    census = {};
    for (const type of new Set(censuses.flatMap((c) => Object.keys(c)))) {
      const per = median(censuses.map((c) => c[type] ?? 0));
      if (Math.abs(per) >= 0.005) census[type] = Number(per.toFixed(2));
    }
  }
  return { perOp, counted, ran, ...(census ? { census } : {}) };
}

// V8's spaces of JavaScript objects. The code and trusted spaces are left out: compiled code, and the
// metadata the JIT installs with it, arrive there whenever a background compilation finishes.
const OBJECT_SPACES = new Set(["new_space", "old_space", "new_large_object_space", "large_object_space"]);

// JSC's object shapes, left out of the count: the census result (an object with a key per cell type)
// makes a varying number of them for several readings after each collection. A loop in a steady
// state makes none.
const SHAPES = new Set(["Structure", "StructureRareData", "PropertyTable"]);

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

// Cells by type made between two censuses, shapes left out.
function diff(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [type, count] of Object.entries(b)) if (!SHAPES.has(type)) out[type] = count - (a[type] ?? 0);
  return out;
}
