/**
 * A fake {@link Sys}: an in-memory model of the parts of Linux VFIO the library relies on, so that
 * unit tests can drive every code path, the failing ones included, without a device or root.
 *
 * It doubles as documentation of the kernel behaviour the library depends on (Linux 6.12,
 * drivers/vfio/{container,group}.c, vfio_iommu_type1.c, pci/vfio_pci_core.c):
 * - A group node exists as /dev/vfio/N (/dev/vfio/noiommu-N in no-IOMMU mode) once a device of the
 *   group is bound to vfio-pci. It opens once (EBUSY after). It is viable only if every device in
 *   it is bound to vfio-pci or to no driver; VFIO_GROUP_SET_CONTAINER refuses it otherwise (EPERM).
 * - VFIO_SET_IOMMU needs a group in the container (EINVAL) and happens once (EBUSY).
 *   VFIO_GROUP_GET_DEVICE_FD needs the IOMMU set (EINVAL) and a vfio-pci device of the group
 *   (ENODEV).
 * - Device fds hold their group: the group is released, and leaves its container, once its fd and
 *   every device fd are closed. When the last group leaves a container, the IOMMU is torn down and
 *   every DMA mapping dies with it.
 * - Info ioctls with capabilities answer a too-small `argsz` by raising it to the size needed and
 *   returning no capabilities; the caller asks again. `next` offsets count from the info start.
 * - Region N lives at `N << 40` in the device fd (VFIO_PCI_INDEX_TO_OFFSET); pread past its end is
 *   short.
 * - SET_IRQS with DATA_EVENTFD | ACTION_TRIGGER attaches eventfds, DATA_NONE | ACTION_TRIGGER
 *   fires them (count 0 disables the index), and closing the device disables everything. INTx, MSI
 *   and MSI-X are one type at a time: attaching eventfds to one while another has some is EINVAL.
 * - MAP_DMA pins memory against RLIMIT_MEMLOCK (ENOMEM), needs mapped memory (EFAULT), refuses
 *   overlaps (EEXIST) and IOVAs outside the reported ranges (EINVAL). MAP_DMA and UNMAP_DMA of a
 *   range that wraps past 2^64 are EOVERFLOW since Linux 6.19 (EINVAL before).
 *
 * iommufd (drivers/iommu/iommufd/{main,ioas,io_pagetable,device}.c, drivers/vfio/device_cdev.c),
 * when {@link FakeSys.iommufd} is on:
 * - /dev/iommu opens any number of times; each open is a context whose objects (IOAS, hw page
 *   table, bound device) share one ID space from 1. The context lives while its fd is open or a
 *   device is bound to it (the bind holds the file); then every object and mapping goes with it.
 * - iommufd structs lead with `size`: below the struct is EINVAL. A wrong object ID, or one of
 *   another type, is ENOENT. IOMMU_DESTROY of an IOAS a device is attached to, of a hw page table
 *   or of a bound device is EBUSY.
 * - An IOAS with no device attached has no IOMMU domain: its IOVA ranges are all of 0..U64_MAX and
 *   its alignment 1, and IOMMU_IOAS_MAP records without pinning (no EFAULT, no ENOMEM yet). The
 *   first attach makes the domain (a hw page table, whose ID the attach returns): it reserves what
 *   the IOMMU cannot map (the complement of {@link FakeSys.iovaRanges}: the MSI window, beyond the
 *   aperture), raises the alignment to the smallest of {@link FakeSys.iovaPgsizes}, and pins every
 *   mapping. A reserved range that overlaps a mapping or an allowed range, or a mapping off the new
 *   alignment, is EADDRINUSE; pinning is EFAULT or ENOMEM as below. The last detach undoes it all.
 * - IOMMU_IOAS_MAP with FIXED_IOVA: an IOVA or user page offset off the alignment, a zero length,
 *   no access, or a reserved IOVA is EINVAL; an overlap EEXIST; with a domain, unmapped memory
 *   EFAULT and pinning past RLIMIT_MEMLOCK (counted over every iommufd, apart from type1's count)
 *   ENOMEM. Allowed ranges do not limit a fixed IOVA: they only keep the ranges from narrowing.
 * - IOMMU_IOAS_UNMAP removes whole mappings in IOVA order; one the range cuts is ENOENT (those
 *   before it stay unmapped), as is a range with nothing in it. iova 0 with length U64_MAX removes
 *   everything, and succeeds on an empty IOAS. `length` returns the bytes unmapped.
 * - IOMMU_IOAS_IOVA_RANGES writes min(num_iovas, n) ranges through `allowed_iovas` into process
 *   memory (EFAULT if unmapped), sets num_iovas to n and out_iova_alignment, and is EMSGSIZE when n
 *   did not fit. IOMMU_IOAS_ALLOW_IOVAS reads its ranges the same way: start >= last or two that
 *   overlap is EINVAL, one over a reserved range EADDRINUSE; it replaces the list (0 clears it).
 * - A device cdev /dev/vfio/devices/vfioN exists for a vfio-pci device with `cdev` set, when
 *   {@link FakeSys.deviceCdevs}; sysfs lists vfio-dev/vfioN regardless, as the kernel does. It
 *   opens any number of times; until VFIO_DEVICE_BIND_IOMMUFD, every other ioctl, read, write and
 *   mmap is EINVAL. Bind: EBUSY while the device's group is open the legacy way (and the group
 *   stays unopenable, EBUSY, while a device of it is bound); EINVAL if this fd is bound or the
 *   device is bound through another; EBADF for a closed fd, EBADFD for one that is not an iommufd;
 *   EPERM without interrupt remapping ({@link FakeSys.isolatedMsi}), for a non-viable group, or for
 *   a group another iommufd owns. ATTACH_IOMMUFD_PT to an IOAS or hw page table (ENOENT for an
 *   unknown ID, EINVAL for another object) replaces any earlier attachment. Once bound, the device
 *   behaves as on the legacy path, except hot reset: count must be 0 (EINVAL otherwise), and every
 *   affected device must be bound to this iommufd or share a group with one that is (EPERM);
 *   GET_PCI_HOT_RESET_INFO reports devids (FLAG_DEV_ID). Closing the cdev detaches and unbinds it.
 *
 * Linux 7.x (the fake's {@link FakeSys.release} is 7.3.4 unless a test sets an older one; each rule
 * says from when it holds, and /proc/sys/kernel/osrelease reports the release):
 * - SR-IOV (drivers/pci/iov.c, vfio_pci_core.c): a PF made with `sriov` has sriov_totalvfs and
 *   sriov_numvfs in sysfs. Writing sriov_numvfs: above the total is ERANGE; the same count is a no-op;
 *   no driver, or vfio-pci without enable_sriov ({@link FakeSys.vfioPciEnableSriov}), is ENOENT; a
 *   new non-zero count while VFs exist is EBUSY (write 0 first). Enabling adds the VFs (virtfnN and
 *   physfn links, each in an IOMMU group of its own, bound to vfio-pci when the PF is, as vfio-pci's
 *   bus notifier sets their driver_override), with cdevs when the kernel makes them. Disabling while
 *   a VF is open would block in the kernel until its user lets go: the fake throws instead.
 * - VF tokens (vfio_pci_core_match_token_uuid): a PF keeps a token (random until set; GET is EINVAL,
 *   a device that is no PF has none: ENOTTY), set with VFIO_DEVICE_FEATURE SET | PCI_VF_TOKEN
 *   (16 bytes). Opening a VF whose PF is on vfio-pci needs the PF's token: missing or wrong is
 *   EACCES; a token for a VF whose PF is not on vfio-pci, or for a device that is neither, is
 *   EINVAL; for a PF, a token sets it while no VF is open and must match while some are (EACCES).
 *   Legacy: VFIO_GROUP_GET_DEVICE_FD takes "BDF vf_token=UUID" (another option, or a malformed UUID,
 *   is EINVAL). cdev: VFIO_DEVICE_BIND_FLAG_TOKEN with token_uuid_ptr (EFAULT if unmapped), since
 *   6.17; before, any flag is EINVAL (and the cdev checks no token at all).
 * - DMA-BUF (vfio_pci_dmabuf.c, since 6.19, with {@link FakeSys.dmaBufExport}; otherwise the
 *   feature is ENOTTY): VFIO_DEVICE_FEATURE GET | DMA_BUF takes struct vfio_device_feature_dma_buf
 *   and its ranges (argsz below the struct, no ranges or flags set: EINVAL; a region that is not an
 *   implemented BAR: ENODEV; a range empty, off the page or past the BAR: EINVAL) and returns a new
 *   fd. PROBE answers for GET only. Closing the device revokes its DMA-BUFs.
 * - IOMMU_IOAS_MAP_FILE (since 6.13, ENOTTY before) maps a file like IOMMU_IOAS_MAP maps memory (same
 *   flag, IOVA and overlap rules): an fd that is not open is EBADF; a VFIO DMA-BUF (since 6.19) must
 *   have one range (EOPNOTSUPP), not be revoked (ENODEV), and hold start + length (EINVAL); other
 *   files are EINVAL (the fake has no memfd). DMA-BUF pages are not pinned or counted.
 * - IOMMU_IOAS_MAP of a BAR's mmap fails where it pins (EFAULT: pin_user_pages refuses VM_PFNMAP);
 *   type1's VFIO_IOMMU_MAP_DMA takes it (vaddr_get_pfns follows the PFN map) without counting it
 *   against RLIMIT_MEMLOCK.
 * - No-IOMMU through iommufd (since 7.3): a `noiommu` device with a cdev gets the node
 *   noiommu-vfioN (none before 7.3); opening it needs CAP_SYS_RAWIO (uid 0, else EPERM); bind skips
 *   the isolation checks; the first attach makes a software domain that maps the whole 64-bit space
 *   at page alignment, and pins. IOMMU_IOAS_NOIOMMU_GET_PA (CAP_SYS_RAWIO; flags EOPNOTSUPP; length
 *   0 EINVAL; an IOVA not mapped ENOENT; a domain with an IOMMU EOPNOTSUPP) returns the physical
 *   address of the IOVA and the physically contiguous bytes from it, capped by `length`. Anonymous
 *   memory is physically contiguous only within a page, or within one hugepage.
 *
 * What the kernel would block on (reading an empty eventfd, an endless poll with nothing ready),
 * the fake cannot: it returns EAGAIN or throws, which shows up as a test failure. Misuse the kernel
 * would not report (a double close, unmapping memory that a live view or a DMA mapping still uses)
 * is recorded in {@link FakeSys.violations}; {@link FakeSys.leaks} lists it with open fds,
 * mappings, and the mappings of IOASes still alive.
 *
 * @module
 */
import { VfioContainer } from "../../lib/container.ts";
import { VfioError } from "../../lib/errors.ts";
import type { VfioDevice } from "../../lib/device.ts";
import { VfioGroup } from "../../lib/group.ts";
import type { RawMmio, Sys } from "../../lib/sys.ts";
import {
  ERRNO,
  MAP_ANONYMOUS,
  MAP_HUGE_SHIFT,
  MAP_HUGETLB,
  pollfd,
  POLLIN,
  POLLNVAL,
  RLIM_INFINITY,
  rlimit,
  RLIMIT_MEMLOCK,
} from "../../lib/uapi/libc.ts";
import * as I from "../../lib/uapi/iommufd.ts";
import type { Fields, Struct, StructDef } from "../../lib/uapi/struct.ts";
import * as V from "../../lib/uapi/vfio.ts";

/** Where region `index` starts in the device fd, as vfio-pci lays it out. */
export const regionOffset = (index: number): number => index * 2 ** 40;

/** A device region: what VFIO_DEVICE_GET_REGION_INFO reports, and the bytes behind it. */
export interface FakeRegion {
  index: number;
  size: number;
  /** VFIO_REGION_INFO_FLAG_*; the fake adds CAPS when there are capabilities. */
  flags: number;
  sparse?: { offset: number; size: number }[];
  type?: { type: number; subtype: number };
  msixMappable?: boolean;
  /** A raw capability chain reported instead of the above (`next` counts from the info start). */
  rawCaps?: Uint8Array;
  /** The registers, shared by pread/pwrite and mmap. */
  data: Uint8Array;
}

/** An eventfd's counter. The kernel holds it by reference, so it outlives the fd number. */
interface Counter {
  value: bigint;
  waiters: (() => void)[];
}

/** An IRQ index of a device. */
export interface FakeIrq {
  index: number;
  count: number;
  flags: number;
  /** The eventfd attached to each vector. */
  triggers: (Counter | undefined)[];
  masked: boolean[];
}

