/**
 * Device interrupts: IRQ info, and eventfd triggers set with VFIO_DEVICE_SET_IRQS, waited on
 * synchronously or with `for await` without blocking the event loop.
 *
 * @module
 */
import { check } from "./errors.ts";
import type { OwnedFd } from "./fd.ts";
import type { Sys } from "./sys.ts";
import { EFD_CLOEXEC, pollfd, POLLIN } from "./uapi/libc.ts";
import {
  VFIO_DEVICE_GET_IRQ_INFO,
  VFIO_DEVICE_SET_IRQS,
  vfio_irq_info,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  vfio_irq_set,
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
} from "./uapi/vfio.ts";

/** What VFIO_DEVICE_GET_IRQ_INFO reports. */
export interface IrqInfo {
  /** The IRQ index (VFIO_PCI_INTX_IRQ_INDEX …). */
  index: number;
  /** VFIO_IRQ_INFO_* bits. */
  flags: number;
  /** How many vectors the index has (0 when the device lacks it). */
  count: number;
  /** Can signal an eventfd. */
  eventfd: boolean;
  /** Can be masked and unmasked. */
  maskable: boolean;
  /** Masked by the kernel after each interrupt until unmasked (INTx). */
  automasked: boolean;
  /** Changing the number of vectors needs a disable first. */
  noresize: boolean;
}

/**
 * Reads VFIO_DEVICE_GET_IRQ_INFO.
 *
 * @param fd The device fd.
 * @param index The IRQ index.
 * @returns The info.
 */
export function readIrqInfo(fd: OwnedFd, index: number): IrqInfo {
  const s = vfio_irq_info.alloc();
  s.set("index", index);
  fd.ioctl(VFIO_DEVICE_GET_IRQ_INFO, s.bytes, "VFIO_DEVICE_GET_IRQ_INFO", `get info of IRQ index ${index}`);
  const flags = s.get("flags");
  return {
    index,
    flags,
    count: s.get("count"),
    eventfd: (flags & VFIO_IRQ_INFO_EVENTFD) !== 0,
    maskable: (flags & VFIO_IRQ_INFO_MASKABLE) !== 0,
    automasked: (flags & VFIO_IRQ_INFO_AUTOMASKED) !== 0,
    noresize: (flags & VFIO_IRQ_INFO_NORESIZE) !== 0,
  };
}

/**
 * VFIO_DEVICE_SET_IRQS with no data, or with eventfds (-1 leaves a vector unset).
 *
 * @param fd The device fd.
 * @param index The IRQ index.
 * @param action VFIO_IRQ_SET_ACTION_TRIGGER, _MASK or _UNMASK.
 * @param start The first vector.
 * @param count How many vectors (0 with no data and TRIGGER disables the index).
 * @param eventfds When given, DATA_EVENTFD with one fd per vector.
 */
export function setIrqs(
  fd: OwnedFd,
  index: number,
  action: number,
  start: number,
  count: number,
  eventfds?: readonly number[],
): void {
  const s = vfio_irq_set.alloc(eventfds ? 4 * eventfds.length : 0);
  s.set("flags", action | (eventfds ? VFIO_IRQ_SET_DATA_EVENTFD : VFIO_IRQ_SET_DATA_NONE));
  s.set("index", index).set("start", start).set("count", count);
  eventfds?.forEach((e, i) => s.view.setInt32(vfio_irq_set.size + 4 * i, e, true));
  const what = action === VFIO_IRQ_SET_ACTION_TRIGGER
    ? (eventfds ? "set eventfds for" : count === 0 ? "disable" : "trigger")
    : action === VFIO_IRQ_SET_ACTION_MASK
    ? "mask"
    : "unmask";
  fd.ioctl(
    VFIO_DEVICE_SET_IRQS,
    s.bytes,
    "VFIO_DEVICE_SET_IRQS",
    `${what} IRQ index ${index} vectors ${start}..${start + count}`,
  );
}

