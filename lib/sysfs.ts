/**
 * What sysfs says about PCI devices and IOMMU groups: the group of a device, the devices of a
 * group, their drivers and IDs. Every path is built from a validated PCI address.
 *
 * @module
 */
import { check, errnoName, VfioError } from "./errors.ts";
import { canonicalPciAddress } from "./pci_address.ts";
import type { Sys } from "./sys.ts";

/** Where sysfs lists PCI devices. */
export const PCI_DEVICES = "/sys/bus/pci/devices";

/** The sysfs directory of a PCI device. @throws {TypeError} If `bdf` is not a PCI address. */
export function pciDeviceDir(bdf: string): string {
  return `${PCI_DEVICES}/${canonicalPciAddress(bdf)}`;
}

const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);

/**
 * The IOMMU group number of a PCI device.
 *
 * @param sys The syscall backend.
 * @param bdf The device's PCI address.
 * @returns The group number.
 * @throws {VfioError} If the device does not exist or has no IOMMU group.
 */
export function iommuGroupOf(sys: Sys, bdf: string): number {
  const dir = pciDeviceDir(bdf);
  const link = sys.readLink(`${dir}/iommu_group`);
  if (typeof link === "number") {
    const exists = typeof sys.readLink(dir) === "string" || typeof sys.readText(`${dir}/vendor`) === "string";
    throw new VfioError({
      op: "readlink",
      errno: -link,
      path: `${dir}/iommu_group`,
      action: `find the IOMMU group of ${canonicalPciAddress(bdf)}`,
      hint: exists
        ? "the device has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel " +
          "command line, with VT-d/AMD-Vi on in firmware), or for devices without one load vfio with " +
          "enable_unsafe_noiommu_mode=1"
        : `no PCI device ${canonicalPciAddress(bdf)}: see lspci or \`vfio list\``,
    });
  }
  return Number(basename(link));
}

/**
 * The driver a PCI device is bound to.
 *
 * @param sys The syscall backend.
 * @param bdf The device's PCI address.
 * @returns The driver's name, or undefined when no driver is bound.
 */
export function driverOf(sys: Sys, bdf: string): string | undefined {
  const link = sys.readLink(`${pciDeviceDir(bdf)}/driver`);
  return typeof link === "string" ? basename(link) : undefined;
}

/**
 * The PCI addresses of the devices in an IOMMU group.
 *
 * @param sys The syscall backend.
 * @param group The group number.
 * @returns The addresses, sorted.
 * @throws {VfioError} If the group does not exist.
 */
export function groupDevices(sys: Sys, group: number): string[] {
  const path = `/sys/kernel/iommu_groups/${group}/devices`;
  const r = sys.readDir(path);
  if (typeof r === "number") {
    check(r, { op: "readdir", path, action: `list the devices of IOMMU group ${group}` });
  }
  return r as string[];
}

/**
 * Reads a sysfs attribute of a PCI device, trimmed.
 *
 * @param sys The syscall backend.
 * @param bdf The device's PCI address.
 * @param attr The attribute, e.g. `vendor`.
 * @returns Its text, or undefined when it cannot be read.
 */
export function pciAttr(sys: Sys, bdf: string, attr: string): string | undefined {
  const t = sys.readText(`${pciDeviceDir(bdf)}/${attr}`);
  return typeof t === "string" ? t.trim() : undefined;
}

/**
 * The VFIO group node for a group number: `/dev/vfio/N`, or `/dev/vfio/noiommu-N` when the group
 * was made by vfio's no-IOMMU mode.
 *
 * @param sys The syscall backend.
 * @param group The group number.
 * @returns The path and whether it is a no-IOMMU group.
 * @throws {VfioError} If neither node exists.
 */
export function groupNode(sys: Sys, group: number): { path: string; noiommu: boolean } {
  const entries = sys.readDir("/dev/vfio");
  if (typeof entries === "number") {
    throw new VfioError({
      op: "readdir",
      errno: -entries,
      path: "/dev/vfio",
      action: "list VFIO groups",
      hint: errnoName(-entries) === "ENOENT"
        ? "VFIO is not available: load it with modprobe vfio-pci (CONFIG_VFIO)"
        : undefined,
    });
  }
  if (entries.includes(String(group))) return { path: `/dev/vfio/${group}`, noiommu: false };
  if (entries.includes(`noiommu-${group}`)) return { path: `/dev/vfio/noiommu-${group}`, noiommu: true };
  throw new VfioError({
    op: "open",
    errno: 2,
    path: `/dev/vfio/${group}`,
    action: `open VFIO group ${group}`,
    hint: `no device of IOMMU group ${group} is bound to vfio-pci: bind one with \`vfio bind BDF\``,
  });
}

/**
 * The VFIO device cdev of a PCI device (`/dev/vfio/devices/vfioN`), from
 * /sys/bus/pci/devices/BDF/vfio-dev/.
 *
 * @param sys The syscall backend.
 * @param bdf The device's PCI address.
 * @returns The cdev path, or undefined when the kernel made none (no CONFIG_VFIO_DEVICE_CDEV, no
 *   IOMMU, or the device is not bound to vfio-pci).
 */
export function deviceCdev(sys: Sys, bdf: string): string | undefined {
  const entries = sys.readDir(`${pciDeviceDir(bdf)}/vfio-dev`);
  if (typeof entries === "number") return undefined;
  const name = entries.find((e) => /^vfio\d+$/.test(e));
  return name === undefined ? undefined : `/dev/vfio/devices/${name}`;
}