/** A PCI device in the fake sysfs, and its vfio-pci state. */
export interface FakeDevice {
  bdf: string;
  /** The IOMMU group; undefined when the device has none. */
  group: number | undefined;
  /** The bound driver; assign to rebind. */
  driver: string | undefined;
  noiommu: boolean;
  vendor: number;
  device: number;
  /** Has VFIO_DEVICE_FLAGS_RESET. */
  reset: boolean;
  regions: FakeRegion[];
  irqs: FakeIrq[];
  /** Every VFIO_DEVICE_SET_IRQS the kernel accepted. */
  irqSets: { flags: number; index: number; start: number; count: number; fds: number[] }[];
  /** Resets done (VFIO_DEVICE_RESET and hot resets). */
  resets: number;
  /** The devices a hot reset also resets; undefined: no bus or slot reset (ENODEV). */
  hotReset: { bdf: string; group: number }[] | undefined;
  /** The features VFIO_DEVICE_FEATURE_PROBE accepts. */
  features: Set<number>;
  /** The cdev under /dev/vfio/devices, e.g. `vfio0` (`noiommu-vfio0` without an IOMMU), if the kernel made one. */
  cdev: string | undefined;
  /** For an SR-IOV PF: its capability, VFs and VF token. */
  sriov: FakeSriov | undefined;
  /** For a VF: its PF's address. */
  physfn: string | undefined;
  /** The DMA-BUFs exported from the device, revoked when it closes. */
  dmaBufs: FakeDmaBuf[];
}

/** A PF's SR-IOV state. */
export interface FakeSriov {
  /** sriov_totalvfs. */
  totalVfs: number;
  /** The VFs' addresses, index = VF number; as many as sriov_numvfs. */
  vfs: string[];
  /** The VF token (uuid_t bytes). */
  token: Uint8Array;
  /** Open VFs (vf_token->users). */
  users: number;
  /** The address of VF `i`, as the PF's SR-IOV capability places it. */
  vfAddress: (i: number) => string;
  /** The VFs' device ID. */
  vfDevice: number;
}

/** A DMA-BUF exported from a device's BAR. */
export interface FakeDmaBuf {
  device: FakeDevice;
  region: number;
  ranges: { offset: bigint; length: bigint }[];
  size: bigint;
  revoked: boolean;
}

/** Options for {@link FakeSys.addDevice}; regions and IRQs override vfio-pci's defaults by index. */
export interface FakeDeviceOptions
  extends Partial<Omit<FakeDevice, "regions" | "irqs" | "irqSets" | "sriov" | "dmaBufs">> {
  bdf: string;
  /** Makes the device an SR-IOV PF with this many VFs possible (VF i at function i + 2 by default). */
  sriov?: { totalVfs: number; vfAddress?: (i: number) => string; vfDevice?: number };
  regions?: (Partial<Omit<FakeRegion, "data">> & { index: number })[];
  irqs?: { index: number; count: number; flags?: number }[];
}

/** The kernel's side of a container: alive while its fd is open or a group uses it. */
export interface ContainerState {
  groups: Set<GroupState>;
  /** The IOMMU type from VFIO_SET_IOMMU; undefined before, and after the last group left. */
  type: number | undefined;
  /** The DMA mappings by IOVA. */
  mappings: Map<bigint, { iova: bigint; size: bigint; vaddr: bigint; flags: number }>;
}

interface GroupState {
  number: number;
  fd: number | undefined;
  deviceFds: number;
  container: ContainerState | undefined;
}

/** An IOMMU_IOAS_MAP mapping (or IOMMU_IOAS_MAP_FILE's, with `file` set and no process address). */
export interface IoasMapping {
  iova: bigint;
  length: bigint;
  vaddr: bigint;
  flags: number;
  /** For a file mapping: the DMA-BUF, and where the mapping starts in it. */
  file?: { dmaBuf: FakeDmaBuf; start: bigint };
}

/** An IO address space (IOMMU_IOAS_ALLOC) in an iommufd. */
export interface IoasState {
  id: number;
  /** The mappings by IOVA. */
  mappings: Map<bigint, IoasMapping>;
  /** IOMMU_IOAS_ALLOW_IOVAS's ranges. */
  allowed: { start: bigint; last: bigint }[];
  /** The devices attached. */
  devices: Set<CdevState>;
  /** The ID of the hw page table (the IOMMU domain) made by the first attach; undefined without. */
  hwpt: number | undefined;
  /** Whether that domain is no-IOMMU's software one (its devices have no IOMMU). */
  noiommu: boolean;
}

/** An open device cdev: unbound, bound to an iommufd, or bound and attached to an IOAS. */
export interface CdevState {
  device: FakeDevice;
  ctx: IommufdState | undefined;
  /** The device's object ID in `ctx`, from the bind. */
  devid: number;
  ioas: IoasState | undefined;
}

type IommufdObject =
  | { kind: "ioas"; ioas: IoasState }
  | { kind: "hwpt"; ioas: IoasState }
  | { kind: "device"; cdev: CdevState };

/** The kernel's side of an iommufd: alive while its fd is open or a device is bound to it. */
export interface IommufdState {
  fd: number | undefined;
  /** Every object by ID. */
  objects: Map<number, IommufdObject>;
  nextId: number;
  /** Whether it was released, and its objects with it. */
  released: boolean;
}

/** One logged call: the operation, what it was on, and its result. */
export interface Call {
  op: string;
  fd?: number;
  path?: string;
  /** The ioctl's name. */
  name?: string;
  offset?: number;
  length?: number;
  ret?: number;
}

/** The calls {@link FakeSys.fail} can fail. */
export type FailOp =
  | Exclude<
    keyof Sys,
    | "name"
    | "pageSize"
    | "ioctlPtr"
    | "ioctlInt"
    | "readAsync"
    | "memory"
    | "mmio"
    | "mmioUnavailable"
    | "getenv"
    | "getuid"
  >
  | "ioctl";

type FdEntry =
  | { kind: "container"; path: string; container: ContainerState }
  | { kind: "group"; path: string; group: GroupState }
  | { kind: "device"; path: string; device: FakeDevice; group: GroupState }
  | { kind: "eventfd"; path: string; counter: Counter }
  | { kind: "iommufd"; path: string; ctx: IommufdState }
  | { kind: "cdev"; path: string; device: FakeDevice; cdev: CdevState }
  | { kind: "dmabuf"; path: string; dmaBuf: FakeDmaBuf };

interface Mapping {
  address: bigint;
  length: number;
  what: string;
  /** Anonymous memory, which memory() hands out whole. */
  buffer?: ArrayBuffer;
  handedOut?: boolean;
  /** A device region, and where in it the mapping starts. */
  region?: FakeRegion;
  pos?: number;
  /** For anonymous memory: the physical address of each page. */
  phys?: bigint[];
}

const err = (name: string) => -ERRNO[name]!;
const hex = (n: bigint | number) => `0x${n.toString(16)}`;
const PCI_DEVICES = "/sys/bus/pci/devices/";

// The request numbers overlap between fd types (VFIO_IOMMU_MAP_DMA is VFIO_DEVICE_PCI_HOT_RESET),
// so the fd type picks the table.
const IOCTL_NAMES: Record<string, RegExp> = {
  container: /^VFIO_(GET_API_VERSION|CHECK_EXTENSION|SET_IOMMU|IOMMU_(GET_INFO|MAP_DMA|UNMAP_DMA))$/,
  group: /^VFIO_GROUP_/,
  device: /^VFIO_DEVICE_/,
  cdev: /^VFIO_DEVICE_/,
  iommufd: /^IOMMU_(DESTROY|IOAS_(ALLOC|ALLOW_IOVAS|IOVA_RANGES|MAP|MAP_FILE|UNMAP|NOIOMMU_GET_PA))$/,
};
const REQUESTS = Object.entries({ ...V, ...I });
const ioctlName = (kind: string, request: number) =>
  REQUESTS.find(([n, v]) => v === request && IOCTL_NAMES[kind]?.test(n))?.[0] ?? `ioctl ${hex(request)}`;
const U64_MAX = 0xffffffffffffffffn;
/** EADDRINUSE, which lib/uapi/libc.ts's ERRNO table lacks. */
const EADDRINUSE = 98;

/**
 * Lays capabilities out as the kernel does: each 8-byte aligned, `next` pointing at the following
 * one (offset by `shift`, the info struct's size), 0 in the last.
 *
 * @param caps The capabilities, each starting with its 8-byte header.
 * @param shift Where the chain will start in the info buffer.
 * @returns The chain.
 */
export function capChain(caps: Uint8Array[], shift: number): Uint8Array {
  const sizes = caps.map((c) => Math.ceil(c.length / 8) * 8);
  const out = new Uint8Array(sizes.reduce((a, b) => a + b, 0));
  let at = 0;
  caps.forEach((c, i) => {
    out.set(c, at);
    new DataView(out.buffer).setUint32(at + 4, i + 1 < caps.length ? shift + at + sizes[i]! : 0, true);
    at += sizes[i]!;
  });
  return out;
}

/** A capability (version 1): the header, then u32 (number) and u64 (bigint) fields. */
function cap(id: number, fields: (number | bigint)[]): Uint8Array {
  const out = new Uint8Array(8 + fields.reduce<number>((n, f) => n + (typeof f === "bigint" ? 8 : 4), 0));
  const v = new DataView(out.buffer);
  v.setUint16(0, id, true);
  v.setUint16(2, 1, true);
  let at = 8;
  for (const f of fields) {
    if (typeof f === "bigint") v.setBigUint64(at, f, true), at += 8;
    else v.setUint32(at, f, true), at += 4;
  }
  return out;
}

/** The fake. Configure it through its fields and {@link addDevice}; inspect it afterwards. */
export class FakeSys implements Sys {
  readonly name = "fake";
  readonly pageSize = 4096;

  /** The environment, for getenv. */
  env: Record<string, string> = {};
  /** The real user ID, for getuid: root by default. */
  uid = 0;
  /** VFIO_GET_API_VERSION's answer. */
  apiVersion = V.VFIO_API_VERSION;
  /** What VFIO_CHECK_EXTENSION supports. */
  extensions = new Set([V.VFIO_TYPE1_IOMMU, V.VFIO_TYPE1v2_IOMMU, V.VFIO_UNMAP_ALL]);
  /** VFIO_IOMMU_GET_INFO's IOVA ranges (an x86 MSI hole); undefined reports no capabilities. */
  iovaRanges: { start: bigint; last: bigint }[] | undefined = [
    { start: 0n, last: 0xfedfffffn },
    { start: 0xfef00000n, last: 0xffffffffffn },
  ];
  /** VFIO_IOMMU_GET_INFO's page sizes: 4 KiB, 2 MiB, 1 GiB. */
  iovaPgsizes = 0x40201000n;
  /** The container's DMA mapping limit (the DMA_AVAIL capability); undefined omits the cap. */
  dmaAvail: number | undefined = 65535;
  /** RLIMIT_MEMLOCK in bytes; undefined is unlimited. */
  memlock: bigint | undefined = 8n << 20n;
  /** Whether mmio() gives a fast accessor, as the real backends do on x86-64. */
  fastMmio = true;
  /** Whether vfio is loaded (/dev/vfio exists). */
  vfioLoaded = true;
  /** Whether the kernel has iommufd (CONFIG_IOMMUFD): /dev/iommu exists. Off by default. */
  iommufd = false;
  /**
   * Whether it makes device cdevs (CONFIG_VFIO_DEVICE_CDEV, which needs {@link iommufd}): the
   * nodes /dev/vfio/devices/vfioN of the vfio-pci devices whose `cdev` is set.
   */
  deviceCdevs = true;
  /** Whether the IOMMU isolates MSIs (interrupt remapping); without it a cdev bind is EPERM. */
  isolatedMsi = true;
  /** The kernel release, for /proc/sys/kernel/osrelease; the 7.x rules hold from their version on. */
  release = "7.3.4";
  /** Whether vfio-pci exports DMA-BUFs (CONFIG_VFIO_PCI_DMABUF; from 6.19 on). */
  dmaBufExport = true;
  /** vfio-pci's enable_sriov parameter: without it, sriov_numvfs on a vfio-pci PF is ENOENT. */
  vfioPciEnableSriov = true;
  /** The first physical address anonymous memory gets; pages are handed out two apart. */
  physBase = 0x1000000n;
  /** Physical addresses to hand out first, one per page (or hugepage), before `physBase`'s sequence. */
  physQueue: bigint[] = [];
  /** Other files, for readText and writeText. */
  files = new Map<string, string>();
  /** Directories made with mkdir. */
  dirs = new Set<string>();

  /** Every call, in order. */
  calls: Call[] = [];
  /** Misuse the kernel would not report, but which is a bug. */
  violations: string[] = [];
  /** Every container opened, in order. */
  containers: ContainerState[] = [];
  /** Every iommufd opened, in order. */
  iommufds: IommufdState[] = [];

  readonly #devices = new Map<string, FakeDevice>();
  readonly #groups = new Map<number, GroupState>();
  readonly #fds = new Map<number, FdEntry>();
  readonly #maps = new Map<bigint, Mapping>();
  #injections: { op: string; target: string | undefined; errno: string; after: number; times: number }[] = [];
  #nextFd = 3;
  #nextAddress = 0x7f0000000000n;
  #nextPhys: bigint | undefined;

