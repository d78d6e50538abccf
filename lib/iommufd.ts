/**
 * The iommufd backend (/dev/iommu, Linux 6.2+) with VFIO device cdevs (/dev/vfio/devices/vfioN,
 * Linux 6.6+): one IO address space (IOAS) that devices are bound and attached to.
 *
 * @module
 */
import { check, DeviceNotBoundError, UnsupportedError } from "./errors.ts";
import { openFd, type OwnedFd, OwnedFd as Fd } from "./fd.ts";
import { onDeviceClose, VfioDevice } from "./device.ts";
import { type DmaAccess, interruptRemappingHint, IommuBase, type IommuOps, type IovaRange } from "./iommu.ts";
import { memlockHint } from "./limits.ts";
import { describeHolders } from "./proc.ts";
import type { Sys } from "./sys.ts";
import { deviceCdev, driverOf, requirePciDevice } from "./sysfs.ts";
import {
  IOMMU_DESTROY,
  iommu_destroy,
  IOMMU_IOAS_ALLOC,
  iommu_ioas_alloc,
  IOMMU_IOAS_ALLOW_IOVAS,
  iommu_ioas_allow_iovas,
  IOMMU_IOAS_IOVA_RANGES,
  iommu_ioas_iova_ranges,
  IOMMU_IOAS_MAP,
  iommu_ioas_map,
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  IOMMU_IOAS_UNMAP,
  iommu_ioas_unmap,
  iommu_iova_range,
} from "./uapi/iommufd.ts";
import { ERRNO, MAP_ANONYMOUS, MAP_PRIVATE, O_CLOEXEC, O_RDWR, PROT_READ, PROT_WRITE } from "./uapi/libc.ts";
import {
  VFIO_DEVICE_ATTACH_IOMMUFD_PT,
  vfio_device_attach_iommufd_pt,
  VFIO_DEVICE_BIND_IOMMUFD,
  vfio_device_bind_iommufd,
} from "./uapi/vfio.ts";

/** The iommufd node. */
export const IOMMUFD_PATH = "/dev/iommu";

/** Options for {@link IommufdIoas.open}. */
export interface IommufdOptions {
  /**
   * An already open /dev/iommu fd (e.g. passed in by a privileged helper). The backend takes
   * ownership and closes it.
   */
  iommufd?: number;
}

/**
 * An IOAS in an iommufd context: the iommufd implementation of {@link IommuBase}.
 *
 * @example
 * ```ts
 * import { IommufdIoas, loadSys } from "vfio-ts";
 *
 * const sys = await loadSys();
 * using ioas = IommufdIoas.open(sys);
 * const device = ioas.openDevice("0000:00:04.0"); // opens /dev/vfio/devices/vfioN, binds, attaches
 * console.log(ioas.iovaRanges());
 * ```
 */
export class IommufdIoas extends IommuBase {
  /** Always `"iommufd"`. */
  readonly kind: string = "iommufd";
  /** iommufd always translates. */
  readonly translates: boolean = true;
  /** The iommufd node. */
  readonly path: string = IOMMUFD_PATH;
  /** The kernel calls behind {@link IommuBase}. */
  protected readonly ops: IommuOps = {
    map: (vaddr, iova, size, access) => this.#map(vaddr, iova, size, access),
    unmap: (iova, size) => this.#unmap(iova, size),
    unmapAll: () => this.#unmapAll(),
    iovaRanges: () => this.#iovaRanges(),
    openDevice: (bdf) => this.#openDevice(bdf),
    alive: () => this.#alive(),
    release: () => this.#release(),
  };
  readonly #fd: OwnedFd;
  #ioasId: number;

  readonly #sys: Sys;

  private constructor(sys: Sys, fd: OwnedFd, ioasId: number) {
    super();
    this.#sys = sys;
    this.#fd = fd;
    this.#ioasId = ioasId;
  }

