/**
 * A VFIO container (/dev/vfio/vfio): the legacy type1 IOMMU backend, also used for no-IOMMU mode.
 *
 * @module
 */
import { capabilityChain } from "./caps.ts";
import { UnsupportedError, VfioUnavailableError } from "./errors.ts";
import { openFd, type OwnedFd } from "./fd.ts";
import type { VfioDevice } from "./device.ts";
import { VfioGroup } from "./group.ts";
import {
  type DmaAccess,
  interruptRemappingHint,
  IommuBase,
  type IommuOps,
  type IovaRange,
  type OpenDeviceOptions,
} from "./iommu.ts";
import { memlockHint } from "./limits.ts";
import type { Sys } from "./sys.ts";
import { iommuGroupOf } from "./sysfs.ts";
import { O_CLOEXEC, O_RDWR } from "./uapi/libc.ts";
import {
  VFIO_API_VERSION,
  VFIO_CHECK_EXTENSION,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_GET_API_VERSION,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_MAP_DMA,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  vfio_iommu_type1_info,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  vfio_iommu_type1_info_cap_iova_range,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  vfio_iommu_type1_info_dma_avail,
  VFIO_IOMMU_UNMAP_DMA,
  vfio_iova_range,
  VFIO_NOIOMMU_IOMMU,
  VFIO_SET_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
} from "./uapi/vfio.ts";

/** The container node. */
export const VFIO_CONTAINER_PATH = "/dev/vfio/vfio";

const VFIO_MISSING = "VFIO is not available on this machine: load it with modprobe vfio-pci " +
  "(CONFIG_VFIO, CONFIG_VFIO_CONTAINER), and check `vfio doctor`";

/** What VFIO_IOMMU_GET_INFO reports. */
export interface IommuInfo {
  /** Bitmap of supported IOMMU page sizes. */
  pageSizes: bigint;
  /** The usable IOVA ranges (the whole 64-bit space when the kernel reports none). */
  iovaRanges: IovaRange[];
  /** How many more DMA mappings the container accepts, when the kernel says. */
  dmaAvail: number | undefined;
}

/** vfio_iommu_type1's limit on DMA mappings per container, read when the container's IOMMU is set. */
export const DMA_ENTRY_LIMIT_PATH = "/sys/module/vfio_iommu_type1/parameters/dma_entry_limit";

// The fix for ENOSPC from MAP_DMA: the module parameter, with its current value when readable.
function dmaEntryLimitHint(sys: Sys): string {
  const text = sys.readText(DMA_ENTRY_LIMIT_PATH);
  const value = typeof text === "string" && /^\d+$/.test(text.trim()) ? text.trim() : undefined;
  return `the container holds as many DMA mappings as vfio_iommu_type1.dma_entry_limit allows (${
    value === undefined ? "65535 by default" : `now ${value}`
  }): use fewer, larger mappings, or raise the limit as root (echo N > ${DMA_ENTRY_LIMIT_PATH}, or ` +
    "vfio_iommu_type1.dma_entry_limit=N on the kernel command line) and open a new container";
}

/** Options for {@link VfioContainer.open}. */
export interface ContainerOptions {
  /**
   * The IOMMU type to set (VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU or VFIO_NOIOMMU_IOMMU). Default:
   * no-IOMMU for a noiommu group, else TYPE1v2 when the kernel has it, else TYPE1.
   */
  iommuType?: number;
}

const TYPE_NAMES: Record<number, string> = {
  [VFIO_TYPE1_IOMMU]: "type1",
  [VFIO_TYPE1v2_IOMMU]: "type1v2",
  [VFIO_NOIOMMU_IOMMU]: "noiommu",
};

const WHOLE_SPACE: IovaRange[] = [{ start: 0n, last: 0xffffffffffffffffn }];

/** Options for {@link VfioContainer.setIommu}. */
export interface SetIommuOptions {
  /** The IOMMU type; default as described in {@link ContainerOptions.iommuType}. */
  type?: number;
}

let attach: (container: VfioContainer, group: VfioGroup) => void;
let detach: (container: VfioContainer, group: VfioGroup) => void;