  /** Whether the modelled kernel is `version` ("X.Y") or newer. */
  since(version: string): boolean {
    const [a, b] = this.release.split(".").map(Number) as [number, number];
    const [x, y] = version.split(".").map(Number) as [number, number];
    return a > x || (a === x && b >= y);
  }

  /**
   * Adds a PCI device, by default bound to vfio-pci in group 1, with vfio-pci's regions (a 4 KiB
   * mmap-able BAR0 and 256 bytes of config space holding the IDs) and IRQs (INTx, MSI, 4 MSI-X
   * vectors, ERR, REQ).
   */
  addDevice(o: FakeDeviceOptions): FakeDevice {
    const regions = Array.from({ length: V.VFIO_PCI_NUM_REGIONS }, (_, index): FakeRegion => {
      const spec = o.regions?.find((r) => r.index === index);
      const size = spec?.size ?? [0x1000, 0, 0, 0, 0, 0, 0, 256, 0][index]!;
      const mmap = index < V.VFIO_PCI_ROM_REGION_INDEX ? V.VFIO_REGION_INFO_FLAG_MMAP : 0;
      const flags = spec?.flags ??
        (size ? V.VFIO_REGION_INFO_FLAG_READ | V.VFIO_REGION_INFO_FLAG_WRITE | mmap : 0);
      return { ...spec, index, size, flags, data: new Uint8Array(size) };
    });
    const { EVENTFD, MASKABLE, AUTOMASKED, NORESIZE } = {
      EVENTFD: V.VFIO_IRQ_INFO_EVENTFD,
      MASKABLE: V.VFIO_IRQ_INFO_MASKABLE,
      AUTOMASKED: V.VFIO_IRQ_INFO_AUTOMASKED,
      NORESIZE: V.VFIO_IRQ_INFO_NORESIZE,
    };
    const irqDefaults = [[1, EVENTFD | MASKABLE | AUTOMASKED], [1, EVENTFD | NORESIZE], [
      4,
      EVENTFD | NORESIZE,
    ]];
    const irqs = [...irqDefaults, [1, EVENTFD], [1, EVENTFD]].map(([n, flags], index): FakeIrq => {
      const spec = o.irqs?.find((i) => i.index === index);
      const count = spec?.count ?? n!;
      return { index, count, flags: spec?.flags ?? flags!, triggers: [], masked: Array(count).fill(false) };
    });
    const dev: FakeDevice = {
      group: 1,
      driver: "vfio-pci",
      noiommu: false,
      vendor: 0x1234,
      device: 0x11e8,
      reset: true,
      resets: 0,
      hotReset: undefined,
      features: new Set(),
      cdev: undefined,
      physfn: undefined,
      ...o,
      sriov: o.sriov === undefined ? undefined : {
        totalVfs: o.sriov.totalVfs,
        vfs: [],
        token: crypto.getRandomValues(new Uint8Array(16)), // uuid_gen at probe
        users: 0,
        vfAddress: o.sriov.vfAddress ?? ((i) => `${o.bdf.slice(0, -1)}${i + 2}`),
        vfDevice: o.sriov.vfDevice ?? 0x10ca,
      },
      dmaBufs: [],
      regions,
      irqs,
      irqSets: [],
    };
    const config = new DataView(regions[V.VFIO_PCI_CONFIG_REGION_INDEX]!.data.buffer);
    if (config.byteLength >= 4) config.setUint16(0, dev.vendor, true), config.setUint16(2, dev.device, true);
    this.#devices.set(o.bdf, dev);
    return dev;
  }

  /** A device added with {@link addDevice}. */
  device(bdf: string): FakeDevice {
    const d = this.#devices.get(bdf);
    if (!d) throw new Error(`FakeSys: no device ${bdf}`);
    return d;
  }

