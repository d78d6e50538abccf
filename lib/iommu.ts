/**
 * The IOMMU backend interface: what a VFIO container (type1) and an iommufd IOAS both provide, so
 * that callers never ask which one they have.
 *
 * @module
 */
import { onDeviceClose, type VfioDevice } from "./device.ts";
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
 * Implemented completely by both; a no-IOMMU container throws {@link UnsupportedError} on the DMA
 * methods, because that mode has no translation to program.
 *
 * Numbers follow the library's rule: addresses (process addresses, IOVAs) are bigint; sizes are
 * number, and must be safe integers.
 *
 * Disposing the backend unmaps every mapping it made and closes the devices and groups it opened.
 */
export interface IommuBackend extends Disposable {
  /** Which backend this is: `"type1"`, `"type1v2"`, `"noiommu"` or `"iommufd"`. */
  readonly kind: string;
  /** Whether DMA mapping is possible (false in no-IOMMU mode). */
  readonly translates: boolean;
  /** The smallest IOMMU page size in bytes; mappings must be aligned to it. */
  readonly iommuPageSize: number;
  /** Whether {@link close} has run. */
  readonly closed: boolean;
  /** The live mappings this backend made: IOVA → size in bytes. */
  readonly mappings: ReadonlyMap<bigint, number>;
  /**
   * Maps `size` bytes of process memory at `vaddr` to `iova`.
   *
   * @param vaddr The process address, page-aligned.
   * @param iova The device address, page-aligned.
   * @param size Bytes, a positive multiple of {@link iommuPageSize}.
   * @param access Whether the device may read and/or write; at least one.
   * @throws {RangeError} If an argument is out of range, unaligned, outside {@link iovaRanges}, or
   *   overlaps a mapping; nothing reaches the kernel then.
   * @throws {VfioError} If the kernel refuses (memlock limit, mapping limit).
   */
  mapDma(vaddr: bigint, iova: bigint, size: number, access?: DmaAccess): void;
  /**
   * Unmaps exactly one earlier mapping.
   *
   * @param iova Where the mapping starts.
   * @param size Its size.
   * @throws {RangeError} If no mapping starts at `iova` with that size.
   */
  unmapDma(iova: bigint, size: number): void;
  /** Unmaps every mapping in the address space. */
  unmapAll(): void;
  /**
   * The IOVA ranges the IOMMU accepts, as the kernel reports them.
   *
   * @returns Copies of the ranges.
   */
  iovaRanges(): IovaRange[];
  /**
   * Opens a PCI device into this address space.
   *
   * @param bdf The device's PCI address.
   * @returns The device; the backend closes it when it is itself closed.
   */
  openDevice(bdf: string): VfioDevice;
  /** Unmaps, closes the devices it opened, and releases the address space. Idempotent. */
  close(): void;
}

/**
 * What each backend does in the kernel, as a table of operations (libvfn's `iommu_ctx_ops`):
 * {@link IommuBase} checks arguments and keeps the books, then calls these.
 */
export interface IommuOps {
  /** Maps an already checked range. */
  map(vaddr: bigint, iova: bigint, size: number, access: Required<DmaAccess>): void;
  /** Unmaps exactly one known mapping. */
  unmap(iova: bigint, size: number): void;
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

const U64_MAX = 0xffffffffffffffffn;

/**
 * The fix for EPERM when a device joins an IOMMU domain without MSI isolation: VFIO refuses it
 * unless interrupts are remapped. Internal: both backends use it.
 *
 * @param module The module whose `allow_unsafe_interrupts` parameter lifts the check.
 * @returns The hint.
 */
export function interruptRemappingHint(module: "vfio_iommu_type1" | "iommufd"): string {
  return "the IOMMU has no interrupt remapping, which VFIO requires to isolate MSIs; enable it " +
    "(intel_iommu=on with intremap, or amd_iommu=on) or, if you accept the risk, load " +
    `${module} with allow_unsafe_interrupts=1 (dmesg says "No interrupt remapping support")`;
}
const hex = (n: bigint | number) => `0x${n.toString(16)}`;

let registerCloseHook: (backend: IommuBase, fn: () => void, when: "first" | "last") => () => void;

/**
 * Registers teardown to run when a backend closes. Internal to the library: not exported by mod.ts.
 * - `"first"` (default): while the address space still exists (DMA pools unmap and free their
 *   buffers);
 * - `"last"`: once every mapping is gone with the address space, which may be after close when a
 *   group the caller holds keeps a legacy container alive (memory whose unmap failed earlier can be
 *   released then, since no device can reach it any more).
 *
 * @param backend The backend.
 * @param fn The teardown.
 * @param when When it runs.
 * @returns A function that unregisters it (for an owner that closes first).
 * @throws {TypeError} If the backend is closed or is not one of the library's.
 */
export function onBackendClose(
  backend: IommuBackend,
  fn: () => void,
  when: "first" | "last" = "first",
): () => void {
  if (!(backend instanceof IommuBase)) {
    throw new TypeError("Cannot use this IOMMU backend: open it with VfioContainer.open or IommufdIoas.open");
  }
  return registerCloseHook(backend, fn, when);
}

/**
 * The bookkeeping both backends share, so that each implements only its ioctls: argument checks,
 * the table of live mappings, the devices it opened, and teardown in reverse order of setup.
 */
export abstract class IommuBase implements IommuBackend {
  abstract readonly kind: string;
  abstract readonly translates: boolean;
  /** Live mappings: IOVA → size. */
  readonly #mappings = new Map<bigint, number>();
  /** Devices opened through {@link openDevice}, closed with the backend. */
  protected readonly devices: Set<VfioDevice> = new Set();
  readonly #onClose: (() => void)[] = [];
  readonly #afterClose: (() => void)[] = [];
  #closed = false;

