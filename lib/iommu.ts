/**
 * The IOMMU backend interface: what a VFIO container (type1) and an iommufd IOAS both provide, so
 * that callers never ask which one they have.
 *
 * @module
 */
import { onDeviceClose, VfioDevice } from "./device.ts";
import { IovaIntervals } from "./iova_tree.ts";
import { runAll, UnsupportedError } from "./errors.ts";
import { VFIO_PCI_BAR5_REGION_INDEX } from "./uapi/vfio.ts";
import { canonicalVfToken } from "./vf_token.ts";

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

/** Options for {@link IommuBackend.openDevice}. */
export interface OpenDeviceOptions {
  /**
   * The VF token, a UUID: needed to open an SR-IOV VF whose PF is bound to vfio-pci (the token the
   * PF's user set with {@link VfioDevice.setVfToken}), and a PF whose VFs are in use. The legacy
   * backend passes it as `"BDF vf_token=UUID"` to VFIO_GROUP_GET_DEVICE_FD; iommufd binds with
   * VFIO_DEVICE_BIND_FLAG_TOKEN (Linux 6.17+). A device that is neither refuses it (EINVAL).
   */
  vfToken?: string;
}

/** Options for {@link IommuBackend.mapPeerRegion}: which part of the region, and the access. */
export interface PeerRegionOptions extends DmaAccess {
  /** Where the mapping starts in the region, in bytes: a multiple of the page size (default 0). */
  offset?: number;
  /** How many bytes to map: a positive multiple of the page size (default: to the region's end). */
  length?: number;
}

/**
 * A peer device's BAR mapped into an IOMMU address space, made by
 * {@link IommuBackend.mapPeerRegion}: devices in the address space reach the peer's registers or
 * memory at {@link iova}. Closing it unmaps the IOVA and releases what backs it (the BAR's mmap, or
 * the DMA-BUF); it closes by itself when the backend or the peer device closes.
 *
 * @example
 * ```ts
 * import { loadSys, openIommu } from "vfio-ts";
 *
 * using backend = openIommu(await loadSys());
 * const a = backend.openDevice("0000:00:04.0");
 * const b = backend.openDevice("0000:00:06.0");
 * using peer = backend.mapPeerRegion(b, 0, 0x8000000n, { length: 4096 });
 * a.registers(0).write64(0x80, peer.iova); // edu A's DMA source: edu B's BAR0
 * ```
 */
export class PeerMapping implements Disposable {
  #release: (() => void) | undefined;

  /**
   * Wraps a mapping the backend made.
   *
   * @param iova Where devices reach the region.
   * @param size Its size in bytes.
   * @param device The peer device.
   * @param regionIndex The peer's region (BAR) index.
   * @param offset Where the mapping starts in the region.
   * @param release Unmaps the IOVA and releases the backing.
   */
  constructor(
    /** Where devices in the address space reach the peer's region. */
    readonly iova: bigint,
    /** The size of the mapping in bytes. */
    readonly size: number,
    /** The peer device whose region is mapped. */
    readonly device: VfioDevice,
    /** The region (BAR) index. */
    readonly regionIndex: number,
    /** Where the mapping starts in the region. */
    readonly offset: number,
    release: () => void,
  ) {
    this.#release = release;
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#release === undefined;
  }

  /**
   * Unmaps the IOVA (unless the address space is gone already) and releases the BAR's mmap or the
   * DMA-BUF. Idempotent.
   *
   * @throws {VfioError} If the unmap fails; the backing is released regardless.
   */
  close(): void {
    const release = this.#release;
    this.#release = undefined;
    release?.();
  }

