/**
 * What sysfs says about every PCI device, for `vfio list` and `vfio doctor`: IDs, class, IOMMU
 * group, driver, and whether VFIO can use the device's group.
 *
 * Group viability is judged the way the kernel judges it (a group is viable when no device in it is
 * bound to a driver that does DMA on its own), approximated from driver names: vfio-pci and its
 * variant drivers (`*_vfio_pci`), pci-stub and pcieport claim no DMA, and unbound devices are fine.
 *
 * @module
 */
import type { Sys } from "../lib/sys.ts";
import { canonicalPciAddress } from "../lib/pci_address.ts";
import { deviceCdev, PCI_DEVICES, pciAttr } from "../lib/sysfs.ts";

/** A PCI device as `vfio list --json` reports it. */
export interface DeviceSummary {
  /** The PCI address, e.g. `0000:00:04.0`. */
  bdf: string;
  /** Vendor ID, 4 lowercase hex digits without 0x. */
  vendor: string;
  /** Device ID, 4 lowercase hex digits. */
  device: string;
  /** Class code, 6 lowercase hex digits (base class, subclass, programming interface). */
  class: string;
  /** The base class's name, e.g. `Mass storage`. */
  className: string;
  /** The IOMMU group number, or null when the device has none. */
  iommuGroup: number | null;
  /** The bound driver, or null. */
  driver: string | null;
  /** VFIO's view of the device. */
  vfio: {
    /** Bound to vfio-pci (or a vfio-pci variant driver). */
    bound: boolean;
    /** The group node, `/dev/vfio/N` or `/dev/vfio/noiommu-N`, when it exists. */
    groupNode: string | null;
    /** Whether every device in the group is on vfio-pci, pci-stub, pcieport or unbound; null without a group. */
    groupViable: boolean | null;
    /** The device cdev, `/dev/vfio/devices/vfioN`, when the kernel made one. */
    cdev: string | null;
  };
}

/** A device in a group, and its driver. */
export interface GroupMember {
  /** The PCI address. */
  bdf: string;
  /** The bound driver, or null. */
  driver: string | null;
}

// pci_regs.h base classes, named as pci.ids names them.
// deno-fmt-ignore
const CLASS_NAMES: Record<number, string> = {
  0x00: "Unclassified", 0x01: "Mass storage", 0x02: "Network", 0x03: "Display", 0x04: "Multimedia",
  0x05: "Memory", 0x06: "Bridge", 0x07: "Communication", 0x08: "System peripheral", 0x09: "Input",
  0x0a: "Docking station", 0x0b: "Processor", 0x0c: "Serial bus", 0x0d: "Wireless", 0x0e: "Intelligent",
  0x0f: "Satellite", 0x10: "Encryption", 0x11: "Signal processing", 0x12: "Processing accelerator",
  0x13: "Non-essential instrumentation", 0x40: "Coprocessor", 0xff: "Unassigned",
};

/**
 * Names a PCI base class.
 *
 * @param classCode The 24-bit class code.
 * @returns The base class's name, or `Class 0xNN`.
 */
export function className(classCode: number): string {
  const base = (classCode >>> 16) & 0xff;
  return CLASS_NAMES[base] ?? `Class 0x${base.toString(16).padStart(2, "0")}`;
}

/**
 * Whether a driver belongs to VFIO: vfio-pci, or a variant driver such as mlx5_vfio_pci.
 *
 * @param driver A driver name.
 * @returns True for VFIO's PCI drivers.
 */
export function isVfioDriver(driver: string | null | undefined): boolean {
  return driver !== null && driver !== undefined && /(^|[-_])vfio[-_]pci$/.test(driver);
}

/**
 * Whether a driver leaves a group viable: it claims no DMA of its own.
 *
 * @param driver A driver name, or null for an unbound device.
 * @returns True for no driver, VFIO's, pci-stub and pcieport.
 */
export function isDmaSafeDriver(driver: string | null): boolean {
  return driver === null || isVfioDriver(driver) || driver === "pci-stub" || driver === "pcieport";
}

const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);

/**
 * The PCI devices sysfs lists, sorted; entries that are not PCI addresses are skipped.
 *
 * @param sys The syscall backend.
 * @returns Their canonical addresses.
 */
