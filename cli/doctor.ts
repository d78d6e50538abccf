/**
 * `vfio doctor [BDF]`: checks what VFIO needs, and says how to fix what is missing.
 *
 * The checks, by ID (each reports `ok`, `warn`, `fail` or `info`; a `fail` blocks use):
 * - `vfio`: the vfio-pci driver is loaded and /dev/vfio exists.
 * - `iommu`: an IOMMU is enabled (/sys/class/iommu has entries, /sys/kernel/iommu_groups has groups);
 *   without one, vfio's unsafe no-IOMMU mode is a warning (no isolation, no DMA mapping).
 * - `interrupt-remapping`: VFIO refuses to attach a group (EPERM) unless MSIs are isolated. dmesg is
 *   not reliably readable, so this is a heuristic, on x86 only: remapping is in use when
 *   /proc/interrupts lists interrupt chips named `IR-…` (IR-IO-APIC, IR-PCI-MSI …), which only
 *   remapped domains are; failing that, an Intel IOMMU whose extended capability register
 *   (/sys/class/iommu/dmar*\/intel-iommu/ecap) has bit 3 (IR) set supports it but does not use it
 *   (intremap=off on /proc/cmdline says why). `allow_unsafe_interrupts=Y` (the vfio_iommu_type1 or
 *   iommufd module parameter) turns a failure into a warning.
 * - `memlock`: DMA mappings pin memory against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK.
 * - `kernel`: which interfaces the kernel offers: the legacy container (/dev/vfio/vfio), iommufd
 *   (/dev/iommu), device cdevs (/dev/vfio/devices) and no-IOMMU mode
 *   (/sys/module/vfio/parameters/enable_unsafe_noiommu_mode).
 * - `registers`: whether register access gets the fast native accessor (a warning names why not).
 * - `backend`: the backend `open()` would choose (lib/open.ts chooseBackend, VFIO_TS_BACKEND included).
 * - per device (BDF, or every device on vfio-pci): `driver`, `group`, `group-viable`, `permissions`.
 *
 * `permissions` (also system-wide, for /dev/vfio/vfio or /dev/iommu) opens the node read/write and
 * closes it at once, so the verdict is the kernel's: EACCES for a non-root user is a file mode
 * problem, EBUSY a group another process holds (a warning, naming it), anything else is reported
 * with its errno. The check uses libc through the `Sys` seam only: no Deno file API, so a Deno
 * permission refusal can never pass for a file permission problem.
 *
 * @module
 */
import process from "node:process";
import { errnoName } from "../lib/errors.ts";
import { formatBytes, memlockLimit } from "../lib/limits.ts";
import { chooseBackend } from "../lib/open.ts";
import { fileHolders } from "../lib/proc.ts";
import type { Sys } from "../lib/sys.ts";
import { requirePciDevice } from "../lib/sysfs.ts";
import { O_CLOEXEC, O_RDWR } from "../lib/uapi/libc.ts";
import {
  deviceCdevPath,
  driverName,
  groupNodePath,
  groupNumber,
  groupViability,
  isVfioDriver,
  pciDevices,
  vfioNodes,
} from "./devices.ts";
import { denoPermissionFlag } from "./errors.ts";

/** How a check came out. */
export type CheckStatus = "ok" | "warn" | "fail" | "info";

/** One check, as `vfio doctor --json` reports it. */
export interface Check {
  /** A stable ID: `vfio`, `iommu`, `interrupt-remapping`, `memlock`, `kernel`, `backend`, `driver`, `group`, `group-viable`, `permissions`. */
  id: string;
  /** The verdict; `fail` means VFIO cannot be used as things stand. */
  status: CheckStatus;
  /** What was found. */
  message: string;
  /** The command (or edit) that fixes it, or null. */
  fix: string | null;
  /** The device a per-device check is about, or null. */
  bdf: string | null;
}

/** What `vfio doctor --json` prints. */
export interface DoctorResult {
  /** The output format's version. */
  version: 1;
  /** True when no check failed. */
  ok: boolean;
  /** The backend open() would choose, or null when it cannot choose (bad VFIO_TS_BACKEND). */
  backend: "legacy" | "iommufd" | null;
  /** Every check, in order. */
  checks: Check[];
}

const CAP_IPC_LOCK = 14n;
const text = (sys: Sys, path: string) => {
  const t = sys.readText(path);
  return typeof t === "string" ? t.trim() : undefined;
};
const dir = (sys: Sys, path: string) => {
  const d = sys.readDir(path);
  return typeof d === "number" ? undefined : d;
};

