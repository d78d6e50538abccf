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
}

/**
 * First-fit allocation over a sorted list of free inclusive ranges.
 *
 * @example
 * ```ts
 * import { IovaAllocator } from "./iova_allocator.ts";
 * const a = new IovaAllocator([{ start: 0n, last: 0xffffffffn }], 4096);
 * const iova = a.alloc(8192); // 0x1000n: IOVA 0 is held back, as a null DMA address
 * a.free(iova, 8192);
 * ```
 */
export class IovaAllocator {
  #free: IovaRange[];
  readonly #page: bigint;

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
    const page = BigInt(pageSize);
    this.#page = page;
    // Page 0 is never handed out: many devices treat DMA address 0 as "none".
    this.#free = ranges
      .map((r) => ({ start: r.start < page ? page : alignUp(r.start, page), last: r.last }))
      .filter((r) => r.start <= r.last)
      .sort((a, b) => (a.start < b.start ? -1 : 1));
  }

  /** The free ranges, for inspection. */
  get freeRanges(): readonly IovaRange[] {
    return this.#free.map((r) => ({ ...r }));
  }

  /**
   * Allocates `size` bytes of IOVA space.
   *
   * @param size Bytes, rounded up to the page size.
   * @param options Alignment and address limit.
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
    const align = BigInt(alignment);
    const len = alignUp(BigInt(size), this.#page);
    const limit = options.limit ?? 0xffffffffffffffffn;
    for (let i = 0; i < this.#free.length; i++) {
      const r = this.#free[i]!;
      const start = alignUp(r.start, align > this.#page ? align : this.#page);
      const last = start + len - 1n;
      if (last > r.last || last > limit) continue;
      const parts: IovaRange[] = [];
      if (start > r.start) parts.push({ start: r.start, last: start - 1n });
      if (last < r.last) parts.push({ start: last + 1n, last: r.last });
      this.#free.splice(i, 1, ...parts);
      return start;
    }
    throw new RangeError(
      `Cannot allocate ${len} bytes of IOVA space${
        options.limit !== undefined ? ` below 0x${limit.toString(16)}` : ""
      }: ` +
        "no free IOVA range is large enough",
    );
  }

  /**
   * Returns an allocation; it is merged with free neighbours.
   *
   * @param iova The address {@link alloc} returned.
   * @param size The size passed to {@link alloc}.
   * @throws {RangeError} If the range overlaps free space (a double free).
   */
  free(iova: bigint, size: number): void {
    const start = iova;
    const last = iova + alignUp(BigInt(size), this.#page) - 1n;
    let i = 0;
    while (i < this.#free.length && this.#free[i]!.last < start) i++;
    const next = this.#free[i];
    if (next && next.start <= last) {
      throw new RangeError(`Cannot free IOVA 0x${iova.toString(16)}: it is already free`);
    }
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

/** Rounds `n` up to a multiple of `a` (a power of two). */
export function alignUp(n: bigint, a: bigint): bigint {
  return (n + a - 1n) & ~(a - 1n);
}

/** Whether `n` is a power of two that is a safe integer (no 32-bit `&` that would wrap at 2^32). */
export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}
