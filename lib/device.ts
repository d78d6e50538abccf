/**
 * A VFIO device fd: info, regions, registers, interrupts, reset and features.
 *
 * @module
 */
import { checkDmaBufRanges, type DmaBufFd, type DmaBufOptions, exportDmaBuf } from "./dma_buf.ts";
import { runAll, UnsupportedError, VfioError } from "./errors.ts";
import type { OwnedFd } from "./fd.ts";
import { type IrqInfo, readIrqInfo, VfioIrq } from "./irq.ts";
import type { Registers } from "./mmio.ts";
import { PciConfig } from "./pci.ts";
import { readRegionInfo, type RegionInfo, VfioRegion } from "./region.ts";
import type { Sys } from "./sys.ts";
import { canonicalVfToken, vfTokenBytes } from "./vf_token.ts";
import {
  VFIO_DEVICE_FEATURE,
  vfio_device_feature,
  VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
  vfio_device_info,
  VFIO_DEVICE_PCI_HOT_RESET,
  VFIO_DEVICE_RESET,
  VFIO_PCI_CONFIG_REGION_INDEX,
  vfio_pci_dependent_device,
  vfio_pci_hot_reset,
  VFIO_PCI_HOT_RESET_FLAG_DEV_ID,
  vfio_pci_hot_reset_info,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
} from "./uapi/vfio.ts";

/** What VFIO_DEVICE_GET_INFO reports. */
export interface DeviceInfo {
  /** VFIO_DEVICE_FLAGS_* bits. */
  flags: number;
  /** Number of region indexes. */
  numRegions: number;
  /** Number of IRQ indexes. */
  numIrqs: number;
  /** A vfio-pci device. */
  pci: boolean;
  /** VFIO_DEVICE_RESET is supported. */
  reset: boolean;
}

/** A device affected by a hot reset (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO). */
export interface HotResetDependent {
  /** Its PCI address. */
  bdf: string;
  /** Its IOMMU group (legacy), or its iommufd device ID when `devid` is true. */
  id: number;
  /** Whether `id` is an iommufd device ID (cdev path) rather than a group number. */
  devid: boolean;
}

/** Options for {@link VfioDevice.registers} and {@link VfioRegion.registers}. */
export interface RegistersOptions {
  /**
   * `"auto"` (default) uses the mmap fast path where the region and backend allow it;
   * `"pread"` sends every access through the kernel. VFIO_TS_MMIO=pread in the environment forces
   * `"pread"` everywhere.
   */
  path?: "auto" | "pread";
}

/** Options for {@link VfioDevice.enableIrq}. */
export interface EnableIrqOptions {
  /** How many vectors to enable, from vector 0 (default 1). */
  count?: number;
}

/** Options for {@link VfioDevice.hotReset}. */
export interface HotResetOptions {
  /**
   * With the legacy backend, the fds of every group in {@link VfioDevice.hotResetInfo} (default:
   * the groups of the device's container). With iommufd (cdev), none: the kernel checks that the
   * iommufd owns every affected device.
   */
  groupFds?: readonly number[];
}

// vfio-pci drives one of these at a time (vfio_pci_set_irqs_ioctl answers EINVAL otherwise).
const INTERRUPT_TYPES: Record<number, string> = {
  [VFIO_PCI_INTX_IRQ_INDEX]: "INTx",
  [VFIO_PCI_MSI_IRQ_INDEX]: "MSI",
  [VFIO_PCI_MSIX_IRQ_INDEX]: "MSI-X",
};

let registerCloseHook: (device: VfioDevice, fn: () => void) => () => void;

/**
 * Registers teardown to run after a device's fd closes (its owners use it to forget the device).
 * Internal to the library: not exported by mod.ts.
 *
 * @param device The device.
 * @param fn The teardown.
 * @returns A function that unregisters it (for something that goes before the device does).
 */
export function onDeviceClose(device: VfioDevice, fn: () => void): () => void {
  return registerCloseHook(device, fn);
}