/** Options for {@link VfioIrq.wait}. */
export interface IrqWaitOptions {
  /** The vector (default 0). */
  vector?: number;
  /** How long to wait in milliseconds; -1 (default) waits forever, 0 only looks. */
  timeoutMs?: number;
}

/** Options for {@link VfioIrq.next} and {@link VfioIrq.interrupts}. */
export interface IrqVectorOptions {
  /** The vector (default 0). */
  vector?: number;
}

/** Which vectors {@link VfioIrq.trigger}, {@link VfioIrq.mask} and {@link VfioIrq.unmask} act on. */
export interface IrqVectorRange {
  /** The first vector (default 0). */
  start?: number;
  /** How many vectors (default 1). */
  count?: number;
}

/**
 * The enabled vectors of one IRQ index, each signalling its own eventfd.
 *
 * Closing disables the index in the device, wakes any pending wait, and closes the eventfds.
 *
 * Made by {@link VfioDevice.enableIrq}.
 *
 * @example
 * ```ts
 * import { open, VFIO_PCI_MSI_IRQ_INDEX } from "vfio-ts";
 *
 * using edu = await open("0000:00:04.0");
 * edu.device.config.enableBusMaster();
 * using bar0 = edu.device.registers(0);
 * using msi = edu.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
 * bar0.write32(0x60, 1); // the device raises an interrupt
 * console.log(await msi.next()); // 1: one interrupt since the last read
 * ```
 */
export class VfioIrq implements Disposable {
  readonly #eventfds: number[];
  #closed = false;
  #pending = 0;
  #deferredClose = false;

  readonly #sys: Sys;
  readonly #fd: OwnedFd;
  readonly #onClose: () => void;

  /**
   * Creates one eventfd per vector and attaches them (SET_IRQS DATA_EVENTFD | ACTION_TRIGGER).
   *
   * @param sys The syscall backend.
   * @param fd The device fd.
   * @param info The index's info.
   * @param count How many vectors to enable, from 0.
   * @param onClose Called once when closed.
   */
  constructor(
    sys: Sys,
    fd: OwnedFd,
    /** The index's info, as VFIO_DEVICE_GET_IRQ_INFO reported it. */
    readonly info: IrqInfo,
    /** How many vectors are enabled, from vector 0. */
    readonly count: number,
    onClose: () => void = () => {},
  ) {
    this.#sys = sys;
    this.#fd = fd;
    this.#onClose = onClose;
    if (!Number.isInteger(count) || count < 1 || count > info.count) {
      throw new RangeError(`Cannot enable ${count} vectors of IRQ index ${info.index}: it has ${info.count}`);
    }
    if (!info.eventfd) {
      throw new TypeError(`Cannot enable IRQ index ${info.index}: it cannot signal an eventfd`);
    }
    this.#eventfds = [];
    try {
      for (let i = 0; i < count; i++) {
        this.#eventfds.push(
          check(sys.eventfd(0, EFD_CLOEXEC), { op: "eventfd", action: "create an eventfd" }),
        );
      }
      setIrqs(fd, info.index, VFIO_IRQ_SET_ACTION_TRIGGER, 0, count, this.#eventfds);
      this.#pollfds = this.#eventfds.map((e) => pollfd.alloc().set("fd", e).set("events", POLLIN).bytes);
    } catch (e) {
      for (const e2 of this.#eventfds) sys.close(e2);
      throw e;
    }
  }

  /** The IRQ index. */
  get index(): number {
    return this.info.index;
  }

  /** The eventfd of each vector (for integrating with another event loop). */
  get eventfds(): readonly number[] {
    return this.#eventfds;
  }

  #efd(vector: number): number {
    if (this.#closed) throw new TypeError(`Cannot use IRQ index ${this.index}: it is closed`);
    const e = this.#eventfds[vector];
    if (e === undefined) {
      throw new RangeError(
        `Cannot use vector ${vector} of IRQ index ${this.index}: ${this.count} are enabled`,
      );
    }
    return e;
  }

  /**
   * Waits for an interrupt on a vector, blocking the thread (poll(2)).
   *
   * @param options The vector and the timeout.
   * @returns How many interrupts arrived since the last read, or 0 on timeout.
   * @throws {RangeError} If the vector is not enabled or the timeout is not an integer ≥ -1.
   */
  wait(options?: IrqWaitOptions): number {
    const vector = options?.vector ?? 0;
    const efd = this.#efd(vector);
    const timeoutMs = options?.timeoutMs ?? -1;
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs < -1 || timeoutMs > 0x7fffffff) {
      throw new RangeError(`Cannot wait ${timeoutMs} ms for IRQ ${this.index}: expected -1 or 0..2^31-1`);
    }
    return this.#poll(vector, efd, timeoutMs);
  }