/**
 * Tells a container that a group attached to it (VFIO_GROUP_SET_CONTAINER succeeded). Internal to
 * the library (group.ts calls it): not exported by mod.ts.
 *
 * @param container The container.
 * @param group The group.
 */
export function groupAttached(container: VfioContainer, group: VfioGroup): void {
  attach(container, group);
}

/**
 * Tells a container that a group left (unset, or closed with no device left). When the last one
 * leaves, the kernel drops the IOMMU and every mapping with it. Internal, as {@link groupAttached}.
 *
 * @param container The container.
 * @param group The group.
 */
export function groupDetached(container: VfioContainer, group: VfioGroup): void {
  detach(container, group);
}

/**
 * A VFIO container. Groups attach to it; once one has, the IOMMU type is set and DMA can be mapped.
 *
 * @example
 * ```ts
 * import { loadSys, VfioContainer } from "vfio-ts";
 *
 * const sys = await loadSys();
 * using container = VfioContainer.open(sys);
 * const device = container.openDevice("0000:00:04.0"); // opens and attaches the group, sets the IOMMU
 * console.log(container.kind, container.iovaRanges());
 * ```
 */
export class VfioContainer extends IommuBase {
  readonly #fd: OwnedFd;
  readonly #groups = new Set<VfioGroup>();
  /** Groups this container opened itself (in openDevice), closed with it. */
  readonly #ownGroups = new Map<number, VfioGroup>();
  #type: number | undefined;
  #info: IommuInfo | undefined;
  #pageSize = 0;
  #pageSizeOf: IommuInfo | undefined;
  /** The container node. */
  readonly path: string = VFIO_CONTAINER_PATH;
  /** The kernel calls behind {@link IommuBase}. */
  protected readonly ops: IommuOps = {
    map: (vaddr, iova, size, access) => this.#map(vaddr, iova, size, access),
    unmap: (iova, size) => this.#unmap(iova, size),
    unmapAll: () => this.#unmapAll(),
    iovaRanges: () => this.#iovaRanges(),
    openDevice: (bdf, options) => this.#openDevice(bdf, options),
    mapPeer: (device, index, offset, length, iova, access) =>
      this.#mapPeer(device, index, offset, length, iova, access),
    physicalAddress: () => {
      // The IOMMU type is type1 here (a legacy no-IOMMU container maps nothing), so never reached
      // through IommuBase.busAddress; stated for completeness.
      throw new UnsupportedError({
        op: "busAddress",
        path: this.path,
        action: "get a physical address",
        hint:
          "the legacy container has no physical-address lookup: use iommufd (Linux 7.3+) in no-IOMMU mode",
      });
    },
    alive: () => this.#alive(),
    release: () => this.#release(),
  };

  static {
    attach = (c, group) => c.#groups.add(group);
    detach = (c, group) => {
      c.#groups.delete(group);
      // A group the container opened stays its own to close, even after the caller unset it.
      if (c.#groups.size === 0) {
        c.#type = undefined;
        c.#info = undefined;
        c.forgetMappings();
        c.addressSpaceGone();
      }
    };
  }

  readonly #sys: Sys;
  readonly #options: ContainerOptions;

  private constructor(sys: Sys, fd: OwnedFd, options: ContainerOptions) {
    super();
    this.#sys = sys;
    this.#fd = fd;
    this.#options = options;
  }

