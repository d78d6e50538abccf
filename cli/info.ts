/**
 * `vfio info BDF`: a vfio-pci device as VFIO and its config space describe it, like `lspci -vv`
 * seen through VFIO: device flags, regions with their capabilities, IRQ indexes, PCI capabilities,
 * BARs, MSI and MSI-X, and the IOMMU backend the library chose with its IOVA ranges.
 *
 * The device is opened for this (so it must be bound to vfio-pci, with a viable group, and not
 * open elsewhere); opening it lets vfio-pci reset it.
 *
 * @module
 */
import { VfioError } from "../lib/errors.ts";
import { type BackendChoice, chooseBackend, openPciDevice } from "../lib/open.ts";
import type { PciBar, PciMsi, PciMsix } from "../lib/pci.ts";
import type { Sys } from "../lib/sys.ts";
import { requirePciDevice } from "../lib/sysfs.ts";
import {
  VFIO_DEVICE_FLAGS_AMBA,
  VFIO_DEVICE_FLAGS_AP,
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_DEVICE_FLAGS_CCW,
  VFIO_DEVICE_FLAGS_CDX,
  VFIO_DEVICE_FLAGS_FSL_MC,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_PLATFORM,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from "../lib/uapi/vfio.ts";
import { type DeviceSummary, summarize } from "./devices.ts";
import { flagNames, hex, size } from "./format.ts";

/** One region, as `vfio info --json` reports it. */
export interface RegionReport {
  /** The region index. */
  index: number;
  /** `BAR0`–`BAR5`, `ROM`, `CONFIG`, `VGA`, or `REGION<n>` for device-specific ones. */
  name: string;
  /** Size in bytes (0: not implemented). */
  size: number;
  /** Offset of the region in the device fd. */
  offset: number;
  /** VFIO_REGION_INFO_FLAG_* bits, and their names (`READ`, `WRITE`, `MMAP`, `CAPS`). */
  flags: number;
  flagNames: string[];
  /** The mmap-able areas when the kernel restricts them, else null. */
  sparse: { offset: number; size: number }[] | null;
  /** VFIO_REGION_INFO_CAP_TYPE, else null. */
  type: { type: number; subtype: number } | null;
  /** VFIO_REGION_INFO_CAP_MSIX_MAPPABLE is present. */
  msixMappable: boolean;
  /** Every capability ID in the region's chain, with names where known. */
  capabilities: { id: number; name: string }[];
}

/** One IRQ index, as `vfio info --json` reports it. */
export interface IrqReport {
  /** The IRQ index. */
  index: number;
  /** `INTX`, `MSI`, `MSIX`, `ERR`, `REQ`, or `IRQ<n>`. */
  name: string;
  /** Vectors the index has. */
  count: number;
  /** VFIO_IRQ_INFO_* bits and their names (`EVENTFD`, `MASKABLE`, `AUTOMASKED`, `NORESIZE`). */
  flags: number;
  flagNames: string[];
}

/** What `vfio info --json` prints. */
export interface InfoResult {
  /** The output format's version. */
  version: 1;
  /** The sysfs view, as in `vfio list`. */
  sysfs: DeviceSummary;
  /** The IOMMU backend the device was opened with. */
  backend: {
    /** What chooseBackend picked: `legacy` or `iommufd`. */
    chosen: "legacy" | "iommufd";
    /** The backend's kind: `type1v2`, `type1`, `noiommu` or `iommufd`. */
    kind: string;
    /** Whether it maps DMA (false in no-IOMMU mode). */
    translates: boolean;
    /** The smallest IOMMU page size in bytes. */
    pageSize: number;
    /** The usable IOVA ranges, inclusive, as hex strings; empty in no-IOMMU mode. */
    iovaRanges: { start: string; last: string }[];
  };
  /** VFIO_DEVICE_GET_INFO. */
  device: { flags: number; flagNames: string[]; numRegions: number; numIrqs: number };
  /** The regions whose info the kernel gives (a VGA region only on VGA devices). */
  regions: RegionReport[];
  /** The IRQ indexes whose info the kernel gives (ERR only on PCIe devices). */
  irqs: IrqReport[];
  /** Config space header registers, as numbers. */
  config: {
    size: number;
    vendor: number;
    device: number;
    revision: number;
    class: number;
    headerType: number;
    command: number;
    status: number;
    subsystemVendor: number;
    subsystem: number;
    interruptPin: number;
    interruptLine: number;
  };
  /** The standard capability list. */
  capabilities: { id: number; name: string | null; offset: number }[];
  /** The PCIe extended capability list (empty for conventional PCI). */
  extendedCapabilities: { id: number; name: string | null; version: number; offset: number }[];
  /** The implemented BARs, decoded; `address` is a hex string. */
  bars: (Omit<PciBar, "address"> & { address: string })[];
  /** The MSI capability, or null. */
  msi: PciMsi | null;
  /** The MSI-X capability, or null. */
  msix: PciMsix | null;
}

const DEVICE_FLAGS = {
  [VFIO_DEVICE_FLAGS_RESET]: "RESET",
  [VFIO_DEVICE_FLAGS_PCI]: "PCI",
  [VFIO_DEVICE_FLAGS_PLATFORM]: "PLATFORM",
  [VFIO_DEVICE_FLAGS_AMBA]: "AMBA",
  [VFIO_DEVICE_FLAGS_CCW]: "CCW",
  [VFIO_DEVICE_FLAGS_AP]: "AP",
  [VFIO_DEVICE_FLAGS_FSL_MC]: "FSL_MC",
  [VFIO_DEVICE_FLAGS_CAPS]: "CAPS",
  [VFIO_DEVICE_FLAGS_CDX]: "CDX",
};
const REGION_FLAGS = {
  [VFIO_REGION_INFO_FLAG_READ]: "READ",
  [VFIO_REGION_INFO_FLAG_WRITE]: "WRITE",
  [VFIO_REGION_INFO_FLAG_MMAP]: "MMAP",
  [VFIO_REGION_INFO_FLAG_CAPS]: "CAPS",
};
const REGION_CAPS: Record<number, string> = {
  [VFIO_REGION_INFO_CAP_SPARSE_MMAP]: "SPARSE_MMAP",
  [VFIO_REGION_INFO_CAP_TYPE]: "TYPE",
  [VFIO_REGION_INFO_CAP_MSIX_MAPPABLE]: "MSIX_MAPPABLE",
};
const IRQ_FLAGS = {
  [VFIO_IRQ_INFO_EVENTFD]: "EVENTFD",
  [VFIO_IRQ_INFO_MASKABLE]: "MASKABLE",
  [VFIO_IRQ_INFO_AUTOMASKED]: "AUTOMASKED",
  [VFIO_IRQ_INFO_NORESIZE]: "NORESIZE",
};
const REGION_NAMES = ["BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA"];
const IRQ_NAMES = ["INTX", "MSI", "MSIX", "ERR", "REQ"];

// Region and IRQ indexes a device does not have (VGA, ERR on conventional PCI) answer EINVAL.
function unlessInvalid<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (e) {
    if (e instanceof VfioError && e.code === "EINVAL") return undefined;
    throw e;
  }
}