  /**
   * Makes calls fail with an errno. `target` is the path (for fd calls, the fd's path; for
   * anonymous mmap, `"anonymous"`) or the ioctl's name; undefined matches every call of `op`.
   *
   * @param op The call.
   * @param target What it is on.
   * @param code The errno name, e.g. `"EBUSY"`.
   * @param o The first `after` matching calls succeed, then `times` fail (default: all).
   * @returns A disposable that removes the injection.
   */
  fail(
    op: FailOp,
    target: string | undefined,
    code: string,
    o: { after?: number; times?: number } = {},
  ): Disposable {
    if (ERRNO[code] === undefined) throw new TypeError(`Unknown errno name ${code}`); // here, not later
    const inj = { op, target, errno: code, after: o.after ?? 0, times: o.times ?? Infinity };
    this.#injections.push(inj);
    return { [Symbol.dispose]: () => void (this.#injections = this.#injections.filter((i) => i !== inj)) };
  }

  /** The open fds. */
  openFds(): { fd: number; kind: string; path: string }[] {
    return [...this.#fds].map(([fd, e]) => ({ fd, kind: e.kind, path: e.path }));
  }

  /** The live mmaps. */
  mappings(): { address: bigint; length: number; what: string }[] {
    return [...this.#maps.values()].map(({ address, length, what }) => ({ address, length, what }));
  }

  /**
   * What should be gone at the end of a test: open fds, live mappings, the mappings of live IOASes,
   * and every violation.
   */
  leaks(): string[] {
    return [
      ...this.openFds().map((f) => `fd ${f.fd} (${f.path}) is open`),
      ...this.mappings().map((m) => `${m.what} at ${hex(m.address)} (${m.length} bytes) is mapped`),
      ...this.#ioases().flatMap((a) =>
        [...a.mappings.values()].map((m) => `IOAS ${a.id} maps iova ${hex(m.iova)} (${m.length} bytes)`)
      ),
      ...this.violations,
    ];
  }

  /** The names of the ioctls called so far. */
  ioctls(): string[] {
    return this.calls.filter((c) => c.op === "ioctl").map((c) => c.name!);
  }

  /**
   * Raises an interrupt as the device would: signals the vector's eventfd unless it is masked.
   * An automasked index (INTx) stays masked until unmasked.
   *
   * @returns Whether an eventfd was signalled.
   */
  raise(bdf: string, index: number, vector = 0): boolean {
    const irq = this.device(bdf).irqs[index]!;
    const t = irq.triggers[vector];
    if (!t || irq.masked[vector]) return false;
    signal(t);
    if (irq.flags & V.VFIO_IRQ_INFO_AUTOMASKED) irq.masked[vector] = true;
    return true;
  }

  // --- the Sys seam -----------------------------------------------------------------------------

  open(path: string, _flags: number): number {
    return this.#call({ op: "open", path }, path, () => {
      if (path === "/dev/vfio/vfio" && this.vfioLoaded) {
        const container: ContainerState = { groups: new Set(), type: undefined, mappings: new Map() };
        this.containers.push(container);
        return this.#newFd({ kind: "container", path, container });
      }
      if (path === "/dev/iommu" && this.iommufd) {
        const ctx: IommufdState = { fd: undefined, objects: new Map(), nextId: 1, released: false };
        this.iommufds.push(ctx);
        return (ctx.fd = this.#newFd({ kind: "iommufd", path, ctx }));
      }
      if (path.startsWith("/dev/vfio/devices/")) {
        const device = this.#cdevNodes().find((d) => `/dev/vfio/devices/${d.cdev}` === path);
        if (!device) return err("ENOENT");
        if (device.noiommu && this.uid !== 0) return err("EPERM"); // CAP_SYS_RAWIO
        const cdev: CdevState = { device, ctx: undefined, devid: 0, ioas: undefined };
        return this.#newFd({ kind: "cdev", path, device, cdev });
      }
      const m = /^\/dev\/vfio\/(?:noiommu-)?(\d+)$/.exec(path);
      if (!m || !this.#groupNodes().includes(path.slice("/dev/vfio/".length))) return err("ENOENT");
      const group = this.#groups.get(Number(m[1])) ??
        { number: Number(m[1]), fd: undefined, deviceFds: 0, container: undefined };
      if (group.fd !== undefined || group.deviceFds > 0) return err("EBUSY");
      // vfio_group_fops_open: a device of the group is bound through its cdev.
      if (this.#boundCdevs().some((c) => c.device.group === group.number)) return err("EBUSY");
      this.#groups.set(group.number, group);
      return (group.fd = this.#newFd({ kind: "group", path, group }));
    });
  }

  close(fd: number): number {
    const e = this.#fd(fd, "close");
    // close(2) releases the fd even when it reports an error, so this runs under an injection too.
    const release = () => {
      if (!e) return err("EBADF");
      this.#fds.delete(fd);
      if (e.kind === "group") e.group.fd = undefined;
      if (e.kind === "device") {
        e.device.irqs.forEach((irq) => (irq.triggers = [])); // vfio_pci_core_close_device
        this.#deviceClosed(e.device);
        e.group.deviceFds--;
      }
      if (e.kind === "group" || e.kind === "device") this.#releaseGroup(e.group);
      if (e.kind === "cdev") this.#unbind(e.cdev); // vfio_device_fops_release
      if (e.kind === "iommufd") (e.ctx.fd = undefined, this.#releaseIommufd(e.ctx));
      return 0;
    };
    return this.#call({ op: "close", fd }, e?.path, release, release);
  }

  ioctlPtr(fd: number, request: number, arg: Uint8Array): number {
    return this.#ioctl(fd, request, arg);
  }

  ioctlInt(fd: number, request: number, arg: number): number {
    return this.#ioctl(fd, request, arg);
  }

  pread(fd: number, buf: Uint8Array, offset: number): number {
    return this.#rw("pread", fd, buf, offset);
  }

  pwrite(fd: number, buf: Uint8Array, offset: number): number {
    return this.#rw("pwrite", fd, buf, offset);
  }

  read(fd: number, buf: Uint8Array): number {
    const e = this.#fd(fd, "read");
    return this.#call({ op: "read", fd, length: buf.length }, e?.path, () => {
      if (e?.kind !== "eventfd") return err(e ? "EINVAL" : "EBADF");
      // The kernel would block on a zero counter; nothing could wake the fake.
      return e.counter.value === 0n ? err("EAGAIN") : consume(e.counter, buf);
    });
  }

  readAsync(fd: number, buf: Uint8Array): Promise<number> {
    const e = this.#fd(fd, "readAsync");
    this.calls.push({ op: "readAsync", fd });
    if (e?.kind !== "eventfd") return Promise.resolve(err(e ? "EINVAL" : "EBADF"));
    const c = e.counter;
    if (c.value > 0n) return Promise.resolve(consume(c, buf));
    return new Promise((resolve) => c.waiters.push(() => resolve(consume(c, buf))));
  }

  write(fd: number, buf: Uint8Array): number {
    const e = this.#fd(fd, "write");
    return this.#call({ op: "write", fd, length: buf.length }, e?.path, () => {
      if (e?.kind !== "eventfd" || buf.length < 8) return err(e ? "EINVAL" : "EBADF");
      signal(e.counter, new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true));
      return 8;
    });
  }

  mmap(length: number, _prot: number, flags: number, fd: number, offset: number): bigint {
    const anon = (flags & MAP_ANONYMOUS) !== 0;
    const e = anon ? undefined : this.#fd(fd, "mmap");
    return BigInt(this.#call({ op: "mmap", fd, offset, length }, anon ? "anonymous" : e?.path, () => {
      if (length <= 0) return err("EINVAL");
      if (anon) {
        return this.#map({
          length,
          what: "anonymous memory",
          buffer: new ArrayBuffer(length),
          phys: this.#phys(length, flags),
        });
      }
      if (e?.kind === "cdev" && !e.cdev.ctx) return err("EINVAL"); // not bound yet
      if (e?.kind !== "device" && e?.kind !== "cdev") return err(e ? "ENODEV" : "EBADF");
      // vfio_pci_core_mmap: BARs only, page-aligned, inside the BAR.
      const [region, pos] = [e.device.regions[Math.floor(offset / 2 ** 40)], offset % 2 ** 40];
      if (!region || region.index >= V.VFIO_PCI_ROM_REGION_INDEX) return err("EINVAL");
      if (!(region.flags & V.VFIO_REGION_INFO_FLAG_MMAP)) return err("EINVAL");
      if (pos % this.pageSize !== 0 || pos + length > region.size) return err("EINVAL");
      return this.#map({ length, what: `${e.device.bdf} region ${region.index}`, region, pos });
    }));
  }

  munmap(address: bigint, length: number): number {
    const m = this.#maps.get(address) ?? this.#anonymousAround(address, length);
    return this.#call({ op: "munmap", length }, m?.what, () => {
      if (m && m.buffer && !m.handedOut && (m.address !== address || m.length !== length)) {
        return this.#trim(m, address, length);
      }
      if (!m || m.length !== length) {
        this.violations.push(`munmap(${hex(address)}, ${length}): no such mapping`);
        return err("EINVAL");
      }
      if (m.handedOut && !m.buffer!.detached) {
        this.violations.push(`munmap(${hex(address)}): an ArrayBuffer over it was not detached first`);
      }
      for (const d of this.containers.flatMap((c) => [...c.mappings.values()])) {
        if (d.vaddr < address + BigInt(length) && address < d.vaddr + d.size) {
          this.violations.push(`munmap(${hex(address)}): still mapped for DMA at iova ${hex(d.iova)}`);
        }
      }
      for (const a of this.#ioases()) {
        for (const d of a.mappings.values()) {
          if (!d.file && d.vaddr < address + BigInt(length) && address < d.vaddr + d.length) {
            this.violations.push(
              `munmap(${hex(address)}): still mapped in IOAS ${a.id} at iova ${hex(d.iova)}`,
            );
          }
        }
      }
      this.#maps.delete(address);
      return 0;
    });
  }

  memory(address: bigint, length: number): ArrayBuffer {
    const m = this.#maps.get(address);
    if (!m?.buffer || m.length !== length) {
      throw new Error(
        `FakeSys.memory(${hex(address)}, ${length}): only whole anonymous mappings are modelled`,
      );
    }
    m.handedOut = true;
    return m.buffer;
  }

  mmioUnavailable(): string | undefined {
    return this.fastMmio ? undefined : "the fake has fastMmio off";
  }

  mmio(address: bigint, length: number): RawMmio | undefined {
    const m = this.#maps.get(address);
    if (!m || !(m.region || m.buffer) || length > m.length) {
      throw new Error(`FakeSys.mmio(${hex(address)}): nothing mapped there`);
    }
    if (!this.fastMmio) return undefined;
    // Device regions and anonymous (DMA) memory alike, as the real accessor reads any mapping.
    const pos = m.region ? m.pos! : 0;
    const view = new DataView(m.region ? m.region.data.buffer : m.buffer!, pos, m.length);
    const at = (op: string, o: number, width: number) => {
      this.calls.push({ op: `mmio.${op}${width * 8}`, offset: pos + o, length: width });
      if (!this.#maps.has(address)) this.violations.push(`mmio ${op} at ${o} after munmap`);
      if (o < 0 || o % width !== 0 || o + width > m.length) {
        this.violations.push(`mmio ${op} of ${width} bytes at ${o}: outside the ${m.length}-byte mapping`);
      }
      return o;
    };
    return {
      read8: (o) => view.getUint8(at("read", o, 1)),
      read16: (o) => view.getUint16(at("read", o, 2), true),
      read32: (o) => view.getUint32(at("read", o, 4), true),
      read64: (o) => view.getBigUint64(at("read", o, 8), true),
      write8: (o, v) => view.setUint8(at("write", o, 1), v),
      write16: (o, v) => view.setUint16(at("write", o, 2), v, true),
      write32: (o, v) => view.setUint32(at("write", o, 4), v, true),
      write64: (o, v) => view.setBigUint64(at("write", o, 8), v, true),
    };
  }

  eventfd(initval: number, _flags: number): number {
    const counter = { value: BigInt(initval), waiters: [] };
    return this.#call(
      { op: "eventfd" },
      "eventfd",
      () => this.#newFd({ kind: "eventfd", path: "eventfd", counter }),
    );
  }

  poll(fds: Uint8Array, nfds: number, timeoutMs: number): number {
    return this.#call({ op: "poll", length: nfds }, undefined, () => {
      let ready = 0;
      for (let i = 0; i < nfds; i++) {
        const p = pollfd.at(fds, i * pollfd.size);
        const e = this.#fds.get(p.get("fd"));
        const revents = !e ? POLLNVAL : e.kind === "eventfd" && e.counter.value > 0n ? POLLIN : 0;
        p.set("revents", revents & (p.get("events") | POLLNVAL));
        if (p.get("revents")) ready++;
      }
      if (ready === 0 && timeoutMs < 0) {
        throw new Error("FakeSys.poll: nothing is ready and the wait is endless");
      }
      return ready;
    });
  }

  getrlimit(resource: number, out: Uint8Array): number {
    return this.#call({ op: "getrlimit" }, undefined, () => {
      const cur = resource === RLIMIT_MEMLOCK ? this.memlock ?? RLIM_INFINITY : RLIM_INFINITY;
      rlimit.at(out).set("rlim_cur", cur).set("rlim_max", cur);
      return 0;
    });
  }

  getuid(): number {
    return this.uid;
  }

  getenv(name: string): string | undefined {
    return this.env[name];
  }

  readText(path: string): string | number {
    return this.#call({ op: "readText", path }, path, () => {
      const [dev, attr] = this.#sysfs(path);
      if (dev && (attr === "vendor" || attr === "device")) {
        return `0x${dev[attr].toString(16).padStart(4, "0")}\n`;
      }
      if (dev?.sriov && attr === "sriov_totalvfs") return `${dev.sriov.totalVfs}\n`;
      if (dev?.sriov && attr === "sriov_numvfs") return `${dev.sriov.vfs.length}\n`;
      if (path === "/proc/sys/kernel/osrelease") return `${this.release}\n`;
      return this.files.get(path) ?? err("ENOENT");
    });
  }

  writeText(path: string, text: string): number {
    return this.#call({ op: "writeText", path }, path, () => {
      const [dev, attr] = this.#sysfs(path);
      if (dev?.sriov && attr === "sriov_numvfs") return this.#setNumVfs(dev, text);
      this.files.set(path, text);
      return 0;
    });
  }

  // sriov_numvfs_store, then vfio_pci_sriov_configure.
  #setNumVfs(pf: FakeDevice, text: string): number {
    const sriov = pf.sriov!;
    if (!/^\s*\d+\s*$/.test(text) || Number(text) > 0xffff) return err("EINVAL");
    const n = Number(text);
    if (n > sriov.totalVfs) return err("ERANGE");
    if (n === sriov.vfs.length) return text.length;
    if (pf.driver === undefined) return err("ENOENT");
    if (pf.driver === "vfio-pci" && !this.vfioPciEnableSriov) return err("ENOENT");
    if (n > 0 && sriov.vfs.length > 0) return err("EBUSY");
    if (n === 0) {
      const open = sriov.vfs.filter((bdf) => this.#deviceOpen(bdf));
      if (open.length) {
        throw new Error(`FakeSys: disabling SR-IOV would block until ${open.join(", ")} is closed`);
      }
      for (const bdf of sriov.vfs.splice(0)) this.#devices.delete(bdf);
      return text.length;
    }
    const groups = [...this.#devices.values()].map((d) => d.group ?? 0);
    const cdevs = [...this.#devices.values()].map((d) => Number(/(\d+)$/.exec(d.cdev ?? "")?.[1] ?? -1));
    for (let i = 0; i < n; i++) {
      const bdf = sriov.vfAddress(i);
      this.addDevice({
        bdf,
        group: Math.max(...groups) + 1 + i,
        driver: pf.driver === "vfio-pci" ? "vfio-pci" : undefined,
        vendor: pf.vendor,
        device: sriov.vfDevice,
        physfn: pf.bdf,
        noiommu: pf.noiommu,
        cdev: pf.cdev === undefined ? undefined : `vfio${Math.max(...cdevs) + 1 + i}`,
      });
      sriov.vfs.push(bdf);
    }
    return text.length;
  }

  /** Whether a device is open: through its group's device fd, or a cdev. */
  #deviceOpen(bdf: string): boolean {
    return [...this.#fds.values()].some((e) =>
      (e.kind === "device" || e.kind === "cdev") && e.device.bdf === bdf
    );
  }

  // vfio_pci_core_close_device: the DMA-BUFs are revoked, and a VF no longer counts as a token user.
  #deviceClosed(d: FakeDevice): void {
    for (const b of d.dmaBufs) b.revoked = true;
    const pf = d.physfn === undefined ? undefined : this.#devices.get(d.physfn);
    if (pf?.sriov && pf.driver === "vfio-pci") pf.sriov.users--;
  }

  // vfio_pci_core_match_token_uuid: 0, or -errno.
  #matchToken(d: FakeDevice, token: Uint8Array | undefined): number {
    const same = (a: Uint8Array, b: Uint8Array) => a.every((x, i) => x === b[i]);
    if (d.physfn !== undefined) {
      const pf = this.#devices.get(d.physfn);
      if (pf?.driver !== "vfio-pci") return token ? err("EINVAL") : 0;
      if (!token || !same(token, pf.sriov!.token)) return err("EACCES");
      return 0;
    }
    if (d.sriov) {
      if (d.sriov.users > 0) return token && same(token, d.sriov.token) ? 0 : err("EACCES");
      if (token) d.sriov.token = token.slice();
      return 0;
    }
    return token ? err("EINVAL") : 0;
  }

  // A VF opened through vfio counts as a user of its PF's token.
  #deviceOpened(d: FakeDevice): void {
    const pf = d.physfn === undefined ? undefined : this.#devices.get(d.physfn);
    if (pf?.sriov && pf.driver === "vfio-pci") pf.sriov.users++;
  }

  readLink(path: string): string | number {
    return this.#call({ op: "readLink", path }, path, () => {
      const [dev, attr] = this.#sysfs(path);
      if (dev && attr === undefined) return `../../../devices/pci0000:00/${dev.bdf}`;
      if (dev?.group !== undefined && attr === "iommu_group") {
        return `../../../kernel/iommu_groups/${dev.group}`;
      }
      if (dev?.driver !== undefined && attr === "driver") return `../../../bus/pci/drivers/${dev.driver}`;
      if (dev?.physfn !== undefined && attr === "physfn") return `../${dev.physfn}`;
      const vf = /^virtfn(\d+)$/.exec(attr ?? "")?.[1];
      if (dev?.sriov && vf !== undefined && dev.sriov.vfs[Number(vf)]) {
        return `../${dev.sriov.vfs[Number(vf)]}`;
      }
      const fd = /^\/proc\/self\/fd\/(\d+)$/.exec(path)?.[1];
      if (fd !== undefined) return this.#fds.get(Number(fd))?.path ?? err("ENOENT");
      return err("ENOENT");
    });
  }

  readDir(path: string): string[] | number {
    return this.#call({ op: "readDir", path }, path, () => {
      const cdevs = this.#cdevNodes().map((d) => d.cdev!).sort();
      const members = /^\/sys\/kernel\/iommu_groups\/(\d+)\/devices$/.exec(path)?.[1];
      const [dev, attr] = this.#sysfs(path);
      const list = path === "/dev"
        ? ["null", ...(this.iommufd ? ["iommu"] : []), ...(this.vfioLoaded ? ["vfio"] : [])]
        : path === "/dev/vfio" && this.vfioLoaded
        ? [...this.#groupNodes(), "vfio"].sort()
        : path === "/dev/vfio/devices"
        ? cdevs
        : members !== undefined
        ? [...this.#devices.values()].filter((d) => d.group === Number(members)).map((d) => d.bdf).sort()
        : dev?.cdev !== undefined && dev.driver === "vfio-pci" && attr === "vfio-dev"
        ? [dev.cdev]
        : [];
      return list.length ? list : err("ENOENT");
    });
  }

  mkdir(path: string, _mode: number): number {
    return this.#call({ op: "mkdir", path }, path, () => {
      if (this.dirs.has(path) || this.files.has(path)) return err("EEXIST");
      this.dirs.add(path);
      return 0;
    });
  }

  unlink(path: string): number {
    return this.#call({ op: "unlink", path }, path, () => (this.files.delete(path) ? 0 : err("ENOENT")));
  }

  /** Owners set by chown(), by path. */
  readonly owners: Map<string, { uid: number; gid: number }> = new Map();

  chown(path: string, uid: number, gid: number): number {
    return this.#call({ op: "chown", path }, path, () => {
      const slash = path.lastIndexOf("/");
      const listing = this.readDir(path.slice(0, slash) || "/");
      const exists = this.files.has(path) || this.dirs.has(path) ||
        (Array.isArray(listing) && listing.includes(path.slice(slash + 1)));
      if (!exists) return err("ENOENT");
      if (this.uid !== 0) return err("EPERM");
      this.owners.set(path, { uid, gid });
      return 0;
    });
  }

  // --- internals --------------------------------------------------------------------------------

  /** Runs a call unless an injection fails it (running `onFail` then), and logs it. */
  #call<T extends number | string | string[]>(
    call: Call,
    target: string | undefined,
    body: () => T,
    onFail?: () => void,
  ): T | number {
    const inj = this.#injections.find((i) =>
      i.op === call.op && i.times > 0 && (i.target ?? target) === target
    );
    const failing = inj !== undefined && inj.after-- <= 0 && inj.times-- > 0;
    if (failing) onFail?.();
    const ret = failing ? err(inj.errno) : body();
    this.calls.push(typeof ret === "number" ? { ...call, ret } : call);
    return ret;
  }

  #newFd(entry: FdEntry): number {
    this.#fds.set(this.#nextFd, entry);
    return this.#nextFd++;
  }

  #fd(fd: number, op: string): FdEntry | undefined {
    const e = this.#fds.get(fd);
    if (!e) this.violations.push(`${op} on fd ${fd}, which is not open`);
    return e;
  }

  // Like the kernel, munmap of part of anonymous memory (not yet handed out through memory()) keeps
  // the rest mapped: DmaPool trims an over-sized mmap down to an aligned buffer.
  #anonymousAround(address: bigint, length: number): Mapping | undefined {
    return [...this.#maps.values()].find((m) =>
      m.buffer && m.address <= address && address + BigInt(length) <= m.address + BigInt(m.length)
    );
  }

  #trim(m: Mapping, address: bigint, length: number): number {
    if (length <= 0 || (address - m.address) % BigInt(this.pageSize) !== 0n || length % this.pageSize !== 0) {
      return err("EINVAL");
    }
    this.#maps.delete(m.address);
    const start = Number(address - m.address), end = start + length;
    if (start > 0) {
      this.#maps.set(m.address, { ...m, length: start, buffer: m.buffer!.slice(0, start) });
    }
    if (end < m.length) {
      this.#maps.set(address + BigInt(length), {
        ...m,
        address: address + BigInt(length),
        length: m.length - end,
        buffer: m.buffer!.slice(end),
      });
    }
    return 0;
  }

  // Physical pages for anonymous memory: two apart, so that only a page, or one hugepage (which
  // MAP_HUGETLB asks for, its size in the flags), is physically contiguous.
  #phys(length: number, flags: number): bigint[] {
    const page = BigInt(this.pageSize);
    const huge = flags & MAP_HUGETLB ? BigInt(2 ** ((flags >>> MAP_HUGE_SHIFT) & 0x3f || 21)) : page;
    this.#nextPhys ??= this.physBase;
    const out: bigint[] = [];
    let unit = 0n;
    for (let i = 0n; i < BigInt(Math.ceil(length / this.pageSize)); i++) {
      const offset = (i * page) % huge;
      if (offset === 0n) {
        const queued = this.physQueue.shift();
        if (queued !== undefined) unit = queued;
        else {
          unit = (this.#nextPhys + huge - 1n) / huge * huge;
          this.#nextPhys = unit + huge + page; // a gap: the next unit is not adjacent
        }
      }
      out.push(unit + offset);
    }
    return out;
  }

  /** Whether a process address lies in an mmap of a device region. */
  #isDevice(address: bigint): boolean {
    return [...this.#maps.values()].some((m) =>
      m.region && address >= m.address && address < m.address + BigInt(m.length)
    );
  }

  #map(m: Omit<Mapping, "address">): number {
    const address = this.#nextAddress;
    this.#nextAddress += BigInt((Math.ceil(m.length / this.pageSize) + 1) * this.pageSize); // a guard page
    this.#maps.set(address, { ...m, address });
    return Number(address);
  }

  /** The /dev/vfio entries: a group's node appears once one of its devices is bound to vfio-pci. */
  #groupNodes(): string[] {
    const bound = [...this.#devices.values()].filter((d) => d.group !== undefined && d.driver === "vfio-pci");
    return [...new Set(bound.map((d) => `${d.noiommu ? "noiommu-" : ""}${d.group}`))];
  }

  #members(g: GroupState): FakeDevice[] {
    return [...this.#devices.values()].filter((d) => d.group === g.number);
  }

  #viable(g: GroupState): boolean {
    return this.#members(g).every((d) => d.driver === undefined || d.driver === "vfio-pci");
  }

  /** A path under /sys/bus/pci/devices/BDF: the device and the attribute. */
  #sysfs(path: string): [FakeDevice | undefined, string | undefined] {
    const [bdf, attr, ...rest] = path.startsWith(PCI_DEVICES)
      ? path.slice(PCI_DEVICES.length).split("/")
      : [];
    return rest.length || bdf === undefined ? [undefined, undefined] : [this.#devices.get(bdf), attr];
  }

  // vfio_group_fops_release runs once the group fd and every device fd are closed; the last group
  // to leave a container takes the IOMMU and its mappings with it (vfio_group_detach_container).
  #releaseGroup(g: GroupState): void {
    if (g.fd === undefined && g.deviceFds === 0 && g.container) this.#detach(g);
  }

  #detach(g: GroupState): void {
    const c = g.container!;
    c.groups.delete(g);
    g.container = undefined;
    if (c.groups.size === 0) (c.type = undefined, c.mappings.clear());
  }

  #rw(op: "pread" | "pwrite", fd: number, buf: Uint8Array, offset: number): number {
    const e = this.#fd(fd, op);
    return this.#call({ op, fd, offset, length: buf.length }, e?.path, () => {
      // A cdev reads and writes once bound (EINVAL before, as for every fd that is not a device).
      const device = e?.kind === "device" || (e?.kind === "cdev" && e.cdev.ctx) ? e.device : undefined;
      if (!device) return err(e ? "EINVAL" : "EBADF");
      const [region, pos] = [device.regions[Math.floor(offset / 2 ** 40)], offset % 2 ** 40];
      const need = op === "pread" ? V.VFIO_REGION_INFO_FLAG_READ : V.VFIO_REGION_INFO_FLAG_WRITE;
      if (!region || !(region.flags & need) || pos >= region.size) return err("EINVAL");
      const n = Math.min(buf.length, region.size - pos); // vfio_pci_bar_rw stops at the end
      if (op === "pread") buf.set(region.data.subarray(pos, pos + n));
      else region.data.set(buf.subarray(0, n), pos);
      return n;
    });
  }

  #ioctl(fd: number, request: number, arg: Uint8Array | number): number {
    const e = this.#fd(fd, "ioctl");
    const name = ioctlName(e?.kind ?? "", request);
    return this.#call({ op: "ioctl", fd, name }, name, () => {
      if (e?.kind === "container") return this.#containerIoctl(e.container, name, arg);
      if (e?.kind === "group") return this.#groupIoctl(e.group, name, arg);
      if (e?.kind === "device") return this.#deviceIoctl(e.device, name, arg);
      if (e?.kind === "cdev") return this.#cdevIoctl(e.cdev, name, arg);
      if (e?.kind === "iommufd") return this.#iommufdIoctl(e.ctx, name, arg);
      return err(e ? "ENOTTY" : "EBADF");
    });
  }

  /** An ioctl's struct argument, or -errno: EFAULT for a short buffer, EINVAL for a small argsz. */
  #arg<F extends Fields>(def: StructDef<F>, arg: Uint8Array | number, minsz = def.size): Struct<F> | number {
    if (typeof arg === "number" || arg.length < def.size) return err("EFAULT");
    const s = def.at(arg);
    const argsz = (s as unknown as Struct).get("argsz");
    if (argsz > arg.length) {
      this.violations.push(`${def.name}: argsz ${argsz} exceeds the ${arg.length}-byte buffer`);
    }
    return argsz > arg.length ? err("EFAULT") : argsz < minsz ? err("EINVAL") : s;
  }

  /** The argsz protocol of the info ioctls: capabilities if they fit, else the argsz they need. */
  #withCaps(s: Struct, caps: Uint8Array, flag: number): number {
    if (caps.length === 0) return 0;
    const fixed = s.def.size;
    s.set("flags", s.get("flags") | flag);
    if (s.get("argsz") < fixed + caps.length) s.set("argsz", fixed + caps.length).set("cap_offset", 0);
    else s.bytes.set(caps, fixed), s.set("cap_offset", fixed);
    return 0;
  }

  #containerIoctl(c: ContainerState, name: string, arg: Uint8Array | number): number {
    const noiommu = [...c.groups].some((g) => this.#members(g).some((d) => d.noiommu));
    // The type1 ioctls need the type1 driver: EINVAL before SET_IOMMU, ENOTTY from the no-IOMMU one.
    const driver = c.type === undefined ? err("EINVAL") : c.type === V.VFIO_NOIOMMU_IOMMU ? err("ENOTTY") : 0;
    const avail = Math.max(0, (this.dmaAvail ?? Infinity) - c.mappings.size);
    const overlap = (iova: bigint, size: bigint) =>
      [...c.mappings.values()].filter((m) => iova < m.iova + m.size && m.iova < iova + size);
    switch (name) {
      case "VFIO_GET_API_VERSION":
        return this.apiVersion;
      case "VFIO_CHECK_EXTENSION":
        return this.extensions.has(arg as number) ? 1 : 0;
      case "VFIO_SET_IOMMU":
        if (c.groups.size === 0) return err("EINVAL");
        if (c.type !== undefined) return err("EBUSY");
        // vfio_iommu_driver_allowed: the no-IOMMU driver serves no-IOMMU groups, and only it does.
        if (!this.extensions.has(arg as number) || (arg === V.VFIO_NOIOMMU_IOMMU) !== noiommu) {
          return err("ENODEV");
        }
        c.type = arg as number;
        return 0;
      case "VFIO_IOMMU_GET_INFO": {
        const s = this.#arg(V.vfio_iommu_type1_info, arg, 16);
        if (typeof s === "number" || driver) return typeof s === "number" ? s : driver;
        s.set("flags", V.VFIO_IOMMU_INFO_PGSIZES).set("iova_pgsizes", this.iovaPgsizes).set("cap_offset", 0);
        const ranges = (this.iovaRanges ?? []).flatMap((r) => [r.start, r.last]);
        const caps = [
          ...(this.iovaRanges
            ? [cap(V.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, [ranges.length / 2, 0, ...ranges])]
            : []),
          ...(this.dmaAvail !== undefined ? [cap(V.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, [avail])] : []),
        ];
        return this.#withCaps(
          s as Struct,
          capChain(caps, V.vfio_iommu_type1_info.size),
          V.VFIO_IOMMU_INFO_CAPS,
        );
      }
      case "VFIO_IOMMU_MAP_DMA": {
        const s = this.#arg(V.vfio_iommu_type1_dma_map, arg);
        if (typeof s === "number" || driver) return typeof s === "number" ? s : driver;
        const [iova, size, vaddr] = [s.get("iova"), s.get("size"), s.get("vaddr")];
        const page = this.iovaPgsizes & -this.iovaPgsizes;
        // vfio_dma_do_map: an IOVA or vaddr range that wraps past 2^64 (check_add_overflow, 6.19+).
        if (size !== 0n && (iova + size - 1n > U64_MAX || vaddr + size - 1n > U64_MAX)) {
          return err(this.since("6.19") ? "EOVERFLOW" : "EINVAL");
        }
        if (size === 0n || (iova | size | vaddr) % page !== 0n) return err("EINVAL");
        if (this.iovaRanges && !this.iovaRanges.some((r) => iova >= r.start && iova + size - 1n <= r.last)) {
          return err("EINVAL");
        }
        if (overlap(iova, size).length) return err("EEXIST");
        if (avail === 0) return err("ENOSPC");
        const mapped = [...this.#maps.values()].find((m) =>
          (m.buffer || m.region) && vaddr >= m.address && vaddr + size <= m.address + BigInt(m.length)
        );
        if (!mapped) return err("EFAULT"); // vfio_pin_pages finds nothing there
        // Device memory (VM_PFNMAP) is mapped by PFN and not counted against RLIMIT_MEMLOCK.
        const pinned = this.containers.flatMap((x) => [...x.mappings.values()]).filter((m) =>
          !this.#isDevice(m.vaddr)
        )
          .reduce((a, m) => a + m.size, 0n);
        if (!mapped.region && this.memlock !== undefined && pinned + size > this.memlock) {
          return err("ENOMEM");
        }
        c.mappings.set(iova, { iova, size, vaddr, flags: s.get("flags") });
        return 0;
      }
      case "VFIO_IOMMU_UNMAP_DMA": {
        const s = this.#arg(V.vfio_iommu_type1_dma_unmap, arg);
        if (typeof s === "number" || driver) return typeof s === "number" ? s : driver;
        const [flags, iova, size] = [s.get("flags"), s.get("iova"), s.get("size")];
        const all = flags === V.VFIO_DMA_UNMAP_FLAG_ALL;
        if (all ? iova !== 0n || size !== 0n || !this.extensions.has(V.VFIO_UNMAP_ALL) : flags || !size) {
          return err("EINVAL");
        }
        // vfio_dma_do_unmap: a range that wraps past 2^64 (check_add_overflow, 6.19+).
        if (!all && iova + size - 1n > U64_MAX) return err(this.since("6.19") ? "EOVERFLOW" : "EINVAL");
        const hit = all ? [...c.mappings.values()] : overlap(iova, size);
        // type1v2 will not split a mapping.
        if (!all && hit.some((m) => m.iova < iova || m.iova + m.size > iova + size)) return err("EINVAL");
        hit.forEach((m) => c.mappings.delete(m.iova));
        s.set("size", hit.reduce((a, m) => a + m.size, 0n));
        return 0;
      }
    }
    return err("ENOTTY");
  }

  #groupIoctl(g: GroupState, name: string, arg: Uint8Array | number): number {
    switch (name) {
      case "VFIO_GROUP_GET_STATUS": {
        const s = this.#arg(V.vfio_group_status, arg);
        if (typeof s === "number") return s;
        const set = g.container ? V.VFIO_GROUP_FLAGS_CONTAINER_SET : 0;
        s.set("flags", (this.#viable(g) ? V.VFIO_GROUP_FLAGS_VIABLE : 0) | set);
        return 0;
      }
      case "VFIO_GROUP_SET_CONTAINER": {
        if (typeof arg === "number" || arg.length < 4) return err("EFAULT");
        const e = this.#fds.get(new DataView(arg.buffer, arg.byteOffset, 4).getInt32(0, true));
        if (!e) return err("EBADF");
        if (e.kind !== "container" || g.container) return err("EINVAL");
        const noiommu = (x: GroupState) => this.#members(x).some((d) => d.noiommu);
        if (!this.#viable(g)) return err("EPERM");
        if ([...e.container.groups].some((o) => noiommu(o) !== noiommu(g))) return err("EPERM");
        g.container = e.container;
        e.container.groups.add(g);
        return 0;
      }
      case "VFIO_GROUP_UNSET_CONTAINER":
        if (!g.container) return err("EINVAL");
        if (g.deviceFds > 0) return err("EBUSY");
        this.#detach(g);
        return 0;
      case "VFIO_GROUP_GET_DEVICE_FD": {
        if (typeof arg === "number") return err("EFAULT");
        const text = new TextDecoder().decode(
          arg.subarray(0, arg.indexOf(0) < 0 ? arg.length : arg.indexOf(0)),
        );
        if (g.container?.type === undefined) return err("EINVAL");
        // vfio_pci_core_match: the name, then space-separated options; vf_token= is the only one.
        const [bdf, ...opts] = text.split(" ").filter((x) => x !== "");
        const device = this.#members(g).find((d) => d.bdf === bdf && d.driver === "vfio-pci");
        if (!device) return err("ENODEV");
        let token: Uint8Array | undefined;
        for (const o of opts) {
          const m = /^vf_token=([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$/
            .exec(o);
          if (!m || token) return err("EINVAL");
          const hexes = m[1]!.replaceAll("-", "");
          token = Uint8Array.from({ length: 16 }, (_, i) => parseInt(hexes.slice(2 * i, 2 * i + 2), 16));
        }
        const matched = this.#matchToken(device, token);
        if (matched) return matched;
        this.#deviceOpened(device);
        g.deviceFds++;
        return this.#newFd({
          kind: "device",
          path: `${this.#fds.get(g.fd!)?.path} (${bdf})`,
          device,
          group: g,
        });
      }
    }
    return err("ENOTTY");
  }

  #deviceIoctl(d: FakeDevice, name: string, arg: Uint8Array | number): number {
    switch (name) {
      case "VFIO_DEVICE_GET_INFO": {
        const s = this.#arg(V.vfio_device_info, arg, 16);
        if (typeof s === "number") return s;
        s.set("flags", V.VFIO_DEVICE_FLAGS_PCI | (d.reset ? V.VFIO_DEVICE_FLAGS_RESET : 0));
        s.set("num_regions", d.regions.length).set("num_irqs", d.irqs.length);
        return 0;
      }
      case "VFIO_DEVICE_GET_REGION_INFO": {
        const s = this.#arg(V.vfio_region_info, arg);
        if (typeof s === "number") return s;
        const r = d.regions[s.get("index")];
        if (!r) return err("EINVAL");
        s.set("flags", r.flags).set("size", BigInt(r.size)).set("offset", BigInt(regionOffset(r.index)));
        s.set("cap_offset", 0);
        const areas = (r.sparse ?? []).flatMap((a) => [BigInt(a.offset), BigInt(a.size)]);
        const caps = [
          ...(r.sparse ? [cap(V.VFIO_REGION_INFO_CAP_SPARSE_MMAP, [r.sparse.length, 0, ...areas])] : []),
          ...(r.type ? [cap(V.VFIO_REGION_INFO_CAP_TYPE, [r.type.type, r.type.subtype])] : []),
          ...(r.msixMappable ? [cap(V.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, [])] : []),
        ];
        const chain = r.rawCaps ?? capChain(caps, V.vfio_region_info.size);
        return this.#withCaps(s as Struct, chain, V.VFIO_REGION_INFO_FLAG_CAPS);
      }
      case "VFIO_DEVICE_GET_IRQ_INFO": {
        const s = this.#arg(V.vfio_irq_info, arg);
        if (typeof s === "number") return s;
        const irq = d.irqs[s.get("index")];
        if (!irq) return err("EINVAL");
        s.set("flags", irq.flags).set("count", irq.count);
        return 0;
      }
      case "VFIO_DEVICE_SET_IRQS":
        return this.#setIrqs(d, arg);
      case "VFIO_DEVICE_RESET":
        return d.reset ? (d.resets++, 0) : err("EINVAL");
      case "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO": {
        // Too small for the list: ENOSPC, with the count filled in.
        const s = this.#arg(V.vfio_pci_hot_reset_info, arg);
        if (typeof s === "number" || !d.hotReset) return typeof s === "number" ? s : err("ENODEV");
        s.set("flags", 0).set("count", d.hotReset.length);
        if (s.get("argsz") < s.def.size + 8 * d.hotReset.length) return err("ENOSPC");
        d.hotReset.forEach((h, i) => {
          const [seg, bus, slot, fn] = h.bdf.split(/[:.]/).map((x) => parseInt(x, 16));
          V.vfio_pci_dependent_device.at(s.bytes, s.def.size + 8 * i).set("group_id", h.group)
            .set("segment", seg!).set("bus", bus!).set("devfn", (slot! << 3) | fn!);
        });
        return 0;
      }
      case "VFIO_DEVICE_PCI_HOT_RESET": {
        // Every affected group must be presented by one of its group fds.
        const s = this.#arg(V.vfio_pci_hot_reset, arg);
        if (typeof s === "number" || !d.hotReset) return typeof s === "number" ? s : err("ENODEV");
        const fds = Array.from(
          { length: s.get("count") },
          (_, i) => s.view.getInt32(s.def.size + 4 * i, true),
        );
        const groups = fds.map((fd) => this.#fds.get(fd)).map((e) =>
          e?.kind === "group" ? e.group.number : -1
        );
        if (groups.includes(-1)) return err("EINVAL");
        if (!d.hotReset.every((h) => groups.includes(h.group))) return err("EPERM");
        d.resets++;
        return 0;
      }
      case "VFIO_DEVICE_FEATURE": {
        const s = this.#arg(V.vfio_device_feature, arg);
        if (typeof s === "number") return s;
        const flags = s.get("flags");
        const { VFIO_DEVICE_FEATURE_GET: GET, VFIO_DEVICE_FEATURE_SET: SET } = V;
        const probe = (flags & V.VFIO_DEVICE_FEATURE_PROBE) !== 0;
        if (flags & ~(V.VFIO_DEVICE_FEATURE_MASK | GET | SET | V.VFIO_DEVICE_FEATURE_PROBE)) {
          return err("EINVAL");
        }
        if (!probe && flags & GET && flags & SET) return err("EINVAL");
        const feature = flags & V.VFIO_DEVICE_FEATURE_MASK;
        const data = s.get("argsz") - V.vfio_device_feature.size;
        // vfio_check_feature: 1 to go on, else 0 (probe) or -EINVAL.
        const checkFeature = (supported: number, minsz: number) =>
          (flags & (GET | SET)) & ~supported
            ? err("EINVAL")
            : probe
            ? 0
            : !(flags & (GET | SET)) || data < minsz
            ? err("EINVAL")
            : 1;
        if (feature === V.VFIO_DEVICE_FEATURE_PCI_VF_TOKEN) {
          if (!d.sriov) return err("ENOTTY");
          const ok = checkFeature(SET, 16);
          if (ok !== 1) return ok;
          d.sriov.token = s.bytes.slice(V.vfio_device_feature.size, V.vfio_device_feature.size + 16);
          return 0;
        }
        if (feature === V.VFIO_DEVICE_FEATURE_DMA_BUF && this.since("6.19") && this.dmaBufExport) {
          const ok = checkFeature(GET, V.vfio_device_feature_dma_buf.size);
          return ok !== 1 ? ok : this.#exportDmaBuf(d, s.bytes.subarray(V.vfio_device_feature.size));
        }
        return probe && d.features.has(feature) ? 0 : err("ENOTTY");
      }
    }
    return err("ENOTTY");
  }

  // --- iommufd ----------------------------------------------------------------------------------

  /** The vfio-pci devices whose cdev node exists. */
  #cdevNodes(): FakeDevice[] {
    if (!this.iommufd || !this.deviceCdevs) return [];
    // vfio_device_set_noiommu_and_name: a device without an IOMMU gets noiommu-vfioN, from 7.3 on.
    return [...this.#devices.values()].filter((d) =>
      d.driver === "vfio-pci" && d.cdev !== undefined &&
      (d.noiommu ? this.since("7.3") && d.cdev.startsWith("noiommu-") : !d.cdev.startsWith("noiommu-"))
    );
  }

  /** The open cdevs bound to an iommufd. */
  #boundCdevs(): CdevState[] {
    return [...this.#fds.values()].flatMap((e) => (e.kind === "cdev" && e.cdev.ctx ? [e.cdev] : []));
  }

  /** The IOASes of the iommufds still alive. */
  #ioases(): IoasState[] {
    return this.iommufds.filter((c) => !c.released).flatMap((c) =>
      [...c.objects.values()].flatMap((o) => (o.kind === "ioas" ? [o.ioas] : []))
    );
  }

  #ioasOf(ctx: IommufdState, id: number): IoasState | undefined {
    const o = ctx.objects.get(id);
    return o?.kind === "ioas" ? o.ioas : undefined;
  }

  /** The IOVA ranges of an IOAS: all of them until a device attaches, then what the IOMMU maps. */
  #ioasRanges(a: IoasState): { start: bigint; last: bigint }[] {
    return a.hwpt === undefined ? [{ start: 0n, last: U64_MAX }] : this.#domainRanges(a);
  }

  /** What a domain maps: the IOMMU's ranges, or all of 64 bits for no-IOMMU's software table. */
  #domainRanges(a: IoasState): { start: bigint; last: bigint }[] {
    return a.noiommu || !this.iovaRanges ? [{ start: 0n, last: U64_MAX }] : this.iovaRanges;
  }

  /** A domain's alignment: the IOMMU's smallest page, or the CPU page for no-IOMMU's table. */
  #domainAlignment(a: IoasState): bigint {
    return a.noiommu ? BigInt(this.pageSize) : this.iovaPgsizes & -this.iovaPgsizes;
  }

  /** The reserved ranges: the holes between sorted, disjoint `ranges`. */
  #holes(ranges: { start: bigint; last: bigint }[]): { start: bigint; last: bigint }[] {
    const out: { start: bigint; last: bigint }[] = [];
    let next = 0n;
    for (const r of [...ranges].sort((a, b) => (a.start < b.start ? -1 : 1))) {
      if (r.start > next) out.push({ start: next, last: r.start - 1n });
      next = r.last + 1n;
    }
    if (next <= U64_MAX) out.push({ start: next, last: U64_MAX });
    return out;
  }

  /** The IOVA alignment of an IOAS: 1 without a domain, else the IOMMU's smallest page. */
  #alignment(a: IoasState): bigint {
    return a.hwpt === undefined ? 1n : this.#domainAlignment(a);
  }

  /** The bytes a mapping pins: whole pages. */
  #pages(m: { vaddr: bigint; length: bigint }): bigint {
    const page = BigInt(this.pageSize);
    return ((m.vaddr + m.length - 1n) / page - m.vaddr / page + 1n) * page;
  }

  /** Pins mappings into a domain: EFAULT for memory not mapped, ENOMEM past RLIMIT_MEMLOCK. */
  #pin(all: IoasMapping[]): number {
    const maps = all.filter((m) => !m.file); // DMA-BUF pages are the exporter's: not pinned or counted
    if (maps.some((m) => !this.#userMemory(m.vaddr, m.length))) return err("EFAULT");
    const pinned = this.#ioases().filter((a) => a.hwpt !== undefined).flatMap((a) => [...a.mappings.values()])
      .filter((m) => !m.file).reduce((n, m) => n + this.#pages(m), 0n);
    const more = maps.reduce((n, m) => n + this.#pages(m), 0n);
    return this.memlock !== undefined && pinned + more > this.memlock ? err("ENOMEM") : 0;
  }

  /** Process memory at [address, address + length) when one anonymous mapping holds it all. */
  #userMemory(address: bigint, length: bigint): Uint8Array | undefined {
    const m = [...this.#maps.values()].find((m) =>
      m.buffer && address >= m.address && address + length <= m.address + BigInt(m.length)
    );
    if (!m || m.buffer!.detached) return undefined;
    return new Uint8Array(m.buffer!, Number(address - m.address), Number(length));
  }

  /** An iommufd struct argument, or -errno: EFAULT for a short buffer, EINVAL below the struct. */
  #iarg<F extends Fields>(def: StructDef<F>, arg: Uint8Array | number): Struct<F> | number {
    if (typeof arg === "number" || arg.length < 4) return err("EFAULT");
    const size = new DataView(arg.buffer, arg.byteOffset, 4).getUint32(0, true);
    if (size > arg.length) {
      this.violations.push(`${def.name}: size ${size} exceeds the ${arg.length}-byte buffer`);
      return err("EFAULT");
    }
    return size < def.size ? err("EINVAL") : def.at(arg);
  }

  #iommufdIoctl(ctx: IommufdState, name: string, arg: Uint8Array | number): number {
    switch (name) {
      case "IOMMU_IOAS_ALLOC": {
        const s = this.#iarg(I.iommu_ioas_alloc, arg);
        if (typeof s === "number") return s;
        if (s.get("flags")) return err("EOPNOTSUPP");
        const ioas: IoasState = {
          id: ctx.nextId++,
          mappings: new Map(),
          allowed: [],
          devices: new Set(),
          hwpt: undefined,
          noiommu: false,
        };
        ctx.objects.set(ioas.id, { kind: "ioas", ioas });
        s.set("out_ioas_id", ioas.id);
        return 0;
      }
      case "IOMMU_DESTROY": {
        const s = this.#iarg(I.iommu_destroy, arg);
        if (typeof s === "number") return s;
        const o = ctx.objects.get(s.get("id"));
        if (!o) return err("ENOENT");
        // Still in use: an IOAS by its devices' hw page table, that table and a device by vfio.
        if (o.kind !== "ioas" || o.ioas.hwpt !== undefined) return err("EBUSY");
        ctx.objects.delete(o.ioas.id);
        return 0;
      }
      case "IOMMU_IOAS_MAP":
        return this.#ioasMap(ctx, arg);
      case "IOMMU_IOAS_MAP_FILE":
        return this.since("6.13") ? this.#ioasMap(ctx, arg, true) : err("ENOTTY");
      case "IOMMU_IOAS_NOIOMMU_GET_PA":
        return this.since("7.3") ? this.#getPa(ctx, arg) : err("ENOTTY");
      case "IOMMU_IOAS_UNMAP":
        return this.#ioasUnmap(ctx, arg);
      case "IOMMU_IOAS_IOVA_RANGES": {
        const s = this.#iarg(I.iommu_ioas_iova_ranges, arg);
        if (typeof s === "number") return s;
        if (s.get("__reserved")) return err("EOPNOTSUPP");
        const ioas = this.#ioasOf(ctx, s.get("ioas_id"));
        if (!ioas) return err("ENOENT");
        const ranges = this.#ioasRanges(ioas), room = s.get("num_iovas");
        const n = Math.min(room, ranges.length), size = I.iommu_iova_range.size;
        if (n > 0) {
          const out = this.#userMemory(s.get("allowed_iovas"), BigInt(n * size));
          if (!out) return err("EFAULT");
          ranges.slice(0, n).forEach((r, i) =>
            I.iommu_iova_range.at(out, i * size).set("start", r.start).set("last", r.last)
          );
        }
        s.set("num_iovas", ranges.length).set("out_iova_alignment", this.#alignment(ioas));
        return ranges.length > room ? err("EMSGSIZE") : 0;
      }
      case "IOMMU_IOAS_ALLOW_IOVAS": {
        const s = this.#iarg(I.iommu_ioas_allow_iovas, arg);
        if (typeof s === "number") return s;
        if (s.get("__reserved")) return err("EOPNOTSUPP");
        const ioas = this.#ioasOf(ctx, s.get("ioas_id"));
        if (!ioas) return err("ENOENT");
        const n = s.get("num_iovas"), size = I.iommu_iova_range.size;
        const list: { start: bigint; last: bigint }[] = [];
        const bytes = n ? this.#userMemory(s.get("allowed_iovas"), BigInt(n * size)) : new Uint8Array();
        if (!bytes) return err("EFAULT");
        for (let i = 0; i < n; i++) {
          const r = I.iommu_iova_range.at(bytes, i * size);
          const [start, last] = [r.get("start"), r.get("last")];
          if (start >= last || list.some((o) => o.start <= last && start <= o.last)) return err("EINVAL");
          list.push({ start, last });
        }
        const reserved = this.#holes(this.#ioasRanges(ioas));
        if (list.some((a) => reserved.some((r) => r.start <= a.last && a.start <= r.last))) {
          return -EADDRINUSE;
        }
        ioas.allowed = list;
        return 0;
      }
    }
    return err("ENOTTY");
  }

  // iommufd_ioas_map (iopt_map_user_pages) and iommufd_ioas_map_file (iopt_map_file_pages):
  // iopt_check_iova, then the pinning into the domain.
  #ioasMap(ctx: IommufdState, arg: Uint8Array | number, file = false): number {
    const s = file ? this.#iarg(I.iommu_ioas_map_file, arg) : this.#iarg(I.iommu_ioas_map, arg);
    if (typeof s === "number") return s;
    const { IOMMU_IOAS_MAP_FIXED_IOVA: FIXED, IOMMU_IOAS_MAP_READABLE: R, IOMMU_IOAS_MAP_WRITEABLE: W } = I;
    const view = s.view;
    // The two structs share every offset but the source's (user_va, or fd and start).
    const [flags, length, iova] = [
      view.getUint32(4, true),
      view.getBigUint64(24, true),
      view.getBigUint64(32, true),
    ];
    if (flags & ~(FIXED | R | W) || (!file && view.getUint32(12, true))) return err("EOPNOTSUPP");
    if (iova === U64_MAX || length === U64_MAX) return err("EOVERFLOW");
    if (!(flags & (R | W))) return err("EINVAL");
    const ioas = this.#ioasOf(ctx, view.getUint32(8, true));
    if (!ioas) return err("ENOENT");
    if (!(flags & FIXED)) throw new Error("FakeSys: IOMMU_IOAS_MAP choosing the IOVA is not modelled");
    if (length === 0n) return err("EINVAL");
    let source: Pick<IoasMapping, "vaddr" | "file">;
    if (file) {
      const start = view.getBigUint64(16, true);
      if (start + length - 1n > U64_MAX) return err("EOVERFLOW");
      const e = this.#fds.get(view.getInt32(12, true));
      if (!e) return err("EBADF");
      // Only a VFIO PCI DMA-BUF (6.19+) among the files the fake has; the rest fail to pin.
      if (e.kind !== "dmabuf" || !this.since("6.19")) return err("EINVAL");
      const b = e.dmaBuf;
      if (b.size <= start + length - 1n) return err("EINVAL");
      if (b.revoked) return err("ENODEV");
      if (b.ranges.length !== 1) return err("EOPNOTSUPP");
      source = { vaddr: start, file: { dmaBuf: b, start } };
    } else {
      source = { vaddr: view.getBigUint64(16, true) };
      if (source.vaddr + length > U64_MAX || iova + length - 1n > U64_MAX) return err("EOVERFLOW");
    }
    const [align, last] = [this.#alignment(ioas), iova + length - 1n];
    if (iova % align !== 0n || (source.vaddr % BigInt(this.pageSize)) % align !== 0n) return err("EINVAL");
    if (this.#holes(this.#ioasRanges(ioas)).some((r) => r.start <= last && iova <= r.last)) {
      return err("EINVAL");
    }
    if ([...ioas.mappings.values()].some((m) => m.iova <= last && iova <= m.iova + m.length - 1n)) {
      return err("EEXIST");
    }
    const m: IoasMapping = { iova, length, flags, ...source };
    const pinned = ioas.hwpt === undefined ? 0 : this.#pin([m]);
    if (pinned) return pinned;
    ioas.mappings.set(iova, m);
    view.setBigUint64(32, iova, true);
    return 0;
  }

  // iommufd_ioas_noiommu_get_pa, iopt_get_phys.
  #getPa(ctx: IommufdState, arg: Uint8Array | number): number {
    const s = this.#iarg(I.iommu_ioas_noiommu_get_pa, arg);
    if (typeof s === "number") return s;
    if (this.uid !== 0) return err("EPERM"); // CAP_SYS_RAWIO
    if (s.get("flags") || s.get("__reserved")) return err("EOPNOTSUPP");
    const [iova, max] = [s.get("iova"), s.get("length")];
    if (max === 0n) return err("EINVAL");
    if (iova >= U64_MAX) return err("EOVERFLOW");
    const ioas = this.#ioasOf(ctx, s.get("ioas_id"));
    if (!ioas) return err("ENOENT");
    const m = [...ioas.mappings.values()].find((x) => x.iova <= iova && iova <= x.iova + x.length - 1n);
    if (!m) return err("ENOENT");
    if (m.file?.dmaBuf.revoked) return err("EINVAL");
    if (ioas.hwpt === undefined || !ioas.noiommu) return err("EOPNOTSUPP");
    if (m.file) throw new Error("FakeSys: GET_PA of a DMA-BUF mapping is not modelled");
    const page = BigInt(this.pageSize);
    const physOf = (va: bigint) => {
      const a = [...this.#maps.values()].find((x) =>
        x.buffer && va >= x.address && va < x.address + BigInt(x.length)
      )!;
      const off = va - a.address;
      return a.phys![Number(off / page)]! + (off % page);
    };
    const va = m.vaddr + (iova - m.iova);
    const pa = physOf(va);
    let length = page - (va % page);
    const end = m.iova + m.length; // IOVA just past the mapping
    while (length < max && iova + length < end && physOf(va + length) === pa + length) length += page;
    if (iova + length > end) length = end - iova;
    s.set("out_phys", pa).set("length", length < max ? length : max);
    return 0;
  }

  // vfio_pci_core_feature_dma_buf; `data` starts at struct vfio_device_feature_dma_buf.
  #exportDmaBuf(d: FakeDevice, data: Uint8Array): number {
    const f = V.vfio_device_feature_dma_buf.at(data);
    const n = f.get("nr_ranges");
    if (!n || f.get("flags")) return err("EINVAL");
    const index = f.get("region_index");
    const region = d.regions[index];
    if (index >= V.VFIO_PCI_ROM_REGION_INDEX || !region || region.size === 0) return err("ENODEV");
    const at = V.vfio_device_feature_dma_buf.size, size = V.vfio_region_dma_range.size;
    if (data.length < at + n * size) return err("EFAULT");
    const ranges = Array.from({ length: n }, (_, i) => {
      const r = V.vfio_region_dma_range.at(data, at + i * size);
      return { offset: r.get("offset"), length: r.get("length") };
    });
    const page = BigInt(this.pageSize);
    if (ranges.some((r) => !r.length || r.offset % page || r.length % page)) return err("EINVAL");
    if (ranges.some((r) => r.offset + r.length > BigInt(region.size))) return err("EINVAL");
    const dmaBuf: FakeDmaBuf = {
      device: d,
      region: index,
      ranges,
      size: ranges.reduce((a, r) => a + r.length, 0n),
      revoked: false,
    };
    d.dmaBufs.push(dmaBuf);
    return this.#newFd({ kind: "dmabuf", path: `dmabuf:${d.bdf} region ${index}`, dmaBuf });
  }

  // iommufd_ioas_unmap, iopt_unmap_iova_range: whole areas only, lowest first.
  #ioasUnmap(ctx: IommufdState, arg: Uint8Array | number): number {
    const s = this.#iarg(I.iommu_ioas_unmap, arg);
    if (typeof s === "number") return s;
    const ioas = this.#ioasOf(ctx, s.get("ioas_id"));
    if (!ioas) return err("ENOENT");
    const [iova, length] = [s.get("iova"), s.get("length")];
    const all = iova === 0n && length === U64_MAX;
    if (!all && (iova === U64_MAX || length === U64_MAX || iova + length - 1n > U64_MAX)) {
      return err("EOVERFLOW");
    }
    if (!all && length === 0n) return err("EINVAL");
    const last = all ? U64_MAX : iova + length - 1n;
    const hits = [...ioas.mappings.values()].filter((m) => m.iova <= last && iova <= m.iova + m.length - 1n)
      .sort((a, b) => (a.iova < b.iova ? -1 : 1));
    let unmapped = 0n;
    for (const m of hits) {
      if (m.iova < iova || m.iova + m.length - 1n > last) return err("ENOENT");
      ioas.mappings.delete(m.iova);
      unmapped += m.length;
    }
    if (unmapped === 0n && !all) return err("ENOENT");
    s.set("length", unmapped);
    return 0;
  }

  // vfio_device_fops_unl_ioctl on a cdev: nothing but the bind until bound.
  #cdevIoctl(c: CdevState, name: string, arg: Uint8Array | number): number {
    if (name === "VFIO_DEVICE_BIND_IOMMUFD") return this.#bind(c, arg);
    const ctx = c.ctx;
    if (!ctx) return err("EINVAL"); // !df->access_granted
    const d = c.device;
    switch (name) {
      case "VFIO_DEVICE_ATTACH_IOMMUFD_PT":
        return this.#attach(c, ctx, arg);
      case "VFIO_DEVICE_DETACH_IOMMUFD_PT": {
        const s = this.#arg(V.vfio_device_detach_iommufd_pt, arg);
        if (typeof s === "number") return s;
        if (s.get("flags")) return err("EINVAL");
        this.#detachPt(c);
        return 0;
      }
      case "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO": {
        const s = this.#arg(V.vfio_pci_hot_reset_info, arg);
        if (typeof s === "number" || !d.hotReset) return typeof s === "number" ? s : err("ENODEV");
        const ids = d.hotReset.map((h) => this.#hotResetOwner(ctx, h));
        const owned = ids.includes(V.VFIO_PCI_DEVID_NOT_OWNED) ? 0 : V.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED;
        s.set("flags", V.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | owned).set("count", ids.length);
        if (s.get("argsz") < s.def.size + 8 * ids.length) return err("ENOSPC");
        d.hotReset.forEach((h, i) => {
          const [seg, bus, slot, fn] = h.bdf.split(/[:.]/).map((x) => parseInt(x, 16));
          V.vfio_pci_dependent_device.at(s.bytes, s.def.size + 8 * i).set("devid", ids[i]! >>> 0)
            .set("segment", seg!).set("bus", bus!).set("devfn", (slot! << 3) | fn!);
        });
        return 0;
      }
      case "VFIO_DEVICE_PCI_HOT_RESET": {
        // A cdev passes no group fds: every affected device must belong to this iommufd.
        const s = this.#arg(V.vfio_pci_hot_reset, arg);
        if (typeof s === "number") return s;
        if (s.get("count") !== 0) return err("EINVAL");
        if (!d.hotReset) return err("ENODEV");
        if (d.hotReset.some((h) => this.#hotResetOwner(ctx, h) === V.VFIO_PCI_DEVID_NOT_OWNED)) {
          return err("EPERM");
        }
        d.resets++;
        return 0;
      }
    }
    return this.#deviceIoctl(d, name, arg);
  }

  /** A hot reset dependent's devid in `ctx`: bound to it, owned through its group, or not owned. */
  #hotResetOwner(ctx: IommufdState, h: { bdf: string; group: number }): number {
    const d = this.#devices.get(h.bdf);
    if (d?.driver !== "vfio-pci") return V.VFIO_PCI_DEVID_NOT_OWNED;
    const bound = this.#boundCdevs().filter((c) => c.ctx === ctx);
    const own = bound.find((c) => c.device === d);
    if (own) return own.devid;
    return bound.some((c) => c.device.group === h.group)
      ? V.VFIO_PCI_DEVID_OWNED
      : V.VFIO_PCI_DEVID_NOT_OWNED;
  }

  // vfio_df_ioctl_bind_iommufd, then iommufd_device_bind.
  #bind(c: CdevState, arg: Uint8Array | number): number {
    const s = this.#arg(V.vfio_device_bind_iommufd, arg, 16);
    if (typeof s === "number") return s;
    // Before 6.17 flags must be 0; since, VFIO_DEVICE_BIND_FLAG_TOKEN is the one flag.
    const valid = this.since("6.17") ? V.VFIO_DEVICE_BIND_FLAG_TOKEN : 0;
    if (s.get("flags") & ~valid || s.get("iommufd") < 0) return err("EINVAL");
    const d = c.device;
    const g = d.group === undefined ? undefined : this.#groups.get(d.group);
    if (g && (g.fd !== undefined || g.deviceFds > 0)) return err("EBUSY"); // vfio_device_block_group
    if (c.ctx) return err("EINVAL"); // this fd is bound already
    if (this.since("6.17")) {
      // vfio_df_check_token
      let token: Uint8Array | undefined;
      if (s.get("flags") & V.VFIO_DEVICE_BIND_FLAG_TOKEN) {
        if (s.get("argsz") < 24) return err("EINVAL");
        token = this.#userMemory(s.get("token_uuid_ptr"), 16n)?.slice();
        if (!token) return err("EFAULT");
      }
      const matched = this.#matchToken(d, token);
      if (matched) return matched;
    }
    const e = this.#fds.get(s.get("iommufd"));
    if (!e) return err("EBADF");
    if (e.kind !== "iommufd") return err("EBADFD"); // iommufd_ctx_from_fd
    const bound = this.#boundCdevs();
    if (bound.some((o) => o.device === d)) return err("EINVAL"); // vfio_df_open: one cdev open
    if (d.noiommu) return this.#bound(c, e.ctx, s); // iommufd_bind_noiommu: no group, no isolation
    if (!this.isolatedMsi) return err("EPERM"); // unless iommufd's allow_unsafe_interrupts
    // iommu_device_claim_dma_owner: a viable group that no other iommufd owns.
    const members = d.group === undefined
      ? [d]
      : [...this.#devices.values()].filter((x) => x.group === d.group);
    if (!members.every((x) => x.driver === undefined || x.driver === "vfio-pci")) return err("EPERM");
    if (d.group !== undefined && bound.some((o) => o.device.group === d.group && o.ctx !== e.ctx)) {
      return err("EPERM");
    }
    return this.#bound(c, e.ctx, s);
  }

  #bound(c: CdevState, ctx: IommufdState, s: Struct<typeof V.vfio_device_bind_iommufd.fields>): number {
    c.ctx = ctx;
    c.devid = ctx.nextId++;
    ctx.objects.set(c.devid, { kind: "device", cdev: c });
    s.set("out_devid", c.devid);
    this.#deviceOpened(c.device);
    return 0;
  }

  // vfio_iommufd_physical_attach_ioas: iommufd_device_attach, or iommufd_device_replace.
  #attach(c: CdevState, ctx: IommufdState, arg: Uint8Array | number): number {
    const s = this.#arg(V.vfio_device_attach_iommufd_pt, arg, 12);
    if (typeof s === "number") return s;
    if (s.get("flags")) return err("EINVAL");
    const o = ctx.objects.get(s.get("pt_id"));
    if (!o) return err("ENOENT");
    if (o.kind === "device") return err("EINVAL");
    const ioas = o.ioas;
    if (ioas.hwpt !== undefined && ioas.noiommu !== c.device.noiommu) return err("EINVAL"); // not compatible
    if (ioas.hwpt === undefined) {
      // The first device makes the domain: reserve what it cannot map, raise the alignment, pin.
      ioas.noiommu = c.device.noiommu;
      const reserved = this.#holes(this.#domainRanges(ioas));
      const clash = (a: { start: bigint; last: bigint }) =>
        reserved.some((r) => r.start <= a.last && a.start <= r.last);
      const maps = [...ioas.mappings.values()];
      if (
        maps.some((m) => clash({ start: m.iova, last: m.iova + m.length - 1n })) || ioas.allowed.some(clash)
      ) {
        return -EADDRINUSE; // iopt_reserve_iova
      }
      const align = this.#domainAlignment(ioas);
      if (
        maps.some((m) => (m.iova | m.length | (m.file ? 0n : m.vaddr % BigInt(this.pageSize))) % align !== 0n)
      ) {
        return -EADDRINUSE; // iopt_check_iova_alignment
      }
      const pinned = this.#pin(maps);
      if (pinned) return pinned;
      ioas.hwpt = ctx.nextId++;
      ctx.objects.set(ioas.hwpt, { kind: "hwpt", ioas });
    }
    if (c.ioas !== ioas) {
      this.#detachPt(c);
      ioas.devices.add(c);
      c.ioas = ioas;
    }
    s.set("pt_id", ioas.hwpt);
    return 0;
  }

  /** Detaches a device; the last one takes the domain (its reservations, alignment, pins) along. */
  #detachPt(c: CdevState): void {
    const a = c.ioas;
    if (!a) return;
    a.devices.delete(c);
    c.ioas = undefined;
    if (a.devices.size === 0 && a.hwpt !== undefined) {
      c.ctx!.objects.delete(a.hwpt);
      a.hwpt = undefined;
    }
  }

  // vfio_df_unbind_iommufd: close the device, detach, unbind; the iommufd may go with it.
  #unbind(c: CdevState): void {
    const ctx = c.ctx;
    if (!ctx) return;
    c.device.irqs.forEach((irq) => (irq.triggers = [])); // vfio_pci_core_close_device
    this.#deviceClosed(c.device);
    this.#detachPt(c);
    ctx.objects.delete(c.devid);
    c.ctx = undefined;
    this.#releaseIommufd(ctx);
  }

  // iommufd_fops_release: once the fd is closed and no bound device holds the file.
  #releaseIommufd(ctx: IommufdState): void {
    if (ctx.fd !== undefined || [...ctx.objects.values()].some((o) => o.kind === "device")) return;
    ctx.released = true;
    ctx.objects.clear();
  }

  // vfio_set_irqs_validate_and_prepare, then vfio_pci_set_irqs_ioctl.
  #setIrqs(d: FakeDevice, arg: Uint8Array | number): number {
    const s = this.#arg(V.vfio_irq_set, arg);
    if (typeof s === "number") return s;
    const [flags, index, start, count] = [s.get("flags"), s.get("index"), s.get("start"), s.get("count")];
    const [irq, data, action] = [d.irqs[index], flags & 0x7, flags & 0x38];
    const oneBit = (x: number) => x !== 0 && (x & (x - 1)) === 0;
    if (!irq || !oneBit(data) || !oneBit(action) || flags & ~0x3f) return err("EINVAL");
    if (start >= irq.count || start + count > irq.count) return err("EINVAL");
    const eventfds = data === V.VFIO_IRQ_SET_DATA_EVENTFD;
    if (eventfds && s.get("argsz") < s.def.size + 4 * count) return err("EINVAL");
    if (data === V.VFIO_IRQ_SET_DATA_BOOL) return err("EINVAL"); // not modelled; the library never sends it
    if (action !== V.VFIO_IRQ_SET_ACTION_TRIGGER && !(irq.flags & V.VFIO_IRQ_INFO_MASKABLE)) {
      return err("ENOTTY");
    }
    // vfio_pci_set_{intx,msi}_trigger: INTx, MSI and MSI-X are one interrupt type at a time.
    const types = [V.VFIO_PCI_INTX_IRQ_INDEX, V.VFIO_PCI_MSI_IRQ_INDEX, V.VFIO_PCI_MSIX_IRQ_INDEX];
    if (
      action === V.VFIO_IRQ_SET_ACTION_TRIGGER && eventfds && types.includes(index) &&
      types.some((i) => i !== index && d.irqs[i]?.triggers.some((t) => t !== undefined))
    ) {
      return err("EINVAL");
    }
    const fds = eventfds
      ? Array.from({ length: count }, (_, i) => s.view.getInt32(s.def.size + 4 * i, true))
      : [];
    const entries = fds.map((fd) => fd === -1 ? undefined : this.#fds.get(fd));
    if (fds.some((fd, i) => fd !== -1 && entries[i]?.kind !== "eventfd")) return err("EBADF");
    d.irqSets.push({ flags, index, start, count, fds });
    for (let i = start; i < start + count; i++) {
      if (action === V.VFIO_IRQ_SET_ACTION_MASK) irq.masked[i] = true;
      else if (action === V.VFIO_IRQ_SET_ACTION_UNMASK) irq.masked[i] = false;
      else if (eventfds) irq.triggers[i] = (entries[i - start] as { counter: Counter } | undefined)?.counter;
      else if (irq.triggers[i]) signal(irq.triggers[i]!);
    }
    if (action === V.VFIO_IRQ_SET_ACTION_TRIGGER && !eventfds && count === 0) irq.triggers = [];
    return 0;
  }
}