/**
 * An open VFIO device.
 *
 * Closing it closes, in reverse order of setup, its interrupts, its register mappings and its fd;
 * views and accessors made from it then throw instead of touching freed memory.
 *
 * Made by an IOMMU backend's `openDevice`, or by {@link open}.
 *
 * @example
 * ```ts
 * import { open } from "vfio-ts";
 *
 * using edu = await open("0000:00:04.0");
 * using bar0 = edu.device.registers(0);
 * console.log(bar0.read32(0).toString(16));
 * ```
 */
export class VfioDevice implements Disposable {
  readonly #fd: OwnedFd;
  readonly #regions = new Map<number, VfioRegion>();
  readonly #irqs = new Set<VfioIrq>();
  readonly #onClose: (() => void)[] = [];
  #info: DeviceInfo | undefined;
  #config: PciConfig | undefined;
  readonly #hotResetGroupFds: () => number[];

  readonly #dmaBufs = new Set<DmaBufFd>();

  static {
    registerCloseHook = (device, fn) => {
      device.#onClose.push(fn);
      return () => {
        const i = device.#onClose.indexOf(fn);
        if (i >= 0) device.#onClose.splice(i, 1);
      };
    };
  }

  /**
   * Wraps a device fd (from a group, or a bound cdev).
   *
   * @param sys The syscall backend.
   * @param fd The device fd, now owned by this object.
   * @param name The device's name, its PCI address for vfio-pci.
   * @param hotResetGroupFds What proves ownership for {@link hotReset}: the fds of the groups the
   *   opener holds (legacy), or none (a cdev bound to an iommufd).
   */
  constructor(
    readonly sys: Sys,
    fd: OwnedFd,
    readonly name: string,
    hotResetGroupFds: () => number[] = () => [],
  ) {
    this.#fd = fd;
    this.#hotResetGroupFds = hotResetGroupFds;
  }

  /** The device fd. @throws {TypeError} If closed. */
  get fd(): number {
    return this.#fd.fd;
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#fd.closed;
  }

  /**
   * Reads VFIO_DEVICE_GET_INFO (cached).
   *
   * @returns The flags and the region and IRQ counts.
   */
  info(): DeviceInfo {
    this.#fd.fd; // throws once closed, even when the info is cached
    if (this.#info) return this.#info;
    const s = vfio_device_info.alloc();
    this.#fd.ioctl(VFIO_DEVICE_GET_INFO, s.bytes, "VFIO_DEVICE_GET_INFO", `get info of ${this.name}`);
    const flags = s.get("flags");
    this.#info = {
      flags,
      numRegions: s.get("num_regions"),
      numIrqs: s.get("num_irqs"),
      pci: (flags & VFIO_DEVICE_FLAGS_PCI) !== 0,
      reset: (flags & VFIO_DEVICE_FLAGS_RESET) !== 0,
    };
    return this.#info;
  }