  /** Closes the mapping, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
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
  /**
   * Which backend this is: `"type1"`, `"type1v2"`, `"noiommu"` (legacy), `"iommufd"`, or
   * `"iommufd-noiommu"` (an IOAS whose devices have no IOMMU: their cdevs are
   * /dev/vfio/devices/noiommu-vfioN).
   */
  readonly kind: string;
  /**
   * Whether the IOMMU translates device addresses. False in no-IOMMU mode, where the device sees
   * physical addresses: the iommufd backend (kind `"iommufd-noiommu"`, Linux 7.3+) still maps and
   * pins memory, and {@link busAddress} gives its physical address; the legacy container (kind
   * `"noiommu"`) cannot map at all.
   */
  readonly translates: boolean;
  /** The smallest IOMMU page size in bytes; mappings must be aligned to it. */
  readonly iommuPageSize: number;
  /** Whether {@link close} has run. */
  readonly closed: boolean;
  /** The live mappings this backend made: IOVA → size in bytes, in IOVA order. */
  readonly mappings: ReadonlyMap<bigint, number>;
  /**
   * The live mapping that overlaps a range, found in O(log n).
   *
   * @param iova The range's start.
   * @param size Its size in bytes, positive.
   * @returns The mapping's IOVA and size, or undefined when the range is free.
   */
  findMapping(iova: bigint, size: number): { iova: bigint; size: number } | undefined;
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
   * @param options The VF token, for an SR-IOV VF whose PF is on vfio-pci.
   * @returns The device; the backend closes it when it is itself closed.
   * @throws {TypeError} If `options.vfToken` is not a string (before any syscall).
   * @throws {RangeError} If `options.vfToken` is not a UUID (before any syscall).
   * @throws {UnsupportedError} With a token on iommufd, if the kernel cannot bind with one (Linux
   *   6.17+).
   * @throws {VfioError} If the device cannot be opened; EACCES for a missing or wrong VF token,
   *   with a hint naming `vfToken`.
   *
   * @example An SR-IOV VF, with the token its PF's user set
   * ```ts
   * import { loadSys, openIommu } from "vfio-ts";
   *
   * using backend = openIommu(await loadSys());
   * const vf = backend.openDevice("0000:00:1a.0", { vfToken: "bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3" });
   * console.log(vf.config.read16(2).toString(16)); // 10ca: an igb VF
   * ```
   */
  openDevice(bdf: string, options?: OpenDeviceOptions): VfioDevice;
  /**
   * Maps a region (BAR) of a peer device into this address space, for peer-to-peer DMA: devices
   * here then reach the peer's registers or memory at `iova`. The legacy type1 container maps the
   * BAR's mmap (VFIO_IOMMU_MAP_DMA takes device memory); iommufd exports the BAR as a DMA-BUF and
   * maps that (IOMMU_IOAS_MAP_FILE, Linux 6.19+), since it cannot pin a BAR's mmap.
   *
   * @param device The peer device (open in this backend or another).
   * @param regionIndex The peer's BAR index (0-5).
   * @param iova Where to map it: page-aligned, inside {@link iovaRanges}, clear of other mappings.
   * @param options The part of the region (page-aligned) and the access (default read and write).
   * @returns The mapping; close it to unmap. It closes with the backend, and with the peer device.
   * @throws {RangeError} If the region, range or IOVA is invalid (before anything is mapped).
   * @throws {UnsupportedError} In no-IOMMU mode, or on iommufd without DMA-BUF export or import.
   * @throws {VfioError} If the kernel refuses.
   *
   * @example edu A reads edu B's ident register by DMA
   * ```ts
   * import { loadSys, openIommu } from "vfio-ts";
   *
   * using backend = openIommu(await loadSys());
   * const a = backend.openDevice("0000:00:04.0");
   * const b = backend.openDevice("0000:00:08.0");
   * using peer = backend.mapPeerRegion(b, 0, 0x8000000n, { length: 4096, write: false });
   * a.config.enableBusMaster();
   * using bar0 = a.registers(0);
   * bar0.write64(0x80, peer.iova); // DMA source: B's BAR0, offset 0
   * ```
   */
  mapPeerRegion(
    device: VfioDevice,
    regionIndex: number,
    iova: bigint,
    options?: PeerRegionOptions,
  ): PeerMapping;
  /**
   * The address a device must use for `size` bytes mapped at `iova`: `iova` itself when the IOMMU
   * translates; in iommufd no-IOMMU mode, the physical address (IOMMU_IOAS_NOIOMMU_GET_PA, Linux
   * 7.3+, CAP_SYS_RAWIO), which exists only when the range is physically contiguous.
   *
   * @param iova Where the range starts; it must lie inside one mapping.
   * @param size Its length in bytes.
   * @returns The bus address.
   * @throws {RangeError} If the range is not inside one mapping, or (no-IOMMU) not physically
   *   contiguous.
   * @throws {UnsupportedError} For a legacy no-IOMMU container, which has no mappings to ask about.
   * @throws {VfioError} If the kernel refuses (EPERM without CAP_SYS_RAWIO).
   *
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * using buf = edu.dma.alloc(4096); // buf.iova is already the bus address
   * const [iova] = edu.backend.mappings.keys();
   * console.log(edu.backend.kind, iova, edu.backend.busAddress(iova!, 4096));
   * ```
   */
  busAddress(iova: bigint, size: number): bigint;
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
  openDevice(bdf: string, options: OpenDeviceOptions): VfioDevice;
  /**
   * Maps an already checked range of a peer's region at an already checked IOVA; returns what
   * releases the backing (the base has unmapped the IOVA by then, when it could).
   */
  mapPeer(
    device: VfioDevice,
    regionIndex: number,
    offset: number,
    length: number,
    iova: bigint,
    access: Required<DmaAccess>,
  ): () => void;
  /** The physical address of a mapped range, in no-IOMMU mode; throws where there is none. */
  physicalAddress(iova: bigint, size: number): bigint;
  /** Whether the kernel still holds the address space (mappings die with it). */
  alive(): boolean;
  /** Releases the address space and closes the backend's own descriptors. */
  release(): void;
}

