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
  const name = requirePciDevice(sys, bdf);
  const path = `${pciDeviceDir(name)}/iommu_group`;
  const link = sys.readLink(path);
  if (typeof link === "number") {
    // Without an IOMMU, vfio's no-IOMMU mode makes a group only for a device bound to vfio-pci.
    const noiommu = sys.readText("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode");
    throw new VfioError({
      op: "readlink",
      errno: -link,
      path,
      action: `find the IOMMU group of ${name}`,
      hint: typeof noiommu === "string" && noiommu.trim() === "Y"
        ? `${name} is bound to ${driverOf(sys, name) ?? "no driver"}, not vfio-pci, and in no-IOMMU mode ` +
          `only vfio-pci devices have a group: run \`vfio bind ${name}\``
        : "the device has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel " +
          "command line, with VT-d/AMD-Vi on in firmware), or for devices without one load vfio with " +
          "enable_unsafe_noiommu_mode=1",
    });
  }
  return Number(basename(link));
}

/**
 * Checks that a PCI device exists.
 *
 * @param sys The syscall backend.
 * @param bdf The device's PCI address.
 * @returns Its canonical address.
 * @throws {TypeError} If `bdf` is not a PCI address.
 * @throws {VfioError} If no such device exists.
 */
export function requirePciDevice(sys: Sys, bdf: string): string {
  const name = canonicalPciAddress(bdf);
  const vendor = sys.readText(`${pciDeviceDir(name)}/vendor`);
  if (typeof vendor === "number") {
    throw new VfioError({
      op: "open",
      errno: -vendor,
      path: pciDeviceDir(name),
      action: `find PCI device ${name}`,
      hint: `no PCI device ${name}: see lspci or \`vfio list\``,
    });
  }
  return name;
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
 * @param bdf The device the group is wanted for, to name it in the error.
 * @returns The path and whether it is a no-IOMMU group.
 * @throws {VfioError} If neither node exists.
 */
export function groupNode(sys: Sys, group: number, bdf?: string): { path: string; noiommu: boolean } {
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
    hint: bdf === undefined
      ? `no device of IOMMU group ${group} is bound to vfio-pci: bind one with \`vfio bind BDF\``
      : `${bdf} is bound to ${driverOf(sys, bdf) ?? "no driver"}, not vfio-pci: run \`vfio bind ${bdf}\``,
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
