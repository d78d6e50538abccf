/**
 * `vfio bind BDF` and `vfio unbind BDF`: move a device to vfio-pci and back, through the kernel's
 * driver_override mechanism (Documentation/ABI/testing/sysfs-bus-pci).
 *
 * `bind` records the driver the device had in /run/vfio-ts/BDF.driver (an empty file when it had
 * none) before it moves the device, and prints it. /run is a tmpfs, so the record lasts exactly as
 * long as the binding does: until reboot. `unbind` gives the device back to that driver, or to the
 * one named with `--driver`, or, with no record, to whatever the kernel's driver matching picks.
 *
 * `bind --user NAME` then hands the device's own VFIO nodes (the group node and, with cdevs, the
 * device cdev) to that user: see {@link BindOptions}.
 *
 * @module
 */
import { check } from "../lib/errors.ts";
import { fileHolders } from "../lib/proc.ts";
import type { Sys } from "../lib/sys.ts";
import { PCI_DEVICES, requirePciDevice } from "../lib/sysfs.ts";
import { ERRNO } from "../lib/uapi/libc.ts";
import {
  deviceCdevPath,
  driverName,
  groupNodePath,
  groupNumber,
  isVfioDriver,
  vfioNodes,
} from "./devices.ts";
import { CliError } from "./errors.ts";

export { CliError } from "./errors.ts";

/** Where `bind` records each device's previous driver. */
export const STATE_DIR = "/run/vfio-ts";

/** What `vfio bind --json` prints. */
export interface BindResult {
  /** The output format's version. */
  version: 1;
  /** The device. */
  bdf: string;
  /** Its driver now (vfio-pci). */
  driver: string | null;
  /** The driver it had before, null when none; for an already bound device, the recorded one. */
  previous: string | null;
  /** Whether this call changed anything. */
  changed: boolean;
  /** Where the previous driver is recorded, or null when nothing is. */
  savedIn: string | null;
  /** The device's IOMMU group, or null when it has none. */
  iommuGroup: number | null;
  /** The group's node now that vfio-pci owns the device, or null when there is none. */
  groupNode: string | null;
  /** With `--user`: who now owns the device's VFIO nodes, and which nodes; null without it. */
  user: BindUser | null;
}

/** The user `bind --user` handed a device's VFIO nodes to. */
export interface BindUser {
  /** The name given (a passwd name, or a numeric user ID). */
  name: string;
  /** Its user ID. */
  uid: number;
  /** Its primary group ID (from /etc/passwd; the user ID itself for a number without an entry). */
  gid: number;
  /** The nodes now owned by uid:gid: the group node, then the device cdev when the kernel makes one. */
  nodes: string[];
}

/** Options for {@link bind}. */
export interface BindOptions {
  /**
   * A user to hand the device's VFIO nodes to, after binding: the group node /dev/vfio/N and, on a
   * kernel with device cdevs, /dev/vfio/devices/vfioN become owned by the user and its primary group.
   * The kernel creates them mode 0600, so the user alone gets access (a udev rule that loosened the
   * mode is left as it is). /dev/vfio/vfio is world-accessible already; /dev/iommu is not touched:
   * it is shared by every device and the kernel makes it 0660 root on purpose, so iommufd access is
   * granted through its group by the administrator (or the user's programs use the legacy backend,
   * VFIO_TS_BACKEND=legacy). The ownership lasts as long as the node: until the device leaves
   * vfio-pci (the kernel removes the node) or the next boot. A passwd name, or a numeric user ID.
   */
  user?: string;
}

/** What `vfio unbind --json` prints. */
export interface UnbindResult {
  /** The output format's version. */
  version: 1;
  /** The device. */
  bdf: string;
  /** Its driver now, null when none. */
  driver: string | null;
  /** The driver it was taken from (vfio-pci), or null when it was unbound. */
  previous: string | null;
  /** Whether this call changed anything. */
  changed: boolean;
}

/**
 * The file that records a device's driver before `bind`.
 *
 * @param bdf A canonical PCI address.
 * @returns `/run/vfio-ts/<bdf>.driver`.
 */
export function statePath(bdf: string): string {
  return `${STATE_DIR}/${bdf}.driver`;
}

/** User names `--user` accepts: what useradd allows (and plain numbers, taken as user IDs). */
export const USER_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?$/;

