/**
 * Width-exact, bounds-checked register access over a device region.
 *
 * Registers are never read through typed arrays or DataView: the JIT may merge, hoist, tear or drop
 * those accesses (measured: V8's DataView reads bytewise on its slow path; JSC hoists typed-array
 * loads out of polling loops and drops stores), and Atomics compile to locked read-modify-writes.
 * Every access here is a real call that performs exactly one load or store of its width, through
 * one of two {@link RawMmio} implementations:
 * - the backend's fast path, a few-nanosecond call into native accessors over the mmap'd BAR;
 * - pread/pwrite on the region, where the kernel performs the access (always available).
 *
 * @module
 */
import type { RawMmio } from "./sys.ts";

/** How {@link Registers} reach the device: through the mapping, or through the kernel. */
export type MmioPath = "mmap" | "pread";

/** One piece of a region served by a particular accessor (sparse mmap areas give several). */
export interface MmioSegment {
  /** Byte offset of the segment in the region. */
  start: number;
  /** Its length in bytes. */
  length: number;
  /** The accessor, taking offsets relative to `start`. */
  io: RawMmio;
}

/**
 * The registers of one region (a BAR). Offsets are bytes from the region's start; an access must be
 * naturally aligned and inside the region, or it throws a RangeError before touching anything.
 *
 * @example
 * ```ts
 * import { open } from "vfio-ts";
 *
 * using edu = await open("0000:00:04.0");
 * const { device } = edu;
 * using bar0 = device.registers(0);
 * const ident = bar0.read32(0x00);
 * bar0.write32(0x04, 0x12345678);
 * ```
 */
export class Registers implements Disposable {
  readonly #segments: MmioSegment[];
  // The accessor when one fast segment covers the whole region (the usual BAR): read32/write32
  // then check bounds inline and skip the segment walk. Cleared on close.
  #whole: RawMmio | undefined;
  readonly #fallback: RawMmio;
  #closed = false;
  readonly #onClose: () => void;

  /**
   * Made by {@link VfioRegion.registers}; takes ownership of the mappings behind `segments`.
   *
   * @param name The region's name for messages, e.g. `0000:00:04.0 BAR0`.
   * @param size The region's size in bytes.
   * @param path Which path is in use (for inspection).
   * @param segments Parts served by the fast path; the rest goes to `fallback`.
   * @param fallback The pread/pwrite accessor over the whole region.
   * @param onClose Releases the mapping; runs once, on close.
   */
  constructor(
    readonly name: string,
    readonly size: number,
    readonly path: MmioPath,
    segments: MmioSegment[],
    fallback: RawMmio,
    onClose: () => void = () => {},
  ) {
    this.#segments = segments;
    const first = segments[0];
    this.#whole = segments.length === 1 && first!.start === 0 && first!.length === size
      ? first!.io
      : undefined;
    this.#fallback = fallback;
    this.#onClose = onClose;
  }

  // Picks the accessor for an access, after checking it, and rebases the offset.
  #at(offset: number, width: number): [RawMmio, number] {
    if (this.#closed) throw new TypeError(`Cannot access ${this.name}: its registers are closed`);
    if (typeof offset !== "number") {
      throw new TypeError(`Cannot access ${this.name} at offset ${String(offset)}: offsets are numbers`);
    }
    if (!Number.isInteger(offset) || offset < 0 || offset + width > this.size) {
      throw new RangeError(
        `Cannot access ${
          width * 8
        } bits at offset ${offset} of ${this.name}: the region is ${this.size} bytes`,
      );
    }
    if (offset % width !== 0) {
      throw new RangeError(
        `Cannot access ${width * 8} bits at offset ${offset} of ${this.name}: it is unaligned`,
      );
    }
    for (const s of this.#segments) {
      if (offset >= s.start && offset + width <= s.start + s.length) return [s.io, offset - s.start];
    }
    return [this.#fallback, offset];
  }

  /** Reads 8 bits. @throws {RangeError} If out of bounds. */
  read8(offset: number): number {
    const [io, o] = this.#at(offset, 1);
    return io.read8(o);
  }
  /** Reads 16 bits. @throws {RangeError} If out of bounds or unaligned. */
  read16(offset: number): number {
    const [io, o] = this.#at(offset, 2);
    return io.read16(o);
  }
  /** Reads 32 bits. @throws {RangeError} If out of bounds or unaligned. */
  read32(offset: number): number {
    const whole = this.#whole;
    if (
      whole !== undefined && typeof offset === "number" && offset >>> 0 === offset && (offset & 3) === 0 &&
      offset + 4 <= this.size
    ) {
      return whole.read32(offset);
    }
    const [io, o] = this.#at(offset, 4);
    return io.read32(o);
  }
  /** Reads 64 bits in one access. @throws {RangeError} If out of bounds or unaligned. */
  read64(offset: number): bigint {
    const [io, o] = this.#at(offset, 8);
    return io.read64(o);
  }
  /** Writes 8 bits. @throws {RangeError} If out of bounds, or the value does not fit. */
  write8(offset: number, value: number): void {
    const [io, o] = this.#at(offset, 1);
    io.write8(o, checkValue(value, 0xff));
  }
  /** Writes 16 bits. @throws {RangeError} If out of bounds, unaligned, or the value does not fit. */
  write16(offset: number, value: number): void {
    const [io, o] = this.#at(offset, 2);
    io.write16(o, checkValue(value, 0xffff));
  }
  /** Writes 32 bits. @throws {RangeError} If out of bounds, unaligned, or the value does not fit. */
  write32(offset: number, value: number): void {
    const whole = this.#whole;
    if (
      whole !== undefined && typeof offset === "number" && offset >>> 0 === offset && (offset & 3) === 0 &&
      offset + 4 <= this.size && typeof value === "number" && (value >>> 0 === value || (value | 0) === value)
    ) {
      return whole.write32(offset, value >>> 0);
    }
    const [io, o] = this.#at(offset, 4);
    io.write32(o, checkValue(value, 0xffffffff));
  }
  /** Writes 64 bits in one access. @throws {RangeError} If out of bounds, unaligned, or too wide. */
  write64(offset: number, value: bigint): void {
    const [io, o] = this.#at(offset, 8);
    if (typeof value !== "bigint" || value < 0n || value > 0xffffffffffffffffn) {
      throw new RangeError(`Cannot write ${value} as 64 bits: expected a bigint in 0..2^64-1`);
    }
    io.write64(o, value);
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Stops access and releases the mapping. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#whole = undefined;
    this.#onClose();
  }

  /** Closes the registers, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

function checkValue(value: number, max: number): number {
  if (typeof value !== "number") throw new TypeError(`Cannot write ${String(value)}: expected a number`);
  if (!Number.isInteger(value)) throw new RangeError(`Cannot write ${value}: expected an integer`);
  // Accept the signed spelling of the same bit pattern (e.g. ~x in JavaScript is negative).
  const v = value < 0 && value >= -(max + 1) / 2 ? value + max + 1 : value;
  if (v < 0 || v > max) {
    throw new RangeError(`Cannot write ${value}: it does not fit in ${Math.log2(max + 1)} bits`);
  }
  return v;
}
