/**
 * PCI configuration space (include/uapi/linux/pci_regs.h) through the vfio-pci config region:
 * width-exact register access, the standard and extended capability lists, BARs, MSI and MSI-X.
 *
 * Every access is one pread/pwrite of exactly its width, so vfio-pci performs the config cycle at
 * that width: a 16-bit command write never rewrites the RW1C status bits beside it.
 *
 * @module
 */
import {
  PCI_BASE_ADDRESS_0,
  PCI_BASE_ADDRESS_IO_MASK,
  PCI_BASE_ADDRESS_MEM_MASK,
  PCI_BASE_ADDRESS_MEM_PREFETCH,
  PCI_BASE_ADDRESS_MEM_TYPE_64,
  PCI_BASE_ADDRESS_MEM_TYPE_MASK,
  PCI_BASE_ADDRESS_SPACE_IO,
  PCI_CAP_ID_MSI,
  PCI_CAP_ID_MSIX,
  PCI_CAPABILITY_LIST,
  PCI_CFG_SPACE_SIZE,
  PCI_CLASS_REVISION,
  PCI_COMMAND,
  PCI_COMMAND_IO,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_DEVICE_ID,
  PCI_HEADER_TYPE,
  PCI_HEADER_TYPE_MASK,
  PCI_HEADER_TYPE_NORMAL,
  PCI_INTERRUPT_LINE,
  PCI_INTERRUPT_PIN,
  PCI_MSI_FLAGS,
  PCI_MSI_FLAGS_64BIT,
  PCI_MSI_FLAGS_ENABLE,
  PCI_MSI_FLAGS_MASKBIT,
  PCI_MSI_FLAGS_QMASK,
  PCI_MSI_FLAGS_QSIZE,
  PCI_MSIX_FLAGS,
  PCI_MSIX_FLAGS_ENABLE,
  PCI_MSIX_FLAGS_MASKALL,
  PCI_MSIX_FLAGS_QSIZE,
  PCI_MSIX_PBA,
  PCI_MSIX_PBA_BIR,
  PCI_MSIX_PBA_OFFSET,
  PCI_MSIX_TABLE,
  PCI_MSIX_TABLE_BIR,
  PCI_MSIX_TABLE_OFFSET,
  PCI_REVISION_ID,
  PCI_STATUS,
  PCI_STATUS_CAP_LIST,
  PCI_STD_NUM_BARS,
  PCI_SUBSYSTEM_ID,
  PCI_SUBSYSTEM_VENDOR_ID,
  PCI_VENDOR_ID,
} from "./uapi/pci.ts";

/** The bits {@link PciConfig.setCommand} changes. */
export interface PciCommandBits {
  /** Bits to set (default none). */
  set?: number;
  /** Bits to clear (default none). */
  clear?: number;
}

/**
 * What {@link PciConfig} needs from the config region; `VfioRegion` provides it, and tests
 * pass a fake over a byte array. `read` must return exactly `length` bytes or throw.
 */
export interface ConfigIo {
  /** Reads `length` bytes at `offset` in one access. */
  read(offset: number, length: number): Uint8Array;
  /** Writes `data` at `offset` in one access. */
  write(offset: number, data: Uint8Array): void;
  /** The region's size: 256 for conventional PCI, 4096 for PCIe. */
  readonly info: { readonly size: number };
}

/** One entry of the standard capability list. */
export interface PciCapability {
  /** The PCI_CAP_ID_* value. */
  id: number;
  /** Its offset in config space. */
  offset: number;
  /** The kernel's name without the prefix (`"MSIX"` for PCI_CAP_ID_MSIX), if pci_regs.h has one. */
  name: string | undefined;
}

/** One entry of the PCIe extended capability list. */
export interface PciExtendedCapability extends PciCapability {
  /** The capability version (header bits 19:16). */
  version: number;
}

