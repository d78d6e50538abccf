/**
 * The live DMA mappings of one address space as an ordered set of disjoint intervals, so that the
 * checks made on every map (does the new range overlap one?) cost O(log n) instead of a scan: the
 * DMA map path must stay flat with 60,000 live mappings (vfio_iommu_type1's default limit is 65,535).
 *
 * Keys are page numbers of 4 KiB pages, kept as numbers: every mapping is aligned to at least the
 * CPU page, and a 64-bit IOVA divided by 4096 fits a double exactly, so comparisons never touch
 * bigints. The set is a list of sorted chunks (at most 2 × CHUNK entries each): a lookup is two
 * binary searches, an insert or delete moves at most one chunk's entries.
 *
 * @module
 */

const PAGE_SHIFT = 12n;
const PAGE = 4096;
// Small: an insert or delete moves up to 2 * CHUNK entries of each array one by one, and that move,
// not the binary searches, is what grows with the set (measured: with 60,000 live mappings a 4 KiB
// map + unmap costs about 1.2 µs of JavaScript at 256, 0.3 µs at 16).
const CHUNK = 16;

/**
 * The page number of an IOVA: exact for every 64-bit IOVA. IOVAs a double holds are divided as
 * numbers, since a bigint shift allocates.
 */
function pageOf(iova: bigint): number {
  const n = Number(iova); // the nearest double: above 2^53 - 1, never a safe integer
  return n <= Number.MAX_SAFE_INTEGER ? Math.floor(n / PAGE) : Number(iova >> PAGE_SHIFT);
}

// Array.prototype.splice returns a new array of what it removed: these move entries in place.
function insertAt<T>(a: T[], at: number, value: T): void {
  a.push(value);
  for (let i = a.length - 1; i > at; i--) a[i] = a[i - 1]!;
  a[at] = value;
}

function removeAt<T>(a: T[], at: number): void {
  for (let i = at; i < a.length - 1; i++) a[i] = a[i + 1]!;
  a.pop();
}

interface Chunk {
  /** First page of each interval, ascending. */
  starts: number[];
  /** Last page of each interval (inclusive), parallel to `starts`. */
  lasts: number[];
  /** Each interval's IOVA and size, parallel to `starts`. */
  iovas: bigint[];
  sizes: number[];
}

/**
 * An ordered set of disjoint IOVA intervals, each with its size in bytes. It reads as a
 * `ReadonlyMap` of IOVA → size, in ascending IOVA order.
 */
export class IovaIntervals implements ReadonlyMap<bigint, number> {
  #chunks: Chunk[] = [];
  #size = 0;

  /** How many intervals the set holds. */
  get size(): number {
    return this.#size;
  }