/**
 * Opens a device and reports everything VFIO and its config space say about it.
 *
 * @param sys The syscall backend.
 * @param bdf The device's PCI address.
 * @param backend Which IOMMU backend to open it with.
 * @returns The report.
 * @throws {VfioError} If the device cannot be opened.
 */
export function info(sys: Sys, bdf: string, backend: BackendChoice = "auto"): InfoResult {
  const name = requirePciDevice(sys, bdf);
  const sysfs = summarize(sys, name);
  const chosen = chooseBackend(sys, backend);
  using v = openPciDevice(sys, name, { backend: chosen });
  const d = v.device;
  const di = d.info();
  const regions: RegionReport[] = [];
  for (let i = 0; i < di.numRegions; i++) {
    const r = unlessInvalid(() => d.regionInfo(i));
    if (!r) continue;
    regions.push({
      index: i,
      name: REGION_NAMES[i] ?? `REGION${i}`,
      size: r.size,
      offset: r.offset,
      flags: r.flags,
      flagNames: flagNames(r.flags, REGION_FLAGS),
      sparse: r.sparse ?? null,
      type: r.type ?? null,
      msixMappable: r.msixMappable,
      capabilities: r.capabilities.map((id) => ({ id, name: REGION_CAPS[id] ?? `CAP${id}` })),
    });
  }
  const irqs: IrqReport[] = [];
  for (let i = 0; i < di.numIrqs; i++) {
    const q = unlessInvalid(() => d.irqInfo(i));
    if (!q) continue;
    irqs.push({
      index: i,
      name: IRQ_NAMES[i] ?? `IRQ${i}`,
      count: q.count,
      flags: q.flags,
      flagNames: flagNames(q.flags, IRQ_FLAGS),
    });
  }
  const c = d.config;
  const barSizes = [0, 1, 2, 3, 4, 5].map((i) => regions.find((r) => r.index === i)?.size ?? 0);
  return {
    version: 1,
    sysfs,
    backend: {
      chosen,
      kind: v.backend.kind,
      translates: v.backend.translates,
      pageSize: Number(v.backend.iommuPageSize),
      iovaRanges: v.backend.translates
        ? v.backend.iovaRanges().map((r) => ({ start: hex(r.start), last: hex(r.last) }))
        : [],
    },
    device: {
      flags: di.flags,
      flagNames: flagNames(di.flags, DEVICE_FLAGS),
      numRegions: di.numRegions,
      numIrqs: di.numIrqs,
    },
    regions,
    irqs,
    config: {
      size: c.size,
      vendor: c.vendorId,
      device: c.deviceId,
      revision: c.revision,
      class: c.classCode,
      headerType: c.headerType,
      command: c.command,
      status: c.status,
      subsystemVendor: c.subsystemVendorId,
      subsystem: c.subsystemId,
      interruptPin: c.interruptPin,
      interruptLine: c.interruptLine,
    },
    capabilities: c.capabilities().map((k) => ({ id: k.id, name: k.name ?? null, offset: k.offset })),
    extendedCapabilities: c.extendedCapabilities().map((k) => ({
      id: k.id,
      name: k.name ?? null,
      version: k.version,
      offset: k.offset,
    })),
    // Only a normal (type 0) header has six BARs; vfio-pci does not take bridges anyway.
    bars: c.headerType === 0 ? c.bars(barSizes).map((b) => ({ ...b, address: hex(b.address) })) : [],
    msi: c.msi() ?? null,
    msix: c.msix() ?? null,
  };
}

