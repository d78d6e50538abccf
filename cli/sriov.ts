/**
 * `vfio sriov BDF N`: sets how many SR-IOV virtual functions a PF has, through its sysfs attribute
 * sriov_numvfs (Documentation/ABI/testing/sysfs-bus-pci), and reports the VFs: their addresses,
 * drivers and IOMMU groups.
 *
 * The kernel takes a new non-zero count only while the PF has none (sriov_numvfs_store answers
 * EBUSY otherwise), so a change from one non-zero count to another writes 0 first. A PF bound to
 * vfio-pci makes VFs only when vfio-pci's enable_sriov parameter is on; its VFs are bound to
 * vfio-pci too, each in an IOMMU group of its own where the hardware isolates them, and opening one
 * needs the PF's VF token (VfioDevice.setVfToken, then `open(vf, { vfToken })`).
 *
 * @module
 */
import { check } from "../lib/errors.ts";
import { fileHolders } from "../lib/proc.ts";
import type { Sys } from "../lib/sys.ts";
import { PCI_DEVICES, pciAttr, requirePciDevice } from "../lib/sysfs.ts";
import {
  deviceCdevPath,
  driverName,
  groupNodePath,
  groupNumber,
  isVfioDriver,
  vfioNodes,
} from "./devices.ts";
import { CliError } from "./errors.ts";

/** vfio-pci's switch for SR-IOV on PFs it drives. */
export const ENABLE_SRIOV_PATH = "/sys/module/vfio_pci/parameters/enable_sriov";

/** One VF, as `vfio sriov --json` reports it. */
export interface SriovVf {
  /** The VF's number (the PF's virtfnN link). */
  index: number;
  /** Its PCI address. */
  bdf: string;
  /** Its driver, null when none. */
  driver: string | null;
  /** Its IOMMU group, null when it has none. */
  iommuGroup: number | null;
  /** The group's VFIO node, when the VF is on vfio-pci; null otherwise. */
  groupNode: string | null;
  /** Its VFIO device cdev, when the kernel makes one; null otherwise. */
  cdev: string | null;
}

/** What `vfio sriov --json` prints. */
export interface SriovResult {
  /** The output format's version. */
  version: 1;
  /** The PF. */
  bdf: string;
  /** The PF's driver, null when none. */
  driver: string | null;
  /** sriov_totalvfs: the most VFs the PF offers. */
  totalVfs: number;
  /** The VF count before this call. */
  previous: number;
  /** The VF count now. */
  numVfs: number;
  /** Whether this call changed anything. */
  changed: boolean;
  /** The VFs now, in order. */
  vfs: SriovVf[];
}

const dir = (bdf: string) => `${PCI_DEVICES}/${bdf}`;

function count(sys: Sys, bdf: string, attr: string): number | undefined {
  const text = pciAttr(sys, bdf, attr);
  return text !== undefined && /^\d+$/.test(text) ? Number(text) : undefined;
}

/**
 * The VFs a PF has now, from its virtfnN links.
 *
 * @param sys The syscall backend.
 * @param pf The PF's canonical address.
 * @param n How many there are (sriov_numvfs).
 * @returns Each VF with its driver and group.
 */
export function listVfs(sys: Sys, pf: string, n: number): SriovVf[] {
  const nodes = vfioNodes(sys);
  const out: SriovVf[] = [];
  for (let index = 0; index < n; index++) {
    const link = sys.readLink(`${dir(pf)}/virtfn${index}`);
    if (typeof link !== "string") continue; // removed while we looked
    const bdf = link.slice(link.lastIndexOf("/") + 1);
    const driver = driverName(sys, bdf);
    const iommuGroup = groupNumber(sys, bdf);
    out.push({
      index,
      bdf,
      driver,
      iommuGroup,
      groupNode: iommuGroup === null || !isVfioDriver(driver) ? null : groupNodePath(nodes, iommuGroup),
      cdev: deviceCdevPath(sys, bdf),
    });
  }
  return out;
}

// The kernel would wait in pci_disable_sriov until every VF's user let go: name them instead.
function refuseIfBusy(sys: Sys, pf: string, vfs: SriovVf[]): void {
  const held: string[] = [];
  let first: string | undefined;
  for (const vf of vfs) {
    for (const path of [vf.groupNode, vf.cdev].filter((p): p is string => p !== null)) {
      for (const h of fileHolders(sys, path)) {
        held.push(`process ${h.pid} (${h.comm || "?"}) holds ${path} (${vf.bdf})`);
        first ??= path;
      }
    }
  }
  if (!held.length) return;
  const hint = "have it close the VFs first";
  throw new CliError(
    `Cannot remove the VFs of ${pf}: ${held.join("; ")}; the kernel would wait for it: ${hint}`,
    { code: "ERR_VFIO_DEVICE_BUSY", hint, path: first },
  );
}

