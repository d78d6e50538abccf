/**
 * A device region (a BAR, the ROM, config space): its info and capabilities, pread/pwrite access,
 * mmap, and the register accessor built on them.
 *
 * @module
 */
import { capabilityChain } from "./caps.ts";
import type { RegistersOptions } from "./device.ts";
import { check, runAll, VfioError } from "./errors.ts";
import type { OwnedFd } from "./fd.ts";
import { type MmioPath, type MmioSegment, Registers } from "./mmio.ts";
import type { RawMmio, Sys } from "./sys.ts";
import { MAP_SHARED, PROT_READ, PROT_WRITE } from "./uapi/libc.ts";
import {
  VFIO_DEVICE_GET_REGION_INFO,
  vfio_region_info,
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  vfio_region_info_cap_sparse_mmap,
  VFIO_REGION_INFO_CAP_TYPE,
  vfio_region_info_cap_type,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  vfio_region_sparse_mmap_area,
} from "./uapi/vfio.ts";

/** A part of a region that may be mmap'd. */
export interface SparseArea {
  /** Offset in the region. */
  offset: number;
  /** Size in bytes. */
  size: number;
}

/** What VFIO_DEVICE_GET_REGION_INFO reports, with its capabilities parsed. */
export interface RegionInfo {
  /** The region index (VFIO_PCI_BAR0_REGION_INDEX …). */
  index: number;
  /** VFIO_REGION_INFO_FLAG_* bits. */
  flags: number;
  /** Size in bytes (0 for an unimplemented BAR). */
  size: number;
  /** The region's offset within the device fd, for pread/pwrite/mmap. */
  offset: number;
  /** Readable through pread. */
  readable: boolean;
  /** Writable through pwrite. */
  writable: boolean;
  /** May be mmap'd (see {@link sparse} for which parts). */
  mmap: boolean;
  /** The mmap-able areas when the kernel restricts them (VFIO_REGION_INFO_CAP_SPARSE_MMAP). */
  sparse: SparseArea[] | undefined;
  /** The region's type and subtype (VFIO_REGION_INFO_CAP_TYPE), for device-specific regions. */
  type: { type: number; subtype: number } | undefined;
  /** The MSI-X table in this BAR may be mmap'd (VFIO_REGION_INFO_CAP_MSIX_MAPPABLE). */
  msixMappable: boolean;
  /** IDs of every capability in the chain, including ones this library does not parse. */
  capabilities: number[];
}

const MAX_INFO = 1 << 16;

/**
 * Reads and parses VFIO_DEVICE_GET_REGION_INFO, re-querying with the size the kernel asks for when
 * capabilities do not fit.
 *
 * @param fd The device fd.
 * @param index The region index.
 * @returns The parsed info.
 * @throws {VfioError} If the index is invalid for the device.
 * @throws {RangeError} If the capability chain is malformed.
 */