/**
 * Finds a user's IDs in /etc/passwd (through Sys, as every other file the CLI reads). A number that
 * has no entry is taken as a user ID with the same group ID.
 *
 * @param sys The syscall backend.
 * @param name A passwd name or a numeric user ID.
 * @returns The user's IDs.
 * @throws {CliError} If the name is not a user name, or no such user exists (status 2).
 */
export function resolveUser(sys: Sys, name: string): { name: string; uid: number; gid: number } {
  const numeric = /^\d{1,10}$/.test(name) && Number(name) < 0xffffffff;
  if (!USER_NAME.test(name)) {
    throw new CliError(`Cannot hand the device to user ${JSON.stringify(name)}: it is not a user name`, {
      code: "ERR_VFIO_UNKNOWN_USER",
      exitCode: 2,
    });
  }
  const passwd = sys.readText("/etc/passwd");
  for (const line of typeof passwd === "string" ? passwd.split("\n") : []) {
    const [user, , uid, gid] = line.split(":");
    if (uid === undefined || gid === undefined || !/^\d+$/.test(uid) || !/^\d+$/.test(gid)) continue;
    if (user === name || (numeric && Number(uid) === Number(name))) {
      return { name, uid: Number(uid), gid: Number(gid) };
    }
  }
  if (numeric) return { name, uid: Number(name), gid: Number(name) };
  const hint = "give a user from /etc/passwd, or a numeric user ID";
  throw new CliError(`Cannot hand the device to user ${name}: /etc/passwd has no such user; ${hint}`, {
    code: "ERR_VFIO_UNKNOWN_USER",
    exitCode: 2,
    hint,
    path: "/etc/passwd",
  });
}

// Driver names become sysfs paths (/sys/bus/pci/drivers/NAME/bind): nothing but a plain name passes.
function checkDriverName(name: string, from: string): string {
  if (!/^[A-Za-z0-9_.+:-]{1,64}$/.test(name) || name === "." || name === "..") {
    throw new CliError(
      `Cannot use driver name ${JSON.stringify(name)} from ${from}: it is not a driver name`,
      { code: "ERR_VFIO_INVALID_DRIVER_NAME", exitCode: 2, path: from.startsWith("/") ? from : undefined },
    );
  }
  return name;
}

function requireRoot(
  sys: Sys,
  action: string,
  why = "sysfs driver bindings can only be changed by root",
): void {
  if (sys.getuid() !== 0) {
    const hint = "run it with sudo";
    throw new CliError(
      `Cannot ${action}: ${why}; ${hint}`,
      { code: "ERR_VFIO_NOT_ROOT", hint },
    );
  }
}

function requireVfioPci(sys: Sys, action: string): void {
  const path = "/sys/bus/pci/drivers/vfio-pci";
  if (typeof sys.readDir(path) === "number") {
    const hint = "run `modprobe vfio-pci`";
    throw new CliError(`Cannot ${action}: the vfio-pci driver is not loaded; ${hint}`, {
      code: "ERR_VFIO_UNAVAILABLE",
      hint,
      path,
    });
  }
}

// The record may be missing (never made, or removed by hand): that is not a failure.
function removeRecord(sys: Sys, name: string): void {
  const r = sys.unlink(statePath(name));
  if (r !== -ERRNO.ENOENT!) {
    check(r, { op: "unlink", path: statePath(name), action: `remove the record of ${name}` });
  }
}

function write(sys: Sys, path: string, text: string, action: string): void {
  check(sys.writeText(path, text), { op: "write", path, action });
}

// The kernel blocks an unbind until every user of the device has closed it; refusing is kinder.
function holders(sys: Sys, paths: readonly string[]): { text: string[]; path: string | undefined } {
  const text: string[] = [];
  let first: string | undefined;
  for (const path of paths) {
    for (const h of fileHolders(sys, path)) {
      text.push(`process ${h.pid} (${h.comm || "?"}) holds ${path}`);
      first ??= path;
    }
  }
  return { text, path: first };
}

