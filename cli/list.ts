/**
 * `vfio list`: every PCI device with its IDs, class, IOMMU group, driver and VFIO status.
 *
 * @module
 */
import type { Sys } from "../lib/sys.ts";
import { type DeviceSummary, pciDevices, summarize, vfioNodes } from "./devices.ts";
import { table } from "./format.ts";

/** What `vfio list --json` prints. */
export interface ListResult {
  /** The output format's version; it changes only when a field changes meaning or goes away. */
  version: 1;
  /** The devices, sorted by address. */
  devices: DeviceSummary[];
}

/**
 * Lists the PCI devices in /sys/bus/pci/devices.
 *
 * @param sys The syscall backend.
 * @returns The devices.
 */
export function list(sys: Sys): ListResult {
  const nodes = vfioNodes(sys);
  return { version: 1, devices: pciDevices(sys).map((bdf) => summarize(sys, bdf, nodes)) };
}

/**
 * Formats {@link list}'s result as a table.
 *
 * @param result The devices.
 * @returns The lines.
 */
export function formatList(result: ListResult): string[] {
  if (result.devices.length === 0) return ["no PCI devices in /sys/bus/pci/devices"];
  const rows = result.devices.map((d) => {
    const v = d.vfio;
    const status = d.iommuGroup === null ? (v.bound ? "bound, no group" : "no IOMMU group") : [
      v.bound ? "bound" : "-",
      v.groupNode ?? "",
      v.groupViable ? "viable" : "group not viable",
      v.cdev ?? "",
    ].filter((s) => s !== "").join(", ");
    return [
      d.bdf,
      `${d.vendor}:${d.device}`,
      `${d.class} ${d.className}`,
      d.iommuGroup === null ? "-" : String(d.iommuGroup),
      d.driver ?? "-",
      status,
    ];
  });
  return table([["ADDRESS", "ID", "CLASS", "GROUP", "DRIVER", "VFIO"], ...rows]);
}