  // The wake-up path allocates nothing (interrupt latency is the hot path, and garbage made there
  // brings collections into it): one pollfd per vector, made once (the eventfds never change), and
  // one counter buffer for the reads on this thread.
  readonly #pollfds: Uint8Array[];
  readonly #counter = new Uint8Array(8);
  // Counter buffers of the reads in flight off the thread, one each, kept for the next ones.
  readonly #spareCounters: Uint8Array[] = [];

  #poll(vector: number, efd: number, timeoutMs: number): number {
    const n = this.#sys.poll(this.#pollfds[vector]!, 1, timeoutMs);
    if (n < 0) check(n, { op: "poll", action: `wait for IRQ ${this.index}` });
    if (n === 0) return 0;
    const r = this.#sys.read(efd, this.#counter);
    if (r < 0) check(r, { op: "read", action: `read IRQ ${this.index} eventfd` });
    return counterValue(this.#counter);
  }

  /**
   * Waits for an interrupt without blocking the event loop: the read runs off the JavaScript thread.
   * An interrupt that is already pending is read at once, with no hop to another thread, and then
   * nothing is allocated: for a count up to 32 the promise is a shared, already settled one.
   *
   * @param options The vector.
   * @returns How many interrupts arrived since the last read, or 0 when the IRQ was closed meanwhile.
   */
  next(options?: IrqVectorOptions): Promise<number> {
    // Not an async function: that would allocate a promise and its own state on every call. Errors
    // still reject the promise rather than throw, as from an async function.
    let vector: number, ready: number;
    try {
      vector = options?.vector ?? 0;
      ready = this.#poll(vector, this.#efd(vector), 0);
    } catch (e) {
      return Promise.reject(e);
    }
    if (ready === 0) return this.#readOffThread(vector);
    return SETTLED_COUNTS[ready] ?? Promise.resolve(ready);
  }

