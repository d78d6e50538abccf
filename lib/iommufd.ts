/**
 * The iommufd backend (/dev/iommu, Linux 6.2+) with VFIO device cdevs (/dev/vfio/devices/vfioN,
 * Linux 6.6+): one IO address space (IOAS) that devices are bound and attached to. Devices without
 * an IOMMU (vfio's no-IOMMU mode, Linux 7.3+) have cdevs named noiommu-vfioN: an IOAS of those
 * maps and pins memory, and reports its physical addresses (IOMMU_IOAS_NOIOMMU_GET_PA).
 *
 * @module
 */
import { check, DeviceNotBoundError, UnsupportedError, VfioError } from "./errors.ts";
import { openFd, type OwnedFd, OwnedFd as Fd } from "./fd.ts";
import { onDeviceClose, VfioDevice } from "./device.ts";
import {
  type DmaAccess,
  interruptRemappingHint,
  IommuBase,
  type IommuOps,
  type IovaRange,
  type OpenDeviceOptions,
} from "./iommu.ts";
import { kernelOlderThan, needsKernel } from "./kernel_version.ts";
import { memlockHint } from "./limits.ts";
import { describeHolders } from "./proc.ts";
import { regionMappingAt } from "./region.ts";
import type { Sys } from "./sys.ts";
import { deviceCdev, driverOf, iommuGroupOf, requirePciDevice } from "./sysfs.ts";
import { canonicalVfToken, vfTokenBytes, vfTokenHint, vfTokenMisuseHint } from "./vf_token.ts";
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
  IOMMU_IOAS_MAP_FILE,
  iommu_ioas_map_file,
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  IOMMU_IOAS_NOIOMMU_GET_PA,
  iommu_ioas_noiommu_get_pa,
  IOMMU_IOAS_UNMAP,
  iommu_ioas_unmap,
  iommu_iova_range,
} from "./uapi/iommufd.ts";
import { ERRNO, MAP_ANONYMOUS, MAP_PRIVATE, O_CLOEXEC, O_RDWR, PROT_READ, PROT_WRITE } from "./uapi/libc.ts";
import {
  VFIO_DEVICE_ATTACH_IOMMUFD_PT,
  vfio_device_attach_iommufd_pt,
  VFIO_DEVICE_BIND_FLAG_TOKEN,
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

/** Options for {@link IommufdIoas.mapFile}. */
export interface MapFileOptions extends DmaAccess {
  /** Where the mapping starts in the file, in bytes: a multiple of the page size (default 0). */
  start?: number;
  /** How many bytes to map: a positive multiple of the IOMMU page size. */
  length: number;
}

const basename = (p: string) => p.slice(p.lastIndexOf("/") + 1);
const hex = (n: bigint | number) => `0x${n.toString(16)}`;

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
  /**
   * `"iommufd"`, or `"iommufd-noiommu"` once the IOAS holds devices without an IOMMU (cdevs named
   * /dev/vfio/devices/noiommu-vfioN).
   */
  get kind(): string {
    return this.#noiommu ? "iommufd-noiommu" : "iommufd";
  }
  /**
   * False once the IOAS holds devices without an IOMMU: they see physical addresses, which
   * {@link busAddress} reads (IOMMU_IOAS_NOIOMMU_GET_PA).
   */
  get translates(): boolean {
    return !this.#noiommu;
  }
  // Whether the devices attached have no IOMMU; undefined while none is attached. One IOAS holds
  // devices of one kind: their addresses mean different things.
  #noiommu: boolean | undefined;
  #attached = 0;
  /** The iommufd node. */
  readonly path: string = IOMMUFD_PATH;
  /** The kernel calls behind {@link IommuBase}. */
  protected readonly ops: IommuOps = {
    map: (vaddr, iova, size, access) => this.#map(vaddr, iova, size, access),
    unmap: (iova, size) => this.#unmap(iova, size),
    unmapAll: () => this.#unmapAll(),
    iovaRanges: () => this.#iovaRanges(),
    openDevice: (bdf, options) => this.#openDevice(bdf, options),
    mapPeer: (device, index, offset, length, iova, access) =>
      this.#mapPeer(device, index, offset, length, iova, access),
    physicalAddress: (iova, size) => this.#physicalAddress(iova, size),
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

  // Map and unmap run per DMA buffer: their argument structs are made once and refilled (JavaScript
  // is single-threaded, and the kernel copies them in before returning).
  readonly #mapArg = iommu_ioas_map.alloc();
  readonly #unmapArg = iommu_ioas_unmap.alloc();

  #map(vaddr: bigint, iova: bigint, size: number, access: DmaAccess): void {
    const m = this.#mapArg;
    m.set(
      "flags",
      IOMMU_IOAS_MAP_FIXED_IOVA | (access.read ? IOMMU_IOAS_MAP_READABLE : 0) |
        (access.write ? IOMMU_IOAS_MAP_WRITEABLE : 0),
    );
    m.set("ioas_id", this.#ioasId).set("user_va", vaddr).setU64("length", size).set("iova", iova);
    this.#fd.ioctl(
      IOMMU_IOAS_MAP,
      m.bytes,
      "IOMMU_IOAS_MAP",
      () => `map DMA at iova 0x${iova.toString(16)} (size 0x${size.toString(16)})`,
      (code) => {
        if (code === "ENOMEM" || code === "EAGAIN") return memlockHint(this.#sys, size);
        if (code === "EEXIST") return "the IOVA range overlaps an existing mapping";
        const bar = regionMappingAt(vaddr, size);
        if (bar !== undefined) {
          // pin_user_pages refuses VM_IO | VM_PFNMAP memory: iommufd maps device memory only as a DMA-BUF.
          return `the address is an mmap of ${bar}, device memory that iommufd cannot pin: map a peer's BAR ` +
            "with backend.mapPeerRegion(device, index, iova), which exports it as a DMA-BUF (Linux 6.19+)";
        }
        if (code === "EFAULT") return "the virtual address range is not mapped in this process";
        return undefined;
      },
    );
  }

  /**
   * Maps part of a file at an IOVA (IOMMU_IOAS_MAP_FILE, Linux 6.13+): a memfd, or a single-range
   * VFIO PCI DMA-BUF (Linux 6.19+, from {@link VfioDevice.exportDmaBuf}) for peer-to-peer DMA. The
   * mapping is booked like {@link mapDma}'s: {@link unmapDma} removes it, and closing the IOAS does.
   * The kernel holds the file while it is mapped, so the fd may be closed after this returns.
   *
   * @param fd The file's descriptor.
   * @param iova The device address, page-aligned, inside {@link iovaRanges}, clear of mappings.
   * @param options Where in the file and how many bytes, and the access (default read and write).
   * @throws {TypeError} If `fd` is not a descriptor number (before any syscall).
   * @throws {RangeError} If the offset, length or IOVA is invalid (before any syscall).
   * @throws {UnsupportedError} If the kernel has no IOMMU_IOAS_MAP_FILE (ENOTTY: before Linux 6.13).
   * @throws {VfioError} If the kernel refuses, e.g. a file it cannot map (EINVAL, EOPNOTSUPP).
   *
   * @example Map edu B's BAR0 for edu A, through a DMA-BUF
   * ```ts
   * import { IommufdIoas, loadSys } from "vfio-ts";
   *
   * using ioas = IommufdIoas.open(await loadSys());
   * const b = ioas.openDevice("0000:00:06.0");
   * using bar0 = b.exportDmaBuf(0, { ranges: [{ offset: 0, length: 4096 }] });
   * ioas.mapFile(bar0.fd, 0x8000000n, { length: 4096, write: false });
   * ```
   */
  mapFile(fd: number, iova: bigint, options: MapFileOptions): void {
    this.assertOpen();
    if (!Number.isSafeInteger(fd) || fd < 0 || fd > 0x7fffffff) {
      throw new TypeError(`Cannot map fd ${fd}: it is not a file descriptor number`);
    }
    const start = options?.start ?? 0;
    if (!Number.isSafeInteger(start) || start < 0 || start % this.#sys.pageSize !== 0) {
      throw new RangeError(
        `Cannot map fd ${fd} from offset ${start}: the offset must be a multiple of the page size ` +
          hex(this.#sys.pageSize),
      );
    }
    this.mapRange(
      `fd ${fd}`,
      iova,
      options?.length,
      options ?? {},
      (access) => this.#mapFile(fd, start, options.length, iova, access),
    );
  }

  #mapFile(fd: number, start: number, length: number, iova: bigint, access: DmaAccess): void {
    const m = iommu_ioas_map_file.alloc();
    m.set(
      "flags",
      IOMMU_IOAS_MAP_FIXED_IOVA | (access.read ? IOMMU_IOAS_MAP_READABLE : 0) |
        (access.write ? IOMMU_IOAS_MAP_WRITEABLE : 0),
    );
    m.set("ioas_id", this.#ioasId).set("fd", fd).set("start", BigInt(start)).set("length", BigInt(length));
    m.set("iova", iova);
    const action = `map fd ${fd} (offset ${hex(start)}, size ${hex(length)}) at iova ${hex(iova)}`;
    try {
      this.#fd.ioctl(IOMMU_IOAS_MAP_FILE, m.bytes, "IOMMU_IOAS_MAP_FILE", action, (code) => {
        if (code === "ENOMEM" || code === "EAGAIN") return memlockHint(this.#sys, length);
        if (code === "EEXIST") return "the IOVA range overlaps an existing mapping";
        if (code === "EBADF") return `fd ${fd} is not open`;
        if (code === "EINVAL" || code === "EOPNOTSUPP") {
          return "the kernel maps only memfds and (Linux 6.19+) single-range VFIO PCI DMA-BUFs, and only " +
            "inside the file; a revoked DMA-BUF (its device closed or reset) is refused too";
        }
        return undefined;
      });
    } catch (e) {
      if (e instanceof VfioError && e.code === "ENOTTY") {
        throw new UnsupportedError({
          op: "IOMMU_IOAS_MAP_FILE",
          errno: e.errno,
          path: this.path,
          action,
          hint: needsKernel(this.#sys, "IOMMU_IOAS_MAP_FILE", "6.13"),
        });
      }
      throw e;
    }
  }

  // iommufd cannot pin a BAR's mmap (VM_PFNMAP): the BAR goes in as a DMA-BUF of one range.
  #mapPeer(
    device: VfioDevice,
    index: number,
    offset: number,
    length: number,
    iova: bigint,
    access: Required<DmaAccess>,
  ): () => void {
    const buf = device.exportDmaBuf(index, { ranges: [{ offset, length }] });
    try {
      this.#mapFile(buf.fd, 0, length, iova, access);
    } catch (e) {
      buf.close();
      if (e instanceof VfioError && ["EINVAL", "EOPNOTSUPP"].includes(e.code)) {
        if (kernelOlderThan(this.#sys, "6.19")) {
          throw new UnsupportedError({
            op: "IOMMU_IOAS_MAP_FILE",
            errno: e.errno,
            path: this.path,
            action: `map region ${index} of ${device.name} at iova ${hex(iova)}`,
            hint: needsKernel(this.#sys, "IOMMU_IOAS_MAP_FILE of a VFIO DMA-BUF", "6.19"),
          });
        }
      }
      throw e;
    }
    return () => buf.close();
  }

  // IOMMU_IOAS_NOIOMMU_GET_PA: the range must be physically contiguous to have one bus address.
  #physicalAddress(iova: bigint, size: number): bigint {
    const q = iommu_ioas_noiommu_get_pa.alloc();
    q.set("ioas_id", this.#ioasId).set("iova", iova).set("length", BigInt(size));
    const action = `get the physical address of iova ${hex(iova)}`;
    try {
      this.#fd.ioctl(
        IOMMU_IOAS_NOIOMMU_GET_PA,
        q.bytes,
        "IOMMU_IOAS_NOIOMMU_GET_PA",
        action,
        (code) =>
          code === "EPERM"
            ? "reading physical addresses needs CAP_SYS_RAWIO: run as root"
            : code === "EOPNOTSUPP"
            ? "the IOAS maps for devices with an IOMMU, whose addresses are IOVAs"
            : undefined,
      );
    } catch (e) {
      if (e instanceof VfioError && e.code === "ENOTTY") {
        throw new UnsupportedError({
          op: "IOMMU_IOAS_NOIOMMU_GET_PA",
          errno: e.errno,
          path: this.path,
          action,
          hint: needsKernel(
            this.#sys,
            "IOMMU_IOAS_NOIOMMU_GET_PA",
            "7.3",
            "built with CONFIG_IOMMUFD_NOIOMMU",
          ),
        });
      }
      throw e;
    }
    const contiguous = q.get("length");
    if (contiguous < BigInt(size)) {
      throw new RangeError(
        `Cannot give iova ${hex(iova)} (size ${hex(size)}) one bus address: only ${
          hex(contiguous)
        } bytes of it ` +
          "are physically contiguous; in no-IOMMU mode use buffers of one page, or of one hugepage",
      );
    }
    return q.get("out_phys");
  }

  #unmap(iova: bigint, size: number): void {
    const u = this.#unmapArg;
    u.set("ioas_id", this.#ioasId).set("iova", iova).setU64("length", size);
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

  #openDevice(bdf: string, options: OpenDeviceOptions): VfioDevice {
    const name = requirePciDevice(this.#sys, bdf);
    const token = options.vfToken === undefined
      ? undefined
      : canonicalVfToken(options.vfToken, `open ${name}`);
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
          "the kernel makes no device cdevs (CONFIG_VFIO_DEVICE_CDEV, Linux 6.6+): use the legacy backend " +
          "(devices without an IOMMU have cdevs from Linux 7.3 on, with CONFIG_IOMMUFD_NOIOMMU)",
      });
    }
    const noiommu = basename(cdev).startsWith("noiommu-");
    this.#checkMode(noiommu, name);
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
          : code === "EPERM" && noiommu
          ? "a device without an IOMMU can do DMA anywhere: opening it needs CAP_SYS_RAWIO (run as root)"
          : undefined,
    );
    return this.#adoptDevice(fd, name, noiommu, token);
  }

  #checkMode(noiommu: boolean, name: string): void {
    if (this.#noiommu === undefined || this.#noiommu === noiommu) return;
    throw new TypeError(
      `Cannot open ${name} into this IOAS: it holds devices ${
        this.#noiommu ? "without" : "behind"
      } an IOMMU ` +
        `and ${name} is ${
          noiommu ? "without one" : "behind one"
        }; their DMA addresses mean different things, ` +
        "so open it into an IOAS of its own",
    );
  }

  /**
   * Binds and attaches an already open device cdev fd (e.g. passed in by a privileged helper).
   *
   * @param fd The cdev fd, now owned by the backend.
   * @param name The device's name for messages (its PCI address).
   * @param options The VF token, for an SR-IOV VF whose PF is on vfio-pci.
   * @returns The device; it closes with the backend.
   * @throws {TypeError} If the token is not a string, or the device's IOMMU mode differs from the
   *   IOAS's devices'.
   * @throws {RangeError} If the token is not a UUID.
   * @throws {VfioError} If bind or attach fails; the fd is closed then.
   */
  openDeviceFd(fd: number, name: string, options: OpenDeviceOptions = {}): VfioDevice {
    this.assertOpen();
    const owned = new Fd(this.#sys, fd, `vfio cdev fd ${fd} (${name})`);
    try {
      const token = options.vfToken === undefined
        ? undefined
        : canonicalVfToken(options.vfToken, `open ${name}`);
      // The node's name says whether the device has an IOMMU; /proc/self/fd tells which node it is.
      const link = this.#sys.readLink(`/proc/self/fd/${fd}`);
      const noiommu = typeof link === "string" && basename(link).startsWith("noiommu-");
      this.#checkMode(noiommu, name);
      return this.adopt(this.#adoptDevice(owned, name, noiommu, token));
    } catch (e) {
      if (!owned.closed) owned.close();
      throw e;
    }
  }

  #bind(fd: OwnedFd, name: string, noiommu: boolean, token: string | undefined): void {
    const b = vfio_device_bind_iommufd.alloc();
    b.set("iommufd", this.#fd.fd);
    const bind = () =>
      fd.ioctl(
        VFIO_DEVICE_BIND_IOMMUFD,
        b.bytes,
        "VFIO_DEVICE_BIND_IOMMUFD",
        `bind ${name} to ${this.path}${token === undefined ? "" : " with a VF token"}`,
        (code) =>
          code === "EPERM"
            ? noiommu
              ? "a device without an IOMMU needs CAP_SYS_RAWIO: run as root"
              : interruptRemappingHint("iommufd") // checked at bind since Linux 6.3
            : code === "EBUSY"
            ? `the device's group is open through the legacy container API (${
              legacyGroupHolders(this.#sys, name, noiommu)
            }): close it there`
            : code === "EACCES"
            ? vfTokenHint(this.#sys, name, token)
            : code === "EINVAL" && token !== undefined
            ? `${vfTokenMisuseHint(this.#sys, name)}; or the device is already bound to an iommufd`
            : code === "EINVAL"
            ? `the device is already bound to an iommufd, through another open of ${fd.path} (one bind per ` +
              `device): held by ${
                describeHolders(this.#sys, fd.path, "no other process; in this one", { exceptSelf: true })
              }`
            : undefined,
      );
    if (token === undefined) {
      bind();
      return;
    }
    // token_uuid_ptr points at the 16 bytes: they live in a page of their own, whose address the
    // garbage collector cannot move, for the length of the ioctl.
    withScratch(this.#sys, 16, (address, bytes) => {
      bytes.set(vfTokenBytes(token));
      b.set("flags", VFIO_DEVICE_BIND_FLAG_TOKEN).set("token_uuid_ptr", address);
      try {
        bind();
      } catch (e) {
        // Before 6.17 the flag itself is unknown (vfio_df_ioctl_bind_iommufd: flags must be 0).
        if (e instanceof VfioError && e.code === "EINVAL" && kernelOlderThan(this.#sys, "6.17")) {
          throw new UnsupportedError({
            op: "VFIO_DEVICE_BIND_IOMMUFD",
            errno: e.errno,
            path: fd.path,
            action: `bind ${name} to ${this.path} with a VF token`,
            hint: needsKernel(this.#sys, "VFIO_DEVICE_BIND_FLAG_TOKEN", "6.17") +
              ': open the VF with the legacy backend ({ backend: "legacy" }), which passes the token by name',
          });
        }
        throw e;
      }
    });
  }

  #adoptDevice(fd: OwnedFd, name: string, noiommu: boolean, token: string | undefined): VfioDevice {
    try {
      this.#bind(fd, name, noiommu, token);
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
    this.#noiommu = noiommu;
    this.#attached++;
    // A cdev-bound device proves ownership of its reset group through the iommufd: no group fds.
    const device = new VfioDevice(this.#sys, fd, name, () => []);
    onDeviceClose(device, () => {
      this.#ranges = undefined;
      if (--this.#attached === 0) this.#noiommu = undefined;
    });
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

// The group node of a device and who holds it open, for the hint of a bind refused because the
// group is open the legacy way. A diagnostic: it never throws.
function legacyGroupHolders(sys: Sys, name: string, noiommu: boolean): string {
  try {
    const node = `/dev/vfio/${noiommu ? "noiommu-" : ""}${iommuGroupOf(sys, name)}`;
    return `${node}, held by ${describeHolders(sys, node, "another process, or this one")}`;
  } catch {
    return "/dev/vfio/N";
  }
}