/** eventfd_signal: adds to the counter and wakes one waiting reader. */
function signal(c: Counter, n = 1n): void {
  c.value += n;
  c.waiters.shift()?.();
}

/** An eventfd read: the counter's value, then zero. */
function consume(c: Counter, buf: Uint8Array): number {
  if (buf.length < 8) return err("EINVAL");
  new DataView(buf.buffer, buf.byteOffset, 8).setBigUint64(0, c.value, true);
  c.value = 0n;
  return 8;
}

/** The usual device: QEMU edu at 0000:00:04.0, bound to vfio-pci, alone in IOMMU group 4. */
export const EDU = "0000:00:04.0";

/**
 * A fake with the edu device.
 *
 * @param o Overrides for the device.
 * @returns The fake.
 */
export function withEdu(o: Partial<FakeDeviceOptions> = {}): FakeSys {
  const fake = new FakeSys();
  fake.addDevice({ bdf: EDU, group: 4, ...o });
  return fake;
}

/**
 * The low-level legacy sequence: open the container and the group, attach, set the IOMMU, get
 * the device. The caller closes all three.
 */
export function openLegacy(
  sys: Sys,
  bdf = EDU,
  group = 4,
): { container: VfioContainer; group: VfioGroup; device: VfioDevice } {
  const container = VfioContainer.open(sys);
  const g = VfioGroup.open(sys, group);
  g.setContainer(container);
  container.setIommu();
  return { container, group: g, device: g.getDevice(bdf) };
}

/**
 * Runs `fn`, which must throw a {@link VfioError}, and returns the error for the test to inspect.
 *
 * @param fn The call expected to fail.
 * @returns The error.
 */
export function caught(fn: () => unknown): VfioError {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof VfioError)) throw new Error(`expected a VfioError, got ${err}`);
    return err;
  }
  throw new Error("expected a throw");
}