/**
 * Sets a PF's VF count: checks that the PF has SR-IOV and offers `n` VFs, that the caller is root,
 * and that no process holds a VF that would go; writes 0 first when changing between two non-zero
 * counts; then reports the VFs.
 *
 * @param sys The syscall backend.
 * @param bdf The PF's PCI address.
 * @param n The VF count wanted: 0 removes every VF.
 * @returns What happened, and the VFs now.
 * @throws {CliError} If the device has no SR-IOV capability, `n` exceeds sriov_totalvfs, the caller
 *   is not root, or a process holds a VF that would be removed (nothing changes then).
 * @throws {VfioError} If the device does not exist, or the kernel refuses the write (with the fix:
 *   vfio-pci's enable_sriov, a PF without a driver).
 */
export function sriov(sys: Sys, bdf: string, n: number): SriovResult {
  const pf = requirePciDevice(sys, bdf);
  const action = `set the VF count of ${pf} to ${n}`;
  const totalVfs = count(sys, pf, "sriov_totalvfs");
  if (totalVfs === undefined) {
    const hint = "only a PF with the SR-IOV capability has VFs (see `vfio info` or lspci -vv)";
    throw new CliError(`Cannot ${action}: it has no SR-IOV capability (no sriov_totalvfs); ${hint}`, {
      code: "ERR_VFIO_NO_SRIOV",
      hint,
      path: `${dir(pf)}/sriov_totalvfs`,
    });
  }
  if (n > totalVfs) {
    const hint = `give at most ${totalVfs}`;
    throw new CliError(`Cannot ${action}: it offers ${totalVfs} VFs (sriov_totalvfs); ${hint}`, {
      code: "ERR_VFIO_TOO_MANY_VFS",
      hint,
      path: `${dir(pf)}/sriov_totalvfs`,
    });
  }
  const previous = count(sys, pf, "sriov_numvfs") ?? 0;
  const driver = driverName(sys, pf);
  const result = (changed: boolean): SriovResult => {
    const numVfs = count(sys, pf, "sriov_numvfs") ?? 0;
    return {
      version: 1,
      bdf: pf,
      driver,
      totalVfs,
      previous,
      numVfs,
      changed,
      vfs: listVfs(sys, pf, numVfs),
    };
  };
  if (n === previous) return result(false);
  if (sys.getuid() !== 0) {
    const hint = "run it with sudo";
    throw new CliError(`Cannot ${action}: only root can write sriov_numvfs; ${hint}`, {
      code: "ERR_VFIO_NOT_ROOT",
      hint,
    });
  }
  if (previous > 0) refuseIfBusy(sys, pf, listVfs(sys, pf, previous));
  const path = `${dir(pf)}/sriov_numvfs`;
  const write = (value: number) =>
    check(sys.writeText(path, String(value)), {
      op: "write",
      path,
      action: value === n ? action : `remove the VFs of ${pf} first (the kernel changes a count only from 0)`,
      hints: (code) => {
        if (code !== "ENOENT") return code === "EBUSY" ? "the PF has VFs already: write 0 first" : undefined;
        if (driver === null) return `the PF has no driver to make VFs: bind one first (vfio bind ${pf})`;
        if (isVfioDriver(driver)) {
          return `vfio-pci makes VFs only with enable_sriov on: echo Y > ${ENABLE_SRIOV_PATH} (or boot with ` +
            "vfio-pci.enable_sriov=1)";
        }
        return `${driver} does not configure SR-IOV through sysfs`;
      },
    });
  if (previous > 0 && n > 0) write(0);
  write(n);
  return result(true);
}

/**
 * Formats a sriov result.
 *
 * @param r The result.
 * @returns The lines.
 */
export function formatSriov(r: SriovResult): string[] {
  const lines = [
    `${r.bdf}: ${r.numVfs} of ${r.totalVfs} VFs${
      r.changed ? ` (was ${r.previous})` : " (unchanged)"
    }; PF driver ${r.driver ?? "none"}`,
  ];
  for (const vf of r.vfs) {
    const group = vf.iommuGroup === null ? "no IOMMU group" : `IOMMU group ${vf.iommuGroup}`;
    const nodes = [vf.groupNode, vf.cdev].filter((p) => p !== null).join(", ");
    lines.push(
      `  VF ${vf.index}  ${vf.bdf}  ${vf.driver ?? "no driver"}  ${group}${nodes ? ` (${nodes})` : ""}`,
    );
  }
  if (r.vfs.length && isVfioDriver(r.driver)) {
    lines.push(
      "the PF is on vfio-pci: its user sets a VF token (device.setVfToken(uuid)), and the VFs open with it: " +
        "open(vf, { vfToken: uuid })",
    );
  }
  return lines;
}