/** What opening a node found: nothing wrong (null), or the check to report. */
type Access = { status: CheckStatus; message: string; fix: string | null } | null;

/**
 * Opens a node read/write as the library will, and closes it again: the kernel's own answer,
 * which access(2) cannot give (a group node opens once, and a no-IOMMU group needs CAP_SYS_RAWIO).
 *
 * @param sys The syscall backend.
 * @param path The node.
 * @param fix The fix for EACCES when not root.
 */
function tryOpen(sys: Sys, path: string, fix: string): Access {
  const fd = sys.open(path, O_RDWR | O_CLOEXEC);
  if (fd >= 0) {
    sys.close(fd);
    return null;
  }
  const code = errnoName(-fd);
  const root = sys.getuid() === 0;
  if (code === "EBUSY") {
    const holders = fileHolders(sys, path).map((h) => `process ${h.pid} (${h.comm || "?"})`);
    return {
      status: "warn",
      message: `${path} is in use${
        holders.length ? ` by ${holders.join(", ")}` : " by another process"
      } (EBUSY): a VFIO group opens once`,
      fix: null,
    };
  }
  if (code === "EACCES" && !root) {
    return { status: "fail", message: `no read/write access to ${path} (EACCES)`, fix };
  }
  if (code === "EPERM" && /\/noiommu-/.test(path)) {
    return {
      status: "fail",
      message: `${path} was refused (EPERM): a no-IOMMU group needs CAP_SYS_RAWIO`,
      fix: "run it as root",
    };
  }
  if (code === "EACCES" || code === "EPERM") {
    return {
      status: "fail",
      message: `${path} was refused (${code})${root ? " to root" : ""}: not by its file mode`,
      fix: "check the security module's log (SELinux, AppArmor) and the device cgroup of a container",
    };
  }
  return { status: "fail", message: `cannot open ${path} (${code})`, fix: null };
}

/**
 * Runs the checks.
 *
 * @param sys The syscall backend.
 * @param bdf A device to check; by default every device bound to vfio-pci.
 * @returns The checks and the verdict.
 * @throws {VfioError} If `bdf` names no PCI device.
 */