/**
 * Binds a device to vfio-pci: records its driver, unbinds it, sets driver_override to vfio-pci
 * and asks the kernel to probe it. Binding a device already on vfio-pci changes nothing. With
 * `options.user`, the device's VFIO nodes are then handed to that user ({@link BindOptions}), also
 * when it was bound already.
 *
 * @param sys The syscall backend.
 * @param bdf The device's PCI address.
 * @param options The user to hand the device's nodes to.
 * @returns What happened.
 * @throws {CliError} If not root, vfio-pci is not loaded, vfio-pci did not take the device, or the
 *   user does not exist (checked before anything changes).
 * @throws {VfioError} If the device does not exist, or a sysfs write or chown fails.
 */
export function bind(sys: Sys, bdf: string, options: BindOptions = {}): BindResult {
  const name = requirePciDevice(sys, bdf);
  const action = `bind ${name} to vfio-pci`;
  const dir = `${PCI_DEVICES}/${name}`;
  const current = driverName(sys, name);
  const owner = options.user === undefined ? undefined : resolveUser(sys, options.user);
  if (owner) {
    requireRoot(sys, `give ${name} to user ${owner.name}`, "only root can change who owns its nodes");
  }
  const result = (changed: boolean, previous: string | null, savedIn: string | null): BindResult => {
    const group = groupNumber(sys, name);
    const groupNode = group === null ? null : groupNodePath(vfioNodes(sys), group);
    return {
      version: 1,
      bdf: name,
      driver: driverName(sys, name),
      previous,
      changed,
      savedIn,
      iommuGroup: group,
      groupNode,
      user: owner ? { ...owner, nodes: handOver(sys, name, groupNode, owner) } : null,
    };
  };
  if (isVfioDriver(current)) {
    const saved = sys.readText(statePath(name));
    const known = typeof saved === "string";
    return result(false, known ? saved.trim() || null : null, known ? statePath(name) : null);
  }
  requireRoot(sys, action);
  requireVfioPci(sys, action);
  const made = sys.mkdir(STATE_DIR, 0o755);
  if (made !== -ERRNO.EEXIST!) check(made, { op: "mkdir", path: STATE_DIR, action: `make ${STATE_DIR}` });
  write(sys, statePath(name), `${current ?? ""}\n`, `record the driver of ${name}`);
  try {
    if (current !== null) write(sys, `${dir}/driver/unbind`, name, `unbind ${name} from ${current}`);
    write(sys, `${dir}/driver_override`, "vfio-pci", action);
    write(sys, "/sys/bus/pci/drivers_probe", name, action);
    const now = driverName(sys, name);
    if (!isVfioDriver(now)) {
      const hint = "vfio-pci refuses devices without an IOMMU group (enable the IOMMU, or load vfio " +
        "with enable_unsafe_noiommu_mode=1): see dmesg";
      throw new CliError(`Cannot ${action}: the probe left it ${now ? `on ${now}` : "unbound"}; ${hint}`, {
        code: "ERR_VFIO_BIND_FAILED",
        hint,
      });
    }
  } catch (e) {
    // Put the device back where it was, as far as possible, and forget the record.
    sys.writeText(`${dir}/driver_override`, "\n");
    if (current !== null && driverName(sys, name) === null) sys.writeText("/sys/bus/pci/drivers_probe", name);
    sys.unlink(statePath(name));
    throw e;
  }
  return result(true, current, statePath(name));
}

// chown(2)s the device's own VFIO nodes to the user: the group node, and the cdev when there is one.
function handOver(
  sys: Sys,
  name: string,
  groupNode: string | null,
  user: { name: string; uid: number; gid: number },
): string[] {
  const nodes = [groupNode, deviceCdevPath(sys, name)].filter((p): p is string => p !== null);
  for (const path of nodes) {
    check(sys.chown(path, user.uid, user.gid), {
      op: "chown",
      path,
      action: `give ${path} to user ${user.name} (uid ${user.uid}, gid ${user.gid})`,
    });
  }
  return nodes;
}

/**
 * Gives a device on vfio-pci back: clears driver_override, unbinds it from vfio-pci, and binds the
 * driver `bind` recorded (or `driver`, or the kernel's choice when there is no record). A device
 * that had no driver before `bind` is left unbound.
 *
 * @param sys The syscall backend.
 * @param bdf The device's PCI address.
 * @param driver The driver to bind afterwards, instead of the recorded one.
 * @returns What happened.
 * @throws {CliError} If not root, the device is on another driver, or a process holds it open.
 * @throws {VfioError} If the device does not exist or a sysfs write fails.
 */
