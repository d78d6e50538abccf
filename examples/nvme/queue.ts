/**
 * One NVMe queue pair in DMA memory: the submission queue the driver writes, the completion queue
 * the controller writes, their doorbells, and the command IDs that pair the two. It knows nothing of
 * what the commands are for; the driver (driver.ts) keeps that in {@link QueuePair.slots}.
 *
 * @module
 */
import type { DmaBuffer, Registers } from "../../mod.ts";
import { type Command, CQE_SIZE, PAGE, REG, SQE_SIZE } from "./spec.ts";

/** Memory of one queue pair, and of its command IDs for an I/O queue. */
export interface QueueMemory {
  /** Submission queue: depth × 64 bytes. */
  sq: DmaBuffer;
  /** Completion queue: depth × 16 bytes. */
  cq: DmaBuffer;
  /** I/O queues: a page per command ID for its PRP list. */
  prpLists?: DmaBuffer;
  /** I/O queues: a page per command ID for data the caller gave no DMA buffer for. */
  bounce?: DmaBuffer;
}

/**
 * A submission queue and its completion queue, with their doorbells. Command IDs are slots: at
 * most depth - 1 commands are outstanding, so neither queue can fill. A command ID is reused only
 * after the controller posted its completion (or the queue is gone), so a late completion can
 * never be taken for another command's.
 *
 * @typeParam T What the driver keeps per outstanding command.
 */
export class QueuePair<T> {
  /** The driver's record of each outstanding command, by command ID. */
  readonly slots: (T | undefined)[];
  /** Free command IDs; the last freed is reused first. */
  readonly free: number[];
  /** Commands waiting for a free command ID, oldest first. */
  waiting: T[] = [];
  /** While set, the submission doorbell is not written: the controller does not see new entries. */
  paused = false;
  /** Set once the queue is deleted or the controller disabled: nothing touches the queue again. */
  detached = false;
  /** Whether the controller has the completion queue, and the submission queue. */
  created = { cq: false, sq: false };
  readonly sqDoorbell: number;
  readonly cqDoorbell: number;
  /** The bounce pages as bytes (I/O queues). */
  readonly bounceBytes: Uint8Array | undefined;
  /** The IOVA of the bounce pages, as a number (I/O queues; 0 otherwise). */
  readonly bounceIova: number;
  readonly #prpEntries: BigUint64Array | undefined;
  readonly #sq: Uint32Array;
  readonly #cq: Registers;
  #sqTail = 0;
  #rungTail = 0;
  #cqHead = 0;
  #phase = 1; // the controller writes phase 1 on its first pass through the zeroed queue
  #ringQueued = false;

  /**
   * @param id The queue ID (0: admin).
   * @param depth Entries in each of the two queues.
   * @param memory The queues' memory, zeroed.
   * @param vector The MSI-X vector its completions signal.
   * @param bar BAR0, for the doorbells.
   * @param doorbellStride Bytes between doorbells.
   */
  constructor(
    readonly id: number,
    readonly depth: number,
    readonly memory: QueueMemory,
    readonly vector: number,
    readonly bar: Registers,
    doorbellStride: number,
  ) {
    this.#sq = memory.sq.view(Uint32Array, { length: (depth * SQE_SIZE) / 4 });
    // The controller writes completion entries while the driver polls them: they are read through
    // the buffer's volatile accessor, one real load each time. (A typed-array read may be hoisted
    // out of a loop, and JSC's Atomics.load is a locked read-modify-write that can write back over
    // the device.)
    this.#cq = memory.cq.volatile;
    this.#prpEntries = memory.prpLists?.view(BigUint64Array);
    this.bounceBytes = memory.bounce?.bytes;
    this.bounceIova = memory.bounce ? Number(memory.bounce.iova) : 0;
    for (const b of [memory.prpLists, memory.bounce]) if (b) checkIova(b);
    this.slots = new Array<T | undefined>(depth - 1).fill(undefined);
    this.free = Array.from({ length: depth - 1 }, (_, i) => depth - 2 - i);
    this.sqDoorbell = REG.DOORBELLS + 2 * id * doorbellStride;
    this.cqDoorbell = REG.DOORBELLS + (2 * id + 1) * doorbellStride;
  }

  /** "the admin queue" or "I/O queue N", for messages. */
  get name(): string {
    return this.id === 0 ? "the admin queue" : `I/O queue ${this.id}`;
  }

  /** Commands that hold a command ID: submitted, and not yet completed by the controller. */
  get inFlight(): number {
    return this.depth - 1 - this.free.length;
  }