  /**
   * A region by index.
   *
   * @param index The region index, below `info().numRegions`.
   * @returns The region (cached).
   * @throws {RangeError} If the index is out of range.
   */
  region(index: number): VfioRegion {
    const n = this.info().numRegions;
    if (!Number.isInteger(index) || index < 0 || index >= n) {
      throw new RangeError(`Cannot use region ${index} of ${this.name}: it has regions 0..${n - 1}`);
    }
    let r = this.#regions.get(index);
    if (!r) {
      r = new VfioRegion(this.sys, this.#fd, readRegionInfo(this.#fd, index), `${this.name} region ${index}`);
      this.#regions.set(index, r);
    }
    return r;
  }

  /**
   * Region info with capabilities parsed.
   *
   * @param index The region index.
   * @returns The info.
   */
  regionInfo(index: number): RegionInfo {
    return this.region(index).info;
  }

  /**
   * Width-exact, bounds-checked access to a region's registers (usually a BAR).
   *
   * @param index The region index (0–5 for BARs).
   * @param options Which access path to use.
   * @returns The registers; closed with the device.
   * @throws {RangeError} If the index is out of range or the region is not implemented.
   */
  registers(index: number, options: RegistersOptions = {}): Registers {
    return this.region(index).registers(options);
  }

  /** PCI configuration space (the config region), read and written through the kernel. */
  get config(): PciConfig {
    this.#fd.fd; // throws once closed, even when the config is cached
    this.#config ??= new PciConfig(this.region(VFIO_PCI_CONFIG_REGION_INDEX));
    return this.#config;
  }

  /**
   * Reads VFIO_DEVICE_GET_IRQ_INFO.
   *
   * @param index The IRQ index.
   * @returns The info.
   * @throws {RangeError} If the index is out of range.
   */
  irqInfo(index: number): IrqInfo {
    const n = this.info().numIrqs;
    if (!Number.isInteger(index) || index < 0 || index >= n) {
      throw new RangeError(`Cannot use IRQ index ${index} of ${this.name}: it has indexes 0..${n - 1}`);
    }
    return readIrqInfo(this.#fd, index);
  }

  /**
   * Enables vectors of an IRQ index, each signalling an eventfd.
   *
   * @param index The IRQ index (VFIO_PCI_INTX_IRQ_INDEX, _MSI_, _MSIX_ …).
   * @param options How many vectors.
   * @returns The enabled IRQ; closing it disables the index.
   * @throws {RangeError} If the index or count is out of range (before any ioctl).
   * @throws {VfioError} If the kernel refuses.
   */
  enableIrq(index: number, options: EnableIrqOptions = {}): VfioIrq {
    const count = options.count ?? 1;
    if (!Number.isSafeInteger(count) || count < 1) {
      throw new RangeError(
        `Cannot enable ${count} vectors of IRQ index ${index}: count must be a positive integer`,
      );
    }
    const info = this.irqInfo(index);
    for (const live of this.#irqs) {
      if (live.index === index) {
        throw new TypeError(
          `Cannot enable IRQ index ${index} of ${this.name}: it is already enabled; close the first VfioIrq ` +
            "or keep using it (a second set of eventfds would replace the first)",
        );
      }
      if (INTERRUPT_TYPES[index] && INTERRUPT_TYPES[live.index]) {
        throw new TypeError(
          `Cannot enable ${INTERRUPT_TYPES[index]} on ${this.name}: ${
            INTERRUPT_TYPES[live.index]
          } is active, ` +
            "and vfio-pci allows one interrupt type at a time; close it first",
        );
      }
    }
    const irq = new VfioIrq(this.sys, this.#fd, info, count, () => this.#irqs.delete(irq));
    this.#irqs.add(irq);
    return irq;
  }

  /**
   * Resets the device (VFIO_DEVICE_RESET). The kernel saves the device's state around the reset and
   * restores its config space, MSI and MSI-X setup afterwards, and vfio keeps the eventfds attached:
   * enabled {@link VfioIrq}s keep firing with no re-arm (the lab checks this after a function reset
   * and after a hot reset, on both backends). The device's own registers are reset.
   *
   * @throws {UnsupportedError} If the device reports no reset method (no ioctl is made).
   * @throws {VfioError} If the reset fails.
   */
  reset(): void {
    if (!this.info().reset) {
      throw new UnsupportedError({
        op: "VFIO_DEVICE_RESET",
        path: this.#fd.path,
        action: `reset ${this.name}`,
        hint: "the device has no function-level reset method (FLR, PM or bus reset); try hotReset()",
      });
    }
    this.#fd.ioctl(VFIO_DEVICE_RESET, 0, "VFIO_DEVICE_RESET", `reset ${this.name}`);
  }

  /**
   * Lists the devices a PCI hot (bus) reset of this device would also reset.
   *
   * @returns The affected devices.
   * @throws {VfioError} If the device cannot be hot reset (ENODEV: no bus or slot reset).
   */
  hotResetInfo(): HotResetDependent[] {
    let s = vfio_pci_hot_reset_info.alloc();
    const query = () => {
      try {
        this.#fd.ioctl(
          VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
          s.bytes,
          "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO",
          `get hot reset info of ${this.name}`,
        );
        return true;
      } catch (e) {
        if (e instanceof VfioError && e.code === "ENOSPC") return false;
        throw e;
      }
    };
    if (!query()) {
      const count = s.get("count");
      if (count > 256) throw new RangeError(`Cannot get hot reset info: the kernel reports ${count} devices`);
      s = vfio_pci_hot_reset_info.alloc(count * vfio_pci_dependent_device.size);
      query();
    }
    const devid = (s.get("flags") & VFIO_PCI_HOT_RESET_FLAG_DEV_ID) !== 0;
    const h = (n: number, w: number) => n.toString(16).padStart(w, "0");
    return Array.from({ length: s.get("count") }, (_, i) => {
      const d = vfio_pci_dependent_device.at(
        s.bytes,
        vfio_pci_hot_reset_info.size + i * vfio_pci_dependent_device.size,
      );
      const devfn = d.get("devfn");
      return {
        bdf: `${h(d.get("segment"), 4)}:${h(d.get("bus"), 2)}:${h(devfn >> 3, 2)}.${devfn & 7}`,
        id: d.get("group_id") | 0,
        devid,
      };
    });
  }

  /**
   * Hot resets the bus or slot (VFIO_DEVICE_PCI_HOT_RESET).
   *
   * @param options Which group fds prove ownership (legacy backend).
   * @throws {VfioError} If the kernel refuses (EPERM: an affected device is not owned).
   */
  hotReset(options: HotResetOptions = {}): void {
    const groupFds = options.groupFds ?? this.#hotResetGroupFds();
    const s = vfio_pci_hot_reset.alloc(4 * groupFds.length);
    s.set("count", groupFds.length);
    groupFds.forEach((fd, i) => s.view.setInt32(vfio_pci_hot_reset.size + 4 * i, fd, true));
    this.#fd.ioctl(
      VFIO_DEVICE_PCI_HOT_RESET,
      s.bytes,
      "VFIO_DEVICE_PCI_HOT_RESET",
      `hot reset ${this.name}`,
      (code) =>
        code === "EPERM" || code === "EINVAL"
          ? "every device the reset affects must be owned by this process: see hotResetInfo()"
          : undefined,
    );
  }

  /**
   * Probes a device feature (VFIO_DEVICE_FEATURE with VFIO_DEVICE_FEATURE_PROBE).
   *
   * @param feature The feature index, e.g. VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY.
   * @param flags VFIO_DEVICE_FEATURE_GET and/or _SET: which directions to ask about.
   * @returns Whether the device supports the feature in those directions.
   * @throws {VfioError} On errors other than "not supported" (ENOTTY, EINVAL, EOPNOTSUPP).
   */
  featureSupported(feature: number, flags: number): boolean {
    const s = vfio_device_feature.alloc();
    s.set("flags", feature | flags | VFIO_DEVICE_FEATURE_PROBE);
    try {
      this.#fd.ioctl(
        VFIO_DEVICE_FEATURE,
        s.bytes,
        "VFIO_DEVICE_FEATURE",
        `probe feature ${feature} of ${this.name}`,
      );
      return true;
    } catch (e) {
      if (e instanceof VfioError && ["ENOTTY", "EINVAL", "EOPNOTSUPP"].includes(e.code)) return false;
      throw e;
    }
  }