  static {
    registerCloseHook = (backend, fn, when) => {
      backend.assertOpen();
      const hooks = when === "first" ? backend.#onClose : backend.#afterClose;
      hooks.push(fn);
      return () => {
        const i = hooks.indexOf(fn);
        if (i >= 0) hooks.splice(i, 1);
      };
    };
  }

  /** What this backend is, for messages: e.g. `/dev/vfio/vfio` or `/dev/iommu`. */
  abstract readonly path: string;
  /** The smallest IOMMU page size in bytes; mappings must be aligned to it. */
  abstract readonly iommuPageSize: number;
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

  /** The live mappings, IOVA → size in bytes. */
  get mappings(): ReadonlyMap<bigint, number> {
    return this.#mappings;
  }

  mapDma(vaddr: bigint, iova: bigint, size: number, access: DmaAccess = {}): void {
    this.assertOpen();
    const read = access.read ?? true, write = access.write ?? true;
    if (!read && !write) {
      throw new RangeError(`Cannot map DMA at iova ${hex(iova)} with no access: allow read, write or both`);
    }
    if (typeof vaddr !== "bigint" || typeof iova !== "bigint" || !Number.isSafeInteger(size)) {
      throw new TypeError("Cannot map DMA: vaddr and iova must be bigints and size a safe integer");
    }
    const len = BigInt(size);
    // The checks that need no page size come first: reading it may cost an ioctl.
    const bad = size <= 0 || vaddr <= 0n || iova < 0n || vaddr + len - 1n > U64_MAX ||
      iova + len - 1n > U64_MAX;
    const page = bad ? 0 : this.iommuPageSize;
    const pageN = BigInt(page);
    if (bad || size % page !== 0 || vaddr % pageN !== 0n || iova % pageN !== 0n) {
      throw new RangeError(
        `Cannot map DMA at iova ${hex(iova)} (vaddr ${hex(vaddr)}, size ${hex(size)}): vaddr must be ` +
          `non-zero, all three multiples of the IOMMU page size${
            bad ? "" : ` ${hex(page)}`
          }, size positive, and both ` +
          "ranges inside 64 bits",
      );
    }
    const last = iova + len - 1n;
    const ranges = this.ops.iovaRanges();
    if (!ranges.some((r) => iova >= r.start && last <= r.last)) {
      throw new RangeError(
        `Cannot map DMA at iova ${hex(iova)}..${hex(last)}: outside the IOMMU's IOVA ranges ` +
          ranges.map((r) => `${hex(r.start)}..${hex(r.last)}`).join(", "),
      );
    }
    for (const [at, n] of this.#mappings) {
      if (iova <= at + BigInt(n) - 1n && at <= last) {
        throw new RangeError(
          `Cannot map DMA at iova ${hex(iova)}: it overlaps the mapping at ${hex(at)} (size ${hex(n)})`,
        );
      }
    }
    this.ops.map(vaddr, iova, size, { read, write });
    this.#mappings.set(iova, size);
  }

  unmapDma(iova: bigint, size: number): void {
    this.assertOpen();
    if (this.#mappings.get(iova) !== size) {
      throw new RangeError(
        `Cannot unmap DMA at iova ${hex(iova)} (size ${typeof size === "number" ? hex(size) : size}): ` +
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
    return this.adopt(this.ops.openDevice(bdf));
  }

  /** Tracks a device opened into this backend, so that it closes with the backend. */
  protected adopt(device: VfioDevice): VfioDevice {
    this.devices.add(device);
    onDeviceClose(device, () => this.devices.delete(device));
    return device;
  }

  /** Forgets the mappings after the kernel dropped them (the last group left the container). */
  protected forgetMappings(): void {
    this.#mappings.clear();
  }

  /**
   * Tells the base that the kernel's address space is gone (the last group left a closed
   * container), so that what waited for it runs.
   */
  protected addressSpaceGone(): void {
    if (this.#closed) this.#settle();
  }

  // The "last" close hooks run once no mapping can be left: at close when the unmap-all succeeded or
  // the address space died with it, or later, when a group the caller still holds leaves the closed
  // container.
  #settle(): void {
    if (this.#mappings.size > 0 && this.ops.alive()) return;
    runAll(this.path, this.#afterClose.splice(0));
  }

  close(): void {
    if (this.#closed) return;
    // Reverse order of setup: buffers (which unmap themselves), remaining mappings, devices, then
    // the address space and its descriptors; last, what had to wait until no mapping is left.
    runAll(this.path, [
      ...this.#onClose.splice(0).reverse(),
      () => this.unmapAll(),
      ...[...this.devices].reverse().map((d) => () => d.close()),
      () => {
        this.#closed = true;
        this.ops.release();
      },
      () => this.#settle(),
    ]);
  }

  /** Closes the backend, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
