/**
 * A VFIO group (/dev/vfio/N): the unit of ownership the IOMMU can isolate.
 *
 * @module
 */
import { VfioError } from "./errors.ts";
import { openFd, OwnedFd } from "./fd.ts";
import { canonicalPciAddress } from "./pci_address.ts";
import { canonicalVfToken, vfTokenHint, vfTokenMisuseHint } from "./vf_token.ts";
import type { Sys } from "./sys.ts";
import { driverOf, groupDevices, groupNode, iommuGroupOf } from "./sysfs.ts";
import { O_CLOEXEC, O_RDWR } from "./uapi/libc.ts";
import {
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  vfio_group_status,
  VFIO_GROUP_UNSET_CONTAINER,
} from "./uapi/vfio.ts";
import { onDeviceClose, VfioDevice } from "./device.ts";
import { groupAttached, groupDetached, type VfioContainer } from "./container.ts";
import { describeHolders } from "./proc.ts";
import type { OpenDeviceOptions } from "./iommu.ts";

/** A device in a group that keeps the group from being viable. */
export interface GroupMember {
  /** The device's PCI address. */
  bdf: string;
  /** The driver it is bound to, or undefined when unbound. */
  driver: string | undefined;
}

/** What {@link VfioGroup.status} reports. */
export interface GroupStatus {
  /** Every device in the group is bound to vfio-pci or to no driver. */
  viable: boolean;
  /** The group is attached to a container. */
  containerSet: boolean;
}

/** Options for {@link VfioGroup.open}. */
export interface GroupOpenOptions {
  /** The device the group is opened for, named in errors. */
  device?: string;
}

/**
 * The group cannot be used: a device in it is bound to a driver other than vfio-pci.
 * `code` is `"ERR_VFIO_GROUP_NOT_VIABLE"`; no syscall failed (the library checked
 * VFIO_GROUP_GET_STATUS before VFIO_GROUP_SET_CONTAINER would answer EPERM).
 */
export class GroupNotViableError extends VfioError {
  /** The group number. */
  readonly group: number;
  /** The devices bound to other drivers. */
  readonly blockers: GroupMember[];

  /**
   * Names the group and the devices that keep it from being viable.
   *
   * @param group The group number.
   * @param path The group node.
   * @param blockers The devices bound to other drivers.
   */
  constructor(group: number, path: string, blockers: GroupMember[]) {
    super({
      op: "VFIO_GROUP_GET_STATUS",
      code: "ERR_VFIO_GROUP_NOT_VIABLE",
      path,
      action: `use IOMMU group ${group}, which is not viable`,
      hint: blockers.length
        ? blockers.map((b) => `${b.bdf} is bound to ${b.driver}`).join("; ") +
          `; every device in the group must be bound to vfio-pci or to no driver: ` +
          blockers.map((b) => `vfio bind ${b.bdf}`).join(", ")
        : "a device in the group is bound to a driver other than vfio-pci",
    });
    this.name = "GroupNotViableError";
    this.group = group;
    this.blockers = blockers;
  }
}

const groupHints = (sys: Sys, group: number, path: string, bdf: string | undefined) => (code: string) => {
  switch (code) {
    case "EBUSY": {
      const who = describeHolders(sys, path, "another process (QEMU, another driver), or this one");
      return `group ${group} is already open in ${who}; close it there first`;
    }
    case "EACCES":
    case "EPERM":
      return `no permission on /dev/vfio/${group}: run as root, or give your user the group node ` +
        `(as root: \`vfio bind ${bdf ?? "BDF"} --user $USER\`, or a udev rule)`;
    case "ENOENT":
    case "ENODEV":
      return `no device of IOMMU group ${group} is bound to vfio-pci: bind one with \`vfio bind BDF\``;
  }
  return undefined;
};

/**
 * A VFIO group. Devices are obtained from it once it is attached to a container.
 *
 * Closing order is free: the kernel keeps the group alive while a device from it is open, and the
 * container alive while a group uses it. One thing needs the group fd itself: a legacy hot reset
 * ({@link VfioDevice.hotReset}) presents it to the kernel, so keep the group open until then.
 *
 * @example
 * ```ts
 * import { loadSys, VfioGroup } from "vfio-ts";
 *
 * const sys = await loadSys();
 * using group = VfioGroup.forDevice(sys, "0000:00:04.0");
 * console.log(group.status()); // { viable: true, containerSet: false }
 * ```
 */