  /**
   * Opens /dev/vfio/vfio and checks the API version.
   *
   * @param sys The syscall backend.
   * @param options The IOMMU type to use, if not the default.
   * @returns The container.
   * @throws {VfioUnavailableError} If the kernel has no VFIO container, or speaks another API version.
   * @throws {VfioError} If /dev/vfio/vfio cannot be opened for another reason (EACCES).
   */
  static open(sys: Sys, options: ContainerOptions = {}): VfioContainer {
    const fd = openFd(sys, VFIO_CONTAINER_PATH, O_RDWR | O_CLOEXEC, (code) => {
      if (code === "EACCES") return "run as root, or give your user access to /dev/vfio/vfio";
      return undefined;
    }, (code) => code === "ENOENT" || code === "ENODEV" ? VFIO_MISSING : undefined);
    try {
      const version = fd.ioctl(VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION", "get the VFIO API version");
      if (version !== VFIO_API_VERSION) {
        throw new VfioUnavailableError({
          op: "VFIO_GET_API_VERSION",
          path: VFIO_CONTAINER_PATH,
          action: `use VFIO API version ${version}`,
          hint: `this library speaks version ${VFIO_API_VERSION}`,
        });
      }
      return new VfioContainer(sys, fd, options);
    } catch (e) {
      fd.close();
      throw e;
    }
  }

  /** The container fd. @throws {TypeError} If closed. */
  get fd(): number {
    return this.#fd.fd;
  }

  /** `"type1v2"`, `"type1"` or `"noiommu"` once the IOMMU is set, `"unset"` before. */
  get kind(): string {
    return this.#type === undefined ? "unset" : TYPE_NAMES[this.#type] ?? `type${this.#type}`;
  }

  /** False in no-IOMMU mode, which has no DMA translation. */
  get translates(): boolean {
    return this.#type !== VFIO_NOIOMMU_IOMMU;
  }

  /** The smallest page size VFIO_IOMMU_GET_INFO reports (the CPU page size before the IOMMU is set). */
  get iommuPageSize(): number {
    this.assertOpen();
    if (this.#type === undefined || !this.translates) return this.#sys.pageSize;
    // Read per map: derived once from the cached info (bigint arithmetic allocates).
    const info = this.#staticInfo();
    if (info !== this.#pageSizeOf) {
      const sizes = info.pageSizes;
      this.#pageSize = sizes === 0n ? this.#sys.pageSize : Number(sizes & -sizes);
      this.#pageSizeOf = info;
    }
    return this.#pageSize;
  }

  #alive(): boolean {
    return this.#type !== undefined && this.#groups.size > 0;
  }

  /**
   * Asks whether the kernel supports an extension or IOMMU type (VFIO_CHECK_EXTENSION).
   *
   * @param extension E.g. VFIO_TYPE1v2_IOMMU or VFIO_UNMAP_ALL.
   * @returns Whether it is supported.
   */
  checkExtension(extension: number): boolean {
    this.assertOpen();
    return this.#fd.ioctl(VFIO_CHECK_EXTENSION, extension, "VFIO_CHECK_EXTENSION", "check an extension") > 0;
  }

  /** The groups attached to this container. */
  get groups(): ReadonlySet<VfioGroup> {
    return this.#groups;
  }

  /**
   * Sets the IOMMU type (VFIO_SET_IOMMU). Needs at least one attached group.
   *
   * @param options The type; default as described in {@link ContainerOptions.iommuType}.
   * @throws {VfioError} If the kernel refuses (e.g. EPERM without interrupt remapping).
   */
  setIommu(options: SetIommuOptions = {}): void {
    this.assertOpen();
    const type = options.type ?? this.#options.iommuType;
    if (this.#type !== undefined) {
      if (type === undefined || type === this.#type) return;
      throw new TypeError(`Cannot set IOMMU type ${type}: the container already uses ${this.kind}`);
    }
    if (this.#groups.size === 0) {
      throw new TypeError("Cannot set the IOMMU type: attach a group to the container first");
    }
    const noiommu = [...this.#groups].some((g) => g.noiommu);
    const chosen = type ??
      (noiommu
        ? VFIO_NOIOMMU_IOMMU
        : this.checkExtension(VFIO_TYPE1v2_IOMMU)
        ? VFIO_TYPE1v2_IOMMU
        : VFIO_TYPE1_IOMMU);
    this.#fd.ioctl(VFIO_SET_IOMMU, chosen, "VFIO_SET_IOMMU", `set IOMMU type ${chosen}`, (code) => {
      if (code === "EPERM" && chosen !== VFIO_NOIOMMU_IOMMU) {
        return interruptRemappingHint("vfio_iommu_type1");
      }
      if (code === "EINVAL" || code === "ENODEV") {
        return `the kernel has no IOMMU type ${chosen}: see VFIO_CHECK_EXTENSION, or modprobe vfio_iommu_type1`;
      }
      return undefined;
    });
    this.#type = chosen;
  }

  /**
   * Reads VFIO_IOMMU_GET_INFO with its capabilities (IOVA ranges, DMA_AVAIL), re-querying with the
   * size the kernel asks for.
   *
   * @returns The page sizes, IOVA ranges and remaining mapping count.
   * @throws {TypeError} If no IOMMU type is set yet.
   */
  info(): IommuInfo {
    this.assertOpen();
    if (this.#type === undefined) throw new TypeError("Cannot get IOMMU info: set the IOMMU type first");
    if (!this.translates) return { pageSizes: 0n, iovaRanges: [], dmaAvail: undefined };
    if (this.#info) return { ...this.#info, dmaAvail: this.#readInfo().dmaAvail };
    this.#info = this.#readInfo();
    return this.#info;
  }

  // Page sizes and IOVA ranges are fixed once the IOMMU is set (until the last group leaves), so
  // the DMA path reads them once; only DMA_AVAIL changes and info() re-reads it.
  #staticInfo(): IommuInfo {
    this.#info ??= this.#readInfo();
    return this.#info;
  }

  #readInfo(): IommuInfo {
    let info = vfio_iommu_type1_info.alloc();
    this.#fd.ioctl(VFIO_IOMMU_GET_INFO, info.bytes, "VFIO_IOMMU_GET_INFO", "get IOMMU info");
    const argsz = info.get("argsz");
    if (argsz > info.bytes.length) {
      if (argsz > 1 << 20) throw new RangeError(`Cannot get IOMMU info: the kernel asks for ${argsz} bytes`);
      info = vfio_iommu_type1_info.alloc(argsz - vfio_iommu_type1_info.size);
      this.#fd.ioctl(VFIO_IOMMU_GET_INFO, info.bytes, "VFIO_IOMMU_GET_INFO", "get IOMMU info");
    }
    const flags = info.get("flags");
    const result: IommuInfo = {
      pageSizes: flags & VFIO_IOMMU_INFO_PGSIZES ? info.get("iova_pgsizes") : 0n,
      iovaRanges: WHOLE_SPACE,
      dmaAvail: undefined,
    };
    if (!(flags & VFIO_IOMMU_INFO_CAPS)) return result;
    for (const cap of capabilityChain(info.bytes, info.get("cap_offset"), vfio_iommu_type1_info.size)) {
      const region = info.bytes.subarray(cap.offset, cap.offset + cap.length);
      if (cap.id === VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
        const n = vfio_iommu_type1_info_cap_iova_range.at(region).get("nr_iovas");
        const base = vfio_iommu_type1_info_cap_iova_range.size;
        if (base + n * vfio_iova_range.size > region.length) {
          throw new RangeError(`Cannot parse the IOVA range capability: ${n} ranges overrun it`);
        }
        result.iovaRanges = Array.from({ length: n }, (_, i) => {
          const r = vfio_iova_range.at(region, base + i * vfio_iova_range.size);
          return { start: r.get("start"), last: r.get("end") };
        });
      } else if (cap.id === VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL) {
        result.dmaAvail = vfio_iommu_type1_info_dma_avail.at(region).get("avail");
      }
    }
    return result;
  }

  #iovaRanges(): readonly IovaRange[] {
    this.#requireIommu("list IOVA ranges");
    return this.#staticInfo().iovaRanges;
  }