/** A decoded, implemented base address register. */
export interface PciBar {
  /** The BAR number, 0–5; also its VFIO region index. */
  index: number;
  /** Whether it decodes I/O or memory space. */
  space: "io" | "memory";
  /** A 64-bit memory BAR, whose upper half is BAR `index + 1`. */
  is64: boolean;
  /** A prefetchable memory BAR. */
  prefetchable: boolean;
  /** The base address in config space (as vfio-pci virtualizes it), flag bits masked off. */
  address: bigint;
  /** Size in bytes, as given by the region info. */
  size: number;
}

/** The MSI capability, decoded. */
export interface PciMsi {
  /** The capability's offset. */
  offset: number;
  /** PCI_MSI_FLAGS_ENABLE. */
  enabled: boolean;
  /** PCI_MSI_FLAGS_64BIT: the message address has an upper half. */
  is64: boolean;
  /** PCI_MSI_FLAGS_MASKBIT: per-vector masking. */
  maskable: boolean;
  /** Vectors the device can request (Multiple Message Capable, PCI_MSI_FLAGS_QMASK). */
  vectors: number;
  /** Vectors currently enabled (Multiple Message Enable, PCI_MSI_FLAGS_QSIZE). */
  enabledVectors: number;
}

/** The MSI-X capability, decoded. */
export interface PciMsix {
  /** The capability's offset. */
  offset: number;
  /** PCI_MSIX_FLAGS_ENABLE. */
  enabled: boolean;
  /** PCI_MSIX_FLAGS_MASKALL: every vector is masked. */
  functionMask: boolean;
  /** Number of table entries (PCI_MSIX_FLAGS_QSIZE + 1). */
  tableSize: number;
  /** The BAR holding the table. */
  tableBir: number;
  /** The table's offset in that BAR. */
  tableOffset: number;
  /** The BAR holding the pending bit array. */
  pbaBir: number;
  /** The PBA's offset in that BAR. */
  pbaOffset: number;
}

// The kernel's PCI_CAP_ID_* and PCI_EXT_CAP_ID_* suffixes (pci_regs.h, Linux 6.1).
// deno-fmt-ignore
const CAP_NAMES: Record<number, string> = {
  0x01: "PM", 0x02: "AGP", 0x03: "VPD", 0x04: "SLOTID", 0x05: "MSI", 0x06: "CHSWP", 0x07: "PCIX",
  0x08: "HT", 0x09: "VNDR", 0x0a: "DBG", 0x0b: "CCRC", 0x0c: "SHPC", 0x0d: "SSVID", 0x0e: "AGP3",
  0x0f: "SECDEV", 0x10: "EXP", 0x11: "MSIX", 0x12: "SATA", 0x13: "AF", 0x14: "EA",
};
// deno-fmt-ignore
const EXT_CAP_NAMES: Record<number, string> = {
  0x01: "ERR", 0x02: "VC", 0x03: "DSN", 0x04: "PWR", 0x05: "RCLD", 0x06: "RCILC", 0x07: "RCEC",
  0x08: "MFVC", 0x09: "VC9", 0x0a: "RCRB", 0x0b: "VNDR", 0x0c: "CAC", 0x0d: "ACS", 0x0e: "ARI",
  0x0f: "ATS", 0x10: "SRIOV", 0x11: "MRIOV", 0x12: "MCAST", 0x13: "PRI", 0x14: "AMD_XXX",
  0x15: "REBAR", 0x16: "DPA", 0x17: "TPH", 0x18: "LTR", 0x19: "SECPCI", 0x1a: "PMUX", 0x1b: "PASID",
  0x1d: "DPC", 0x1e: "L1SS", 0x1f: "PTM", 0x23: "DVSEC", 0x25: "DLF", 0x26: "PL_16GT", 0x2e: "DOE",
};

const hex = (n: number): string => Number.isInteger(n) && n >= 0 ? `0x${n.toString(16)}` : String(n);

