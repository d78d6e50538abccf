/**
 * A lean NVMe I/O queue pair for the IOPS benchmark, built on the exported pieces of
 * examples/nvme.ts: {@link NvmeController} brings the controller up and runs the admin commands
 * that create and delete the queue; this file owns the queue memory, the doorbells and the
 * submit/complete loop, with no driver in between: the floor under the driver's rows. It keeps
 * `qd` random 4 KiB reads in flight and, between looks at the completion queue, spins (polled), or
 * waits for the queue's MSI-X vector with `irq.wait()` (poll(2) on this thread: no hop, but the
 * event loop is blocked) or `await irq.next()` (the read off the thread, as the driver waits).
 *
 * The queue takes queue ID 2, beside the controller's own I/O queue 1. The controller asked for one
 * I/O queue pair in Set Features (Number of Queues); QEMU's controller accepts more queues than
 * requested, a real controller may answer Invalid Queue Identifier.
 *
 * @module
 */
import type { DmaBuffer, OpenedDevice, RawMmio, Registers, VfioIrq } from "../mod.ts";
import { ADMIN, NVM, type NvmeController, PAGE, REG } from "../examples/nvme.ts";

/** How {@link BenchQueue.run} waits when the completion queue is empty. */
export type QueueWait = "spin" | "wait" | "next";

/** A submission/completion queue pair doing random 4 KiB reads. */
export class BenchQueue implements Disposable {
  readonly #nvme: NvmeController;
  readonly #bar: Registers;
  readonly #sqMem: DmaBuffer;
  readonly #cqMem: DmaBuffer;
  readonly #data: DmaBuffer;
  readonly #sq: Uint32Array;
  readonly #cq: RawMmio;
  readonly #sqDoorbell: number;
  readonly #cqDoorbell: number;
  readonly #slots: number; // 4 KiB slots in namespace 1
  readonly #nlb: number; // blocks per 4 KiB, 0's based
  readonly #irq: VfioIrq | undefined;
  readonly #vector: number;
  #tail = 0;
  #head = 0;
  #phase = 1;
  #seed = 0x9e3779b9;
  #created = false;

