/**
 * The kernel uapi tables: VFIO, iommufd, PCI config space and libc, under the kernel's names.
 *
 * @module
 */
export * from "./ioctl.ts";
export * from "./iommufd.ts";
export * from "./libc.ts";
export * from "./pci.ts";
export * from "./struct.ts";
export * from "./vfio.ts";