export function readRegionInfo(fd: OwnedFd, index: number): RegionInfo {
  const query = (extra: number) => {
    const s = vfio_region_info.alloc(extra);
    s.set("index", index);
    fd.ioctl(
      VFIO_DEVICE_GET_REGION_INFO,
      s.bytes,
      "VFIO_DEVICE_GET_REGION_INFO",
      `get info of region ${index}`,
    );
    return s;
  };
  let info = query(0);
  const argsz = info.get("argsz");
  if (argsz > info.bytes.length) {
    if (argsz > MAX_INFO) {
      throw new RangeError(`Cannot get region ${index} info: the kernel asks for ${argsz} bytes`);
    }
    info = query(argsz - vfio_region_info.size);
  }
  const flags = info.get("flags");
  const result: RegionInfo = {
    index,
    flags,
    size: safeNumber(info.get("size"), `region ${index} size`),
    offset: safeNumber(info.get("offset"), `region ${index} offset`),
    readable: (flags & VFIO_REGION_INFO_FLAG_READ) !== 0,
    writable: (flags & VFIO_REGION_INFO_FLAG_WRITE) !== 0,
    mmap: (flags & VFIO_REGION_INFO_FLAG_MMAP) !== 0,
    sparse: undefined,
    type: undefined,
    msixMappable: false,
    capabilities: [],
  };
  if (!(flags & VFIO_REGION_INFO_FLAG_CAPS)) return result;
  const bytes = info.bytes.subarray(0, Math.min(info.bytes.length, info.get("argsz")));
  for (const cap of capabilityChain(bytes, info.get("cap_offset"), vfio_region_info.size)) {
    result.capabilities.push(cap.id);
    const region = bytes.subarray(cap.offset, cap.offset + cap.length);
    if (cap.id === VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
      const n = vfio_region_info_cap_sparse_mmap.at(region).get("nr_areas");
      const base = vfio_region_info_cap_sparse_mmap.size;
      if (base + n * vfio_region_sparse_mmap_area.size > region.length) {
        throw new RangeError(`Cannot parse region ${index} sparse mmap capability: ${n} areas overrun it`);
      }
      result.sparse = Array.from({ length: n }, (_, i) => {
        const a = vfio_region_sparse_mmap_area.at(region, base + i * vfio_region_sparse_mmap_area.size);
        return {
          offset: safeNumber(a.get("offset"), `region ${index} sparse area offset`),
          size: safeNumber(a.get("size"), `region ${index} sparse area size`),
        };
      }).filter((a) => a.size > 0 && a.offset + a.size <= result.size);
    } else if (cap.id === VFIO_REGION_INFO_CAP_TYPE) {
      const t = vfio_region_info_cap_type.at(region);
      result.type = { type: t.get("type"), subtype: t.get("subtype") };
    } else if (cap.id === VFIO_REGION_INFO_CAP_MSIX_MAPPABLE) {
      result.msixMappable = true;
    }
  }
  return result;
}

// Sizes and offsets are numbers (the library's rule); a u64 above 2^53 would round silently.
function safeNumber(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new RangeError(`Cannot use ${what} 0x${value.toString(16)}: it exceeds 2^53`);
  }
  return Number(value);
}

// Every live region mmap, by address, so that a DMA map of one can be named for what it is (iommufd
// cannot pin device memory). Module-wide: the address space is the process's.
const liveMaps = new Map<bigint, { length: number; name: string }>();

/**
 * The region whose mmap covers any of `[address, address + length)`, if one does. Internal: the
 * iommufd backend names it when IOMMU_IOAS_MAP refuses a BAR's mmap.
 *
 * @param address A process address.
 * @param length Bytes from it.
 * @returns The region's name, e.g. `0000:00:06.0 region 0`, or undefined.
 */
export function regionMappingAt(address: bigint, length: number): string | undefined {
  const end = address + BigInt(length);
  for (const [at, m] of liveMaps) if (address < at + BigInt(m.length) && at < end) return m.name;
  return undefined;
}

/** An mmap'd part of a region. */
export interface RegionMapping {
  /** Offset of the mapping within the region. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** The process address. */
  address: bigint;
}

/**
 * One region of an open device.
 *
 * The device owns its regions: closing the device unmaps every mapping and closes every
 * {@link Registers} made here. Made by {@link VfioDevice.region}.
 */
export class VfioRegion {
  readonly #live = new Set<Registers>();
  readonly #sys: Sys;
  readonly #fd: OwnedFd;

  /**
   * Wraps one region of an open device.
   *
   * @param sys The syscall backend.
   * @param fd The device fd.
   * @param info The region's info.
   * @param name For messages, e.g. `0000:00:04.0 region 0`.
   */
  constructor(
    sys: Sys,
    fd: OwnedFd,
    /** The region's info, capabilities parsed. */
    readonly info: RegionInfo,
    /** The region's name for messages, e.g. `0000:00:04.0 region 0`. */
    readonly name: string,
  ) {
    this.#sys = sys;
    this.#fd = fd;
  }

