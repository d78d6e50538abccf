/**
 * What the NVMe Base Specification defines and the driver uses: controller registers, opcodes,
 * status codes and their names, the capability and identify fields, and the driver's error type.
 *
 * @module
 */

/** Controller registers (the spec's "controller properties") in BAR0, byte offsets. */
export const REG = {
  CAP: 0x00, // 64-bit: capabilities
  VS: 0x08, // version
  INTMS: 0x0c, // interrupt mask set (pin-based and MSI only)
  CC: 0x14, // controller configuration
  CSTS: 0x1c, // controller status
  AQA: 0x24, // admin queue sizes
  ASQ: 0x28, // 64-bit: admin submission queue base
  ACQ: 0x30, // 64-bit: admin completion queue base
  DOORBELLS: 0x1000,
} as const;

export const CC_EN = 1 << 0;
export const CC_SHN_NORMAL = 1 << 14;
export const CSTS_RDY = 1 << 0;
export const CSTS_CFS = 1 << 1;
export const CSTS_SHST_MASK = 3 << 2;
export const CSTS_SHST_COMPLETE = 2 << 2;

/** Admin command opcodes. */
export const ADMIN = {
  DELETE_SQ: 0x00,
  CREATE_SQ: 0x01,
  DELETE_CQ: 0x04,
  CREATE_CQ: 0x05,
  IDENTIFY: 0x06,
  SET_FEATURES: 0x09,
  ASYNC_EVENT_REQUEST: 0x0c, // completes only when the controller has an event to report
} as const;
/** I/O command opcodes of the NVM command set. */
export const NVM = { FLUSH: 0x00, WRITE: 0x01, READ: 0x02 } as const;
export const FEATURE_NUMBER_OF_QUEUES = 0x07;

/** The memory page size the driver configures (CC.MPS = 0): PRP entries describe pages of this size. */
export const PAGE = 4096;
export const SQE_SIZE = 64; // CC.IOSQES = 6
export const CQE_SIZE = 16; // CC.IOCQES = 4
export const PRPS_PER_PAGE = PAGE / 8;

export const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

// --- Status codes -------------------------------------------------------------------------------

// deno-fmt-ignore
const GENERIC_STATUS: Record<number, string> = {
  0x01: "Invalid Command Opcode", 0x02: "Invalid Field in Command", 0x03: "Command ID Conflict",
  0x04: "Data Transfer Error", 0x05: "Commands Aborted due to Power Loss Notification", 0x06: "Internal Error",
  0x07: "Command Abort Requested", 0x08: "Command Aborted due to SQ Deletion", 0x0b: "Invalid Namespace or Format",
  0x0c: "Command Sequence Error", 0x13: "PRP Offset Invalid", 0x15: "Operation Denied",
  0x20: "Namespace is Write Protected", 0x21: "Command Interrupted", 0x80: "LBA Out of Range",
  0x81: "Capacity Exceeded", 0x82: "Namespace Not Ready", 0x83: "Reservation Conflict", 0x84: "Format In Progress",
};
// deno-fmt-ignore
const COMMAND_SPECIFIC_STATUS: Record<number, string> = {
  0x00: "Completion Queue Invalid", 0x01: "Invalid Queue Identifier", 0x02: "Invalid Queue Size",
  0x08: "Invalid Interrupt Vector", 0x0c: "Invalid Queue Deletion", 0x0d: "Feature Identifier Not Saveable",
  0x0e: "Feature Not Changeable", 0x80: "Conflicting Attributes", 0x82: "Attempted Write to Read Only Range",
};
// deno-fmt-ignore
const MEDIA_STATUS: Record<number, string> = {
  0x80: "Write Fault", 0x81: "Unrecovered Read Error", 0x82: "End-to-end Guard Check Error",
  0x85: "Compare Failure", 0x86: "Access Denied", 0x87: "Deallocated or Unwritten Logical Block",
};
const STATUS_TYPES = [
  "Generic Command Status",
  "Command Specific Status",
  "Media and Data Integrity Errors",
  "Path Related Status",
];

/** Status field (SCT 0, SC 0x08) of a command the controller aborted because its queue was deleted. */
export const STATUS_ABORTED_SQ_DELETION = 0x08;

/** A completion's status field, decoded. */
export interface NvmeStatus {
  /** Status Code Type: 0 generic, 1 command specific, 2 media, 3 path, 7 vendor. */
  sct: number;
  /** Status Code, within its type. */
  sc: number;
  /** Do Not Retry. */
  dnr: boolean;
  /** The spec's name for the code, or "Unknown status". */
  name: string;
}

/**
 * Decodes the 15-bit status field of a completion entry (bits 31:17 of dword 3).
 *
 * @param field The status field, without the phase bit.
 * @returns Its parts and name.
 */
export function decodeStatus(field: number): NvmeStatus {
  const sc = field & 0xff, sct = (field >> 8) & 0x7, dnr = (field & (1 << 14)) !== 0;
  const table = [GENERIC_STATUS, COMMAND_SPECIFIC_STATUS, MEDIA_STATUS][sct];
  return { sct, sc, dnr, name: table?.[sc] ?? (sct === 7 ? "Vendor Specific" : "Unknown status") };
}

function describeStatus(s: NvmeStatus): string {
  const type = STATUS_TYPES[s.sct] ?? `type ${s.sct}`;
  return `${s.name} (NVMe status: SCT ${hex(s.sct)} ${type}, SC ${hex(s.sc)}${
    s.dnr ? ", do not retry" : ""
  })`;
}