  async #readOffThread(vector: number): Promise<number> {
    const efd = this.#efd(vector);
    const buf = this.#spareCounters.pop() ?? new Uint8Array(8);
    this.#pending++;
    try {
      const r = await this.#sys.readAsync(efd, buf);
      if (this.#closed) return 0;
      if (r < 0) check(r, { op: "read", action: `wait for IRQ ${this.index}` });
      return counterValue(buf);
    } finally {
      this.#spareCounters.push(buf);
      // One eventfd read takes the whole count, so a wake-up reaches one reader per eventfd:
      // each reader woken by close wakes the next, and the last closes the eventfds.
      if (--this.#pending === 0 && this.#deferredClose) this.#closeEventfds();
      else if (this.#deferredClose) this.#wake();
    }
  }

  /**
   * Yields the interrupt count of a vector each time it fires, until the IRQ is closed.
   *
   * @param options The vector.
   * @returns The counts, as an async generator.
   */
  async *interrupts(options?: IrqVectorOptions): AsyncGenerator<number> {
    while (!this.#closed) {
      const n = await this.next(options);
      if (this.#closed) return;
      yield n;
    }
  }

  /** Iterates vector 0, as {@link interrupts}. */
  [Symbol.asyncIterator](): AsyncGenerator<number> {
    return this.interrupts();
  }

  #range(range: IrqVectorRange | undefined): [number, number] {
    const start = range?.start ?? 0, count = range?.count ?? 1;
    if (!Number.isSafeInteger(count) || count < 1) {
      throw new RangeError(`Cannot use ${count} vectors of IRQ index ${this.index}: count must be positive`);
    }
    this.#efd(start), this.#efd(start + count - 1);
    return [start, count];
  }

  /**
   * Fires vectors from software (SET_IRQS DATA_NONE | ACTION_TRIGGER): the loopback test.
   *
   * @param range Which vectors (default: vector 0).
   * @throws {RangeError} If a vector is not enabled.
   */
  trigger(range?: IrqVectorRange): void {
    const [start, count] = this.#range(range);
    setIrqs(this.#fd, this.index, VFIO_IRQ_SET_ACTION_TRIGGER, start, count);
  }

  /**
   * Masks vectors (ACTION_MASK).
   *
   * @param range Which vectors (default: vector 0).
   * @throws {VfioError} If the index is not maskable.
   */
  mask(range?: IrqVectorRange): void {
    const [start, count] = this.#range(range);
    setIrqs(this.#fd, this.index, VFIO_IRQ_SET_ACTION_MASK, start, count);
  }

  /**
   * Unmasks vectors (ACTION_UNMASK), e.g. INTx after handling an automasked interrupt.
   *
   * @param range Which vectors (default: vector 0).
   */
  unmask(range?: IrqVectorRange): void {
    const [start, count] = this.#range(range);
    setIrqs(this.#fd, this.index, VFIO_IRQ_SET_ACTION_UNMASK, start, count);
  }

  /**
   * Attaches the same eventfds again (SET_IRQS DATA_EVENTFD | ACTION_TRIGGER). A reset does not need
   * it: the kernel keeps the interrupt setup across VFIO_DEVICE_RESET and hot reset. It is for a
   * driver that itself disabled the index through another path, or that wants to resynchronise.
   */
  rearm(): void {
    this.#efd(0);
    setIrqs(this.#fd, this.index, VFIO_IRQ_SET_ACTION_TRIGGER, 0, this.count, this.#eventfds);
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Disables the index, wakes pending waits (they resolve to 0), and closes the eventfds (after the
   * waits return, when some are pending). Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      if (!this.#fd.closed) setIrqs(this.#fd, this.index, VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0);
    } finally {
      if (this.#pending > 0) {
        this.#deferredClose = true;
        this.#wake();
      } else {
        this.#closeEventfds();
      }
      this.#onClose();
    }
  }

  #wake(): void {
    const one = new Uint8Array(new BigUint64Array([1n]).buffer);
    for (const e of this.#eventfds) this.#sys.write(e, one);
  }

  #closeEventfds(): void {
    for (const e of this.#eventfds.splice(0)) this.#sys.close(e);
  }

  /** Closes the IRQ, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Settled promises of the usual interrupt counts, shared by every {@link VfioIrq.next} that finds
 * its interrupt pending: a settled promise never changes, so handing the same one out again is
 * indistinguishable from a new one (but for identity), and costs no allocation.
 */
const SETTLED_COUNTS: readonly Promise<number>[] = Array.from({ length: 33 }, (_, n) => Promise.resolve(n));

/**
 * An eventfd's 64-bit counter as a number, rounded as `Number(bigint)` rounds (a count above 2^53
 * cannot happen in practice). Read byte by byte so that no bigint is made; the counter is in host
 * order, and both runtimes run only on little-endian machines.
 */
function counterValue(b: Uint8Array): number {
  const lo = (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
  const hi = (b[4]! | (b[5]! << 8) | (b[6]! << 16) | (b[7]! << 24)) >>> 0;
  return hi * 2 ** 32 + lo;
}
