/**
 * The IOMMU backend interface: what a VFIO container (type1) and an iommufd IOAS both provide, so
 * that callers never ask which one they have.
 *
 * @module
 */
import type { VfioDevice } from "./device.ts";
import { runAll } from "./errors.ts";

/** An inclusive IOVA range `[start, last]` that the IOMMU can map. */
export interface IovaRange {
  /** The first usable IOVA. */
  start: bigint;
  /** The last usable IOVA (inclusive). */
  last: bigint;
}

/** How a DMA mapping may be used by the device. */
export interface DmaAccess {
  /** The device may read the memory (default true). */
  read?: boolean;
  /** The device may write the memory (default true). */
  write?: boolean;
}

/**
 * One IOMMU address space with devices attached: a type1 VFIO container, or an iommufd IOAS.
 * Implemented completely by both; a no-IOMMU container throws on the DMA methods, because that mode
 * has no translation to program.
 *
 * Disposing the backend unmaps every mapping it made and closes the devices and groups it opened.
 */
export interface IommuBackend extends Disposable {
  /** Which backend this is: `"type1"`, `"type1v2"`, `"noiommu"` or `"iommufd"`. */
  readonly kind: string;
  /** Whether DMA mapping is possible (false in no-IOMMU mode). */
  readonly translates: boolean;
  /** The smallest IOMMU page size; mappings must be aligned to it. */
  readonly iommuPageSize: bigint;
  /** Whether {@link close} has run. */
  readonly closed: boolean;
  /** The live mappings this backend made: IOVA → size. */
  readonly mappings: ReadonlyMap<bigint, bigint>;
  /**
   * Maps `size` bytes of process memory at `vaddr` to `iova`.
   *
   * @throws {RangeError} If the range is not page-aligned or outside {@link iovaRanges}.
   * @throws {VfioError} If the kernel refuses (memlock limit, overlap, mapping limit).
   */
  mapDma(vaddr: bigint, iova: bigint, size: bigint, access?: DmaAccess): void;
  /**
   * Unmaps exactly one earlier mapping.
   *
   * @throws {RangeError} If no mapping starts at `iova` with that size.
   */
  unmapDma(iova: bigint, size: bigint): void;
  /** Unmaps every mapping in the address space. */
  unmapAll(): void;
  /** The IOVA ranges the IOMMU accepts, as the kernel reports them. */
  iovaRanges(): IovaRange[];
  /**
   * Opens a PCI device into this address space.
   *
   * @param bdf The device's PCI address.
   * @returns The device; the backend closes it when it is itself closed.
   */
  openDevice(bdf: string): VfioDevice;
  /**
   * Registers teardown to run first when the backend closes, while the address space still exists
   * (DMA buffers use it to unmap and free their memory).
   *
   * @param fn The teardown.
   * @returns A function that unregisters it (for an owner that closes first).
   */
  onClose(fn: () => void): () => void;
  /** Unmaps, closes the devices it opened, and releases the address space. Idempotent. */
  close(): void;
}

/**
 * What each backend does in the kernel, as a table of operations (libvfn's `iommu_ctx_ops`):
 * {@link IommuBase} checks arguments and keeps the books, then calls these.
 */
export interface IommuOps {
  /** Maps an already checked range. */
  map(vaddr: bigint, iova: bigint, size: bigint, access: Required<DmaAccess>): void;
  /** Unmaps exactly one known mapping. */
  unmap(iova: bigint, size: bigint): void;
  /** Unmaps everything in the address space. */
  unmapAll(): void;
  /** The IOVA ranges the kernel reports; may be a cached array, which callers must not modify. */
  iovaRanges(): readonly IovaRange[];
  /** Opens a device into the address space. */
  openDevice(bdf: string): VfioDevice;
  /** Whether the kernel still holds the address space (mappings die with it). */
  alive(): boolean;
  /** Releases the address space and closes the backend's own descriptors. */
  release(): void;
}

/**
 * The bookkeeping both backends share, so that each implements only its ioctls: argument checks,
 * the table of live mappings, the devices it opened, and teardown in reverse order of setup.
 */
export abstract class IommuBase implements IommuBackend {
  abstract readonly kind: string;
  abstract readonly translates: boolean;
  /** Live mappings: IOVA → size. */
  readonly #mappings = new Map<bigint, bigint>();
  /** Devices opened through {@link openDevice}, closed with the backend. */
  protected readonly devices: Set<VfioDevice> = new Set();
  readonly #onClose: (() => void)[] = [];
  #closed = false;