  // Map and unmap run per DMA buffer: their argument structs are made once and refilled (JavaScript
  // is single-threaded, and the kernel copies them in before returning).
  readonly #mapArg = vfio_iommu_type1_dma_map.alloc();
  readonly #unmapArg = vfio_iommu_type1_dma_unmap.alloc();

  #map(vaddr: bigint, iova: bigint, size: number, access: DmaAccess): void {
    const m = this.#mapArg;
    m.set("flags", (access.read ? VFIO_DMA_MAP_FLAG_READ : 0) | (access.write ? VFIO_DMA_MAP_FLAG_WRITE : 0));
    m.set("vaddr", vaddr).set("iova", iova).setU64("size", size);
    this.#fd.ioctl(
      VFIO_IOMMU_MAP_DMA,
      m.bytes,
      "VFIO_IOMMU_MAP_DMA",
      () => `map DMA at iova 0x${iova.toString(16)} (size 0x${size.toString(16)})`,
      (code) => {
        if (code === "ENOMEM" || code === "EAGAIN") return memlockHint(this.#sys, size);
        if (code === "ENOSPC") return dmaEntryLimitHint(this.#sys);
        if (code === "EEXIST") return "the IOVA range overlaps an existing mapping";
        if (code === "EFAULT") return "the virtual address range is not mapped in this process";
        return undefined;
      },
    );
  }