export function doctor(sys: Sys, bdf?: string): DoctorResult {
  const target = bdf === undefined ? undefined : requirePciDevice(sys, bdf);
  const checks: Check[] = [];
  const add = (
    id: string,
    status: CheckStatus,
    message: string,
    fix: string | null = null,
    device?: string,
  ) => checks.push({ id, status, message, fix, bdf: device ?? null });

  // vfio-pci and /dev/vfio
  const nodes = vfioNodes(sys);
  const vfioPci = dir(sys, "/sys/bus/pci/drivers/vfio-pci") !== undefined;
  if (!vfioPci || dir(sys, "/dev/vfio") === undefined) {
    add(
      "vfio",
      "fail",
      `${vfioPci ? "/dev/vfio is missing" : "the vfio-pci driver is not loaded"}`,
      "modprobe vfio-pci",
    );
  } else add("vfio", "ok", "vfio-pci is loaded and /dev/vfio exists");

  // The IOMMU
  const iommus = dir(sys, "/sys/class/iommu") ?? [];
  const groups = dir(sys, "/sys/kernel/iommu_groups") ?? [];
  const noiommuParam = text(sys, "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode");
  const cmdline = text(sys, "/proc/cmdline") ?? "";
  const cpu = text(sys, "/proc/cpuinfo") ?? "";
  const iommuOpt = /AuthenticAMD|HygonGenuine/.test(cpu) ? "amd_iommu=on" : "intel_iommu=on";
  const enableIommu = `enable VT-d/AMD-Vi in the firmware, add ${iommuOpt} to the kernel command line ` +
    "(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub) and reboot";
  const hasIommu = iommus.length > 0 && groups.length > 0;
  if (hasIommu) {
    add("iommu", "ok", `IOMMU enabled: ${iommus.join(", ")}; ${groups.length} IOMMU groups`);
  } else if (noiommuParam === "Y") {
    add(
      "iommu",
      "warn",
      "no IOMMU: vfio runs in unsafe no-IOMMU mode, so devices are not isolated and DMA cannot be mapped",
      enableIommu,
    );
  } else {
    add(
      "iommu",
      "fail",
      `no IOMMU is enabled (/sys/class/iommu is empty)${
        cmdline.includes("iommu=on") ? "" : ` and ${iommuOpt} is not on /proc/cmdline`
      }`,
      `${enableIommu}; without an IOMMU (unsafe, no DMA): modprobe vfio enable_unsafe_noiommu_mode=1`,
    );
  }

  // Interrupt remapping
  if (hasIommu) interruptRemapping(sys, cmdline, iommus, add);

  // RLIMIT_MEMLOCK
  const capEff = /CapEff:\s*([0-9a-f]+)/.exec(text(sys, "/proc/self/status") ?? "")?.[1];
  const limit = memlockLimit(sys);
  if (capEff !== undefined && (BigInt(`0x${capEff}`) >> CAP_IPC_LOCK) & 1n) {
    add("memlock", "ok", "CAP_IPC_LOCK: pinned DMA memory is not limited by RLIMIT_MEMLOCK");
  } else if (limit === undefined) {
    add("memlock", "ok", "RLIMIT_MEMLOCK is unlimited");
  } else {
    add(
      "memlock",
      limit < 64n << 20n ? "warn" : "ok",
      `RLIMIT_MEMLOCK is ${formatBytes(limit)}: DMA mappings beyond it fail with ENOMEM`,
      limit < 64n << 20n
        ? "ulimit -l unlimited (or LimitMEMLOCK=infinity in a systemd unit, or memlock in /etc/security/limits.conf)"
        : null,
    );
  }

  // Kernel interfaces
  const dev = dir(sys, "/dev") ?? [];
  const cdevs = dir(sys, "/dev/vfio/devices");
  const yes = (b: boolean) => (b ? "yes" : "no");
  add(
    "kernel",
    "info",
    `legacy container (/dev/vfio/vfio): ${yes(nodes.includes("vfio"))}; iommufd (/dev/iommu): ${
      yes(dev.includes("iommu"))
    }; device cdevs (/dev/vfio/devices): ${yes(cdevs !== undefined)}; no-IOMMU mode: ${
      noiommuParam === undefined ? "not built" : noiommuParam === "Y" ? "enabled" : "disabled"
    }`,
  );

  // The backend open() would choose
  let backend: DoctorResult["backend"] = null;
  try {
    backend = chooseBackend(sys);
    const forced = sys.getenv("VFIO_TS_BACKEND");
    const why = forced && forced !== "auto"
      ? `VFIO_TS_BACKEND=${forced}`
      : backend === "iommufd"
      ? "/dev/iommu and device cdevs exist"
      : "no /dev/iommu with device cdevs";
    add("backend", "info", `open() would use the ${backend} backend (${why})`);
    const shared = backend === "iommufd"
      ? tryOpen(sys, "/dev/iommu", "sudo chown $USER /dev/iommu (or run as root)")
      : nodes.includes("vfio")
      ? tryOpen(sys, "/dev/vfio/vfio", "sudo chmod 0666 /dev/vfio/vfio")
      : null;
    if (shared) add("permissions", shared.status, shared.message, shared.fix);
  } catch (e) {
    if (denoPermissionFlag(e) !== undefined) throw e; // Deno's refusal, not the system's: see cli/errors.ts
    add("backend", "fail", e instanceof Error ? e.message : String(e), "unset VFIO_TS_BACKEND");
  }

  // Register access: the fast accessor, or the ~150x slower pread/pwrite fallback
  const slow = sys.mmioUnavailable();
  if (slow === undefined) add("registers", "ok", "register access uses the fast native accessor over mmap");
  else add("registers", "warn", `register access uses pread/pwrite: ${slow}`, null);

  // Devices
  const targets = target !== undefined
    ? [target]
    : pciDevices(sys).filter((d) => isVfioDriver(driverName(sys, d)));
  if (targets.length === 0) add("driver", "info", "no device is bound to vfio-pci", "vfio bind BDF");
  for (const d of targets) checkDevice(sys, d, backend, nodes, add);

  return { version: 1, ok: !checks.some((c) => c.status === "fail"), backend, checks };
}

type Add = (id: string, status: CheckStatus, message: string, fix?: string | null, device?: string) => void;