export class VfioGroup implements Disposable {
  readonly #fd: OwnedFd;
  #container: VfioContainer | undefined;
  readonly #devices = new Set<VfioDevice>();

  readonly #sys: Sys;

  private constructor(
    sys: Sys,
    /** The IOMMU group number. */
    readonly group: number,
    fd: OwnedFd,
    /** Whether this is a no-IOMMU group (`/dev/vfio/noiommu-N`). */
    readonly noiommu: boolean,
  ) {
    this.#sys = sys;
    this.#fd = fd;
  }

  /**
   * Opens a group by number.
   *
   * @param sys The syscall backend.
   * @param group The IOMMU group number.
   * @param options The device the group is opened for, named in errors.
   * @returns The open group.
   * @throws {RangeError} If `group` is not a group number (before any file is touched).
   * @throws {DeviceNotBoundError} If the group node is missing because no device is bound to vfio-pci.
   * @throws {VfioError} If the group node is busy (naming the process that holds it) or not permitted.
   */
  static open(sys: Sys, group: number, options: GroupOpenOptions = {}): VfioGroup {
    if (!Number.isSafeInteger(group) || group < 0 || group > 0xffffffff) {
      throw new RangeError(`Cannot open VFIO group ${group}: group numbers are integers in 0..2^32-1`);
    }
    const bdf = options.device === undefined ? undefined : canonicalPciAddress(options.device);
    const node = groupNode(sys, group, bdf);
    const fd = openFd(sys, node.path, O_RDWR | O_CLOEXEC, groupHints(sys, group, node.path, bdf));
    return new VfioGroup(sys, group, fd, node.noiommu);
  }

  /**
   * Opens the group of a PCI device, found through /sys/bus/pci/devices/BDF/iommu_group.
   *
   * @param sys The syscall backend.
   * @param bdf The device's PCI address.
   * @returns The open group.
   * @throws {VfioError} If the device has no group or the group cannot be opened.
   */
  static forDevice(sys: Sys, bdf: string): VfioGroup {
    return VfioGroup.open(sys, iommuGroupOf(sys, bdf), { device: bdf });
  }

  /** The group fd. @throws {TypeError} If closed. */
  get fd(): number {
    return this.#fd.fd;
  }

  /** The group node's path. */
  get path(): string {
    return this.#fd.path;
  }

  /** The container this group is attached to, if any. */
  get container(): VfioContainer | undefined {
    return this.#container;
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#fd.closed;
  }

  /**
   * Reads VFIO_GROUP_GET_STATUS.
   *
   * @returns Whether the group is viable and whether a container is set.
   */
  status(): GroupStatus {
    const s = vfio_group_status.alloc();
    this.#fd.ioctl(VFIO_GROUP_GET_STATUS, s.bytes, "VFIO_GROUP_GET_STATUS", "get group status");
    const flags = s.get("flags");
    return {
      viable: (flags & VFIO_GROUP_FLAGS_VIABLE) !== 0,
      containerSet: (flags & VFIO_GROUP_FLAGS_CONTAINER_SET) !== 0,
    };
  }

  /**
   * The devices in this group and their drivers, from sysfs.
   *
   * @returns Each member's address and driver.
   */
  members(): GroupMember[] {
    return groupDevices(this.#sys, this.group).map((bdf) => ({ bdf, driver: driverOf(this.#sys, bdf) }));
  }

  /**
   * Throws unless the group is viable, naming each device bound to another driver.
   *
   * @throws {GroupNotViableError} If the group is not viable.
   */
  assertViable(): void {
    if (this.status().viable) return;
    const blockers = this.members().filter((m) => m.driver !== undefined && m.driver !== "vfio-pci");
    throw new GroupNotViableError(this.group, this.path, blockers);
  }

  /**
   * Attaches the group to a container (VFIO_GROUP_SET_CONTAINER).
   *
   * @param container The container.
   * @throws {GroupNotViableError} If the group is not viable.
   * @throws {VfioError} If the kernel refuses.
   */
  setContainer(container: VfioContainer): void {
    if (this.#container === container) return;
    if (this.#container) {
      throw new TypeError(`Cannot attach ${this.path} to a second container: unset the first one`);
    }
    this.assertViable();
    const fd = new Int32Array([container.fd]);
    this.#fd.ioctl(
      VFIO_GROUP_SET_CONTAINER,
      new Uint8Array(fd.buffer),
      "VFIO_GROUP_SET_CONTAINER",
      `attach group ${this.group} to the container`,
    );
    this.#container = container;
    groupAttached(container, this);
  }

  /**
   * Detaches the group from its container (VFIO_GROUP_UNSET_CONTAINER). Devices from the group must
   * be closed first; the kernel answers EBUSY otherwise.
   *
   * @throws {VfioError} If the kernel refuses.
   */
  unsetContainer(): void {
    this.#fd.fd; // throws once closed
    const c = this.#container;
    if (!c) return;
    this.#fd.ioctl(
      VFIO_GROUP_UNSET_CONTAINER,
      0,
      "VFIO_GROUP_UNSET_CONTAINER",
      "detach the group",
      (code) => code === "EBUSY" ? "close the group's devices first" : undefined,
    );
    this.#container = undefined;
    groupDetached(c, this);
  }