  /**
   * Sets the VF token of an SR-IOV physical function (VFIO_DEVICE_FEATURE SET | PCI_VF_TOKEN): the
   * UUID that users of its VFs must then present to open them (`open(vf, { vfToken })`, or
   * `backend.openDevice(vf, { vfToken })`). vfio-pci starts every PF with a random token, so a VF
   * cannot be opened until the PF's user has shared one. The kernel refuses to read it back.
   *
   * @param uuid The token, a UUID such as `"bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3"`.
   * @throws {TypeError} If `uuid` is not a string (before any syscall).
   * @throws {RangeError} If it is not a UUID (before any syscall).
   * @throws {UnsupportedError} If the device keeps no VF token: it is not an SR-IOV PF (ENOTTY).
   * @throws {VfioError} If the kernel refuses otherwise.
   *
   * @example Share a token with the users of the PF's VFs
   * ```ts
   * import { open } from "vfio-ts";
   *
   * const token = crypto.randomUUID();
   * using pf = await open("0000:00:06.0");
   * pf.device.setVfToken(token);
   * using vf = await open("0000:00:06.2", { vfToken: token });
   * console.log(vf.device.info());
   * ```
   */
  setVfToken(uuid: string): void {
    const action = `set the VF token of ${this.name}`;
    const bytes = vfTokenBytes(canonicalVfToken(uuid, action));
    const s = vfio_device_feature.alloc(bytes.length);
    s.set("flags", VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN);
    s.bytes.set(bytes, vfio_device_feature.size);
    try {
      this.#fd.ioctl(VFIO_DEVICE_FEATURE, s.bytes, "VFIO_DEVICE_FEATURE", action);
    } catch (e) {
      if (!(e instanceof VfioError) || e.code !== "ENOTTY") throw e;
      // vfio_pci_core_feature_token: only an SR-IOV PF has a token (vdev->vf_token).
      throw new UnsupportedError({
        op: "VFIO_DEVICE_FEATURE",
        errno: e.errno,
        path: this.#fd.path,
        action,
        hint: `${this.name} keeps no VF token: it is not an SR-IOV physical function ` +
          "(sriov_totalvfs is missing in sysfs), or the kernel predates VF tokens (Linux 5.7)",
      });
    }
  }