  /**
   * Opens /dev/iommu (or adopts an open fd) and allocates an IOAS.
   *
   * @param sys The syscall backend.
   * @param options An already open iommufd, if any.
   * @returns The IOAS.
   * @throws {VfioUnavailableError} If the kernel has no iommufd.
   * @throws {VfioError} If /dev/iommu cannot be opened or the IOAS cannot be allocated.
   */
  static open(sys: Sys, options: IommufdOptions = {}): IommufdIoas {
    const fd = options.iommufd !== undefined
      ? new Fd(sys, options.iommufd, `${IOMMUFD_PATH} (fd ${options.iommufd})`)
      : openFd(
        sys,
        IOMMUFD_PATH,
        O_RDWR | O_CLOEXEC,
        (code) =>
          code === "EACCES"
            ? "run as root, or give your user access to /dev/iommu (the kernel makes it 0660 root: grant it " +
              "through its group), or use the legacy backend: VFIO_TS_BACKEND=legacy"
            : undefined,
        (code) =>
          code === "ENOENT" || code === "ENODEV"
            ? "the kernel has no iommufd (CONFIG_IOMMUFD, Linux 6.2+): use the legacy backend"
            : undefined,
      );
    try {
      const a = iommu_ioas_alloc.alloc();
      fd.ioctl(IOMMU_IOAS_ALLOC, a.bytes, "IOMMU_IOAS_ALLOC", "allocate an IOAS");
      return new IommufdIoas(sys, fd, a.get("out_ioas_id"));
    } catch (e) {
      fd.close();
      throw e;
    }
  }

  /** The iommufd. @throws {TypeError} If closed. */
  get fd(): number {
    return this.#fd.fd;
  }

  /** The IOAS object ID. */
  get ioasId(): number {
    return this.#ioasId;
  }

  /**
   * The IOVA alignment the IOAS requires (IOMMU_IOAS_IOVA_RANGES' `out_iova_alignment`, which grows
   * with the attached devices' IOMMU page sizes), and at least the CPU page size.
   */
  get iommuPageSize(): number {
    this.assertOpen();
    this.#iovaRanges();
    return Math.max(this.#sys.pageSize, this.#alignment);
  }

  #alive(): boolean {
    return !this.#fd.closed;
  }

  #map(vaddr: bigint, iova: bigint, size: number, access: DmaAccess): void {
    const m = iommu_ioas_map.alloc();
    m.set(
      "flags",
      IOMMU_IOAS_MAP_FIXED_IOVA | (access.read ? IOMMU_IOAS_MAP_READABLE : 0) |
        (access.write ? IOMMU_IOAS_MAP_WRITEABLE : 0),
    );
    m.set("ioas_id", this.#ioasId).set("user_va", vaddr).set("length", BigInt(size)).set("iova", iova);
    this.#fd.ioctl(
      IOMMU_IOAS_MAP,
      m.bytes,
      "IOMMU_IOAS_MAP",
      () => `map DMA at iova 0x${iova.toString(16)} (size 0x${size.toString(16)})`,
      (code) => {
        if (code === "ENOMEM" || code === "EAGAIN") return memlockHint(this.#sys, size);
        if (code === "EEXIST") return "the IOVA range overlaps an existing mapping";
        if (code === "EFAULT") return "the virtual address range is not mapped in this process";
        return undefined;
      },
    );
  }