  /**
   * Gets a device from the group (VFIO_GROUP_GET_DEVICE_FD).
   *
   * @param bdf The device's PCI address.
   * @param options The VF token, for an SR-IOV VF (or PF) whose PF is on vfio-pci.
   * @returns The device; closing the group does not close it.
   * @throws {TypeError} If `options.vfToken` is not a string (before any syscall).
   * @throws {RangeError} If `options.vfToken` is not a UUID (before any syscall).
   * @throws {VfioError} If the group has no container or IOMMU yet, the device is not in it, or the
   *   VF token is missing or wrong (EACCES, with a hint naming `vfToken`).
   */
  getDevice(bdf: string, options: OpenDeviceOptions = {}): VfioDevice {
    const name = canonicalPciAddress(bdf);
    const action = `get device ${name} from group ${this.group}`;
    const token = options.vfToken === undefined ? undefined : canonicalVfToken(options.vfToken, action);
    // vfio_pci_core_match: the name, then options separated by spaces; vf_token= is the only one.
    const arg = new TextEncoder().encode(`${name}${token === undefined ? "" : ` vf_token=${token}`}\0`);
    const fd = this.#fd.ioctl(
      VFIO_GROUP_GET_DEVICE_FD,
      arg,
      "VFIO_GROUP_GET_DEVICE_FD",
      action,
      (code) => {
        if (code === "EACCES") return vfTokenHint(this.#sys, name, token);
        if (code === "EINVAL" && token !== undefined && (this.#container?.kind ?? "unset") !== "unset") {
          return vfTokenMisuseHint(this.#sys, name);
        }
        if (code === "EINVAL") return "attach the group to a container and set its IOMMU type first";
        if (code === "ENODEV") {
          const d = driverOf(this.#sys, name);
          return d === "vfio-pci"
            ? `${name} is not in IOMMU group ${this.group}`
            : `${name} is bound to ${d ?? "no driver"}, not vfio-pci: run \`vfio bind ${name}\``;
        }
        if (code === "EBUSY") return `${name} is already open (one open per device)`;
        return undefined;
      },
    );
    // A hot reset must present every affected group: those of the container, or this one alone.
    // The kernel wants a group fd, not just an open device, for each affected group: a closed group
    // fd cannot be presented, and the reset would fail with EPERM, so it is refused here by name.
    const resetFds = () => {
      if (this.closed) {
        throw new TypeError(
          `Cannot hot reset ${name}: its group fd ${this.path} was closed, and VFIO_DEVICE_PCI_HOT_RESET needs ` +
            "it; keep the group open until the reset, or pass groupFds",
        );
      }
      const groups = this.#container ? [...this.#container.groups] : [this as VfioGroup];
      return groups.filter((g) => !g.closed).map((g) => g.fd);
    };
    const device = new VfioDevice(
      this.#sys,
      new OwnedFd(this.#sys, fd, `${this.path} (${name})`),
      name,
      resetFds,
    );
    this.#devices.add(device);
    onDeviceClose(device, () => {
      this.#devices.delete(device);
      this.#releaseIfUnused();
    });
    return device;
  }

  /**
   * Closes the group fd. Open devices keep working (the kernel holds the group for them); a
   * container the group was attached to forgets it.
   */
  close(): void {
    if (this.#fd.closed) return;
    try {
      this.#fd.close();
    } finally {
      this.#releaseIfUnused();
    }
  }

  // Open device fds hold the kernel's group (and so its container attachment) alive after the group
  // fd closes; the container is told the group left only when the last of them is gone.
  #releaseIfUnused(): void {
    if (!this.#fd.closed || this.#devices.size > 0 || !this.#container) return;
    const c = this.#container;
    this.#container = undefined;
    groupDetached(c, this);
  }

  /** Closes the group, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}