const pm = (b: boolean) => (b ? "+" : "-");

/**
 * Formats {@link info}'s report like `lspci -vv`.
 *
 * @param r The report.
 * @returns The lines.
 */
export function formatInfo(r: InfoResult): string[] {
  const s = r.sysfs;
  const out = [
    `${s.bdf} ${s.vendor}:${s.device} ${s.className} [${s.class}] (rev ${hex(r.config.revision, 2)})`,
    `\tDriver: ${s.driver ?? "none"}, IOMMU group ${s.iommuGroup ?? "none"}` +
    `${s.vfio.groupNode ? `, ${s.vfio.groupNode}` : ""}${s.vfio.cdev ? `, ${s.vfio.cdev}` : ""}`,
    `\tIOMMU backend: ${r.backend.chosen} (${r.backend.kind}), page size ${size(r.backend.pageSize)}`,
    `\tIOVA ranges: ${
      r.backend.translates
        ? r.backend.iovaRanges.map((x) => `${x.start}-${x.last}`).join(", ")
        : "none (no-IOMMU mode: no DMA mapping)"
    }`,
    `\tSubsystem: ${hex(r.config.subsystemVendor, 4).slice(2)}:${hex(r.config.subsystem, 4).slice(2)}`,
    `\tCommand: ${hex(r.config.command, 4)}, status: ${hex(r.config.status, 4)}, interrupt pin ${
      r.config.interruptPin ? "ABCD"[r.config.interruptPin - 1] ?? "?" : "none"
    }, line ${r.config.interruptLine}`,
    `\tVFIO device: flags <${
      r.device.flagNames.join(",")
    }>, ${r.device.numRegions} regions, ${r.device.numIrqs} IRQ indexes`,
    "\tRegions:",
  ];
  for (const g of r.regions) {
    const extra = [
      g.sparse
        ? `sparse mmap ${g.sparse.map((a) => `${hex(a.offset)}+${hex(a.size)}`).join(" ") || "(none)"}`
        : "",
      g.type ? `type ${hex(g.type.type)}/${g.type.subtype}` : "",
      g.msixMappable ? "msix-mappable" : "",
    ].filter(Boolean);
    out.push(
      g.size === 0
        ? `\t\t${g.name.padEnd(6)} not implemented`
        : `\t\t${g.name.padEnd(6)} size ${size(g.size)}, offset ${hex(g.offset)} <${g.flagNames.join(",")}>${
          extra.length ? ` ${extra.join(", ")}` : ""
        }`,
    );
  }
  out.push("\tIRQs:");
  for (const q of r.irqs) out.push(`\t\t${q.name.padEnd(6)} count ${q.count} <${q.flagNames.join(",")}>`);
  for (const b of r.bars) {
    out.push(
      `\tBAR${b.index}: ${b.space === "io" ? "I/O ports" : "Memory"} at ${b.address} (${
        b.space === "io" ? "" : `${b.is64 ? "64" : "32"}-bit, ${b.prefetchable ? "" : "non-"}prefetchable`
      }) [size=${size(b.size)}]`,
    );
  }
  out.push("\tCapabilities:");
  for (const k of r.capabilities) {
    let detail = "";
    if (r.msi && k.offset === r.msi.offset) {
      const m = r.msi;
      detail = `: Enable${pm(m.enabled)} Count=${m.enabledVectors}/${m.vectors} Maskable${
        pm(m.maskable)
      } 64bit${pm(m.is64)}`;
    } else if (r.msix && k.offset === r.msix.offset) {
      const m = r.msix;
      detail =
        `: Enable${pm(m.enabled)} Count=${m.tableSize} Masked${pm(m.functionMask)}, table BAR${m.tableBir} ` +
        `offset ${hex(m.tableOffset)}, PBA BAR${m.pbaBir} offset ${hex(m.pbaOffset)}`;
    }
    out.push(`\t\t[${hex(k.offset, 2).slice(2)}] ${k.name ?? `ID ${hex(k.id, 2)}`}${detail}`);
  }
  if (r.capabilities.length === 0) out.push("\t\tnone");
  if (r.config.size > 256) {
    out.push("\tExtended capabilities:");
    for (const k of r.extendedCapabilities) {
      out.push(`\t\t[${hex(k.offset, 3).slice(2)}] ${k.name ?? `ID ${hex(k.id, 4)}`} v${k.version}`);
    }
    if (r.extendedCapabilities.length === 0) out.push("\t\tnone");
  }
  return out;
}
