/**
 * vfio-ts: userspace PCI drivers in TypeScript, for Deno and Bun.
 *
 * A binding for the Linux VFIO interface: open a device bound to vfio-pci, access its registers
 * width-exactly, map DMA memory through the IOMMU, and receive interrupts through eventfds. The
 * core (lib/) is runtime-agnostic; ffi/ holds the Deno and Bun backends, chosen at load time.
 *
 * @example Read the edu device's ident register
 * ```ts ignore
 * import { open } from "./mod.ts";
 *
 * using vfio = await open("0000:00:04.0");
 * using bar0 = vfio.device.registers(0);
 * console.log(bar0.read32(0x00).toString(16)); // 10000ed
 * ```
 *
 * @module
 */
import { loadSys } from "./ffi/mod.ts";
import { type OpenedDevice, type OpenOptions, openPciDevice } from "./lib/open.ts";

export { loadSys } from "./ffi/mod.ts";
export * from "./lib/caps.ts";
export * from "./lib/container.ts";
export * from "./lib/device.ts";
export * from "./lib/dma.ts";
export * from "./lib/errors.ts";
export * from "./lib/fd.ts";
export * from "./lib/group.ts";
export * from "./lib/iommu.ts";
export * from "./lib/iommufd.ts";
export * from "./lib/iova_allocator.ts";
export * from "./lib/irq.ts";
export * from "./lib/limits.ts";
export * from "./lib/mmio.ts";
export * from "./lib/open.ts";
export * from "./lib/pci.ts";
export * from "./lib/pci_address.ts";
export * from "./lib/region.ts";
export * from "./lib/sys.ts";
export * from "./lib/sysfs.ts";
export * as uapi from "./lib/uapi/mod.ts";

/**
 * Opens a PCI device bound to vfio-pci with the runtime's libc backend.
 *
 * @param bdf The device's PCI address, e.g. `0000:00:04.0`.
 * @param options Backend choice and DMA limits.
 * @returns The device with its IOMMU backend and DMA pool; dispose it to close all of them.
 * @throws {VfioError} With the errno and the fix, if any step fails.
 *
 * @example
 * ```ts ignore
 * import { open } from "./mod.ts";
 * using vfio = await open("0000:00:04.0");
 * console.log(vfio.device.info());
 * ```
 */
export async function open(bdf: string, options: OpenOptions = {}): Promise<OpenedDevice> {
  return openPciDevice(await loadSys(), bdf, options);
}