export function unbind(sys: Sys, bdf: string, driver?: string): UnbindResult {
  const name = requirePciDevice(sys, bdf);
  const action = `unbind ${name} from vfio-pci`;
  const dir = `${PCI_DEVICES}/${name}`;
  const current = driverName(sys, name);
  if (current !== null && !isVfioDriver(current)) {
    throw new CliError(`Cannot ${action}: it is bound to ${current}, not vfio-pci`, {
      code: "ERR_VFIO_DEVICE_NOT_BOUND",
    });
  }
  const saved = sys.readText(statePath(name));
  const target = driver !== undefined
    ? checkDriverName(driver, "--driver")
    : typeof saved === "string"
    ? (saved.trim() === "" ? null : checkDriverName(saved.trim(), statePath(name)))
    : undefined; // no record: the kernel picks
  const override = sys.readText(`${dir}/driver_override`);
  const overridden = typeof override === "string" && isVfioDriver(override.trim());
  if (current === null && !overridden && typeof saved !== "string" && driver === undefined) {
    return { version: 1, bdf: name, driver: null, previous: null, changed: false };
  }
  requireRoot(sys, action);
  const group = groupNumber(sys, name);
  const nodes = [group === null ? null : groupNodePath(vfioNodes(sys), group), deviceCdevPath(sys, name)]
    .filter((p): p is string => p !== null);
  const busy = holders(sys, nodes);
  if (busy.text.length) {
    const hint = "stop it, or have it close the device, first";
    throw new CliError(
      `Cannot ${action}: ${busy.text.join("; ")}; the kernel would wait for it to close the device: ${hint}`,
      { code: "ERR_VFIO_DEVICE_BUSY", hint, path: busy.path },
    );
  }
  write(sys, `${dir}/driver_override`, "\n", `clear the driver override of ${name}`);
  if (current !== null) write(sys, `${dir}/driver/unbind`, name, action);
  if (target !== null) {
    write(sys, "/sys/bus/pci/drivers_probe", name, `probe ${name}`);
    const now = driverName(sys, name);
    if (target !== undefined && now !== target) {
      if (now !== null) write(sys, `${dir}/driver/unbind`, name, `unbind ${name} from ${now}`);
      write(sys, `/sys/bus/pci/drivers/${target}/bind`, name, `bind ${name} to ${target}`);
    }
  }
  removeRecord(sys, name);
  return { version: 1, bdf: name, driver: driverName(sys, name), previous: current, changed: true };
}

/**
 * Formats a bind result.
 *
 * @param r The result.
 * @returns The lines.
 */
export function formatBind(r: BindResult): string[] {
  const lines = !r.changed
    ? [`${r.bdf} is already bound to ${r.driver}${r.previous ? ` (previous driver: ${r.previous})` : ""}`]
    : [
      `${r.bdf}: ${r.previous ?? "no driver"} -> ${r.driver}; IOMMU group ${r.iommuGroup ?? "none"}` +
      `${r.groupNode ? ` (${r.groupNode})` : ""}`,
      `previous driver recorded in ${r.savedIn}; \`vfio unbind ${r.bdf}\` restores it`,
    ];
  const u = r.user;
  if (u) {
    lines.push(
      u.nodes.length
        ? `${u.nodes.join(" and ")} now belong to ${u.name} (uid ${u.uid}, gid ${u.gid}), until the device ` +
          "leaves vfio-pci"
        : `${r.bdf} has no VFIO node to give to ${u.name}`,
    );
    if (u.nodes.some((p) => p.startsWith("/dev/vfio/devices/"))) {
      lines.push(
        "iommufd also needs /dev/iommu, which stays root's (every device shares it): grant it through its " +
          "group, or use the legacy backend (VFIO_TS_BACKEND=legacy)",
      );
    }
  }
  return lines;
}

/**
 * Formats an unbind result.
 *
 * @param r The result.
 * @returns The lines.
 */
export function formatUnbind(r: UnbindResult): string[] {
  if (!r.changed) return [`${r.bdf} is not bound to vfio-pci; nothing to do`];
  return [`${r.bdf}: ${r.previous ?? "no driver"} -> ${r.driver ?? "no driver"}`];
}