export function pciDevices(sys: Sys): string[] {
  const entries = sys.readDir(PCI_DEVICES);
  if (typeof entries === "number") return [];
  return entries.filter((e) => {
    try {
      return canonicalPciAddress(e) === e;
    } catch {
      return false;
    }
  });
}

/**
 * A device's driver, from its sysfs `driver` link.
 *
 * @param sys The syscall backend.
 * @param bdf A canonical PCI address.
 * @returns The driver, or null when unbound.
 */
export function driverName(sys: Sys, bdf: string): string | null {
  const link = sys.readLink(`${PCI_DEVICES}/${canonicalPciAddress(bdf)}/driver`);
  return typeof link === "string" ? basename(link) : null;
}

/**
 * A device's IOMMU group, from its sysfs `iommu_group` link.
 *
 * @param sys The syscall backend.
 * @param bdf A PCI address.
 * @returns The group number, or null when it has none.
 */
export function groupNumber(sys: Sys, bdf: string): number | null {
  const link = sys.readLink(`${PCI_DEVICES}/${canonicalPciAddress(bdf)}/iommu_group`);
  return typeof link === "string" ? Number(basename(link)) : null;
}

/**
 * The devices of an IOMMU group with their drivers, and whether the group is viable.
 *
 * @param sys The syscall backend.
 * @param group The group number.
 * @returns The members, the ones blocking viability, and the verdict.
 */
export function groupViability(
  sys: Sys,
  group: number,
): { members: GroupMember[]; blockers: GroupMember[]; viable: boolean } {
  const entries = sys.readDir(`/sys/kernel/iommu_groups/${group}/devices`);
  const members = (typeof entries === "number" ? [] : entries).map((bdf) => ({
    bdf,
    driver: driverName(sys, bdf),
  }));
  const blockers = members.filter((m) => !isDmaSafeDriver(m.driver));
  return { members, blockers, viable: blockers.length === 0 };
}

/**
 * The VFIO group node of a group, if it exists.
 *
 * @param vfioNodes The entries of /dev/vfio (empty when it is missing).
 * @param group The group number.
 * @returns `/dev/vfio/N`, `/dev/vfio/noiommu-N`, or null.
 */
export function groupNodePath(vfioNodes: readonly string[], group: number): string | null {
  if (vfioNodes.includes(String(group))) return `/dev/vfio/${group}`;
  if (vfioNodes.includes(`noiommu-${group}`)) return `/dev/vfio/noiommu-${group}`;
  return null;
}

/**
 * The entries of /dev/vfio.
 *
 * @param sys The syscall backend.
 * @returns The names, or none when /dev/vfio is missing.
 */
export function vfioNodes(sys: Sys): string[] {
  const entries = sys.readDir("/dev/vfio");
  return typeof entries === "number" ? [] : entries;
}

/**
 * A device's VFIO cdev, when the node exists (the library's lookup, with the CLI's null).
 *
 * @param sys The syscall backend.
 * @param bdf A PCI address.
 * @returns `/dev/vfio/devices/vfioN`, or null.
 */
export function deviceCdevPath(sys: Sys, bdf: string): string | null {
  return deviceCdev(sys, bdf) ?? null;
}

/**
 * Summarizes one device.
 *
 * @param sys The syscall backend.
 * @param bdf A PCI address of an existing device.
 * @param nodes The entries of /dev/vfio, from {@link vfioNodes}.
 * @returns The summary.
 */
export function summarize(sys: Sys, bdf: string, nodes: readonly string[] = vfioNodes(sys)): DeviceSummary {
  const name = canonicalPciAddress(bdf);
  const id = (attr: string, digits: number) =>
    (pciAttr(sys, name, attr) ?? "").replace(/^0x/, "").padStart(digits, "0").toLowerCase();
  const cls = id("class", 6);
  const group = groupNumber(sys, name);
  const driver = driverName(sys, name);
  const cdev = deviceCdevPath(sys, name);
  return {
    bdf: name,
    vendor: id("vendor", 4),
    device: id("device", 4),
    class: cls,
    className: className(parseInt(cls, 16) || 0),
    iommuGroup: group,
    driver,
    vfio: {
      bound: isVfioDriver(driver),
      groupNode: group === null ? null : groupNodePath(nodes, group),
      groupViable: group === null ? null : groupViability(sys, group).viable,
      cdev,
    },
  };
}