  // The chunk whose range may hold `page`: the last chunk starting at or before it (or the first).
  #chunkFor(page: number): number {
    const c = this.#chunks;
    let lo = 0, hi = c.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (c[mid]!.starts[0]! <= page) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  // Index of the last interval in `chunk` starting at or before `page`, or -1.
  static #floor(chunk: Chunk, page: number): number {
    const s = chunk.starts;
    let lo = 0, hi = s.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (s[mid]! <= page) (found = mid, lo = mid + 1);
      else hi = mid - 1;
    }
    return found;
  }

  /**
   * An interval overlapping `[iova, iova + size)`, if any.
   *
   * @param iova The range's start.
   * @param size Its size in bytes, positive.
   * @returns The overlapping interval's IOVA and size, or undefined.
   */
  overlapping(iova: bigint, size: number): { iova: bigint; size: number } | undefined {
    if (this.#size === 0) return undefined;
    const first = pageOf(iova);
    const n = Number(iova);
    const aligned = n <= Number.MAX_SAFE_INTEGER ? n % PAGE === 0 : (iova & 0xfffn) === 0n;
    const last = size % PAGE === 0 && aligned ? first + size / PAGE - 1 : pageOf(iova + BigInt(size - 1));
    // The interval starting at or before `last` with the greatest start: if any interval overlaps,
    // this one does, since intervals are disjoint and sorted.
    let ci = this.#chunkFor(last);
    let chunk = this.#chunks[ci]!;
    let i = IovaIntervals.#floor(chunk, last);
    if (i < 0) {
      if (ci === 0) return undefined;
      chunk = this.#chunks[--ci]!;
      i = chunk.starts.length - 1;
    }
    return chunk.lasts[i]! >= first ? { iova: chunk.iovas[i]!, size: chunk.sizes[i]! } : undefined;
  }

  /**
   * The size of the interval that starts exactly at `iova`.
   *
   * @param iova The start.
   * @returns Its size, or undefined.
   */
  get(iova: bigint): number | undefined {
    if (this.#size === 0) return undefined;
    const page = pageOf(iova);
    const chunk = this.#chunks[this.#chunkFor(page)]!;
    const i = IovaIntervals.#floor(chunk, page);
    return i >= 0 && chunk.starts[i] === page ? chunk.sizes[i] : undefined;
  }

  /**
   * Adds an interval; the caller has checked it overlaps none ({@link overlapping}).
   *
   * @param iova The start, 4 KiB-aligned.
   * @param size The size in bytes, a positive multiple of 4 KiB.
   */
  add(iova: bigint, size: number): void {
    const first = pageOf(iova), last = first + size / PAGE - 1;
    if (this.#chunks.length === 0) {
      this.#chunks.push({ starts: [first], lasts: [last], iovas: [iova], sizes: [size] });
      this.#size = 1;
      return;
    }
    const ci = this.#chunkFor(first);
    const chunk = this.#chunks[ci]!;
    const at = IovaIntervals.#floor(chunk, first) + 1;
    insertAt(chunk.starts, at, first);
    insertAt(chunk.lasts, at, last);
    insertAt(chunk.iovas, at, iova);
    insertAt(chunk.sizes, at, size);
    this.#size++;
    if (chunk.starts.length > 2 * CHUNK) {
      // Split in halves so that inserts keep moving at most CHUNK entries.
      const half = chunk.starts.length >> 1;
      this.#chunks.splice(ci + 1, 0, {
        starts: chunk.starts.splice(half),
        lasts: chunk.lasts.splice(half),
        iovas: chunk.iovas.splice(half),
        sizes: chunk.sizes.splice(half),
      });
    }
  }

  /**
   * Removes the interval that starts exactly at `iova`.
   *
   * @param iova The start.
   * @returns Whether there was one.
   */
  delete(iova: bigint): boolean {
    if (this.#size === 0) return false;
    const page = pageOf(iova);
    const ci = this.#chunkFor(page);
    const chunk = this.#chunks[ci]!;
    const i = IovaIntervals.#floor(chunk, page);
    if (i < 0 || chunk.starts[i] !== page) return false;
    removeAt(chunk.starts, i);
    removeAt(chunk.lasts, i);
    removeAt(chunk.iovas, i);
    removeAt(chunk.sizes, i);
    this.#size--;
    if (chunk.starts.length === 0) this.#chunks.splice(ci, 1);
    return true;
  }

  /** Removes every interval. */
  clear(): void {
    this.#chunks = [];
    this.#size = 0;
  }

  /** The intervals in ascending order, as [IOVA, size] pairs. */
  *entries(): MapIterator<[bigint, number]> {
    for (const c of this.#chunks) {
      for (let i = 0; i < c.iovas.length; i++) yield [c.iovas[i]!, c.sizes[i]!];
    }
  }

  /** The IOVAs, ascending. */
  *keys(): MapIterator<bigint> {
    for (const [iova] of this.entries()) yield iova;
  }

  /** The sizes, in IOVA order. */
  *values(): MapIterator<number> {
    for (const [, size] of this.entries()) yield size;
  }

  /**
   * Whether an interval starts exactly at `iova`.
   *
   * @param iova The start.
   * @returns Whether there is one.
   */
  has(iova: bigint): boolean {
    return this.get(iova) !== undefined;
  }

  /**
   * Calls `fn` for each interval, in IOVA order.
   *
   * @param fn Receives the size, the IOVA and the set.
   */
  forEach(fn: (size: number, iova: bigint, map: ReadonlyMap<bigint, number>) => void): void {
    for (const [iova, size] of this.entries()) fn(size, iova, this);
  }

  /** The intervals in ascending order, as [IOVA, size] pairs. */
  [Symbol.iterator](): MapIterator<[bigint, number]> {
    return this.entries();
  }
}