// --- Errors -------------------------------------------------------------------------------------

/**
 * A command the controller failed (`"status"`), did not complete in time (`"timeout"`, always an
 * {@link NvmeTimeoutError}), could not run because the controller reported a fatal status
 * (`"fatal"`, CSTS.CFS), or that was still outstanding when the driver closed (`"closed"`).
 */
export class NvmeError extends Error {
  /**
   * @param command What the command was for, e.g. "read 8 blocks at LBA 0 of namespace 1".
   * @param kind Which failure.
   * @param detail The rest of the message.
   * @param status The completion status, for `"status"` (and `"closed"` when the controller
   *   reported the abort).
   */
  constructor(
    readonly command: string,
    readonly kind: "status" | "timeout" | "fatal" | "closed",
    detail: string,
    readonly status: NvmeStatus | undefined = undefined,
  ) {
    super(`Cannot ${command}: ${detail}`);
    this.name = "NvmeError";
  }

  /** The error for a completion with a non-zero status field. */
  static fromStatus(command: string, field: number): NvmeError {
    const s = decodeStatus(field);
    return new NvmeError(command, "status", describeStatus(s), s);
  }

  /** The error for a command the controller aborted because the driver deleted its queue. */
  static abortedByClose(command: string, queue: string, field: number): NvmeError {
    const s = decodeStatus(field);
    return new NvmeError(
      command,
      "closed",
      `the driver closed and deleted ${queue}: ${describeStatus(s)}`,
      s,
    );
  }
}

/**
 * A command that did not complete within its timeout. The call has failed, but the controller may
 * still own the command: its command ID, and the memory it reads or writes (the caller's buffer,
 * or the driver's), stay reserved until the controller completes it late or its queue is deleted.
 * {@link released} says when that is.
 */
export class NvmeTimeoutError extends NvmeError {
  /**
   * @param command What the command was for.
   * @param detail The rest of the message.
   * @param released Resolves once the controller no longer owns the command's memory.
   * @param outstanding How many of the call's commands the controller still owned at the timeout.
   */
  constructor(
    command: string,
    detail: string,
    /**
     * Resolves (never rejects) once the controller no longer owns the call's memory: it completed
     * the commands after all, or the driver deleted their queue or disabled the controller. Only
     * then may the caller free or reuse a buffer it passed in.
     */
    readonly released: Promise<void>,
    /** The call's commands the controller still owned when the timeout fired (0: none was submitted). */
    readonly outstanding: number,
  ) {
    super(command, "timeout", detail);
    this.name = "NvmeTimeoutError";
  }
}

// --- Commands and what the controller reports -----------------------------------------------------

/** The fields of a 64-byte submission queue entry this driver uses; the rest are zero. */
export interface Command {
  opcode: number;
  nsid?: number;
  prp1?: bigint;
  prp2?: bigint;
  cdw10?: number;
  cdw11?: number;
  cdw12?: number;
}

/** The parts of a 16-byte completion queue entry the driver reads. */
export interface Completion {
  /** The command ID. */
  cid: number;
  /** Dword 0: the command's result, if it has one. */
  dw0: number;
  /** The status field (0: success); see {@link decodeStatus}. */
  status: number;
}

/** What the CAP register says about the controller. */
export interface Capabilities {
  /** Maximum Queue Entries Supported, as a count. */
  maxQueueEntries: number;
  /** The worst-case time to become ready or not ready, in ms (CAP.TO × 500). */
  readyTimeoutMs: number;
  /** Bytes between doorbells: 4 << CAP.DSTRD. */
  doorbellStride: number;
  /** The smallest memory page size, in bytes (4096 << CAP.MPSMIN). */
  minPageSize: number;
  /** The largest memory page size, in bytes. */
  maxPageSize: number;
}

/**
 * Decodes CAP.
 *
 * @param cap The 64-bit register.
 * @returns The fields the driver uses.
 * @throws {RangeError} If the controller does not support the NVM command set.
 */
export function readCapabilities(cap: bigint): Capabilities {
  const field = (shift: number, bits: number) => Number((cap >> BigInt(shift)) & ((1n << BigInt(bits)) - 1n));
  if (!field(37, 1)) {
    throw new RangeError(`Cannot drive the controller: CAP ${hex(cap)} lists no NVM command set`);
  }
  return {
    maxQueueEntries: field(0, 16) + 1,
    readyTimeoutMs: Math.max(field(24, 8), 1) * 500,
    doorbellStride: 4 << field(32, 4),
    minPageSize: 4096 << field(48, 4),
    maxPageSize: 4096 << field(52, 4),
  };
}

/** From Identify Controller (CNS 1). */
export interface ControllerInfo {
  /** PCI vendor ID. */
  vendorId: number;
  /** Serial number. */
  serial: string;
  /** Model number. */
  model: string;
  /** Firmware revision. */
  firmware: string;
  /** The NVMe version from VS, e.g. "1.4.0". */
  version: string;
  /** Maximum data transfer size of one command in bytes, from MDTS (Infinity: no limit). */
  maxTransfer: number;
  /** Number of namespaces. */
  namespaces: number;
}

/** From Identify Namespace (CNS 0). */
export interface NamespaceInfo {
  /** The namespace ID. */
  nsid: number;
  /** Namespace size in logical blocks (NSZE). */
  blocks: number;
  /** Logical block size in bytes. */
  blockSize: number;
}