  #unmap(iova: bigint, size: number): void {
    const u = this.#unmapArg;
    u.set("flags", 0).set("iova", iova).setU64("size", size);
    this.#fd.ioctl(
      VFIO_IOMMU_UNMAP_DMA,
      u.bytes,
      "VFIO_IOMMU_UNMAP_DMA",
      () => `unmap DMA at iova 0x${iova.toString(16)}`,
    );
  }

  #unmapAll(): void {
    if (this.checkExtension(VFIO_UNMAP_ALL)) {
      const u = vfio_iommu_type1_dma_unmap.alloc();
      u.set("flags", VFIO_DMA_UNMAP_FLAG_ALL);
      this.#fd.ioctl(VFIO_IOMMU_UNMAP_DMA, u.bytes, "VFIO_IOMMU_UNMAP_DMA", "unmap all DMA");
      return;
    }
    for (const [iova, size] of this.mappings) this.#unmap(iova, size);
  }

  #requireIommu(action: string): void {
    if (this.#type === undefined) throw new TypeError(`Cannot ${action}: set the IOMMU type first`);
    if (!this.translates) {
      // No ioctl failed: the container runs VFIO_NOIOMMU_IOMMU, which has no DMA ioctls to call.
      throw new UnsupportedError({
        op: "VFIO_IOMMU_MAP_DMA",
        path: this.path,
        action,
        hint: "no-IOMMU mode has no IOMMU translation to program: the device sees physical addresses",
      });
    }
  }

  /**
   * Maps DMA as {@link IommuBase.mapDma} does, first refusing plainly in no-IOMMU mode.
   *
   * @param vaddr Process address, page-aligned.
   * @param iova Device address, page-aligned.
   * @param size Bytes, page-aligned.
   * @param access Device read/write rights.
   * @throws {UnsupportedError} In no-IOMMU mode.
   * @throws {VfioError} When the kernel refuses.
   */
  override mapDma(vaddr: bigint, iova: bigint, size: number, access?: DmaAccess): void {
    this.assertOpen();
    // The message is built only when it is needed: this runs per map.
    if (this.#type === undefined || !this.translates) {
      this.#requireIommu(`map DMA at iova 0x${iova.toString(16)}`);
    }
    super.mapDma(vaddr, iova, size, access);
  }

  // type1 pins device memory too (vaddr_get_pfns follows VM_PFNMAP), so a peer's BAR is mapped
  // through its mmap.
  #mapPeer(
    device: VfioDevice,
    index: number,
    offset: number,
    length: number,
    iova: bigint,
    access: Required<DmaAccess>,
  ): () => void {
    const region = device.region(index);
    const m = region.map(offset, length);
    try {
      this.#map(m.address, iova, length, access);
    } catch (e) {
      region.unmap(m);
      throw e;
    }
    return () => region.unmap(m);
  }

  #openDevice(bdf: string, options: OpenDeviceOptions): VfioDevice {
    const number = iommuGroupOf(this.#sys, bdf);
    const own = this.#ownGroups.get(number);
    if (own?.closed) this.#ownGroups.delete(number);
    let group = (own?.closed ? undefined : own) ?? [...this.#groups].find((g) => g.group === number);
    let opened = false;
    if (!group) {
      group = VfioGroup.open(this.#sys, number, { device: bdf });
      opened = true;
    }
    try {
      group.setContainer(this);
      this.setIommu();
      if (opened) this.#ownGroups.set(number, group);
      return group.getDevice(bdf, options);
    } catch (e) {
      if (opened) group.close();
      throw e;
    }
  }

  #release(): void {
    try {
      for (const g of [...this.#ownGroups.values()].reverse()) g.close();
    } finally {
      this.#fd.close();
    }
  }
}
