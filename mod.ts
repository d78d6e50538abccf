/**
 * vfio-ts: userspace PCI drivers in TypeScript, for Deno and Bun.
 *
 * A binding for the Linux VFIO interface: open a device bound to vfio-pci, access its registers
 * width-exactly, map DMA memory through the IOMMU, and receive interrupts through eventfds. The
 * same code runs under `deno run --allow-ffi` and under `bun`.
 *
 * Numbers follow one rule: addresses (process addresses, IOVAs) are `bigint`; sizes, offsets,
 * counts and indexes are `number`, and must be safe integers. Absent values are `undefined`.
 *
 * @example Read the edu device's ident register
 * ```ts
 * import { open } from "vfio-ts";
 *
 * using edu = await open("0000:00:04.0");
 * using bar0 = edu.device.registers(0);
 * console.log(bar0.read32(0x00).toString(16)); // 10000ed
 * ```
 *
 * @module
 */
import { loadSys } from "./ffi/mod.ts";
import { type OpenedDevice, type OpenOptions, openPciDevice } from "./lib/open.ts";

// Opening devices
export { loadSys } from "./ffi/mod.ts";
export { type BackendChoice, type OpenedDevice, openIommu, type OpenOptions } from "./lib/open.ts";

// IOMMU backends: the legacy container and iommufd, behind one interface
export {
  type DmaAccess,
  type IommuBackend,
  type IommuBase,
  type IommuOps,
  type IovaRange,
  type OpenDeviceOptions,
  PeerMapping,
  type PeerRegionOptions,
} from "./lib/iommu.ts";
export {
  type ContainerOptions,
  type IommuInfo,
  type SetIommuOptions,
  VFIO_CONTAINER_PATH,
  VfioContainer,
} from "./lib/container.ts";
export { type GroupMember, type GroupOpenOptions, type GroupStatus, VfioGroup } from "./lib/group.ts";
export { IOMMUFD_PATH, IommufdIoas, type IommufdOptions, type MapFileOptions } from "./lib/iommufd.ts";

// Devices, regions, registers, interrupts, configuration space
export type {
  DeviceInfo,
  EnableIrqOptions,
  HotResetDependent,
  HotResetOptions,
  RegistersOptions,
  VfioDevice,
} from "./lib/device.ts";
export type { RegionInfo, RegionMapping, SparseArea, VfioRegion } from "./lib/region.ts";
export { DmaBufFd, type DmaBufOptions, type DmaBufRange } from "./lib/dma_buf.ts";
export type { MmioPath, Registers } from "./lib/mmio.ts";
export type { IrqInfo, IrqVectorOptions, IrqVectorRange, IrqWaitOptions, VfioIrq } from "./lib/irq.ts";
export type {
  PciBar,
  PciCapability,
  PciCommandBits,
  PciConfig,
  PciExtendedCapability,
  PciMsi,
  PciMsix,
} from "./lib/pci.ts";
export { formatPciAddress, parsePciAddress, type PciAddress } from "./lib/pci_address.ts";

// DMA memory
export {
  type DmaAllocOptions,
  type DmaBuffer,
  DmaPool,
  type DmaPoolOptions,
  type DmaViewOptions,
} from "./lib/dma.ts";
export { IovaAllocator, type IovaAllocOptions } from "./lib/iova_allocator.ts";

// Errors
export {
  DeviceNotBoundError,
  DeviceNotFoundError,
  InvalidPciAddressError,
  UnsupportedError,
  VfioError,
  type VfioErrorInit,
  VfioUnavailableError,
} from "./lib/errors.ts";
export { GroupNotViableError } from "./lib/group.ts";

// The syscall seam, for tests and other backends
export type { RawMmio, Sys } from "./lib/sys.ts";

// The kernel's numbers: the everyday ones by name, all of them under `uapi`
export {
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR5_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_REQ_IRQ_INDEX,
  VFIO_PCI_ROM_REGION_INDEX,
} from "./lib/uapi/vfio.ts";
export * as uapi from "./lib/uapi/mod.ts";

/**
 * Opens a PCI device bound to vfio-pci, with its own IOMMU backend and DMA pool.
 *
 * @param bdf The device's PCI address, e.g. `0000:00:04.0`.
 * @param options Backend choice, the device's DMA limit, and the VF token of an SR-IOV VF.
 * @returns The device with its IOMMU backend and DMA pool; dispose it to close all of them.
 * @throws {InvalidPciAddressError} If `bdf` is not a PCI address (before anything is opened).
 * @throws {TypeError} If `options.vfToken` is not a string (before anything is opened).
 * @throws {RangeError} If `options.vfToken` is not a UUID (before anything is opened).
 * @throws {DeviceNotFoundError} If no PCI device has that address.
 * @throws {VfioUnavailableError} If the machine has no VFIO.
 * @throws {DeviceNotBoundError} If the device is bound to another driver: `vfio bind BDF`.
 * @throws {UnsupportedError} With a VF token on iommufd, if the kernel cannot bind with one (6.17+).
 * @throws {VfioError} With the errno and the fix, if another step fails: EACCES when an SR-IOV VF
 *   needs the VF token of its PF (`{ vfToken }`).
 *
 * @example
 * ```ts
 * import { open } from "vfio-ts";
 *
 * using edu = await open("0000:00:04.0", { limit: (1n << 28n) - 1n }); // edu DMA is 28-bit
 * console.log(edu.device.info());
 * ```
 *
 * @example An SR-IOV VF whose PF is on vfio-pci, with the token the PF's user set
 * ```ts
 * import { open } from "vfio-ts";
 *
 * using vf = await open("0000:00:06.2", { vfToken: "bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3" });
 * console.log(vf.device.config.read16(0)); // the vendor ID
 * ```
 */
export async function open(bdf: string, options: OpenOptions = {}): Promise<OpenedDevice> {
  return openPciDevice(await loadSys(), bdf, options);
}