/**
 * PCI configuration space of one device. Offsets are bytes from the start of config space; an
 * access must be naturally aligned and inside the region, or it throws a RangeError before any I/O.
 * Errors from the region itself (a VfioError for a failed pread/pwrite) pass through unchanged.
 *
 * @example Reading IDs from a fake config space
 * ```ts
 * import { PciConfig } from "./pci.ts";
 * const bytes = new Uint8Array(256);
 * bytes.set([0x36, 0x1b, 0x10, 0x00]); // QEMU NVMe: 1b36:0010
 * const config = new PciConfig({
 *   info: { size: bytes.length },
 *   read: (offset, length) => bytes.slice(offset, offset + length),
 *   write: (offset, data) => bytes.set(data, offset),
 * });
 * console.log(config.vendorId.toString(16), config.deviceId.toString(16)); // 1b36 10
 * ```
 */
export class PciConfig {
  readonly #io: ConfigIo;

  /**
   * Wraps a config-space accessor.
   *
   * @param io The config region (`device.region(VFIO_PCI_CONFIG_REGION_INDEX)`) or any {@link ConfigIo}.
   */
  constructor(io: ConfigIo) {
    this.#io = io;
  }

  /** The size of config space in bytes (256, or 4096 for PCIe). */
  get size(): number {
    return this.#io.info.size;
  }

