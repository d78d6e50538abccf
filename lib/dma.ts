/**
 * DMA memory: page-aligned buffers from anonymous mmap (or hugepages), given IOVAs inside the
 * IOMMU's ranges and mapped for the device.
 *
 * @module
 */
import { check, runAll } from "./errors.ts";
import { type DmaAccess, type IommuBackend, type IovaRange, onBackendClose } from "./iommu.ts";
import { alignUp, IovaAllocator, isPowerOfTwo } from "./iova_allocator.ts";
import {
  MAP_ANONYMOUS,
  MAP_HUGE_SHIFT,
  MAP_HUGETLB,
  MAP_POPULATE,
  MAP_PRIVATE,
  PROT_READ,
  PROT_WRITE,
} from "./uapi/libc.ts";
import { Registers } from "./mmio.ts";
import type { RawMmio, Sys } from "./sys.ts";

/** Options for {@link DmaPool.alloc}. */
export interface DmaAllocOptions extends DmaAccess {
  /** Back the buffer with hugepages of this size (e.g. 2 MiB); needs hugepages reserved. */
  hugepageSize?: number;
}

/** Options for {@link DmaPool}. */
export interface DmaPoolOptions {
  /** The highest IOVA the device can address, e.g. `(1n << 28n) - 1n` for a 28-bit DMA mask. */
  limit?: bigint;
}

/** Options for {@link DmaBuffer.view}. */
export interface DmaViewOptions {
  /** Where the view starts, in bytes (default 0). */
  byteOffset?: number;
  /** Elements (default: to the end of the buffer). */
  length?: number;
}

/**
 * A DMA buffer: process memory mapped at an IOVA. Its views ({@link bytes}, {@link view}) detach
 * when the buffer is freed, so a stale view reads as empty instead of touching unmapped memory.
 * Made by {@link DmaPool.alloc}.
 */
export class DmaBuffer implements Disposable {
  #buffer: ArrayBuffer;
  #free: (() => void) | undefined;

  /**
   * Wraps memory the pool mapped.
   *
   * @param iova The device-visible address.
   * @param vaddr The process address.
   * @param size The size in bytes.
   * @param buffer The memory.
   * @param free Unmaps and frees it.
   * @param volatile Single-access loads and stores into it.
   */
  constructor(
    /**
     * The address the device must use: the IOVA the IOMMU maps, or in iommufd no-IOMMU mode (kind
     * `"iommufd-noiommu"`) the buffer's physical address (IOMMU_IOAS_NOIOMMU_GET_PA), for which the
     * pool allocates at most one page, or one hugepage, per buffer.
     */
    readonly iova: bigint,
    /** The process address. */
    readonly vaddr: bigint,
    /** The size in bytes (a multiple of the page size). */
    readonly size: number,
    buffer: ArrayBuffer,
    free: () => void,
    /**
     * Single-access loads and stores into the buffer, for fields the device writes while the
     * program polls them (completion entries, status words). Typed-array reads in a polling loop
     * may be hoisted by the JIT, and JSC compiles Atomics.load to a locked read-modify-write that
     * can write back over what the device just wrote. Closed when the buffer is freed.
     */
    readonly volatile: Registers,
  ) {
    this.#buffer = buffer;
    this.#free = free;
  }

  #live(): ArrayBuffer {
    if (!this.#free) {
      throw new TypeError(`Cannot use the DMA buffer at iova 0x${this.iova.toString(16)}: it was freed`);
    }
    return this.#buffer;
  }

  /** The memory as bytes. */
  get bytes(): Uint8Array {
    return new Uint8Array(this.#live());
  }

  /**
   * A typed view of the memory.
   *
   * @param type A typed-array constructor, e.g. Uint32Array.
   * @param options Where the view starts and how many elements it has.
   * @returns The view; it detaches when the buffer is freed.
   * @throws {RangeError} If the view would extend past the buffer or is misaligned.
   */
  view<T>(
    type: { new (b: ArrayBuffer, o: number, l: number): T; BYTES_PER_ELEMENT: number },
    options: DmaViewOptions = {},
  ): T {
    const b = this.#live();
    const byteOffset = options.byteOffset ?? 0;
    const n = options.length ?? Math.floor((b.byteLength - byteOffset) / type.BYTES_PER_ELEMENT);
    if (
      !Number.isSafeInteger(byteOffset) || !Number.isSafeInteger(n) || byteOffset < 0 || n < 0 ||
      byteOffset % type.BYTES_PER_ELEMENT !== 0 || byteOffset + n * type.BYTES_PER_ELEMENT > b.byteLength
    ) {
      throw new RangeError(`Cannot view ${n} elements at ${byteOffset} of a ${b.byteLength}-byte DMA buffer`);
    }
    return new type(b, byteOffset, n);
  }

  /**
   * The IOVA of a byte offset, checked to be inside the buffer.
   *
   * @param offset Byte offset.
   * @returns `iova + offset`.
   * @throws {RangeError} If the offset is outside the buffer.
   */
  iovaAt(offset: number): bigint {
    this.#live();
    if (!Number.isInteger(offset) || offset < 0 || offset >= this.size) {
      throw new RangeError(`Cannot take offset ${offset} of a ${this.size}-byte DMA buffer`);
    }
    return this.iova + BigInt(offset);
  }

  /** Whether the buffer was freed. */
  get freed(): boolean {
    return this.#free === undefined;
  }

  /** Unmaps the IOVA, detaches the views and frees the memory. Idempotent. */
  free(): void {
    const f = this.#free;
    if (!f) return;
    this.#free = undefined;
    // Detaching makes every typed array over the memory zero-length before the memory goes.
    this.#buffer = this.#buffer.transfer(0);
    this.volatile.close();
    f();
  }

  /** Frees the buffer, as {@link free}. */
  [Symbol.dispose](): void {
    this.free();
  }
}

