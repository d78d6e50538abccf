/**
 * Opening a PCI device the usual way: choose the IOMMU backend, open the device into it, and give
 * it a DMA pool, all owned by one disposable handle.
 *
 * @module
 */
import { VfioContainer } from "./container.ts";
import type { VfioDevice } from "./device.ts";
import { DmaPool, type DmaPoolOptions } from "./dma.ts";
import { IOMMUFD_PATH, IommufdIoas } from "./iommufd.ts";
import type { IommuBackend } from "./iommu.ts";
import type { Sys } from "./sys.ts";
import { requirePciDevice } from "./sysfs.ts";
import { canonicalVfToken } from "./vf_token.ts";

/** Which IOMMU backend to use. */
export type BackendChoice = "auto" | "legacy" | "iommufd";

/** Options for {@link openIommu} and {@link openPciDevice}. */
export interface OpenOptions extends DmaPoolOptions {
  /**
   * `"legacy"` (container and group), `"iommufd"` (/dev/iommu and the device cdev), or `"auto"`
   * (default): iommufd when /dev/iommu and the device's cdev exist, legacy otherwise. The
   * environment variable VFIO_TS_BACKEND overrides `"auto"`.
   */
  backend?: BackendChoice;
  /** For the legacy backend: the IOMMU type (see ContainerOptions.iommuType). */
  iommuType?: number;
  /**
   * The VF token, a UUID, for {@link open}ing an SR-IOV VF whose PF is bound to vfio-pci (see
   * OpenDeviceOptions.vfToken); {@link openIommu} ignores it.
   */
  vfToken?: string;
}

/**
 * Opens an IOMMU backend, to open one or more devices into one address space.
 *
 * @param sys The syscall backend, from {@link loadSys}.
 * @param options Which backend.
 * @returns The backend; dispose it to release everything opened through it.
 * @throws {TypeError} If VFIO_TS_BACKEND or the option names an unknown backend.
 * @throws {VfioUnavailableError} If the kernel has no VFIO (or no iommufd, when asked for).
 *
 * @example Two devices in one IOMMU address space
 * ```ts
 * import { loadSys, openIommu } from "vfio-ts";
 *
 * using backend = openIommu(await loadSys());
 * const a = backend.openDevice("0000:00:04.0");
 * const b = backend.openDevice("0000:00:06.0");
 * console.log(backend.kind, a.info(), b.info());
 * ```
 */
export function openIommu(sys: Sys, options: OpenOptions = {}): IommuBackend {
  const choice = chooseBackend(sys, options.backend);
  if (choice === "iommufd") return IommufdIoas.open(sys);
  return VfioContainer.open(sys, options.iommuType === undefined ? {} : { iommuType: options.iommuType });
}

/**
 * Resolves `"auto"` to a concrete backend. Internal: the CLI uses it; not exported by mod.ts.
 *
 * @param sys The syscall backend.
 * @param choice The requested backend.
 * @returns `"legacy"` or `"iommufd"`.
 * @throws {TypeError} On an unknown name.
 */
export function chooseBackend(sys: Sys, choice: BackendChoice = "auto"): "legacy" | "iommufd" {
  const requested = choice === "auto" ? (sys.getenv("VFIO_TS_BACKEND") ?? "auto") : choice;
  if (requested === "legacy" || requested === "iommufd") return requested;
  if (requested !== "auto") {
    throw new TypeError(
      `Cannot use VFIO backend ${JSON.stringify(requested)}: expected auto, legacy or iommufd`,
    );
  }
  // As libvfn does: iommufd when the kernel has both /dev/iommu and device cdevs (vfioN, or
  // noiommu-vfioN for devices without an IOMMU, Linux 7.3+).
  const dev = sys.readDir("/dev");
  const cdevs = sys.readDir("/dev/vfio/devices");
  const hasIommufd = Array.isArray(dev) && dev.includes(IOMMUFD_PATH.slice("/dev/".length));
  const hasCdevs = Array.isArray(cdevs) && cdevs.some((n) => /^(?:noiommu-)?vfio\d+$/.test(n));
  return hasIommufd && hasCdevs ? "iommufd" : "legacy";
}

/** A device opened with its own IOMMU backend and DMA pool, by {@link open}; disposing it releases all three. */
export interface OpenedDevice extends Disposable {
  /** The IOMMU backend the device is attached to. */
  readonly backend: IommuBackend;
  /** The device. */
  readonly device: VfioDevice;
  /**
   * DMA memory mapped for the device. Throws on use in no-IOMMU mode, which has no translation.
   */
  readonly dma: DmaPool;
  /** Closes the DMA pool, the device and the backend, in that order. */
  close(): void;
}

/**
 * Opens a PCI device bound to vfio-pci.
 *
 * @param sys The syscall backend.
 * @param bdf The device's PCI address, e.g. `0000:00:04.0`.
 * @param options Backend choice and DMA limits.
 * @returns The device with its backend and DMA pool.
 * @throws {InvalidPciAddressError} If `bdf` is not a PCI address (before anything is opened).
 * @throws {DeviceNotFoundError} If no PCI device has that address.
 * @throws {VfioUnavailableError} If the machine has no VFIO.
 * @throws {DeviceNotBoundError} If the device is not bound to vfio-pci.
 * @throws {TypeError} If `options.vfToken` is not a string (before anything is opened).
 * @throws {RangeError} If `options.vfToken` is not a UUID.
 * @throws {VfioError} With the errno and the fix, if another step fails (EACCES for a missing or
 *   wrong VF token); nothing stays open then.
 */
export function openPciDevice(sys: Sys, bdf: string, options: OpenOptions = {}): OpenedDevice {
  // A malformed address or token, or a missing device, is named as such before any VFIO node opens.
  const name = requirePciDevice(sys, bdf);
  if (options.vfToken !== undefined) canonicalVfToken(options.vfToken, `open ${name}`);
  const backend = openIommu(sys, options);
  try {
    const device = backend.openDevice(bdf, options.vfToken === undefined ? {} : { vfToken: options.vfToken });
    let dma: DmaPool | undefined;
    const limit = options.limit;
    return {
      backend,
      device,
      get dma() {
        dma ??= new DmaPool(sys, backend, limit === undefined ? {} : { limit });
        return dma;
      },
      close: () => backend.close(),
      [Symbol.dispose]: () => backend.close(),
    };
  } catch (e) {
    backend.close();
    throw e;
  }
}