  #check(offset: number, length: number, what: string): void {
    if (!Number.isInteger(offset) || !Number.isInteger(length) || offset < 0 || length < 0) {
      throw new RangeError(`Cannot ${what} ${this.name}: offset and length must be non-negative integers`);
    }
    if (offset + length > this.info.size) {
      throw new RangeError(
        `Cannot ${what} ${this.name} at ${offset}..${offset + length}: the region is ${this.info.size} bytes`,
      );
    }
  }

  /**
   * Reads bytes with pread(2); the kernel performs the device access (aligned 1/2/4/8-byte reads
   * are done at that width).
   *
   * @param offset Offset in the region.
   * @param length Bytes to read.
   * @returns The bytes.
   * @throws {RangeError} If the range is outside the region.
   * @throws {VfioError} If the region is not readable or the read fails or is short.
   */
  read(offset: number, length: number): Uint8Array {
    this.#check(offset, length, "read"); // before allocating: a huge length must not allocate
    const buf = new Uint8Array(length);
    this.readInto(offset, buf);
    return buf;
  }

  /**
   * Reads into an existing buffer with pread(2).
   *
   * @param offset Offset in the region.
   * @param buf Filled completely.
   * @throws {RangeError} If the range is outside the region.
   * @throws {VfioError} If the read fails or is short.
   */
  readInto(offset: number, buf: Uint8Array): void {
    this.#check(offset, buf.length, "read");
    if (!this.info.readable) throw new TypeError(`Cannot read ${this.name}: the region is not readable`);
    this.#io("pread", this.#sys.pread(this.#fd.fd, buf, this.info.offset + offset), offset, buf.length);
  }

  /**
   * Writes bytes with pwrite(2).
   *
   * @param offset Offset in the region.
   * @param data The bytes.
   * @throws {RangeError} If the range is outside the region.
   * @throws {VfioError} If the write fails or is short.
   */
  write(offset: number, data: Uint8Array): void {
    this.#check(offset, data.length, "write");
    if (!this.info.writable) throw new TypeError(`Cannot write ${this.name}: the region is not writable`);
    this.#io("pwrite", this.#sys.pwrite(this.#fd.fd, data, this.info.offset + offset), offset, data.length);
  }

  #io(op: string, r: number, offset: number, length: number): void {
    check(r, {
      op,
      path: this.#fd.path,
      action: `${op.slice(1)} ${length} bytes at ${offset} of ${this.name}`,
    });
    if (r !== length) {
      // No errno: the call succeeded, but moved fewer bytes than the region promised.
      throw new VfioError({
        op,
        code: "ERR_VFIO_SHORT_TRANSFER",
        path: this.#fd.path,
        action: `${op.slice(1)} ${length} bytes at ${offset} of ${this.name}`,
        hint: `only ${r} bytes were transferred`,
      });
    }
  }

  /** A {@link RawMmio} that goes through pread/pwrite at exact widths. */
  get kernelIo(): RawMmio {
    const b1 = new Uint8Array(1),
      b2 = new Uint16Array(1),
      b4 = new Uint32Array(1),
      b8 = new BigUint64Array(1);
    const u = (a: { buffer: ArrayBufferLike }) => new Uint8Array(a.buffer);
    const [u1, u2, u4, u8] = [b1, u(b2), u(b4), u(b8)];
    return {
      read8: (o) => (this.readInto(o, u1), b1[0]!),
      read16: (o) => (this.readInto(o, u2), b2[0]!),
      read32: (o) => (this.readInto(o, u4), b4[0]!),
      read64: (o) => (this.readInto(o, u8), b8[0]!),
      write8: (o, v) => (b1[0] = v, this.write(o, u1)),
      write16: (o, v) => (b2[0] = v, this.write(o, u2)),
      write32: (o, v) => (b4[0] = v, this.write(o, u4)),
      write64: (o, v) => (b8[0] = v, this.write(o, u8)),
    };
  }

  /**
   * The areas this region allows to be mmap'd: the sparse areas when the kernel lists them, else
   * the whole region when it is mmap-able, else none.
   */
  get mmapAreas(): SparseArea[] {
    if (!this.info.mmap || this.info.size === 0) return [];
    return this.info.sparse ?? [{ offset: 0, size: this.info.size }];
  }

  /**
   * mmaps one area of the region.
   *
   * @param offset Offset in the region, page-aligned.
   * @param length Bytes, inside one mmap-able area.
   * @returns The mapping; release it with {@link unmap}.
   * @throws {RangeError} If the range is not inside an mmap-able area or not page-aligned.
   * @throws {VfioError} If mmap(2) fails.
   */
  map(offset: number, length: number): RegionMapping {
    this.#check(offset, length, "map");
    if (offset % this.#sys.pageSize !== 0 || length === 0) {
      throw new RangeError(
        `Cannot map ${this.name} at ${offset}: the offset must be page-aligned and length > 0`,
      );
    }
    if (!this.mmapAreas.some((a) => offset >= a.offset && offset + length <= a.offset + a.size)) {
      throw new RangeError(
        `Cannot map ${this.name} at ${offset}..${offset + length}: not inside an mmap-able area`,
      );
    }
    const prot = (this.info.readable ? PROT_READ : 0) | (this.info.writable ? PROT_WRITE : 0);
    const address = this.#sys.mmap(length, prot, MAP_SHARED, this.#fd.fd, this.info.offset + offset);
    if (address < 0n) {
      check(Number(address), {
        op: "mmap",
        path: this.#fd.path,
        action: `map ${length} bytes of ${this.name}`,
      });
    }
    liveMaps.set(address, { length, name: this.name });
    return { offset, length, address };
  }

  /**
   * Unmaps a mapping from {@link map}.
   *
   * @param m The mapping.
   * @throws {VfioError} If munmap(2) fails.
   */
  unmap(m: RegionMapping): void {
    liveMaps.delete(m.address);
    check(this.#sys.munmap(m.address, m.length), {
      op: "munmap",
      path: this.#fd.path,
      action: `unmap ${this.name}`,
    });
  }

  /**
   * Width-exact register access to the region. With `path: "auto"` (default), every page-aligned
   * mmap-able area is mapped and served by the backend's fast accessor, and the rest through
   * pread/pwrite; with `"pread"`, or VFIO_TS_MMIO=pread in the environment, everything goes through
   * the kernel. {@link Registers.path} tells which one was used.
   *
   * @param options Which access path to use.
   * @returns The registers; the device closes them when it closes.
   * @throws {RangeError} If the region is not implemented.
   */
  registers(options: RegistersOptions = {}): Registers {
    this.#fd.fd; // throws once the device is closed
    if (this.info.size === 0) {
      throw new RangeError(`Cannot access ${this.name}: the region is not implemented`);
    }
    const forced = this.#sys.getenv("VFIO_TS_MMIO") === "pread";
    const path = forced ? "pread" : options.path ?? "auto";
    if (path !== "auto" && path !== "pread") {
      throw new TypeError(`Cannot use register path ${JSON.stringify(path)}: expected "auto" or "pread"`);
    }
    const mappings: RegionMapping[] = [];
    const segments: MmioSegment[] = [];
    if (path === "auto") {
      try {
        // An area at an offset mmap cannot take stays on pread/pwrite rather than failing.
        for (const a of this.mmapAreas.filter((a) => a.offset % this.#sys.pageSize === 0)) {
          const m = this.map(a.offset, a.size);
          mappings.push(m);
          const io = this.#sys.mmio(m.address, m.length);
          if (!io) break;
          segments.push({ start: a.offset, length: a.size, io });
        }
      } catch (e) {
        for (const m of mappings) this.unmap(m);
        throw e;
      }
      if (segments.length < mappings.length) {
        for (const m of mappings.splice(0)) this.unmap(m);
        segments.length = 0;
      }
    }
    const used: MmioPath = segments.length ? "mmap" : "pread";
    const regs = new Registers(this.name, this.info.size, used, segments, this.kernelIo, () => {
      this.#live.delete(regs);
      runAll(this.name, mappings.map((m) => () => this.unmap(m)));
    });
    this.#live.add(regs);
    return regs;
  }

  /** Closes every {@link Registers} over this region, unmapping them. Called by the device. */
  closeAll(): void {
    runAll(this.name, [...this.#live].map((r) => () => r.close()));
  }
}