// How many times no-IOMMU allocation takes new memory when the kernel's pages lie above the device's
// limit (edu's 28-bit mask in a 2 GiB guest: roughly one page in eight is low enough).
const UNREACHABLE_TRIES = 64;

// The largest single buffer: 64 GiB, far above any device's need, and below what the bookkeeping
// in numbers (the library's rule for sizes) can carry.
const MAX_DMA_ALLOC = 2 ** 36;

/**
 * Allocates DMA buffers in one IOMMU address space. The pool frees its buffers when it, or the
 * backend, closes.
 *
 * @example
 * ```ts
 * import { DmaPool, loadSys, openIommu } from "vfio-ts";
 *
 * const sys = await loadSys();
 * using backend = openIommu(sys);
 * const device = backend.openDevice("0000:00:04.0");
 * using pool = new DmaPool(sys, backend, { limit: (1n << 28n) - 1n });
 * using buf = pool.alloc(4096);
 * buf.bytes.fill(0xab);
 * device.registers(0).write64(0x80, buf.iova); // hand the IOVA to the device
 * ```
 */
export class DmaPool implements Disposable {
  readonly #allocator: IovaAllocator;
  readonly #buffers = new Set<DmaBuffer>();
  #closed = false;

  readonly #forget: () => void;

  /**
   * Creates a pool over a backend's IOVA ranges; it closes with the backend.
   *
   * @param sys The syscall backend.
   * @param backend The IOMMU address space to map into.
   * @param options Device addressing limits.
   */
  constructor(readonly sys: Sys, readonly backend: IommuBackend, readonly options: DmaPoolOptions = {}) {
    const limit = options.limit;
    // Page 0 is never handed out (see IovaAllocator), so the limit must reach the end of page 1.
    if (
      limit !== undefined && (typeof limit !== "bigint" || limit < 2n * BigInt(backend.iommuPageSize) - 1n)
    ) {
      throw new RangeError(`Cannot create a DMA pool below IOVA ${limit}: the limit leaves no page to map`);
    }
    this.#ranges = backend.iovaRanges();
    this.#allocator = new IovaAllocator(this.#ranges, backend.iommuPageSize);
    this.#forget = onBackendClose(backend, () => this.close());
    onBackendClose(
      backend,
      () => runAll("DMA memory", [...this.#stuck.values()].map((s) => s.release)),
      "last",
    );
  }

  /** Buffers whose unmap failed, by IOVA: their IOVA and memory are held until it succeeds. */
  readonly #stuck = new Map<bigint, { length: number; release: () => void }>();

  #ranges: IovaRange[];

  // The kernel's ranges change when a device attaches to an iommufd IOAS (its reserved regions) or
  // the container's IOMMU is set again; the allocator follows, keeping the live buffers.
  #syncRanges(): void {
    const now = this.backend.iovaRanges();
    const same = now.length === this.#ranges.length &&
      now.every((r, i) => r.start === this.#ranges[i]!.start && r.last === this.#ranges[i]!.last);
    if (same) return;
    this.#ranges = now;
    this.#allocator.setRanges(now);
  }

  // IOVAs mapped by anyone else through the backend (a direct mapDma) are stepped over.
  readonly #taken = (start: bigint, last: bigint): bigint | undefined => {
    const hit = this.backend.findMapping(start, Number(last - start + 1n));
    return hit && hit.iova + BigInt(hit.size) - 1n;
  };

  /** The IOVA allocator, for inspection. */
  get allocator(): IovaAllocator {
    return this.#allocator;
  }

  /**
   * Allocates zeroed, page-aligned memory and maps it for the device.
   *
   * @param size Bytes; rounded up to the page (or hugepage) size.
   * @param options Access rights and hugepages.
   * @returns The buffer.
   * @throws {RangeError} If the size is invalid or no IOVA space is left below the limit.
   * @throws {VfioError} If mmap or the DMA map fails (e.g. the memlock limit).
   */
  alloc(size: number, options: DmaAllocOptions = {}): DmaBuffer {
    if (this.#closed) throw new TypeError("Cannot allocate DMA memory: the pool is closed");
    if (!Number.isSafeInteger(size) || size <= 0 || size > MAX_DMA_ALLOC) {
      throw new RangeError(
        `Cannot allocate ${size} bytes of DMA memory: size must be a positive integer up to ${MAX_DMA_ALLOC}`,
      );
    }
    const huge = options.hugepageSize;
    if (huge !== undefined && (!isPowerOfTwo(huge) || huge <= this.sys.pageSize || huge > 2 ** 30)) {
      throw new RangeError(
        `Cannot use hugepage size ${huge}: it must be a power of two above the page size, up to 1 GiB`,
      );
    }
    if ((options.read ?? true) === false && (options.write ?? true) === false) {
      throw new RangeError("Cannot allocate DMA memory with no device access: allow read, write or both");
    }
    if (!this.backend.translates && size > (huge ?? this.sys.pageSize)) {
      // No IOMMU: the device uses physical addresses, and only a page (or one hugepage) is
      // physically contiguous, so a larger buffer could not be given one address.
      throw new RangeError(
        `Cannot allocate ${size} bytes of DMA memory in no-IOMMU mode: the device uses physical addresses, ` +
          `and only one ${
            huge === undefined ? `page (${this.sys.pageSize} bytes)` : `hugepage (${huge} bytes)`
          } ` +
          "is physically contiguous; allocate page-sized buffers, or pass { hugepageSize } at least as large",
      );
    }
    this.#syncRanges();
    const unit = BigInt(Math.max(huge ?? this.sys.pageSize, this.backend.iommuPageSize));
    const length = Number(alignUp(BigInt(size), unit));
    const flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE |
      (huge ? MAP_HUGETLB | (Math.log2(huge) << MAP_HUGE_SHIFT) : 0);
    // Without an IOMMU the device is given physical addresses, which the kernel picks: memory that
    // lands above the device's limit is held aside (so the next try gets other pages) and released
    // once a reachable page is found, or the tries run out.
    const rejected: (() => void)[] = [];
    let iova: bigint, vaddr: bigint, bus: bigint;
    try {
      for (let attempt = 1;; attempt++) {
        ({ iova, vaddr } = this.#mapOne(length, Number(unit), flags, huge, options));
        const unmapOne = (at: bigint, va: bigint) => () =>
          runAll("DMA memory", [() => this.backend.unmapDma(at, length), () => {
            this.#allocator.free(at, length);
            check(this.sys.munmap(va, length), { op: "munmap", action: "free DMA memory" });
          }]);
        try {
          bus = this.#busAddress(iova, length);
          break;
        } catch (e) {
          rejected.push(unmapOne(iova, vaddr));
          if (!(e instanceof RangeError) || attempt >= UNREACHABLE_TRIES) throw e;
        }
      }
    } finally {
      runAll("DMA memory", rejected);
    }
    const at = iova;
    // SAFETY: [vaddr, vaddr+length) was just mapped above and stays mapped until free() below,
    // which detaches this ArrayBuffer before munmap.
    const memory = this.sys.memory(vaddr, length);
    const name = `DMA buffer at iova 0x${at.toString(16)}`;
    // SAFETY: the accessor is bounds-checked against `length` by Registers and closed by free()
    // before the memory is unmapped.
    const io = this.sys.mmio(vaddr, length) ?? atomicIo(memory);
    const volatile = new Registers(name, length, "mmap", [{ start: 0, length, io }], io);
    // Gives the IOVA and the memory back, once no device can reach them.
    const release = () => {
      this.#stuck.delete(at);
      this.#allocator.free(at, length);
      check(this.sys.munmap(vaddr, length), { op: "munmap", action: "free DMA memory" });
    };
    const buf: DmaBuffer = new DmaBuffer(bus, vaddr, length, memory, () => {
      this.#buffers.delete(buf);
      // The mapping is gone already when the backend closed or its last group left.
      if (!this.backend.closed && this.backend.mappings.get(at) === length) {
        try {
          this.backend.unmapDma(at, length);
        } catch (e) {
          // The device may still reach the pages: the IOVA and the memory wait until the unmap is
          // retried (pool close) or the address space goes (backend close).
          this.#stuck.set(at, { length, release });
          throw e;
        }
      }
      release();
    }, volatile);
    this.#buffers.add(buf);
    return buf;
  }

  // An IOVA, memory, and the mapping between them; nothing stays allocated when a step fails.
  #mapOne(
    length: number,
    unit: number,
    flags: number,
    huge: number | undefined,
    access: DmaAccess,
  ): { iova: bigint; vaddr: bigint } {
    // The IOVA first: running out of IOVA space must not cost an mmap of the whole size.
    const iova = this.#allocator.alloc(length, {
      align: unit,
      avoid: this.#taken,
      ...(this.options.limit !== undefined && this.backend.translates ? { limit: this.options.limit } : {}),
    });
    let vaddr: bigint;
    try {
      vaddr = this.#mapMemory(length, unit, flags, huge);
    } catch (e) {
      this.#allocator.free(iova, length);
      throw e;
    }
    try {
      this.backend.mapDma(vaddr, iova, length, access);
    } catch (e) {
      this.#allocator.free(iova, length);
      this.sys.munmap(vaddr, length);
      throw e;
    }
    return { iova, vaddr };
  }