const U64_MAX = 0xffffffffffffffffn;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
// The three ways a device may access a mapping, shared so that a map allocates none.
const ANY_ACCESS: Required<DmaAccess> = Object.freeze({ read: true, write: true });
const READ_ONLY: Required<DmaAccess> = Object.freeze({ read: true, write: false });
const WRITE_ONLY: Required<DmaAccess> = Object.freeze({ read: false, write: true });

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
  readonly #mappings = new IovaIntervals();
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

  /** The live mappings, IOVA → size in bytes, in IOVA order. */
  get mappings(): ReadonlyMap<bigint, number> {
    return this.#mappings;
  }

  findMapping(iova: bigint, size: number): { iova: bigint; size: number } | undefined {
    return this.#mappings.overlapping(iova, size);
  }

  mapDma(vaddr: bigint, iova: bigint, size: number, access: DmaAccess = ANY_ACCESS): void {
    this.assertOpen();
    const checked = this.#checkAccess("DMA", iova, access);
    if (typeof vaddr !== "bigint" || typeof iova !== "bigint" || !Number.isSafeInteger(size)) {
      throw new TypeError("Cannot map DMA: vaddr and iova must be bigints and size a safe integer");
    }
    this.#checkArgs("DMA", vaddr, iova, size);
    this.#checkPlace(iova, size);
    this.ops.map(vaddr, iova, size, checked);
    this.#mappings.add(iova, size);
  }

  #checkAccess(what: string, iova: bigint, access: DmaAccess): Required<DmaAccess> {
    const read = access.read ?? true, write = access.write ?? true;
    if (!read && !write) {
      throw new RangeError(
        `Cannot map ${what} at iova ${hex(iova)} with no access: allow read, write or both`,
      );
    }
    return read ? (write ? ANY_ACCESS : READ_ONLY) : WRITE_ONLY;
  }

  // Alignment and the 64-bit bound of a mapping's addresses (`vaddr` undefined when the source is
  // not process memory). Values a double holds exactly, as user addresses and IOVAs nearly always
  // are, are checked as numbers: bigint arithmetic allocates at every step, and this runs per map.
  #checkArgs(what: string, vaddr: bigint | undefined, iova: bigint, size: number): void {
    let page = 0, ok: boolean;
    // A bigint converts to the nearest double, so one above 2^53 - 1 never passes as safe.
    const io = Number(iova), va = vaddr === undefined ? 0 : Number(vaddr);
    if (
      size > 0 && io >= 0 && io <= Number.MAX_SAFE_INTEGER &&
      (vaddr === undefined || (va > 0 && va <= Number.MAX_SAFE_INTEGER))
    ) {
      page = this.iommuPageSize;
      ok = size % page === 0 && io % page === 0 && va % page === 0;
    } else {
      const len = BigInt(size);
      const bad = size <= 0 || iova < 0n || iova + len - 1n > U64_MAX ||
        (vaddr !== undefined && (vaddr <= 0n || vaddr + len - 1n > U64_MAX));
      page = bad ? 0 : this.iommuPageSize;
      const pageN = BigInt(page);
      ok = !bad && size % page === 0 && iova % pageN === 0n && (vaddr === undefined || vaddr % pageN === 0n);
    }
    if (ok) return;
    const pageText = page === 0 ? "" : ` ${hex(page)}`;
    throw new RangeError(
      vaddr === undefined
        ? `Cannot map ${what} at iova ${hex(iova)} (size ${hex(size)}): iova and size must be multiples of ` +
          `the IOMMU page size${pageText}, size positive, and the range inside 64 bits`
        : `Cannot map ${what} at iova ${hex(iova)} (vaddr ${hex(vaddr)}, size ${hex(size)}): vaddr must be ` +
          `non-zero, all three multiples of the IOMMU page size${pageText}, size positive, and both ` +
          "ranges inside 64 bits",
    );
  }

  // The IOVA range must lie inside the IOMMU's ranges and clear of every mapping.
  #checkPlace(iova: bigint, size: number): void {
    if (!this.#insideRanges(iova, size)) {
      const ranges = this.ops.iovaRanges();
      throw new RangeError(
        `Cannot map DMA at iova ${hex(iova)}..${hex(iova + BigInt(size) - 1n)}: outside the IOMMU's IOVA ` +
          `ranges ${ranges.map((r) => `${hex(r.start)}..${hex(r.last)}`).join(", ")}`,
      );
    }
    const hit = this.#mappings.overlapping(iova, size);
    if (hit) {
      throw new RangeError(
        `Cannot map DMA at iova ${hex(iova)}: it overlaps the mapping at ${hex(hit.iova)} (size ${
          hex(hit.size)
        })`,
      );
    }
  }

  // The IOVA ranges as numbers, remade whenever the backend reads new ones (an IOAS does on
  // attach); a bound past 2^53 stands for "beyond every IOVA a double holds".
  #rangeSource: readonly IovaRange[] | undefined;
  #rangeStarts: number[] = [];
  #rangeLasts: number[] = [];

  #insideRanges(iova: bigint, size: number): boolean {
    const ranges = this.ops.iovaRanges();
    const first = Number(iova), last = first + size - 1;
    if (last > Number.MAX_SAFE_INTEGER) {
      const lastN = iova + BigInt(size) - 1n;
      return ranges.some((r) => iova >= r.start && lastN <= r.last);
    }
    if (ranges !== this.#rangeSource) {
      const bound = (v: bigint) => v > MAX_SAFE ? Infinity : Number(v);
      this.#rangeStarts = ranges.map((r) => bound(r.start));
      this.#rangeLasts = ranges.map((r) => bound(r.last));
      this.#rangeSource = ranges;
    }
    const starts = this.#rangeStarts, lasts = this.#rangeLasts;
    for (let i = 0; i < starts.length; i++) {
      if (first >= starts[i]! && last <= lasts[i]!) return true;
    }
    return false;
  }

  /**
   * Maps a range whose source is not process memory (a file, a DMA-BUF) with the bookkeeping of
   * {@link mapDma}: checks the IOVA, size and access, calls `map` with the access, and records the
   * mapping, which {@link unmapDma} then undoes.
   *
   * @param what What is being mapped, for messages, e.g. `"fd 7"`.
   * @param iova The device address, page-aligned.
   * @param size Bytes, a positive multiple of {@link iommuPageSize}.
   * @param access Whether the device may read and/or write; at least one.
   * @param map Makes the mapping in the kernel.
   * @throws {RangeError} If an argument is out of range (before `map` runs).
   */
  protected mapRange(
    what: string,
    iova: bigint,
    size: number,
    access: DmaAccess,
    map: (access: Required<DmaAccess>) => void,
  ): void {
    const checked = this.#checkRange(what, iova, size, access);
    map(checked);
    this.#mappings.add(iova, size);
  }

  #checkRange(what: string, iova: bigint, size: number, access: DmaAccess): Required<DmaAccess> {
    this.assertOpen();
    const checked = this.#checkAccess(what, iova, access);
    if (typeof iova !== "bigint" || !Number.isSafeInteger(size)) {
      throw new TypeError(`Cannot map ${what}: iova must be a bigint and size a safe integer`);
    }
    this.#checkArgs(what, undefined, iova, size);
    this.#checkPlace(iova, size);
    return checked;
  }

  mapPeerRegion(
    device: VfioDevice,
    regionIndex: number,
    iova: bigint,
    options: PeerRegionOptions = {},
  ): PeerMapping {
    this.assertOpen();
    if (!(device instanceof VfioDevice)) {
      throw new TypeError("Cannot map a peer region: the device must be a VfioDevice from openDevice()");
    }
    const what = `region ${regionIndex} of ${device.name}`;
    if (!this.translates) {
      // No ioctl failed: without an IOMMU there is nothing to program, and no bus address to offer.
      throw new UnsupportedError({
        op: "mapPeerRegion",
        path: this.path,
        action: `map ${what} for peer-to-peer DMA`,
        hint: "no-IOMMU mode has no IOMMU to map a peer's BAR into; a device there would need the BAR's " +
          "bus address, which vfio does not report",
      });
    }
    if (!Number.isInteger(regionIndex) || regionIndex < 0 || regionIndex > VFIO_PCI_BAR5_REGION_INDEX) {
      throw new RangeError(`Cannot map ${what} for peer-to-peer DMA: only BARs (regions 0-5) can be mapped`);
    }
    const region = device.region(regionIndex).info;
    const page = device.sys.pageSize;
    const offset = options.offset ?? 0;
    const length = options.length ?? region.size - offset;
    if (
      region.size === 0 || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 ||
      length <= 0 || offset % page !== 0 || length % page !== 0 || offset + length > region.size
    ) {
      throw new RangeError(
        `Cannot map ${what} at offset ${offset} (length ${length}) for peer-to-peer DMA: the range must be ` +
          `page-aligned (0x${page.toString(16)}), non-empty and inside the ${region.size}-byte BAR`,
      );
    }
    const access = this.#checkRange(what, iova, length, options);
    const release = this.ops.mapPeer(device, regionIndex, offset, length, iova, access);
    this.#mappings.add(iova, length);
    const unhooks: (() => void)[] = [];
    const mapping = new PeerMapping(iova, length, device, regionIndex, offset, () => {
      for (const unhook of unhooks.splice(0)) unhook();
      runAll(what, [
        () => {
          // The mapping is gone already when the address space went, or someone unmapped it.
          if (this.closed || this.#mappings.get(iova) !== length) return;
          this.ops.unmap(iova, length);
          this.#mappings.delete(iova);
        },
        release,
      ]);
    });
    unhooks.push(registerCloseHook(this, () => mapping.close(), "first"));
    unhooks.push(onDeviceClose(device, () => mapping.close()));
    return mapping;
  }

  busAddress(iova: bigint, size: number): bigint {
    this.assertOpen();
    const end = typeof iova === "bigint" && Number.isSafeInteger(size) && size > 0
      ? iova + BigInt(size)
      : -1n;
    const hit = end < 0n ? undefined : this.#mappings.overlapping(iova, size);
    const inside = hit !== undefined && iova >= hit.iova && end <= hit.iova + BigInt(hit.size);
    if (end < 0n || !inside) {
      throw new RangeError(
        `Cannot get the bus address of iova ${typeof iova === "bigint" ? hex(iova) : iova} (size ${size}): ` +
          "the range must be inside one mapping",
      );
    }
    return this.translates ? iova : this.ops.physicalAddress(iova, size);
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

  openDevice(bdf: string, options: OpenDeviceOptions = {}): VfioDevice {
    this.assertOpen();
    // A malformed token is misuse, refused before the backend opens anything.
    if (options.vfToken !== undefined) canonicalVfToken(options.vfToken, `open ${bdf}`);
    return this.adopt(this.ops.openDevice(bdf, options));
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
