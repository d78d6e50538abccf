/**
 * What sysfs says about PCI devices and IOMMU groups: the group of a device, the devices of a
 * group, their drivers and IDs. Every path is built from a validated PCI address.
 *
 * @module
 */
import {
  check,
  DeviceNotBoundError,
  DeviceNotFoundError,
  VfioError,
  VfioUnavailableError,
} from "./errors.ts";
import { canonicalPciAddress } from "./pci_address.ts";
import type { Sys } from "./sys.ts";
import { ERRNO } from "./uapi/libc.ts";

const ENOENT = ERRNO.ENOENT!;

/** Where sysfs lists PCI devices. */
export const PCI_DEVICES = "/sys/bus/pci/devices";

/** The sysfs directory of a PCI device. @throws {InvalidPciAddressError} If `bdf` is not a PCI address. */
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
    const noiommu = sys.readText("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode");
    const action = `find the IOMMU group of ${name}`;
    if (typeof noiommu === "string" && noiommu.trim() === "Y") {
      // Without an IOMMU, vfio's no-IOMMU mode makes a group only for a device bound to vfio-pci.
      throw new DeviceNotBoundError(name, driverOf(sys, name), {
        op: "readlink",
        errno: -link,
        path,
        action,
      });
    }
    throw new VfioError({
      op: "readlink",
      errno: -link,
      path,
      action,
      hint: "the device has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel " +
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
 * @throws {InvalidPciAddressError} If `bdf` is not a PCI address.
 * @throws {DeviceNotFoundError} If no such device exists.
 */
export function requirePciDevice(sys: Sys, bdf: string): string {
  const name = canonicalPciAddress(bdf);
  const vendor = sys.readText(`${pciDeviceDir(name)}/vendor`);
  if (typeof vendor === "number") {
    throw new DeviceNotFoundError(name, {
      op: "open",
      errno: -vendor,
      path: `${pciDeviceDir(name)}/vendor`,
      action: `find PCI device ${name}`,
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
 * @param attr The attribute, e.g. `vendor`: a plain file name.
 * @returns Its text, or undefined when it cannot be read.
 * @throws {TypeError} If `attr` is not a plain name (a path, `..`).
 */
export function pciAttr(sys: Sys, bdf: string, attr: string): string | undefined {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(attr)) {
    throw new TypeError(`Cannot read PCI attribute ${JSON.stringify(attr)}: expected a plain file name`);
  }
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
    const init = { op: "readdir", errno: -entries, path: "/dev/vfio", action: "list VFIO groups" };
    if (-entries === ENOENT) {
      throw new VfioUnavailableError({ ...init, hint: "load VFIO with modprobe vfio-pci (CONFIG_VFIO)" });
    }
    check(entries, init);
  }
  const names = entries as string[];
  if (names.includes(String(group))) return { path: `/dev/vfio/${group}`, noiommu: false };
  if (names.includes(`noiommu-${group}`)) return { path: `/dev/vfio/noiommu-${group}`, noiommu: true };
  // No syscall failed: the node is absent because no device of the group is bound to vfio-pci.
  const init = { op: "open", path: `/dev/vfio/${group}`, action: `open VFIO group ${group}` };
  if (bdf !== undefined) throw new DeviceNotBoundError(bdf, driverOf(sys, bdf), init);
  const member = groupDevices(sys, group)[0];
  if (member === undefined) throw new VfioError({ ...init, hint: `IOMMU group ${group} has no devices` });
  throw new DeviceNotBoundError(member, driverOf(sys, member), init);
}

/**
 * The VFIO device cdev of a PCI device, from /sys/bus/pci/devices/BDF/vfio-dev/:
 * `/dev/vfio/devices/vfioN`, or `/dev/vfio/devices/noiommu-vfioN` for a device without an IOMMU in
 * vfio's no-IOMMU mode (Linux 7.3+, CONFIG_IOMMUFD_NOIOMMU), as the legacy group is `noiommu-N`.
 *
 * @param sys The syscall backend.
 * @param bdf The device's PCI address.
 * @returns The cdev path, or undefined when the kernel made none (no CONFIG_VFIO_DEVICE_CDEV, no
 *   IOMMU before 7.3, or the device is not bound to vfio-pci).
 */
export function deviceCdev(sys: Sys, bdf: string): string | undefined {
  const entries = sys.readDir(`${pciDeviceDir(bdf)}/vfio-dev`);
  if (typeof entries === "number") return undefined;
  const name = entries.find((e) => /^(?:noiommu-)?vfio\d+$/.test(e));
  if (name === undefined) return undefined;
  // sysfs lists vfio-dev/vfioN since Linux 6.1 even without CONFIG_VFIO_DEVICE_CDEV: the node decides.
  const nodes = sys.readDir("/dev/vfio/devices");
  return Array.isArray(nodes) && nodes.includes(name) ? `/dev/vfio/devices/${name}` : undefined;
}