  // What the device is given: the IOVA, or without an IOMMU the physical address, which must then
  // lie below the device's limit as the IOVA would have had to.
  #busAddress(iova: bigint, length: number): bigint {
    if (this.backend.translates) return iova;
    const bus = this.backend.busAddress(iova, length);
    const limit = this.options.limit;
    if (limit !== undefined && bus + BigInt(length) - 1n > limit) {
      throw new RangeError(
        `Cannot use DMA memory at physical address 0x${bus.toString(16)}: it ends above the device's limit ` +
          `0x${
            limit.toString(16)
          }, and no-IOMMU mode cannot move it; give the machine less memory, or use an ` +
          "IOMMU",
      );
    }
    return bus;
  }

  // Anonymous memory aligned to `align`, as type1 wants the process address aligned to the IOMMU
  // page too: mmap gives CPU-page alignment only, so a larger alignment maps extra and trims it.
  #mapMemory(length: number, align: number, flags: number, huge: number | undefined): bigint {
    const slack = huge || align <= this.sys.pageSize ? 0 : align - this.sys.pageSize;
    const raw = this.sys.mmap(length + slack, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (raw < 0n) {
      check(Number(raw), {
        op: "mmap",
        action: `allocate ${length} bytes of DMA memory`,
        hints: (code) =>
          huge && code === "ENOMEM"
            ? `no free ${huge}-byte hugepages: reserve some in /sys/kernel/mm/hugepages/*/nr_hugepages`
            : undefined,
      });
    }
    if (slack === 0) return raw;
    const vaddr = alignUp(raw, BigInt(align));
    const head = Number(vaddr - raw), tail = slack - head;
    if (head > 0) check(this.sys.munmap(raw, head), { op: "munmap", action: "trim DMA memory" });
    if (tail > 0) {
      check(this.sys.munmap(vaddr + BigInt(length), tail), { op: "munmap", action: "trim DMA memory" });
    }
    return vaddr;
  }

  /** The live buffers. */
  get buffers(): ReadonlySet<DmaBuffer> {
    return this.#buffers;
  }

  /** Frees every buffer. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#forget();
    runAll("DMA pool", [
      ...[...this.#buffers].reverse().map((b) => () => b.free()),
      // A failed unmap (earlier, or in the frees just above) is tried once more; what still fails
      // waits for the backend's address space to go.
      () =>
        runAll(
          "DMA pool",
          [...this.#stuck].map(([iova, { length, release }]) => () => {
            if (!this.backend.closed && this.backend.mappings.get(iova) === length) {
              this.backend.unmapDma(iova, length);
            }
            release();
          }),
        ),
    ]);
  }

  /** Closes the pool, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

// Where the backend has no native accessor (not x86-64), Atomics give single, unhoisted accesses;
// off x86 they compile to plain acquire loads and release stores, not locked read-modify-writes.
function atomicIo(memory: ArrayBuffer): RawMmio {
  const u8 = new Uint8Array(memory), u16 = new Uint16Array(memory);
  const u32 = new Uint32Array(memory), u64 = new BigUint64Array(memory);
  return {
    read8: (o) => Atomics.load(u8, o),
    read16: (o) => Atomics.load(u16, o >>> 1),
    read32: (o) => Atomics.load(u32, o >>> 2),
    read64: (o) => Atomics.load(u64, o >>> 3),
    write8: (o, v) => void Atomics.store(u8, o, v),
    write16: (o, v) => void Atomics.store(u16, o >>> 1, v),
    write32: (o, v) => void Atomics.store(u32, o >>> 2, v),
    write64: (o, v) => void Atomics.store(u64, o >>> 3, v),
  };
}