function interruptRemapping(sys: Sys, cmdline: string, iommus: string[], add: Add): void {
  const unsafe = ["vfio_iommu_type1", "iommufd"].some((m) =>
    text(sys, `/sys/module/${m}/parameters/allow_unsafe_interrupts`) === "Y"
  );
  if (process.arch !== "x64" && process.arch !== "ia32") {
    add(
      "interrupt-remapping",
      "info",
      `not checked on ${process.arch}: MSI isolation is the interrupt controller's`,
    );
    return;
  }
  const interrupts = text(sys, "/proc/interrupts") ?? "";
  if (/\bIR-[A-Z]/.test(interrupts)) {
    add(
      "interrupt-remapping",
      "ok",
      "interrupt remapping is in use (IR- interrupt chips in /proc/interrupts)",
    );
    return;
  }
  const capable = iommus.some((i) => {
    const ecap = text(sys, `/sys/class/iommu/${i}/intel-iommu/ecap`);
    return ecap !== undefined && /^[0-9a-f]+$/i.test(ecap) && (BigInt(`0x${ecap}`) & 8n) !== 0n;
  });
  const off = /\b(intremap=off|nointremap)\b/.test(cmdline);
  const found = `no interrupt remapping${capable ? " (the IOMMU supports it but it is not in use" : ""}${
    capable && off ? ": intremap=off is on /proc/cmdline)" : capable ? ")" : ""
  }`;
  const fix = (off ? "remove intremap=off from the kernel command line; " : "") +
    "enable interrupt remapping (x2APIC / interrupt remapping in the firmware), or accept unisolated MSIs: " +
    "echo 1 > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts";
  if (unsafe) {
    add(
      "interrupt-remapping",
      "warn",
      `${found}; allow_unsafe_interrupts=Y lets VFIO run without MSI isolation`,
      null,
    );
  } else {
    add("interrupt-remapping", "fail", `${found}: attaching a group fails with EPERM`, fix);
  }
}

function checkDevice(
  sys: Sys,
  bdf: string,
  backend: DoctorResult["backend"],
  nodes: string[],
  add: Add,
): void {
  const driver = driverName(sys, bdf);
  if (!isVfioDriver(driver)) {
    add(
      "driver",
      "fail",
      `${bdf} is bound to ${driver ?? "no driver"}, not vfio-pci`,
      `vfio bind ${bdf}`,
      bdf,
    );
    return;
  }
  add("driver", "ok", `${bdf} is bound to ${driver}`, null, bdf);
  const group = groupNumber(sys, bdf);
  if (group === null) {
    add("group", "fail", `${bdf} has no IOMMU group`, "enable the IOMMU (see the iommu check)", bdf);
    return;
  }
  const node = groupNodePath(nodes, group);
  add(
    "group",
    node ? "ok" : "fail",
    node
      ? `${bdf} is in IOMMU group ${group} (${node})`
      : `IOMMU group ${group} of ${bdf} has no /dev/vfio node`,
    node ? null : "modprobe vfio-pci, then rebind: vfio unbind BDF && vfio bind BDF",
    bdf,
  );
  const v = groupViability(sys, group);
  if (v.viable) {
    add(
      "group-viable",
      "ok",
      `IOMMU group ${group} is viable (${v.members.map((m) => m.bdf).join(", ")})`,
      null,
      bdf,
    );
  } else {
    add(
      "group-viable",
      "fail",
      `IOMMU group ${group} of ${bdf} is not viable: ` +
        v.blockers.map((b) => `${b.bdf} is bound to ${b.driver}`).join(", "),
      v.blockers.map((b) => `vfio bind ${b.bdf}`).join(" && "),
      bdf,
    );
  }
  const path = backend === "iommufd" ? deviceCdevPath(sys, bdf) : node;
  if (backend === "iommufd" && path === null) {
    add(
      "permissions",
      "fail",
      `${bdf} has no device cdev for the iommufd backend`,
      "VFIO_TS_BACKEND=legacy",
      bdf,
    );
  } else if (path !== null) {
    const problem = tryOpen(sys, path, `sudo chown $USER ${path}`);
    if (problem) add("permissions", problem.status, problem.message, problem.fix, bdf);
    else add("permissions", "ok", `${path} opens for reading and writing`, null, bdf);
  }
}

/**
 * Formats the checks: one line each, with the fix under every problem.
 *
 * @param r The result.
 * @returns The lines.
 */
export function formatDoctor(r: DoctorResult): string[] {
  const label: Record<CheckStatus, string> = { ok: "ok  ", warn: "WARN", fail: "FAIL", info: "info" };
  const out: string[] = [];
  for (const c of r.checks) {
    out.push(`${label[c.status]}  ${c.message}`);
    if (c.fix && c.status !== "ok") out.push(`      fix: ${c.fix}`);
  }
  const failed = r.checks.filter((c) => c.status === "fail").length;
  out.push(
    failed
      ? `${failed} problem${failed === 1 ? "" : "s"} block${failed === 1 ? "s" : ""} VFIO use`
      : "VFIO is ready",
  );
  return out;
}