  #check(action: "read" | "write", offset: number, width: number): void {
    const at = `${action} ${width * 8} bits at config offset ${hex(offset)}`;
    if (!Number.isInteger(offset) || offset < 0 || offset + width > this.size) {
      throw new RangeError(`Cannot ${at}: config space is ${this.size} bytes`);
    }
    if (offset % width !== 0) throw new RangeError(`Cannot ${at}: it is unaligned`);
  }

  #read(offset: number, width: number): number {
    this.#check("read", offset, width);
    const b = this.#io.read(offset, width);
    let v = 0;
    for (let i = width - 1; i >= 0; i--) v = v * 256 + b[i]!;
    return v;
  }

  #write(offset: number, width: number, value: number): void {
    this.#check("write", offset, width);
    const max = 2 ** (width * 8) - 1;
    // Accept the signed spelling of the same bit pattern (~x in JavaScript is negative), as Registers does.
    const v = Number.isInteger(value) && value < 0 && value >= -(max + 1) / 2 ? value + max + 1 : value;
    if (!Number.isInteger(v) || v < 0 || v > max) {
      throw new RangeError(
        `Cannot write ${value} as ${width * 8} bits at config offset ${hex(offset)}: it does not fit`,
      );
    }
    const b = new Uint8Array(width);
    for (let i = 0; i < width; i++) b[i] = Math.floor(v / 2 ** (8 * i)) & 0xff;
    this.#io.write(offset, b);
  }

  /**
   * Reads a byte.
   *
   * @param offset Offset in config space.
   * @returns The value.
   * @throws {RangeError} If the offset is outside config space.
   * @example
   * ```ts
   * import { open, uapi } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * const pin = device.config.read8(uapi.PCI_INTERRUPT_PIN);
   * ```
   */
  read8(offset: number): number {
    return this.#read(offset, 1);
  }

  /**
   * Reads 16 bits, little-endian, in one access.
   *
   * @param offset Offset in config space, 2-byte aligned.
   * @returns The value.
   * @throws {RangeError} If the offset is outside config space or unaligned.
   * @example
   * ```ts
   * import { open, uapi } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * const status = device.config.read16(uapi.PCI_STATUS);
   * ```
   */
  read16(offset: number): number {
    return this.#read(offset, 2);
  }

  /**
   * Reads 32 bits, little-endian, in one access.
   *
   * @param offset Offset in config space, 4-byte aligned.
   * @returns The value, unsigned.
   * @throws {RangeError} If the offset is outside config space or unaligned.
   * @example
   * ```ts
   * import { open, uapi } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * const bar0 = device.config.read32(uapi.PCI_BASE_ADDRESS_0);
   * ```
   */
  read32(offset: number): number {
    return this.#read(offset, 4);
  }

  /**
   * Writes a byte.
   *
   * @param offset Offset in config space.
   * @param value 0..0xff (or its signed spelling).
   * @throws {RangeError} If the offset is outside config space or the value does not fit.
   * @example
   * ```ts
   * import { open, uapi } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * device.config.write8(uapi.PCI_INTERRUPT_LINE, 11);
   * ```
   */
  write8(offset: number, value: number): void {
    this.#write(offset, 1, value);
  }

  /**
   * Writes 16 bits, little-endian, in one access.
   *
   * @param offset Offset in config space, 2-byte aligned.
   * @param value 0..0xffff (or its signed spelling).
   * @throws {RangeError} If the offset is outside config space, unaligned, or the value does not fit.
   * @example
   * ```ts
   * import { open, uapi } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * device.config.write16(uapi.PCI_STATUS, 1 << 14); // RW1C: clears Signaled System Error only
   * ```
   */
  write16(offset: number, value: number): void {
    this.#write(offset, 2, value);
  }

  /**
   * Writes 32 bits, little-endian, in one access.
   *
   * @param offset Offset in config space, 4-byte aligned.
   * @param value 0..0xffffffff (or its signed spelling).
   * @throws {RangeError} If the offset is outside config space, unaligned, or the value does not fit.
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * device.config.write32(0x40, 0x12345678);
   * ```
   */
  write32(offset: number, value: number): void {
    this.#write(offset, 4, value);
  }

  /** PCI_VENDOR_ID. */
  get vendorId(): number {
    return this.read16(PCI_VENDOR_ID);
  }
  /** PCI_DEVICE_ID. */
  get deviceId(): number {
    return this.read16(PCI_DEVICE_ID);
  }
  /** PCI_REVISION_ID. */
  get revision(): number {
    return this.read8(PCI_REVISION_ID);
  }
  /** The 24-bit class code: base class (bits 23:16), subclass (15:8), programming interface (7:0). */
  get classCode(): number {
    return this.read32(PCI_CLASS_REVISION) >>> 8;
  }
  /** The header layout (PCI_HEADER_TYPE & PCI_HEADER_TYPE_MASK), without the multi-function bit. */
  get headerType(): number {
    return this.read8(PCI_HEADER_TYPE) & PCI_HEADER_TYPE_MASK;
  }
  /** PCI_COMMAND. */
  get command(): number {
    return this.read16(PCI_COMMAND);
  }
  /** PCI_STATUS. */
  get status(): number {
    return this.read16(PCI_STATUS);
  }
  /** PCI_INTERRUPT_PIN: 0 for none, 1–4 for INTA#–INTD#. */
  get interruptPin(): number {
    return this.read8(PCI_INTERRUPT_PIN);
  }
  /** PCI_INTERRUPT_LINE. */
  get interruptLine(): number {
    return this.read8(PCI_INTERRUPT_LINE);
  }
  /** PCI_SUBSYSTEM_VENDOR_ID. */
  get subsystemVendorId(): number {
    return this.read16(PCI_SUBSYSTEM_VENDOR_ID);
  }
  /** PCI_SUBSYSTEM_ID. */
  get subsystemId(): number {
    return this.read16(PCI_SUBSYSTEM_ID);
  }

  /**
   * Walks the standard capability list from PCI_CAPABILITY_LIST.
   *
   * @returns The capabilities in list order; empty when PCI_STATUS_CAP_LIST is clear.
   * @throws {RangeError} If the list is corrupt: it points into the header, loops, or holds an ID of
   * 0xff (what a device that stopped responding reads as).
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * for (const cap of device.config.capabilities()) console.log(cap.name, cap.offset);
   * ```
   */
  capabilities(): PciCapability[] {
    if (!(this.status & PCI_STATUS_CAP_LIST)) return [];
    const caps: PciCapability[] = [];
    // Dword-aligned pointers in 0x40..0xfc allow 48 entries (the kernel's PCI_FIND_CAP_TTL), so the
    // repeat check bounds the walk.
    const seen = new Set<number>();
    let from = PCI_CAPABILITY_LIST;
    for (let pos = this.read8(PCI_CAPABILITY_LIST) & ~3; pos !== 0;) {
      const fail = (why: string) =>
        new RangeError(`Cannot walk the capability list: the pointer at ${hex(from)} ${why}`);
      if (pos < 0x40) throw fail(`is ${hex(pos)}, inside the header`);
      if (seen.has(pos)) throw fail(`loops back to ${hex(pos)} after ${caps.length} capabilities`);
      seen.add(pos);
      const entry = this.read16(pos); // ID and next pointer in one access
      const id = entry & 0xff;
      if (id === 0xff) throw fail(`leads to ID 0xff at ${hex(pos)}; the device may not be responding`);
      caps.push({ id, offset: pos, name: CAP_NAMES[id] });
      from = pos + 1;
      pos = (entry >> 8) & ~3;
    }
    return caps;
  }

  /**
   * Walks the PCIe extended capability list from 0x100, when config space is larger than 256 bytes.
   * Entries with ID 0 are skipped: vfio-pci leaves one at 0x100 when it hides the first capability.
   *
   * @returns The capabilities in list order; empty for conventional PCI or a 0 / 0xffffffff header.
   * @throws {RangeError} If a next pointer points below 0x100 or the list loops.
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * const dsn = device.config.extendedCapabilities().find((c) => c.name === "DSN");
   * ```
   */
  extendedCapabilities(): PciExtendedCapability[] {
    if (this.size <= PCI_CFG_SPACE_SIZE) return [];
    const caps: PciExtendedCapability[] = [];
    // At most 960 dword-aligned positions in 0x100..0xffc, so the repeat check bounds the walk.
    const seen = new Set<number>();
    for (let pos = PCI_CFG_SPACE_SIZE; pos !== 0;) {
      const header = this.read32(pos);
      if (header === 0 || header === 0xffffffff) break;
      seen.add(pos);
      const id = header & 0xffff; // PCI_EXT_CAP_ID()
      if (id !== 0) caps.push({ id, version: (header >>> 16) & 0xf, offset: pos, name: EXT_CAP_NAMES[id] });
      const next = (header >>> 20) & 0xffc; // PCI_EXT_CAP_NEXT()
      const fail = (why: string) =>
        new RangeError(`Cannot walk the extended capability list: the next pointer at ${hex(pos)} ${why}`);
      if (next !== 0 && next < PCI_CFG_SPACE_SIZE) throw fail(`is ${hex(next)}, below 0x100`);
      if (seen.has(next)) throw fail(`loops back to ${hex(next)} after ${caps.length} capabilities`);
      pos = next;
    }
    return caps;
  }

  /**
   * Finds a standard capability.
   *
   * @param id A PCI_CAP_ID_* value.
   * @returns The offset of the first capability with that ID, or undefined.
   * @throws {RangeError} If the list is corrupt (see {@link capabilities}).
   * @example
   * ```ts
   * import { open, uapi } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * const exp = device.config.findCapability(uapi.PCI_CAP_ID_EXP);
   * ```
   */
  findCapability(id: number): number | undefined {
    return this.capabilities().find((c) => c.id === id)?.offset;
  }

  /**
   * Finds a PCIe extended capability.
   *
   * @param id A PCI_EXT_CAP_ID_* value.
   * @returns The offset of the first capability with that ID, or undefined.
   * @throws {RangeError} If the list is corrupt (see {@link extendedCapabilities}).
   * @example
   * ```ts
   * import { open, uapi } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * const sriov = device.config.findExtendedCapability(uapi.PCI_EXT_CAP_ID_SRIOV);
   * ```
   */
  findExtendedCapability(id: number): number | undefined {
    return this.extendedCapabilities().find((c) => c.id === id)?.offset;
  }

  /**
   * Decodes BAR0–5 from config space, with sizes from the VFIO region info. vfio-pci virtualizes
   * the BAR registers, so sizes cannot be probed by writing all-ones; the caller supplies them.
   *
   * @param sizes The six BAR region sizes, `regionInfo(i).size` for i = 0..5 (0 if unimplemented).
   * @returns The implemented BARs (size > 0) by index; a 64-bit BAR's upper slot is not listed.
   * @throws {RangeError} If `sizes` is not six non-negative integers, the header is not type 0, or
   * BAR5 claims to be 64-bit.
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * const bars = device.config.bars([0, 1, 2, 3, 4, 5].map((i) => device.region(i).info.size));
   * ```
   */
  bars(sizes: ArrayLike<number>): PciBar[] {
    if (sizes.length !== PCI_STD_NUM_BARS || !Array.from(sizes).every((s) => Number.isInteger(s) && s >= 0)) {
      throw new RangeError(
        `Cannot decode BARs: expected ${PCI_STD_NUM_BARS} region sizes, got [${Array.from(sizes)}]`,
      );
    }
    const type = this.headerType;
    if (type !== PCI_HEADER_TYPE_NORMAL) {
      throw new RangeError(`Cannot decode BARs: header type ${type} is not a normal (type 0) header`);
    }
    const bars: PciBar[] = [];
    for (let index = 0; index < PCI_STD_NUM_BARS; index++) {
      const lo = this.read32(PCI_BASE_ADDRESS_0 + 4 * index);
      const io = (lo & PCI_BASE_ADDRESS_SPACE_IO) !== 0;
      const is64 = !io && (lo & PCI_BASE_ADDRESS_MEM_TYPE_MASK) === PCI_BASE_ADDRESS_MEM_TYPE_64;
      if (is64 && index === PCI_STD_NUM_BARS - 1) {
        throw new RangeError(`Cannot decode BAR${index}: it is 64-bit but has no upper half`);
      }
      const size = sizes[index]!;
      const hi = is64 ? this.read32(PCI_BASE_ADDRESS_0 + 4 * (index + 1)) : 0;
      if (size > 0) {
        const low = io ? (lo & PCI_BASE_ADDRESS_IO_MASK) >>> 0 : (lo & PCI_BASE_ADDRESS_MEM_MASK) >>> 0;
        bars.push({
          index,
          space: io ? "io" : "memory",
          is64,
          prefetchable: !io && (lo & PCI_BASE_ADDRESS_MEM_PREFETCH) !== 0,
          address: (BigInt(hi) << 32n) | BigInt(low),
          size,
        });
      }
      if (is64) index++;
    }
    return bars;
  }

  /**
   * Decodes the MSI capability.
   *
   * @returns The decoded capability, or undefined when the device has none.
   * @throws {RangeError} If the capability list is corrupt or a vector count uses a reserved encoding.
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * const msi = device.config.msi();
   * if (msi) console.log(`${msi.vectors} MSI vectors`);
   * ```
   */
  msi(): PciMsi | undefined {
    const offset = this.findCapability(PCI_CAP_ID_MSI);
    if (offset === undefined) return undefined;
    capabilityFits("MSI", offset, PCI_MSI_FLAGS + 2);
    const flags = this.read16(offset + PCI_MSI_FLAGS);
    const capable = (flags & PCI_MSI_FLAGS_QMASK) >> 1, enabled = (flags & PCI_MSI_FLAGS_QSIZE) >> 4;
    // Encodings 6 and 7 are reserved: at most 32 vectors.
    if (capable > 5 || enabled > 5) {
      throw new RangeError(
        `Cannot decode the MSI capability at ${hex(offset)}: flags ${hex(flags)} use a reserved count`,
      );
    }
    return {
      offset,
      enabled: (flags & PCI_MSI_FLAGS_ENABLE) !== 0,
      is64: (flags & PCI_MSI_FLAGS_64BIT) !== 0,
      maskable: (flags & PCI_MSI_FLAGS_MASKBIT) !== 0,
      vectors: 1 << capable,
      enabledVectors: 1 << enabled,
    };
  }

  /**
   * Decodes the MSI-X capability.
   *
   * @returns The decoded capability, or undefined when the device has none.
   * @throws {RangeError} If the capability list is corrupt or a BIR names no BAR (6 or 7).
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * const msix = device.config.msix();
   * if (msix) console.log(`table in BAR${msix.tableBir} at ${msix.tableOffset}`);
   * ```
   */
  msix(): PciMsix | undefined {
    const offset = this.findCapability(PCI_CAP_ID_MSIX);
    if (offset === undefined) return undefined;
    capabilityFits("MSI-X", offset, PCI_MSIX_PBA + 4);
    const flags = this.read16(offset + PCI_MSIX_FLAGS);
    const table = this.read32(offset + PCI_MSIX_TABLE), pba = this.read32(offset + PCI_MSIX_PBA);
    const tableBir = table & PCI_MSIX_TABLE_BIR, pbaBir = pba & PCI_MSIX_PBA_BIR;
    if (tableBir >= PCI_STD_NUM_BARS || pbaBir >= PCI_STD_NUM_BARS) {
      throw new RangeError(
        `Cannot decode the MSI-X capability at ${
          hex(offset)
        }: table BIR ${tableBir} or PBA BIR ${pbaBir} is not a BAR`,
      );
    }
    return {
      offset,
      enabled: (flags & PCI_MSIX_FLAGS_ENABLE) !== 0,
      functionMask: (flags & PCI_MSIX_FLAGS_MASKALL) !== 0,
      tableSize: (flags & PCI_MSIX_FLAGS_QSIZE) + 1,
      tableBir,
      tableOffset: (table & PCI_MSIX_TABLE_OFFSET) >>> 0,
      pbaBir,
      pbaOffset: (pba & PCI_MSIX_PBA_OFFSET) >>> 0,
    };
  }

  /**
   * Read-modify-writes PCI_COMMAND as one 16-bit read and one 16-bit write: `(old & ~clear) | set`.
   *
   * @param bits The bits to set and to clear (PCI_COMMAND_*); `set` wins where they overlap.
   * @returns The value written.
   * @throws {RangeError} If `set` or `clear` is not a 16-bit value.
   * @example
   * ```ts
   * import { open, uapi } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * edu.device.config.setCommand({ set: uapi.PCI_COMMAND_INTX_DISABLE }); // mask INTx
   * ```
   */
  setCommand(bits: PciCommandBits): number {
    const set = bits.set ?? 0, clear = bits.clear ?? 0;
    for (const v of [set, clear]) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffff) {
        throw new RangeError(`Cannot update the command register with ${v}: expected 0..0xffff`);
      }
    }
    const value = (this.command & ~clear & 0xffff) | set;
    this.write16(PCI_COMMAND, value);
    return value;
  }

  /**
   * Sets PCI_COMMAND_MASTER so the device may issue DMA, like the kernel's pci_set_master().
   *
   * @returns The new command register.
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * device.config.enableBusMaster();
   * ```
   */
  enableBusMaster(): number {
    return this.setCommand({ set: PCI_COMMAND_MASTER });
  }

  /**
   * Sets PCI_COMMAND_MEMORY so the device decodes its memory BARs.
   *
   * @returns The new command register.
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * device.config.enableMemory();
   * ```
   */
  enableMemory(): number {
    return this.setCommand({ set: PCI_COMMAND_MEMORY });
  }

  /**
   * Sets PCI_COMMAND_IO so the device decodes its I/O BARs.
   *
   * @returns The new command register.
   * @example
   * ```ts
   * import { open } from "vfio-ts";
   *
   * using edu = await open("0000:00:04.0");
   * const { device } = edu;
   * device.config.enableIo();
   * ```
   */
  enableIo(): number {
    return this.setCommand({ set: PCI_COMMAND_IO });
  }
}

// A standard capability lives in the first 256 bytes; one whose registers run past that is corrupt,
// and decoding it would read the extended space as if it were the capability.
function capabilityFits(name: string, offset: number, length: number): void {
  if (offset + length > PCI_CFG_SPACE_SIZE) {
    throw new RangeError(
      `Cannot decode the ${name} capability at ${hex(offset)}: its ${length} bytes run past the standard ` +
        `configuration space (${hex(PCI_CFG_SPACE_SIZE)})`,
    );
  }
}