  /**
   * Allocates the queue memory and creates the queue pair (completion queue first).
   *
   * @param vfio The opened controller; its DMA pool provides the memory.
   * @param nvme The controller, initialised.
   * @param qid The queue ID to create.
   * @param depth Entries per queue; at most depth - 1 reads are in flight.
   * @param interrupts The MSI-X vectors (enabled by the caller) and the one this queue signals;
   *   without, the queue's interrupts are off and it can only be polled.
   */
  constructor(
    vfio: OpenedDevice,
    nvme: NvmeController,
    readonly qid = 2,
    readonly depth = 64,
    interrupts?: { irq: VfioIrq; vector: number },
  ) {
    this.#nvme = nvme;
    this.#irq = interrupts?.irq;
    this.#vector = interrupts?.vector ?? 0;
    const bs = nvme.namespace.blockSize;
    if (PAGE % bs !== 0) throw new RangeError(`Cannot read 4 KiB blocks: the block size is ${bs}`);
    this.#nlb = PAGE / bs - 1;
    this.#slots = Math.floor(nvme.namespace.blocks / (PAGE / bs));
    this.#bar = vfio.device.registers(0);
    this.#sqMem = vfio.dma.alloc(depth * 64);
    this.#cqMem = vfio.dma.alloc(depth * 16);
    this.#data = vfio.dma.alloc(depth * PAGE);
    this.#sq = this.#sqMem.view(Uint32Array, { byteOffset: 0, length: depth * 16 });
    // The completion queue is polled through the backend's native accessor, not a typed array:
    // measured in the lab, Bun's optimising tier stopped seeing new entries through Atomics.load
    // on an Int32Array over this memory after about a second of polling (the load was apparently
    // hoisted out of the loop), and every read then timed out. A native call is a real load each time.
    const cq = vfio.device.sys.mmio(this.#cqMem.vaddr, this.#cqMem.size);
    if (!cq) throw new TypeError("Cannot poll the completion queue: the backend has no native accessor here");
    this.#cq = cq;
    const stride = nvme.cap.doorbellStride;
    this.#sqDoorbell = REG.DOORBELLS + 2 * qid * stride;
    this.#cqDoorbell = REG.DOORBELLS + (2 * qid + 1) * stride;
    nvme.admin(`create I/O completion queue ${qid}`, {
      opcode: ADMIN.CREATE_CQ,
      prp1: this.#cqMem.iova,
      cdw10: ((depth - 1) << 16) | qid,
      // Physically contiguous; interrupts on vector IV (IEN), or off.
      cdw11: interrupts ? (this.#vector << 16) | (1 << 1) | 1 : 1,
    });
    try {
      nvme.admin(`create I/O submission queue ${qid}`, {
        opcode: ADMIN.CREATE_SQ,
        prp1: this.#sqMem.iova,
        cdw10: ((depth - 1) << 16) | qid,
        cdw11: (qid << 16) | 1, // its completion queue, physically contiguous
      });
    } catch (e) {
      nvme.admin(`delete I/O completion queue ${qid}`, { opcode: ADMIN.DELETE_CQ, cdw10: qid });
      throw e;
    }
    this.#created = true;
  }

  // xorshift32: cheap and the same sequence every run.
  #random(): number {
    let x = this.#seed;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#seed = x >>> 0;
    return this.#seed;
  }

  #submit(cid: number): void {
    const e = this.#tail * 16, sq = this.#sq;
    const lba = (this.#random() % this.#slots) * (this.#nlb + 1);
    const prp = this.#data.iova + BigInt(cid * PAGE);
    sq.fill(0, e, e + 16);
    sq[e] = NVM.READ | (cid << 16);
    sq[e + 1] = 1; // namespace 1
    sq[e + 6] = Number(prp & 0xffffffffn);
    sq[e + 7] = Number(prp >> 32n);
    sq[e + 10] = lba;
    sq[e + 12] = this.#nlb;
    if (++this.#tail === this.depth) this.#tail = 0;
  }

  /**
   * Keeps `qd` random 4 KiB reads in flight for `ms` milliseconds, then lets them drain.
   *
   * @param qd Reads in flight, 1 to depth - 1.
   * @param ms How long to keep submitting.
   * @param how How to wait when no completion is there: spin, or (with interrupts) `irq.wait()`
   *   or `await irq.next()`.
   * @returns The reads completed and the time they took, in ms.
   * @throws {Error} If a read fails or the controller stops answering for 5 s.
   */
  async run(qd: number, ms: number, how: QueueWait = "spin"): Promise<{ ios: number; elapsedMs: number }> {
    if (!Number.isInteger(qd) || qd < 1 || qd >= this.depth) {
      throw new RangeError(`Cannot keep ${qd} reads in flight: the queue holds ${this.depth - 1}`);
    }
    const irq = this.#irq, vector = this.#vector;
    if (how !== "spin" && !irq) throw new TypeError(`Cannot ${how} for interrupts: the queue has none`);
    const waitOptions = { vector, timeoutMs: 100 }, nextOptions = { vector };
    const cq = this.#cq, bar = this.#bar;
    const start = performance.now(), end = start + ms;
    let deadline = end + 5000;
    for (let cid = 0; cid < qd; cid++) this.#submit(cid);
    bar.write32(this.#sqDoorbell, this.#tail);
    let inFlight = qd, ios = 0, stopping = false, spins = 0, last = start;
    while (inFlight > 0) {
      let n = 0;
      for (;;) {
        const dw3 = cq.read32(this.#head * 16 + 12);
        if (((dw3 >>> 16) & 1) !== this.#phase) break;
        const status = dw3 >>> 17;
        if (status !== 0) {
          throw new Error(`Cannot read: the controller answered status 0x${status.toString(16)}`);
        }
        const cid = dw3 & 0xffff;
        ios++;
        n++;
        if (stopping) inFlight--;
        else this.#submit(cid);
        if (++this.#head === this.depth) {
          this.#head = 0;
          this.#phase ^= 1;
        }
      }
      if (n > 0) {
        bar.write32(this.#cqDoorbell, this.#head);
        if (!stopping) bar.write32(this.#sqDoorbell, this.#tail);
      }
      if (n === 0 && how !== "spin") {
        // The interrupt only wakes; the queue is looked at again either way.
        if (how === "wait") irq!.wait(waitOptions);
        else await irq!.next(nextOptions);
      }
      if ((++spins & 63) === 0 || n > 0 || how !== "spin") {
        const now = performance.now();
        if (n > 0) last = now;
        if (!stopping && now >= end) {
          stopping = true;
          deadline = now + 5000;
        }
        if (now > deadline) {
          throw new Error(`Cannot read: ${inFlight} reads on queue ${this.qid} did not complete in 5 s`);
        }
      }
    }
    return { ios, elapsedMs: last - start };
  }

  /** Deletes the queue pair (submission queue first) and frees its memory. Idempotent. */
  close(): void {
    if (this.#created) {
      this.#created = false;
      try {
        this.#nvme.admin(`delete I/O submission queue ${this.qid}`, {
          opcode: ADMIN.DELETE_SQ,
          cdw10: this.qid,
        });
        this.#nvme.admin(`delete I/O completion queue ${this.qid}`, {
          opcode: ADMIN.DELETE_CQ,
          cdw10: this.qid,
        });
      } finally {
        this.#bar.close();
        for (const b of [this.#data, this.#cqMem, this.#sqMem]) b.free();
      }
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