  #unmap(iova: bigint, size: number): void {
    const u = iommu_ioas_unmap.alloc();
    u.set("ioas_id", this.#ioasId).set("iova", iova).set("length", BigInt(size));
    this.#fd.ioctl(
      IOMMU_IOAS_UNMAP,
      u.bytes,
      "IOMMU_IOAS_UNMAP",
      () => `unmap DMA at iova 0x${iova.toString(16)}`,
    );
  }

  #unmapAll(): void {
    // iova 0 with length U64_MAX unmaps everything (iommufd.h).
    const u = iommu_ioas_unmap.alloc();
    u.set("ioas_id", this.#ioasId).set("iova", 0n).set("length", 0xffffffffffffffffn);
    this.#fd.ioctl(IOMMU_IOAS_UNMAP, u.bytes, "IOMMU_IOAS_UNMAP", "unmap all DMA");
  }

  // The ranges change only when a device attaches or leaves (its reserved regions) or with
  // allowIovas(), so they are read once per change rather than on every DMA map.
  #ranges: readonly IovaRange[] | undefined;
  #alignment = 0;

  #iovaRanges(): readonly IovaRange[] {
    this.#ranges ??= this.#readRanges();
    return this.#ranges;
  }

  #readRanges(): IovaRange[] {
    const q = iommu_ioas_iova_ranges.alloc();
    q.set("ioas_id", this.#ioasId);
    let n = 8;
    for (;;) {
      const found = withScratch(this.#sys, n * iommu_iova_range.size, (address, bytes) => {
        q.set("num_iovas", n).set("allowed_iovas", address);
        const r = this.#sys.ioctlPtr(this.#fd.fd, IOMMU_IOAS_IOVA_RANGES, q.bytes);
        if (r === -ERRNO.EMSGSIZE!) return undefined;
        check(r, { op: "IOMMU_IOAS_IOVA_RANGES", path: this.path, action: "list IOVA ranges" });
        const alignment = q.get("out_iova_alignment");
        if (alignment > 1n << 30n || (alignment & (alignment - 1n)) !== 0n) {
          throw new RangeError(`Cannot use IOVA alignment 0x${alignment.toString(16)} from the kernel`);
        }
        this.#alignment = Number(alignment);
        return Array.from({ length: q.get("num_iovas") }, (_, i) => {
          const range = iommu_iova_range.at(bytes, i * iommu_iova_range.size);
          return { start: range.get("start"), last: range.get("last") };
        });
      });
      if (found) return found;
      n = q.get("num_iovas");
      if (n > 4096) throw new RangeError(`Cannot list IOVA ranges: the kernel reports ${n}`);
    }
  }

  /**
   * Sets the IOAS's allowed IOVA ranges (IOMMU_IOAS_ALLOW_IOVAS). The kernel then refuses to attach
   * a device whose reserved regions fall inside them, and picks IOVAs only from them when it chooses
   * (this library always maps at fixed IOVAs, which the allowed list does not limit).
   *
   * @param ranges The allowed ranges; an empty list lifts the restriction.
   * @throws {VfioError} If a range conflicts with existing reserved regions (EADDRINUSE).
   */
  allowIovas(ranges: readonly IovaRange[]): void {
    this.assertOpen();
    this.#ranges = undefined;
    const a = iommu_ioas_allow_iovas.alloc();
    a.set("ioas_id", this.#ioasId).set("num_iovas", ranges.length);
    withScratch(this.#sys, Math.max(1, ranges.length) * iommu_iova_range.size, (address, bytes) => {
      ranges.forEach((r, i) =>
        iommu_iova_range.at(bytes, i * iommu_iova_range.size).set("start", r.start).set("last", r.last)
      );
      a.set("allowed_iovas", address);
      this.#fd.ioctl(IOMMU_IOAS_ALLOW_IOVAS, a.bytes, "IOMMU_IOAS_ALLOW_IOVAS", "restrict the allowed IOVAs");
    });
  }

  #openDevice(bdf: string): VfioDevice {
    const name = requirePciDevice(this.#sys, bdf);
    const cdev = deviceCdev(this.#sys, name);
    if (!cdev) {
      const driver = driverOf(this.#sys, name);
      const init = {
        op: "open",
        path: `/sys/bus/pci/devices/${name}/vfio-dev`,
        action: `find the VFIO cdev of ${name}`,
      };
      if (driver !== "vfio-pci") throw new DeviceNotBoundError(name, driver, init);
      throw new UnsupportedError({
        ...init,
        hint:
          "the kernel makes no device cdevs (CONFIG_VFIO_DEVICE_CDEV, Linux 6.6+): use the legacy backend",
      });
    }
    const fd = openFd(
      this.#sys,
      cdev,
      O_RDWR | O_CLOEXEC,
      (code) =>
        code === "EBUSY"
          ? `${name} is already open (one open per device) in ${
            describeHolders(this.#sys, cdev, "another process, or this one")
          }; close it there first`
          : code === "EACCES"
          ? `run as root, or give your user ${cdev}: vfio bind ${name} --user $USER (as root), or a udev rule`
          : undefined,
    );
    return this.#adoptDevice(fd, name);
  }

  /**
   * Binds and attaches an already open device cdev fd (e.g. passed in by a privileged helper).
   *
   * @param fd The cdev fd, now owned by the backend.
   * @param name The device's name for messages (its PCI address).
   * @returns The device; it closes with the backend.
   * @throws {VfioError} If bind or attach fails; the fd is closed then.
   */
  openDeviceFd(fd: number, name: string): VfioDevice {
    this.assertOpen();
    return this.adopt(this.#adoptDevice(new Fd(this.#sys, fd, `vfio cdev fd ${fd} (${name})`), name));
  }

  #adoptDevice(fd: OwnedFd, name: string): VfioDevice {
    try {
      const b = vfio_device_bind_iommufd.alloc();
      b.set("iommufd", this.#fd.fd);
      fd.ioctl(
        VFIO_DEVICE_BIND_IOMMUFD,
        b.bytes,
        "VFIO_DEVICE_BIND_IOMMUFD",
        `bind ${name} to ${this.path}`,
        (code) =>
          code === "EPERM"
            ? interruptRemappingHint("iommufd") // checked at bind since Linux 6.3
            : code === "EBUSY"
            ? "the device's group is open through the legacy container API (/dev/vfio/N): close it there"
            : code === "EINVAL"
            ? "the device is already bound to an iommufd, through this open of the cdev or another"
            : undefined,
      );
      const a = vfio_device_attach_iommufd_pt.alloc();
      a.set("pt_id", this.#ioasId);
      fd.ioctl(
        VFIO_DEVICE_ATTACH_IOMMUFD_PT,
        a.bytes,
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        `attach ${name} to IOAS ${this.#ioasId}`,
        (code) =>
          code === "EPERM"
            ? interruptRemappingHint("iommufd")
            : code === "ENOMEM" || code === "EAGAIN"
            ? memlockHint(this.#sys, [...this.mappings.values()].reduce((a, b) => a + b, 0))
            : code === "EADDRINUSE"
            ? "a mapping made before the first attach overlaps the device's reserved IOVA regions"
            : undefined,
      );
    } catch (e) {
      fd.close();
      throw e;
    }
    this.#ranges = undefined; // the attach added the device's reserved regions
    // A cdev-bound device proves ownership of its reset group through the iommufd: no group fds.
    const device = new VfioDevice(this.#sys, fd, name, () => []);
    onDeviceClose(device, () => (this.#ranges = undefined));
    return device;
  }

  #release(): void {
    try {
      const d = iommu_destroy.alloc();
      d.set("id", this.#ioasId);
      this.#fd.ioctl(IOMMU_DESTROY, d.bytes, "IOMMU_DESTROY", `destroy IOAS ${this.#ioasId}`);
    } finally {
      this.#fd.close();
    }
  }
}

// Structs such as iommu_ioas_iova_ranges carry a pointer to an array. The array lives in a private
// anonymous page whose address is known, rather than in the JavaScript heap, whose objects the
// garbage collector may move.
function withScratch<T>(sys: Sys, length: number, fn: (address: bigint, bytes: Uint8Array) => T): T {
  const size = Math.ceil(length / sys.pageSize) * sys.pageSize;
  const address = sys.mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (address < 0n) check(Number(address), { op: "mmap", action: "allocate scratch memory" });
  // SAFETY: the page was just mapped and is unmapped below, after the buffer is detached.
  const buffer = sys.memory(address, size);
  try {
    return fn(address, new Uint8Array(buffer));
  } finally {
    buffer.transfer(0);
    sys.munmap(address, size);
  }
}