  /**
   * Copies a read, write or flush of namespace 1 to the queue's tail: the hot path, with the PRPs
   * as numbers (IOVAs below 2^53, which the driver checks), no objects and no bigints.
   *
   * @param cid The command ID.
   * @param opcode NVM.READ, NVM.WRITE or NVM.FLUSH.
   * @param prp1 PRP entry 1 (0 for a flush).
   * @param prp2 PRP entry 2, or 0.
   * @param lba The first block.
   * @param blocks How many blocks (0 for a flush).
   */
  submitIo(cid: number, opcode: number, prp1: number, prp2: number, lba: number, blocks: number): void {
    const sq = this.#sq, e = this.#sqTail * (SQE_SIZE / 4);
    // Every dword of the entry is written (plain stores: cheaper than a fill call per command).
    sq[e] = opcode | (cid << 16);
    sq[e + 1] = 1; // namespace 1
    sq[e + 2] = 0;
    sq[e + 3] = 0;
    sq[e + 4] = 0; // metadata pointer
    sq[e + 5] = 0;
    // Stores into a Uint32Array keep the low 32 bits.
    sq[e + 6] = prp1;
    sq[e + 7] = Math.floor(prp1 / 2 ** 32);
    sq[e + 8] = prp2;
    sq[e + 9] = Math.floor(prp2 / 2 ** 32);
    sq[e + 10] = lba;
    sq[e + 11] = Math.floor(lba / 2 ** 32);
    sq[e + 12] = blocks > 0 ? blocks - 1 : 0; // NLB, 0's based; no FUA, no protection information
    sq[e + 13] = 0;
    sq[e + 14] = 0;
    sq[e + 15] = 0;
    if (++this.#sqTail === this.depth) this.#sqTail = 0;
  }

  /** Copies a command to the queue's tail; {@link ring} hands it to the controller. */
  submit(cid: number, c: Command): void {
    const sq = this.#sq, e = this.#sqTail * (SQE_SIZE / 4);
    sq.fill(0, e, e + SQE_SIZE / 4);
    sq[e] = c.opcode | (cid << 16); // FUSE = 0, PSDT = 0: PRPs describe the data
    sq[e + 1] = c.nsid ?? 0;
    if (c.prp1 !== undefined) [sq[e + 6], sq[e + 7]] = [Number(c.prp1 & 0xffffffffn), Number(c.prp1 >> 32n)];
    if (c.prp2 !== undefined) [sq[e + 8], sq[e + 9]] = [Number(c.prp2 & 0xffffffffn), Number(c.prp2 >> 32n)];
    sq[e + 10] = c.cdw10 ?? 0;
    sq[e + 11] = c.cdw11 ?? 0;
    sq[e + 12] = c.cdw12 ?? 0;
    if (++this.#sqTail === this.depth) this.#sqTail = 0;
  }

  /** Writes the new tail to the submission doorbell, unless nothing is new or the queue is paused. */
  ring(): void {
    if (this.#sqTail === this.#rungTail || this.paused || this.detached) return;
    // The entries are plain stores to memory; the doorbell is a call into native code that the JIT
    // cannot move them past, and x86 orders the stores before the MMIO write.
    this.bar.write32(this.sqDoorbell, this.#sqTail);
    this.#rungTail = this.#sqTail;
  }

  /**
   * Rings the doorbell once the current synchronous code is done (a microtask), so that the
   * commands a caller submits in one go cost one doorbell write.
   */
  ringSoon(): void {
    if (this.#ringQueued) return;
    this.#ringQueued = true;
    queueMicrotask(this.#ringTask);
  }

  readonly #ringTask = (): void => {
    this.#ringQueued = false;
    this.ring();
  };

  /** Whether a completion entry waits at the head of the completion queue. */
  pending(): boolean {
    return ((this.#cq.read32(this.#cqHead * CQE_SIZE + 12) >>> 16) & 1) === this.#phase;
  }

  /**
   * Consumes every completion entry whose phase bit matches, then acknowledges them by writing the
   * new head to the completion doorbell.
   *
   * @param onCompletion Called for each entry, in the order the controller posted them. Dword 0
   *   (command-specific) is read on the admin queue only; I/O commands get 0.
   * @returns How many entries were consumed.
   */
  reap(onCompletion: (q: QueuePair<T>, cid: number, status: number, dw0: number) => void): number {
    let n = 0;
    for (;;) {
      const at = this.#cqHead * CQE_SIZE;
      const dw3 = this.#cq.read32(at + 12);
      if (((dw3 >>> 16) & 1) !== this.#phase) break;
      if (++this.#cqHead === this.depth) {
        this.#cqHead = 0;
        this.#phase ^= 1;
      }
      n++;
      onCompletion(this, dw3 & 0xffff, dw3 >>> 17, this.id === 0 ? this.#cq.read32(at) : 0);
    }
    if (n > 0) this.bar.write32(this.cqDoorbell, this.#cqHead);
    return n;
  }

  /**
   * Points PRP2 at this command ID's list page and fills it: the list for a transfer of more
   * than two pages.
   *
   * @param cid The command ID.
   * @param second The IOVA of the transfer's second page (below 2^53); the rest follow contiguously.
   * @param pages How many pages the list names (at most 512).
   * @returns The list's IOVA.
   */
  prpList(cid: number, second: number, pages: number): number {
    const entries = this.#prpEntries, list = this.memory.prpLists;
    if (!entries || !list) {
      throw new TypeError(`Cannot describe a transfer on ${this.name}: it has no PRP lists`);
    }
    const base = cid * (PAGE / 8);
    for (let i = 0; i < pages; i++) entries[base + i] = BigInt(second + i * PAGE);
    return Number(list.iova) + cid * PAGE;
  }
}

/**
 * Checks that a buffer's IOVAs are below 2^53, so that the hot path can carry them as numbers.
 * (The pool hands out the lowest free IOVAs; 2^53 is far above any IOMMU's 48-bit or 57-bit space
 * as used.)
 *
 * @param b The buffer.
 * @throws {RangeError} If its last byte's IOVA is 2^53 or more.
 */
export function checkIova(b: DmaBuffer): void {
  if (Number(b.iova) + b.size > Number.MAX_SAFE_INTEGER) {
    throw new RangeError(
      `Cannot use the DMA buffer at iova 0x${b.iova.toString(16)} for NVMe I/O: it lies above 2^53`,
    );
  }
}