  /** What this backend is, for messages: e.g. `/dev/vfio/vfio` or `/dev/iommu`. */
  abstract readonly path: string;
  /** The smallest IOMMU page size; mappings must be aligned to it. */
  abstract readonly iommuPageSize: bigint;
  /** The backend's kernel calls, after this class has checked the arguments. */
  protected abstract readonly ops: IommuOps;

  /** Throws if the backend was closed. */
  protected assertOpen(): void {
    if (this.#closed) throw new TypeError(`Cannot use ${this.path}: the IOMMU backend is closed`);
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The live mappings, IOVA → size. */
  get mappings(): ReadonlyMap<bigint, bigint> {
    return this.#mappings;
  }

  /**
   * Registers teardown to run first when the backend closes (DMA buffers use it to unmap and free
   * their memory while the address space still exists).
   *
   * @param fn The teardown; it must not throw.
   * @returns A function that unregisters it.
   */
  onClose(fn: () => void): () => void {
    this.assertOpen();
    this.#onClose.push(fn);
    return () => {
      const i = this.#onClose.indexOf(fn);
      if (i >= 0) this.#onClose.splice(i, 1);
    };
  }

  mapDma(vaddr: bigint, iova: bigint, size: bigint, access: DmaAccess = {}): void {
    this.assertOpen();
    const page = this.iommuPageSize;
    const hex = (n: bigint) => `0x${n.toString(16)}`;
    if (size <= 0n || vaddr % page !== 0n || iova % page !== 0n || size % page !== 0n) {
      throw new RangeError(
        `Cannot map DMA at iova ${hex(iova)} (vaddr ${hex(vaddr)}, size ${hex(size)}): all three must be ` +
          `multiples of the IOMMU page size ${hex(page)} and size positive`,
      );
    }
    const last = iova + size - 1n;
    const ranges = this.ops.iovaRanges();
    if (!ranges.some((r) => iova >= r.start && last <= r.last)) {
      throw new RangeError(
        `Cannot map DMA at iova ${hex(iova)}..${hex(last)}: outside the IOMMU's IOVA ranges ` +
          ranges.map((r) => `${hex(r.start)}..${hex(r.last)}`).join(", "),
      );
    }
    for (const [at, len] of this.#mappings) {
      if (iova <= at + len - 1n && at <= last) {
        throw new RangeError(
          `Cannot map DMA at iova ${hex(iova)}: it overlaps the mapping at ${hex(at)} (size ${hex(len)})`,
        );
      }
    }
    this.ops.map(vaddr, iova, size, { read: access.read ?? true, write: access.write ?? true });
    this.#mappings.set(iova, size);
  }

  unmapDma(iova: bigint, size: bigint): void {
    this.assertOpen();
    if (this.#mappings.get(iova) !== size) {
      throw new RangeError(
        `Cannot unmap DMA at iova 0x${iova.toString(16)} (size 0x${size.toString(16)}): ` +
          "no mapping starts there with that size",
      );
    }
    this.ops.unmap(iova, size);
    this.#mappings.delete(iova);
  }

  unmapAll(): void {
    this.assertOpen();
    if (this.translates && this.ops.alive()) this.ops.unmapAll();
    this.#mappings.clear();
  }

  iovaRanges(): IovaRange[] {
    this.assertOpen();
    return this.ops.iovaRanges().map((r) => ({ ...r }));
  }

  openDevice(bdf: string): VfioDevice {
    this.assertOpen();
    const device = this.ops.openDevice(bdf);
    this.devices.add(device);
    device.onClose(() => this.devices.delete(device));
    return device;
  }

  /** Forgets the mappings after the kernel dropped them (the last group left the container). */
  protected forgetMappings(): void {
    this.#mappings.clear();
  }

  close(): void {
    if (this.#closed) return;
    // Reverse order of setup: buffers (which unmap themselves), remaining mappings, devices, then
    // the address space and its descriptors.
    runAll(this.path, [
      ...this.#onClose.splice(0).reverse(),
      () => this.unmapAll(),
      ...[...this.devices].reverse().map((d) => () => d.close()),
      () => {
        this.#closed = true;
        this.ops.release();
      },
    ]);
  }

  /** Closes the backend, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