  /**
   * Exports ranges of a BAR as a DMA-BUF (VFIO_DEVICE_FEATURE GET | DMA_BUF, Linux 6.19+): an fd
   * that stands for the device memory, for peer-to-peer DMA by another device
   * ({@link IommufdIoas.mapFile}, or {@link IommuBackend.mapPeerRegion}, which does this for you).
   * The device closes the DMA-BUF when it closes; the kernel revokes it when the device is closed
   * or reset.
   *
   * @param regionIndex The BAR's region index (0-5).
   * @param options The page-aligned slices of the BAR to export (default: all of it).
   * @returns The DMA-BUF, open read-write and close-on-exec.
   * @throws {RangeError} If the region is not an implemented BAR, or a range is not page-aligned
   *   inside it (before the export).
   * @throws {UnsupportedError} If the kernel cannot export DMA-BUFs (before Linux 6.19, without
   *   CONFIG_VFIO_PCI_DMABUF, or a driver that exports nothing): ENOTTY, EOPNOTSUPP or EINVAL.
   * @throws {VfioError} If the kernel refuses otherwise.
   *
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * using bar0 = edu.device.exportDmaBuf(0, { ranges: [{ offset: 0, length: 4096 }] });
   * console.log(bar0.fd, bar0.size); // 4096
   * ```
   */
  exportDmaBuf(regionIndex: number, options: DmaBufOptions = {}): DmaBufFd {
    const n = this.info().numRegions;
    const size = Number.isInteger(regionIndex) && regionIndex >= 0 && regionIndex < n
      ? this.region(regionIndex).info.size
      : 0;
    const ranges = checkDmaBufRanges(
      `region ${regionIndex} of ${this.name}`,
      regionIndex,
      size,
      this.sys.pageSize,
      options.ranges,
    );
    const buf = exportDmaBuf(this.sys, this.#fd, this.name, regionIndex, ranges);
    for (const b of this.#dmaBufs) if (b.closed) this.#dmaBufs.delete(b);
    this.#dmaBufs.add(buf);
    return buf;
  }

  /** Closes interrupts, register mappings, DMA-BUFs and the fd, in that order. Idempotent. */
  close(): void {
    if (this.#fd.closed) return;
    // An IRQ that cannot be disabled must not leave the BARs mapped and the device open.
    runAll(this.name, [
      ...[...this.#irqs].reverse().map((irq) => () => irq.close()),
      ...[...this.#regions.values()].map((r) => () => r.closeAll()),
      ...[...this.#dmaBufs].map((b) => () => b.close()),
      () => this.#fd.close(),
      ...this.#onClose.splice(0),
    ]);
  }

  /** Closes the device, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
