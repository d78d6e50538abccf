/**
 * An IOVA allocator that hands out only addresses inside the IOMMU's reported ranges, and merges
 * neighbouring free blocks when they are returned.
 *
 * @module
 */
import type { IovaRange } from "./iommu.ts";

/** Constraints on one allocation. */
export interface IovaAllocOptions {
  /** Alignment of the IOVA in bytes, a power of two (default: the allocator's page size). */
  align?: number;
  /** The highest IOVA the device can reach, e.g. `(1n << 28n) - 1n` for a 28-bit DMA mask. */
  limit?: bigint;
  /**
   * IOVAs someone else holds: given a candidate `[start, last]`, returns the last IOVA of a range
   * that overlaps it (the search resumes after it), or undefined when the candidate is clear.
   * {@link DmaPool} passes the backend's live mappings, so that a mapping made directly with
   * `mapDma` is stepped over instead of failing every later allocation.
   */
  avoid?: (start: bigint, last: bigint) => bigint | undefined;
}

/**
 * First-fit allocation over a sorted list of free inclusive ranges.
 *
 * @example
 * ```ts
 * import { IovaAllocator } from "vfio-ts";
 *
 * const a = new IovaAllocator([{ start: 0n, last: 0xffffffffn }], 4096);
 * const iova = a.alloc(8192); // 0x1000n: IOVA 0 is held back, as a null DMA address
 * a.free(iova, 8192);
 * ```
 */
export class IovaAllocator {
  #free: IovaRange[];
  #ranges: IovaRange[];
  readonly #page: bigint;
  /** Live allocations: IOVA → length in bytes (page-rounded). */
  readonly #used = new Map<bigint, bigint>();

  /**
   * Starts with every page of `ranges` free, except page 0.
   *
   * @param ranges The usable IOVA ranges (from the IOMMU backend).
   * @param pageSize The IOMMU page size in bytes; every allocation is a multiple of it.
   * @throws {RangeError} If the page size is not a power of two.
   */
  constructor(ranges: readonly IovaRange[], readonly pageSize: number) {
    if (!isPowerOfTwo(pageSize)) {
      throw new RangeError(`Cannot use IOVA page size ${pageSize}: it must be a power of two`);
    }
    this.#page = BigInt(pageSize);
    this.#ranges = this.#usable(ranges);
    this.#free = this.#ranges.map((r) => ({ ...r }));
  }

  // Page-aligned, sorted, without page 0: many devices treat DMA address 0 as "none".
  #usable(ranges: readonly IovaRange[]): IovaRange[] {
    const page = this.#page;
    return ranges
      .map((r) => ({ start: r.start < page ? page : alignUp(r.start, page), last: r.last }))
      .filter((r) => r.start <= r.last)
      .sort((a, b) => (a.start < b.start ? -1 : 1));
  }

  /** The free ranges, for inspection. */
  get freeRanges(): readonly IovaRange[] {
    return this.#free.map((r) => ({ ...r }));
  }

  /**
   * Replaces the usable ranges (the kernel's changed: a device attached to an iommufd IOAS, or the
   * container's IOMMU was set again). Live allocations stay allocated; the free list becomes the new
   * ranges less them.
   *
   * @param ranges The new usable IOVA ranges.
   */
  setRanges(ranges: readonly IovaRange[]): void {
    this.#ranges = this.#usable(ranges);
    let free = this.#ranges.map((r) => ({ ...r }));
    for (const [iova, len] of this.#used) free = subtract(free, iova, iova + len - 1n);
    this.#free = free;
  }

  /**
   * Allocates `size` bytes of IOVA space.
   *
   * @param size Bytes, rounded up to the page size.
   * @param options Alignment, address limit, and IOVAs to step over.
   * @returns The IOVA.
   * @throws {RangeError} If size or alignment is invalid, or no free range fits.
   */
  alloc(size: number, options: IovaAllocOptions = {}): bigint {
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new RangeError(`Cannot allocate ${size} bytes of IOVA space: size must be a positive integer`);
    }
    const alignment = options.align ?? this.pageSize;
    if (!isPowerOfTwo(alignment)) {
      throw new RangeError(`Cannot align IOVA to ${alignment}: alignment must be a power of two`);
    }
    const align = BigInt(alignment) > this.#page ? BigInt(alignment) : this.#page;
    const len = alignUp(BigInt(size), this.#page);
    const limit = options.limit ?? 0xffffffffffffffffn;
    for (let i = 0; i < this.#free.length; i++) {
      const r = this.#free[i]!;
      let start = alignUp(r.start, align);
      for (;;) {
        const last = start + len - 1n;
        if (last > r.last || last > limit) break;
        const taken = options.avoid?.(start, last);
        if (taken !== undefined) {
          start = alignUp(taken + 1n, align);
          continue;
        }
        const parts: IovaRange[] = [];
        if (start > r.start) parts.push({ start: r.start, last: start - 1n });
        if (last < r.last) parts.push({ start: last + 1n, last: r.last });
        this.#free.splice(i, 1, ...parts);
        this.#used.set(start, len);
        return start;
      }
    }
    throw new RangeError(
      `Cannot allocate ${len} bytes of IOVA space${
        options.limit !== undefined ? ` below 0x${limit.toString(16)}` : ""
      }: no free IOVA range is large enough`,
    );
  }

  /**
   * Returns an allocation; it is merged with free neighbours.
   *
   * @param iova The address {@link alloc} returned.
   * @param size The size passed to {@link alloc}.
   * @throws {RangeError} If no allocation of that size starts at `iova` (a double free).
   */
  free(iova: bigint, size: number): void {
    const len = alignUp(BigInt(size), this.#page);
    if (this.#used.get(iova) !== len) {
      throw new RangeError(
        `Cannot free IOVA 0x${iova.toString(16)}: no allocation of ${size} bytes starts there`,
      );
    }
    this.#used.delete(iova);
    // Only what the current ranges still allow goes back (they may have shrunk since the alloc).
    for (const u of this.#ranges) {
      const start = u.start > iova ? u.start : iova,
        last = u.last < iova + len - 1n ? u.last : iova + len - 1n;
      if (start <= last) this.#insert(start, last);
    }
  }

  #insert(start: bigint, last: bigint): void {
    let i = 0;
    while (i < this.#free.length && this.#free[i]!.last < start) i++;
    const next = this.#free[i];
    const prev = this.#free[i - 1];
    const r = { start, last };
    if (prev && prev.last + 1n === start) {
      r.start = prev.start;
      this.#free.splice(--i, 1);
    }
    if (next && last + 1n === next.start) {
      r.last = next.last;
      this.#free.splice(i, 1);
    }
    this.#free.splice(i, 0, r);
  }
}

// The free list less [start, last].
function subtract(free: IovaRange[], start: bigint, last: bigint): IovaRange[] {
  return free.flatMap((r) => {
    if (r.last < start || r.start > last) return [r];
    const parts: IovaRange[] = [];
    if (r.start < start) parts.push({ start: r.start, last: start - 1n });
    if (r.last > last) parts.push({ start: last + 1n, last: r.last });
    return parts;
  });
}

/** Rounds `n` up to a multiple of `a` (a power of two). */
export function alignUp(n: bigint, a: bigint): bigint {
  return (n + a - 1n) & ~(a - 1n);
}

/** Whether `n` is a power of two that is a safe integer (no 32-bit `&` that would wrap at 2^32). */
export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}
