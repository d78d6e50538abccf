/**
 * The controller: bring-up, admin commands, I/O queue pairs, commands in flight, and teardown.
 *
 * {@link NvmeBase} holds all of it; two front ends share it:
 * - {@link Nvme}, the asynchronous driver: `read`, `write` and `flush` return Promises, many
 *   commands are in flight on each of several queues, and completions are reaped on interrupt (or
 *   by polling) without blocking the event loop;
 * - {@link NvmeController}, the blocking one: each call submits its commands and waits for them
 *   before it returns (queue depth 1 for one-command calls).
 *
 * @module
 */
import { clearTimeout, setImmediate, setTimeout } from "node:timers";
import { type DmaBuffer, type OpenedDevice, type Registers, uapi, type VfioIrq } from "../../mod.ts";
import { checkIova, QueuePair } from "./queue.ts";
import {
  ADMIN,
  type Capabilities,
  CC_EN,
  CC_SHN_NORMAL,
  type Command,
  type Completion,
  type ControllerInfo,
  CQE_SIZE,
  CSTS_CFS,
  CSTS_RDY,
  CSTS_SHST_COMPLETE,
  CSTS_SHST_MASK,
  FEATURE_NUMBER_OF_QUEUES,
  hex,
  type NamespaceInfo,
  NVM,
  NvmeError,
  NvmeTimeoutError,
  PAGE,
  PRPS_PER_PAGE,
  readCapabilities,
  REG,
  SQE_SIZE,
  STATUS_ABORTED_SQ_DELETION,
} from "./spec.ts";

const ADMIN_DEPTH = 16;
const DEFAULT_IO_DEPTH = 64;
// MSI-X vector 0 signals the admin queue; every I/O queue signals vector 1. One thread reaps all of
// them, so one wake-up serves every queue: a vector per queue would cost one eventfd wait (a hop to
// another thread and back) per queue per wake-up.
const ADMIN_VECTOR = 0;
const IO_VECTOR = 1;
const IO_WAIT = { vector: IO_VECTOR };
// Polling: how long the poller spins on the busy queues after an empty look before it yields to the
// event loop (setImmediate, which costs about 0.1 ms under TCG; a 4 KiB read on QEMU's controller
// takes 0.05 to 0.3 ms).
const POLL_SPIN_MS = 0.25;
const NO_OPTIONS: IoOptions = {};
const QUEUE_1: IoOptions = { queue: 1 };

// --- Options and the shapes callers pass ----------------------------------------------------------

/** Options for {@link Nvme.init} and {@link NvmeController.init}. */
export interface NvmeOptions {
  /** Poll the completion queues instead of waiting for MSI-X interrupts. */
  poll?: boolean;
  /**
   * I/O queue pairs to create (default 1), all signalling MSI-X vector 1. The driver asks for this
   * many in Set Features (Number of Queues) and creates as many as the controller grants, at most
   * this many.
   */
  queues?: number;
  /**
   * Entries in each I/O queue (default 64, at most CAP.MQES + 1): depth - 1 commands are in flight
   * per queue, and further commands wait in the driver for a free command ID.
   */
  ioDepth?: number;
  /** How long a call may take before it fails with {@link NvmeTimeoutError}, in ms (default 10 000). */
  timeoutMs?: number;
  /** Progress lines, e.g. console.log; silent by default. */
  log?: (line: string) => void;
}

/** Per-call options of {@link Nvme.read}, {@link Nvme.write} and {@link Nvme.flush}. */
export interface IoOptions {
  /** The I/O queue to submit to, 1 to {@link NvmeBase.queueCount} (default: the next, round robin). */
  queue?: number;
  /** This call's timeout in ms (default: the driver's {@link NvmeBase.timeoutMs}). */
  timeoutMs?: number;
}

/** Part of a DMA buffer: where data is read into or written from, without a copy. */
export interface DmaSpan {
  /** The buffer. */
  buffer: DmaBuffer;
  /** Where the data starts, a multiple of 4 (default 0). */
  offset?: number;
  /** Bytes, a multiple of the block size (default: to the end of the buffer; reads take what they need). */
  length?: number;
}

/** A block transfer that {@link NvmeController.read} and {@link NvmeController.write} accept. */
export interface Transfer {
  /** The first logical block. */
  lba: number;
  /** How many blocks. */
  blocks: number;
  /** The DMA buffer holding (write) or receiving (read) the data. */
  buffer: DmaBuffer;
  /** Where in the buffer the data starts, a multiple of 4 (default 0). */
  offset?: number;
}

/** An I/O queue pair as {@link NvmeBase.queues} reports it. */
export interface QueueState {
  /** The queue ID (1 to N). */
  id: number;
  /** Entries per queue: depth - 1 commands can be in flight. */
  depth: number;
  /** Its MSI-X vector: 1, shared by every I/O queue (0 when polled: interrupts off). */
  vector: number;
  /** Commands holding a command ID: submitted and not yet completed, timed-out ones included. */
  inFlight: number;
  /** Commands waiting in the driver for a command ID. */
  waiting: number;
  /** Whether its doorbell is held ({@link Nvme.pause}). */
  paused: boolean;
}

// --- Calls and commands -------------------------------------------------------------------------

// One command. Its command ID (and so its PRP list page and bounce page) is taken when it is
// submitted; until then it waits in its queue's list. A call of one command (the usual case) is
// its own command; a transfer split at MDTS has one of these per piece.
interface Cmd {
  readonly call: Call;
  readonly lba: number;
  readonly blocks: number; // 0: flush
  readonly buffer: DmaBuffer | undefined; // undefined: the command ID's bounce page
  readonly iova: number; // of the data's first byte in `buffer` (below 2^53: checked)
  readonly bytes: number;
  copyIn: Uint8Array | undefined; // write data for the bounce page
  readonly raw: Command | undefined; // admin commands, built by the caller
}

// One call (a read, write, flush or admin command): one or more commands on one queue. It settles
// once every command completed, or at its deadline, or when the driver closes. The controller may
// own some of its commands after it settled (timeout, close): `inDevice` counts them, and
// `release` runs when the last one is given back. Its fields are all set here, in one order, so
// that every call has the same shape (the completion path reads them in a hot loop).
class Call implements Cmd {
  remaining = 0; // commands not yet completed or dropped
  inDevice = 0; // commands holding a command ID
  done = false;
  error: NvmeError | undefined = undefined;
  dw0 = 0;
  cid = 0;
  result: Uint8Array | undefined = undefined; // what a read resolves to
  scratch: DmaBuffer | undefined = undefined; // driver memory for a transfer without a DMA buffer
  copyOut = 0; // bytes to copy from `scratch` into `result` once done
  resolve: ((value: Uint8Array | undefined) => void) | undefined = undefined;
  reject: ((e: NvmeError) => void) | undefined = undefined;
  released: (() => void) | undefined = undefined;
  // As its own command (a call of one command):
  buffer: DmaBuffer | undefined = undefined;
  iova = 0;
  bytes = 0;
  copyIn: Uint8Array | undefined = undefined;
  raw: Command | undefined = undefined;

  constructor(
    readonly queue: IoQueue,
    readonly deadline: number,
    readonly timeoutMs: number,
    readonly opcode: number,
    readonly lba: number,
    readonly blocks: number,
    readonly label: string | undefined, // admin commands: what they are for
  ) {}

  get call(): Call {
    return this;
  }

  get name(): string {
    return this.label ?? commandName(this.opcode, this.lba, this.blocks);
  }
}

type IoQueue = QueuePair<Cmd>;

function commandName(opcode: number, lba: number, blocks: number): string {
  if (opcode === NVM.FLUSH) return "flush namespace 1";
  return `${opcode === NVM.READ ? "read" : "write"} ${blocks} blocks at LBA ${lba} of namespace 1`;
}

const immediate = () => new Promise<void>((resolve) => setImmediate(resolve));

// --- The controller -------------------------------------------------------------------------------

/**
 * Everything the two front ends share: bring-up (steps 1 to 5 of the module description), admin
 * commands, the I/O queue pairs with their command IDs and waiting lists, timeouts, and teardown.
 * Use {@link Nvme} or {@link NvmeController}.
 */
export abstract class NvmeBase implements Disposable {
  /** What CAP says. */
  readonly cap: Capabilities;
  /** Identify Controller. */
  readonly controller: ControllerInfo;
  /** Identify Namespace 1. */
  readonly namespace: NamespaceInfo;
  /** Milliseconds each step of bring-up took. */
  readonly timings = { reset: 0, enable: 0, identify: 0, queues: 0 };
  /** How long a call may take, in ms; calls take it when they start. */
  timeoutMs: number;
  readonly #vfio: OpenedDevice;
  readonly #bar: Registers;
  readonly #irq: VfioIrq | undefined;
  readonly #admin: IoQueue;
  readonly #io: IoQueue[];
  readonly #identifyPage: DmaBuffer;
  readonly #log: (line: string) => void;
  readonly #async: boolean;
  readonly #resources: DisposableStack;
  readonly #loops = new Set<Promise<void>>(); // the reaper or the poller, while it runs
  #timer: ReturnType<typeof setTimeout> | undefined; // for the earliest deadline, or later
  #timerAt = Infinity;
  #reaping = false; // the reaper or the poller runs
  #perCommand = 0; // blocks one command carries
  // The DMA buffer of the last transfer, its bytes and its IOVA as a number: callers mostly reuse
  // one buffer, so the hot path makes neither the full view nor the number again.
  #lastBuffer: DmaBuffer | undefined;
  #lastBytes: Uint8Array = new Uint8Array(0);
  #lastIova = 0;
  #next = 0; // round robin
  #closed = false;
  #commands = 0;
  #interrupts = 0;

  /**
   * Brings up the controller.
   *
   * @param vfio The opened controller (its DMA pool provides the queues).
   * @param options Polling or interrupts, queues, depth, timeouts and logging.
   * @param asynchronous Whether I/O completions are reaped by loops on the event loop (the
   *   asynchronous driver) or by the caller's blocking wait.
   */
  protected constructor(vfio: OpenedDevice, options: NvmeOptions, asynchronous: boolean) {
    // Everything set up here is also released here if a later step throws; on success the stack
    // moves into the driver and close() releases it, in reverse order.
    using stack = new DisposableStack();
    this.#vfio = vfio;
    this.#async = asynchronous;
    this.timeoutMs = checkTimeout(options.timeoutMs ?? 10_000);
    this.#log = options.log ?? (() => {});
    const { device } = vfio;
    const poll = options.poll ?? false;
    const wanted = options.queues ?? 1;
    if (!Number.isInteger(wanted) || wanted < 1 || wanted > 0xffff) {
      throw new RangeError(`Cannot create ${wanted} I/O queues: expected 1 to 65535`);
    }
    this.#bar = stack.use(device.registers(0));
    this.cap = readCapabilities(this.#bar.read64(REG.CAP));
    if (PAGE < this.cap.minPageSize || PAGE > this.cap.maxPageSize) {
      throw new RangeError(`Cannot drive ${device.name}: it does not support ${PAGE}-byte memory pages`);
    }
    const ioDepth = options.ioDepth ?? Math.min(DEFAULT_IO_DEPTH, this.cap.maxQueueEntries);
    if (!Number.isInteger(ioDepth) || ioDepth < 2 || ioDepth > this.cap.maxQueueEntries) {
      throw new RangeError(
        `Cannot create I/O queues of ${ioDepth} entries: the controller takes 2 to ${this.cap.maxQueueEntries} (CAP.MQES)`,
      );
    }
    if (!poll) {
      const vectors = device.irqInfo(uapi.VFIO_PCI_MSIX_IRQ_INDEX).count;
      if (vectors <= IO_VECTOR) {
        throw new RangeError(`Cannot use MSI-X on ${device.name}: it has ${vectors} vectors; poll instead`);
      }
    }
    let queues = wanted;

    // 1. All DMA memory first: nothing the controller can write to is freed before it is disabled.
    const alloc = (bytes: number) => stack.use(vfio.dma.alloc(bytes));
    const stride = this.cap.doorbellStride;
    this.#admin = new QueuePair(
      0,
      ADMIN_DEPTH,
      { sq: alloc(ADMIN_DEPTH * SQE_SIZE), cq: alloc(ADMIN_DEPTH * CQE_SIZE) },
      ADMIN_VECTOR,
      this.#bar,
      stride,
    );
    const io: IoQueue[] = [];
    for (let id = 1; id <= queues; id++) {
      const memory = {
        sq: alloc(ioDepth * SQE_SIZE),
        cq: alloc(ioDepth * CQE_SIZE),
        prpLists: alloc((ioDepth - 1) * PAGE),
        bounce: alloc((ioDepth - 1) * PAGE),
      };
      // Without MSI-X, controllers accept only vector 0 (even for a queue with interrupts disabled).
      io.push(new QueuePair(id, ioDepth, memory, poll ? 0 : IO_VECTOR, this.#bar, stride));
    }
    this.#io = io;
    this.#identifyPage = alloc(PAGE);

    // 2. Bus mastering (the controller's DMA and MSI-X writes) and interrupts.
    device.config.enableBusMaster();
    stack.defer(() => device.config.setCommand({ clear: uapi.PCI_COMMAND_MASTER }));
    if (!poll) {
      this.#irq = stack.use(device.enableIrq(uapi.VFIO_PCI_MSIX_IRQ_INDEX, { count: IO_VECTOR + 1 }));
    }

    // 3. Reset, admin queue, enable. From here on, disposal shuts the controller down first.
    let t = performance.now();
    this.#disable("reset the controller");
    this.timings.reset = performance.now() - t;
    stack.defer(() => this.#shutdown());
    this.#bar.write32(REG.AQA, ((ADMIN_DEPTH - 1) << 16) | (ADMIN_DEPTH - 1));
    this.#bar.write64(REG.ASQ, this.#admin.memory.sq.iova);
    this.#bar.write64(REG.ACQ, this.#admin.memory.cq.iova);
    if (poll) this.#bar.write32(REG.INTMS, 0xffffffff); // no pin-based interrupts either
    t = performance.now();
    // CSS = 0 (NVM command set), MPS = 0 (4 KiB pages), AMS = 0 (round robin), entry sizes 2^6 and 2^4.
    this.#bar.write32(REG.CC, CC_EN | ((Math.log2(PAGE) - 12) << 7) | (6 << 16) | (4 << 20));
    this.#waitStatus(CSTS_RDY, CSTS_RDY, "enable the controller");
    this.timings.enable = performance.now() - t;
    this.#log(
      `${device.name}: controller ready in ${(this.timings.reset + this.timings.enable).toFixed(1)} ms ` +
        `(CAP.TO ${this.cap.readyTimeoutMs} ms, doorbell stride ${stride}, up to ${this.cap.maxQueueEntries} queue entries)`,
    );

    // 4. Identify.
    t = performance.now();
    this.controller = this.#identifyController();
    this.namespace = this.#identifyNamespace(1);
    this.timings.identify = performance.now() - t;

    // 5. The I/O queue pairs, as many as the controller grants.
    t = performance.now();
    const granted = this.#setNumberOfQueues(queues);
    if (granted < queues) {
      // Never given to the controller, so their memory can go now.
      for (const q of io.splice(granted)) for (const b of Object.values(q.memory)) b.free();
      queues = granted;
    }
    for (const q of io) this.#createIoQueue(q, !poll);
    this.timings.queues = performance.now() - t;
    this.#perCommand = Math.min(Math.floor(this.maxTransfer / this.namespace.blockSize), 0x10000); // NLB: 16 bits
    const which = queues === 1
      ? `I/O queue 1: ${ioDepth} entries`
      : `I/O queues 1-${queues}: ${ioDepth} entries each`;
    this.#log(
      `${which}, ${poll ? "polled" : `MSI-X vector ${IO_VECTOR}`}; max transfer ${
        this.maxTransfer / 1024
      } KiB per command`,
    );
    this.#resources = stack.move();
  }

  /** Whether completions are polled rather than signalled by MSI-X. */
  get polling(): boolean {
    return this.#irq === undefined;
  }

  /** The number of I/O queue pairs created. */
  get queueCount(): number {
    return this.#io.length;
  }

  /** Each I/O queue pair and its commands, now. */
  get queues(): QueueState[] {
    return this.#io.map((q) => ({
      id: q.id,
      depth: q.depth,
      vector: q.vector,
      inFlight: q.inFlight,
      waiting: q.waiting.length,
      paused: q.paused,
    }));
  }

  /** The largest transfer one command carries: MDTS, and one PRP list page. */
  get maxTransfer(): number {
    return Math.min(this.controller.maxTransfer, PRPS_PER_PAGE * PAGE);
  }

  /**
   * Commands submitted, and MSI-X interrupts received. A completion found before the driver waits
   * leaves its interrupt pending on the eventfd; reading the stats collects those too, on the
   * vectors no reaper loop reads (the admin vector; the I/O vector of the blocking driver).
   */
  get stats(): { commands: number; interrupts: number } {
    const irq = this.#irq;
    if (irq && !irq.closed) {
      this.#interrupts += irq.wait({ timeoutMs: 0 });
      if (!this.#async) {
        this.#interrupts += irq.wait({ vector: IO_VECTOR, timeoutMs: 0 });
      }
    }
    return { commands: this.#commands, interrupts: this.#interrupts };
  }

  /** CSTS, for diagnostics. */
  get status(): number {
    return this.#bar.read32(REG.CSTS);
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  // --- Controller state ---

  // Clears CC.EN and waits for CSTS.RDY to clear: the controller drops every queue and stops DMA.
  #disable(action: string): void {
    const cc = this.#bar.read32(REG.CC);
    if (cc & CC_EN) this.#bar.write32(REG.CC, cc & ~CC_EN);
    this.#waitStatus(CSTS_RDY, 0, action, false);
  }

  // Waits until (CSTS & mask) === value, for at most CAP.TO. Polls CSTS with short sleeps: these
  // transitions take microseconds on QEMU and up to seconds on real controllers.
  #waitStatus(mask: number, value: number, action: string, failOnFatal = true): void {
    const deadline = performance.now() + this.cap.readyTimeoutMs;
    for (let tries = 0;; tries++) {
      const csts = this.#bar.read32(REG.CSTS);
      if ((csts & mask) === value) return;
      if (failOnFatal && csts & CSTS_CFS) throw fatal(action, csts);
      if (performance.now() > deadline) {
        const detail = `CSTS is still ${hex(csts)} after ${this.cap.readyTimeoutMs} ms (CAP.TO)`;
        throw new NvmeError(action, "timeout", detail);
      }
      if (tries > 10) sleepSync(1);
    }
  }

  // Normal shutdown: delete the I/O queues (each submission queue, then what it completed, then
  // its completion queue), CC.SHN and wait for CSTS.SHST, then disable. A controller in fatal
  // state gets only the disable, which resets it. Whatever is still outstanding afterwards is
  // failed: the controller is disabled and touches none of its memory.
  #shutdown(): void {
    const t = performance.now();
    try {
      const csts = this.#bar.read32(REG.CSTS);
      if ((csts & CSTS_RDY) && !(csts & CSTS_CFS)) {
        try {
          for (const q of this.#io) {
            // Deleting a submission queue makes the controller finish or abort every command it
            // took from it (status Command Aborted due to SQ Deletion) and post their completions.
            if (q.created.sq) {
              this.#adminSync(`delete I/O submission queue ${q.id}`, {
                opcode: ADMIN.DELETE_SQ,
                cdw10: q.id,
              });
              q.created.sq = false;
            }
            if (q.created.cq) {
              this.#drain(q);
              q.detached = true;
              this.#adminSync(`delete I/O completion queue ${q.id}`, {
                opcode: ADMIN.DELETE_CQ,
                cdw10: q.id,
              });
              q.created.cq = false;
            }
          }
          this.#bar.write32(REG.CC, this.#bar.read32(REG.CC) | CC_SHN_NORMAL);
          this.#waitStatus(CSTS_SHST_MASK, CSTS_SHST_COMPLETE, "shut the controller down");
        } finally {
          this.#disable("disable the controller");
        }
      } else {
        this.#disable("disable the controller");
      }
      this.#log(`controller shut down and disabled in ${(performance.now() - t).toFixed(1)} ms`);
    } finally {
      for (const q of [this.#admin, ...this.#io]) this.#abandonQueue(q);
    }
  }

  // --- Commands ---

  /**
   * Runs one admin command and waits for its completion, blocking the thread (admin commands are
   * few: bring-up, queue creation and deletion).
   *
   * @param name What it does, for messages: "identify the controller".
   * @param command The submission queue entry's fields.
   * @returns The completion.
   * @throws {NvmeError} If it fails, times out, or the controller reports a fatal status.
   * @throws {TypeError} If the driver is closed.
   */
  admin(name: string, command: Command): Completion {
    this.#checkOpen(name);
    return this.#adminSync(name, command);
  }

  #adminSync(name: string, command: Command): Completion {
    const call = new Call(this.#admin, performance.now() + this.timeoutMs, this.timeoutMs, 0, 0, 0, name);
    call.raw = command;
    this.#start(call);
    this.waitFor(call);
    return { cid: call.cid, dw0: call.dw0, status: 0 };
  }

  #checkOpen(action: string): void {
    if (this.#closed) throw new TypeError(`Cannot ${action}: the NVMe driver is closed`);
  }

  /**
   * Starts a block transfer or flush: checks it, splits it into commands of at most
   * {@link maxTransfer} bytes on one queue, and submits as many as the queue has command IDs for.
   * The caller then waits for it: {@link waitFor} or {@link settled}.
   *
   * @param opcode NVM.READ, NVM.WRITE or NVM.FLUSH.
   * @param lba The first block.
   * @param blocks How many blocks (0 for a flush).
   * @param data Where the data is: a DMA buffer (at `offset`); bytes to write (copied); or, for a
   *   read, undefined (into driver memory, resolved as a copy).
   * @param offset Where in the DMA buffer the data starts.
   * @param options The queue and the timeout.
   * @returns The call.
   * @throws {RangeError} If the transfer does not fit its buffer, or an option is out of range.
   * @throws {TypeError} If the driver is closed.
   */
  protected transfer(
    opcode: number,
    lba: number,
    blocks: number,
    data: DmaBuffer | Uint8Array | undefined,
    offset: number,
    options: IoOptions,
  ): Call {
    if (this.#closed) this.#checkOpen(opcode === NVM.FLUSH ? "flush" : commandName(opcode, lba, blocks));
    const q = this.#route(options.queue);
    const timeoutMs = options.timeoutMs === undefined ? this.timeoutMs : checkTimeout(options.timeoutMs);
    const call = new Call(q, performance.now() + timeoutMs, timeoutMs, opcode, lba, blocks, undefined);
    if (opcode === NVM.FLUSH) {
      this.#start(call);
      return call;
    }
    const bs = this.namespace.blockSize, bytes = blocks * bs;
    const verb = opcode === NVM.READ ? "read" : "write";
    if (!Number.isSafeInteger(lba) || lba < 0 || !Number.isInteger(blocks) || blocks < 1) {
      throw new RangeError(
        `Cannot ${verb} ${blocks} blocks at LBA ${lba}: expected a block count above 0 and an LBA of 0 or more`,
      );
    }
    // The LBA range is not checked here: the controller checks it against the namespace and says
    // so in its status.
    let buffer: DmaBuffer | undefined, copyIn: Uint8Array | undefined, iova = 0;
    if (data instanceof Uint8Array) {
      offset = 0;
      if (bytes > PAGE) { // more than a bounce page: driver memory for this call
        call.scratch = buffer = this.#scratch(bytes);
        buffer.bytes.set(data);
        iova = Number(buffer.iova);
      } else {
        copyIn = data;
      }
    } else if (data) {
      buffer = data;
      if (buffer.freed) throw new TypeError(`Cannot ${verb} ${blocks} blocks: the DMA buffer was freed`);
      if (buffer !== this.#lastBuffer) {
        checkIova(buffer);
        this.#lastIova = Number(buffer.iova);
        this.#lastBytes = buffer.bytes;
        this.#lastBuffer = buffer;
      }
      if (!Number.isInteger(offset) || offset < 0 || offset % 4 !== 0 || offset + bytes > buffer.size) {
        throw new RangeError(
          `Cannot ${verb} ${blocks} blocks at buffer offset ${offset}: the offset must be dword-aligned and the ` +
            `${bytes} bytes must fit the ${buffer.size}-byte buffer`,
        );
      }
      iova = this.#lastIova + offset;
      if (opcode === NVM.READ) call.result = this.#lastBytes.subarray(offset, offset + bytes);
    } else if (bytes > PAGE) {
      call.scratch = buffer = this.#scratch(bytes);
      call.copyOut = bytes;
      iova = Number(buffer.iova);
    }
    const perCommand = this.#perCommand;
    if (blocks <= perCommand) { // one command: the call is its own
      call.buffer = buffer;
      call.iova = iova;
      call.bytes = bytes;
      call.copyIn = copyIn;
      this.#start(call);
      return call;
    }
    const cmds: Cmd[] = [];
    for (let done = 0; done < blocks; done += perCommand) {
      const n = Math.min(perCommand, blocks - done);
      cmds.push({
        call,
        lba: lba + done,
        blocks: n,
        buffer,
        iova: iova + done * bs,
        bytes: n * bs,
        copyIn,
        raw: undefined,
      });
    }
    this.#start(call, cmds);
    return call;
  }

  #scratch(bytes: number): DmaBuffer {
    const b = this.#vfio.dma.alloc(bytes);
    try {
      checkIova(b);
    } catch (e) {
      b.free();
      throw e;
    }
    return b;
  }

  #route(queue: number | undefined): IoQueue {
    const n = this.#io.length;
    if (queue === undefined) {
      this.#next = this.#next % n + 1;
      queue = this.#next;
    } else if (!Number.isInteger(queue) || queue < 1 || queue > n) {
      throw new RangeError(`Cannot use I/O queue ${queue}: the driver has queues 1 to ${n}`);
    }
    return this.#io[queue - 1]!;
  }

  // Submits each command (the call itself, or `cmds`) now if the queue has a free command ID and
  // nothing waits before it, otherwise appends it to the queue's waiting list.
  #start(call: Call, cmds?: Cmd[]): void {
    const q = call.queue;
    if (!cmds) {
      call.remaining = 1;
      this.#submitOrWait(q, call);
      return;
    }
    call.remaining = cmds.length;
    for (const cmd of cmds) this.#submitOrWait(q, cmd);
  }

  #submitOrWait(q: IoQueue, cmd: Cmd): void {
    const cid = q.waiting.length === 0 ? q.free.pop() : undefined;
    if (cid !== undefined) {
      this.#issue(q, cid, cmd);
    } else {
      if (cmd.copyIn) cmd.copyIn = cmd.copyIn.slice(); // the caller may reuse its bytes meanwhile
      q.waiting.push(cmd);
    }
  }

  #issue(q: IoQueue, cid: number, cmd: Cmd): void {
    const call = cmd.call;
    q.slots[cid] = cmd;
    call.inDevice++;
    this.#commands++;
    if (cmd.raw) return q.submit(cid, cmd.raw);
    if (cmd.blocks === 0) return q.submitIo(cid, call.opcode, 0, 0, 0, 0);
    // PRP1 points at the first byte, possibly inside a page. If the data ends in the next page,
    // PRP2 points at that page; if it spans more, PRP2 points at a list of the remaining pages,
    // here the command ID's own page of the queue's PRP list memory.
    let prp1: number;
    if (cmd.buffer) {
      prp1 = cmd.iova;
    } else { // the command ID's bounce page
      prp1 = q.bounceIova + cid * PAGE;
      if (cmd.copyIn) q.bounceBytes!.set(cmd.copyIn, cid * PAGE);
    }
    const inFirstPage = PAGE - (prp1 % PAGE);
    let prp2 = 0;
    if (cmd.bytes > inFirstPage) {
      const pages = Math.ceil((cmd.bytes - inFirstPage) / PAGE); // at most PRPS_PER_PAGE (maxTransfer)
      prp2 = pages === 1 ? prp1 + inFirstPage : q.prpList(cid, prp1 + inFirstPage, pages);
    }
    q.submitIo(cid, call.opcode, prp1, prp2, cmd.lba, cmd.blocks);
  }

  // Consumes the queue's completions, then submits waiting commands into the command IDs they
  // freed.
  #drain(q: IoQueue): number {
    const n = q.reap(this.#complete);
    if (n > 0 && q.waiting.length > 0 && !q.detached) {
      let i = 0;
      for (; i < q.waiting.length; i++) {
        const cid = q.free.pop();
        if (cid === undefined) break;
        this.#issue(q, cid, q.waiting[i]!);
      }
      q.waiting.splice(0, i);
      q.ring();
    }
    return n;
  }

  readonly #complete = (q: IoQueue, cid: number, status: number, dw0: number): void => {
    const cmd = q.slots[cid];
    if (cmd === undefined) {
      this.#log(`${q.name}: a completion for command ID ${cid}, which is not outstanding; ignored`);
      return;
    }
    q.slots[cid] = undefined;
    q.free.push(cid);
    const call = cmd.call;
    call.inDevice--;
    if (call.done) { // timed out or failed earlier: the controller now gives the memory back
      if (call.inDevice === 0) this.#release(call);
      return;
    }
    if (status !== 0) {
      if (!call.error) {
        call.error = this.#closed && (status & 0x7ff) === STATUS_ABORTED_SQ_DELETION
          ? NvmeError.abortedByClose(
            cmd.raw ? call.name : commandName(call.opcode, cmd.lba, cmd.blocks),
            q.name,
            status,
          )
          : NvmeError.fromStatus(cmd.raw ? call.name : commandName(call.opcode, cmd.lba, cmd.blocks), status);
        call.remaining -= this.#dropWaiting(call); // the call has failed: its other commands need not run
      }
    } else if (!cmd.buffer && call.opcode === NVM.READ && cmd.blocks > 0) {
      // Out of the bounce page before the command ID (and the page) can be reused.
      call.result = q.bounceBytes!.slice(cid * PAGE, cid * PAGE + cmd.bytes);
    }
    call.dw0 = dw0;
    call.cid = cid;
    if (--call.remaining === 0) this.#settle(call);
  };

  // Removes a call's commands from its queue's waiting list; returns how many.
  #dropWaiting(call: Call): number {
    const q = call.queue, before = q.waiting.length;
    if (before === 0) return 0;
    q.waiting = q.waiting.filter((c) => c.call !== call);
    return before - q.waiting.length;
  }

  #settle(call: Call): void {
    call.done = true;
    const scratch = call.scratch;
    if (scratch) {
      if (call.copyOut && !call.error) call.result = scratch.bytes.slice(0, call.copyOut);
      call.scratch = undefined;
      scratch.free();
    }
    if (call.error) call.reject?.(call.error);
    else call.resolve?.(call.result);
  }

  // The deadline passed (or the controller reported a fatal status): the call fails now. Commands
  // not yet submitted are dropped; submitted ones keep their command IDs, bounce pages and the
  // call's memory until the controller completes them or their queue is deleted.
  #expire(call: Call, csts: number): void {
    const q = call.queue;
    const unsubmitted = this.#dropWaiting(call);
    call.done = true;
    const owned = call.inDevice;
    if (csts & CSTS_CFS) {
      call.error = fatal(call.name, csts);
    } else {
      const released = owned === 0
        ? Promise.resolve()
        : new Promise<void>((resolve) => (call.released = resolve));
      const mode = this.polling ? "polled" : "MSI-X";
      const detail = owned > 0
        ? `no completion on ${q.name} within ${call.timeoutMs} ms (${mode}, CSTS ${hex(csts)})`
        : `not submitted within ${call.timeoutMs} ms: ${q.name} had ${q.inFlight} commands in flight`;
      call.error = new NvmeTimeoutError(call.name, detail, released, owned);
    }
    if (unsubmitted > 0) this.#log(`${call.name}: ${unsubmitted} commands dropped before submission`);
    if (owned === 0) this.#release(call);
    call.reject?.(call.error);
  }

  // The controller no longer owns any of a finished call's memory.
  #release(call: Call): void {
    call.scratch?.free();
    call.scratch = undefined;
    const released = call.released;
    call.released = undefined;
    released?.();
  }

  // Fails everything still outstanding on a queue the controller no longer uses (deleted, or the
  // controller disabled), and gives back the memory of calls that timed out earlier.
  #abandonQueue(q: IoQueue): void {
    q.detached = true;
    const calls = new Set<Call>();
    for (const cmd of q.waiting) calls.add(cmd.call);
    q.waiting = [];
    for (let cid = 0; cid < q.slots.length; cid++) {
      const cmd = q.slots[cid];
      if (!cmd) continue;
      q.slots[cid] = undefined;
      q.free.push(cid);
      cmd.call.inDevice--;
      calls.add(cmd.call);
    }
    for (const call of calls) {
      if (!call.done) {
        call.done = true;
        call.error = new NvmeError(
          call.name,
          "closed",
          `the driver closed with the command outstanding on ${q.name}`,
        );
        call.reject?.(call.error);
      }
      if (call.inDevice === 0) this.#release(call);
    }
  }

  // --- Waiting ---

  /**
   * Waits for a call, blocking the thread: reaps its queue, and between looks waits on the queue's
   * vector (MSI-X) or spins on its completion queue (polling), at most until the call's deadline.
   *
   * @param call The call.
   * @throws {NvmeError} For the first failed command, a timeout, or a fatal controller status.
   */
  protected waitFor(call: Call): void {
    const q = call.queue;
    q.ring();
    while (!call.done) {
      this.#drain(q);
      if (call.done) break;
      const left = call.deadline - performance.now();
      if (left <= 0) {
        this.#expire(call, this.status);
        break;
      }
      // Both paths check CSTS.CFS every 100 ms or so, not on every spin: an MMIO read traps.
      if (this.#irq) {
        const n = this.#irq.wait({ vector: q.vector, timeoutMs: Math.min(Math.ceil(left), 100) });
        this.#interrupts += n;
        if (n > 0) continue;
      } else {
        const until = performance.now() + Math.min(left, 100);
        while (!q.pending() && performance.now() < until) { /* spin */ }
        if (q.pending()) continue;
      }
      const csts = this.status;
      if (csts & CSTS_CFS) this.#expire(call, csts);
    }
    if (call.error) throw call.error;
  }

  /**
   * The Promise of a call, settled by the reaper (or the poller, the timer, or close). Starts the
   * reaper if it is not running, and rings the doorbell once the caller's synchronous code is done.
   *
   * @param call The call, just started.
   * @returns Its result: the data of a read, undefined otherwise.
   */
  protected settled<T extends Uint8Array | undefined>(call: Call): Promise<T> {
    const { promise, resolve, reject } = Promise.withResolvers<T>();
    call.resolve = resolve as (value: Uint8Array | undefined) => void;
    call.reject = reject;
    call.queue.ringSoon();
    if (call.deadline < this.#timerAt) this.#arm(call.deadline);
    if (!this.#reaping) {
      const loop = this.#irq ? this.#reap(this.#irq) : this.#poll();
      this.#loops.add(loop);
      void loop.finally(() => this.#loops.delete(loop));
    }
    return promise;
  }

  // Consumes every I/O queue's completions; returns how many.
  #drainAll(): number {
    let n = 0;
    for (const q of this.#io) if (q.inFlight > 0) n += this.#drain(q);
    return n;
  }

  #busy(): boolean {
    for (const q of this.#io) if (q.inFlight > 0) return true;
    return false;
  }

  // MSI-X: one loop for every I/O queue, while any has commands in flight. It reaps whatever the
  // completion queues hold, and only when they are all empty waits for the I/O vector (an interrupt
  // already counted on the eventfd is taken at once; otherwise the eventfd is read off the JavaScript
  // thread). After a look that found completions it yields to microtasks only: the callers'
  // continuations run and submit their next commands, and then it looks again. The interrupt is a
  // wake-up only; the completion queues are the truth, so a count for entries already reaped costs
  // one empty look.
  async #reap(irq: VfioIrq): Promise<void> {
    this.#reaping = true;
    try {
      await undefined; // started by a call: the rest of the caller's synchronous code runs first
      while (!this.#closed) {
        if (this.#drainAll() > 0) {
          await undefined;
          continue;
        }
        if (!this.#busy()) break;
        // What the callers submitted since the last look reaches the controller before the wait.
        for (const q of this.#io) q.ring();
        const n = await irq.next(IO_WAIT);
        this.#interrupts += n; // 0 when close() woke the wait; the queue memory may then be gone
      }
    } catch (e) {
      // A failing eventfd read (or a bug); the calls in flight then time out.
      this.#log(`the reaper stopped: ${e instanceof Error ? e.message : e}`);
    } finally {
      this.#reaping = false;
    }
  }

  // Polling: one loop over every queue with commands in flight. After a look that found
  // completions it yields to microtasks only (the callers' continuations, which may submit more).
  // After an empty look it rings the doorbells and spins on the busy queues for up to POLL_SPIN_MS,
  // then yields to the event loop (setImmediate) so that timers and I/O run; so does every 64th
  // productive look.
  async #poll(): Promise<void> {
    this.#reaping = true;
    try {
      await undefined; // started by a call: the rest of the caller's synchronous code runs first
      for (let streak = 0; !this.#closed;) {
        if (this.#drainAll() > 0) {
          if (++streak < 64) {
            await undefined;
            continue;
          }
        } else {
          if (!this.#busy()) break;
          for (const q of this.#io) q.ring();
          if (this.#spin()) continue;
        }
        streak = 0;
        await immediate();
      }
    } catch (e) {
      // Not expected (a bug); the calls in flight then time out.
      this.#log(`the completion poller stopped: ${e instanceof Error ? e.message : e}`);
    } finally {
      this.#reaping = false;
    }
  }

  // Spins until a busy queue has a completion, for at most POLL_SPIN_MS; returns whether one has.
  #spin(): boolean {
    const until = performance.now() + POLL_SPIN_MS;
    do {
      for (const q of this.#io) if (q.inFlight > 0 && q.pending()) return true;
    } while (performance.now() < until);
    return false;
  }

  // One timer for every asynchronous call, set for the earliest deadline (settled() sets it). It is
  // not cleared when calls settle (that would cost a timer per call at queue depth 1): when it
  // fires, it looks at the calls still in flight and is set again for the earliest of theirs. It is
  // unref'd: what keeps the process alive while calls are in flight is the reaper's eventfd read or
  // the poller.
  #arm(at: number): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(this.#onTimer, Math.max(0, Math.ceil(at - performance.now())));
    this.#timer.unref();
  }

  readonly #onTimer = (): void => {
    [this.#timer, this.#timerAt] = [undefined, Infinity];
    if (this.#closed) return;
    // Completions already posted count, even if no reaper ran since (a busy event loop).
    for (const q of this.#io) if (q.inFlight > 0) this.#drain(q);
    const calls = new Set<Call>();
    for (const q of this.#io) {
      for (const cmd of q.slots) if (cmd && !cmd.call.done) calls.add(cmd.call);
      for (const cmd of q.waiting) calls.add(cmd.call);
    }
    const now = performance.now();
    let next = Infinity, csts: number | undefined;
    for (const call of calls) {
      if (call.deadline <= now) this.#expire(call, csts ??= this.status);
      else next = Math.min(next, call.deadline);
    }
    if (next < Infinity) this.#arm(next);
  };

  // --- Pause and resume (Nvme) ---

  /**
   * Holds or releases a queue's submission doorbell.
   *
   * @param queue The I/O queue.
   * @param paused Whether to hold it.
   */
  protected setPaused(queue: number, paused: boolean): void {
    this.#checkOpen(`${paused ? "pause" : "resume"} I/O queue ${queue}`);
    const q = this.#route(queue);
    q.paused = paused;
    if (!paused) q.ring();
  }

  // --- Bring-up steps ---

  #identify(name: string, cns: number, nsid: number): DataView {
    this.#identifyPage.bytes.fill(0);
    this.#adminSync(name, { opcode: ADMIN.IDENTIFY, nsid, prp1: this.#identifyPage.iova, cdw10: cns });
    return new DataView(this.#identifyPage.bytes.slice(0, PAGE).buffer);
  }

  #identifyController(): ControllerInfo {
    const d = this.#identify("identify the controller", 1, 0);
    const text = (at: number, length: number) =>
      new TextDecoder().decode(new Uint8Array(d.buffer, at, length)).replace(/\0/g, "").trim();
    const vs = this.#bar.read32(REG.VS);
    const mdts = d.getUint8(77);
    const info: ControllerInfo = {
      vendorId: d.getUint16(0, true),
      serial: text(4, 20),
      model: text(24, 40),
      firmware: text(64, 8),
      version: `${vs >>> 16}.${(vs >> 8) & 0xff}.${vs & 0xff}`,
      maxTransfer: mdts === 0 ? Infinity : 2 ** mdts * this.cap.minPageSize,
      namespaces: d.getUint32(516, true),
    };
    this.#log(`model ${info.model}, serial ${info.serial}, firmware ${info.firmware}, NVMe ${info.version}`);
    return info;
  }

  #identifyNamespace(nsid: number): NamespaceInfo {
    if (this.controller.namespaces < nsid) {
      throw new RangeError(`Cannot use namespace ${nsid}: the controller has ${this.controller.namespaces}`);
    }
    const d = this.#identify(`identify namespace ${nsid}`, 0, nsid);
    const blocks = Number(d.getBigUint64(0, true));
    const format = d.getUint32(128 + 4 * (d.getUint8(26) & 0xf), true); // LBAF[FLBAS]
    const blockSize = 2 ** ((format >>> 16) & 0xff), metadata = format & 0xffff;
    if (blocks === 0) throw new RangeError(`Cannot use namespace ${nsid}: it is not active`);
    if (metadata !== 0) {
      throw new RangeError(
        `Cannot use namespace ${nsid}: its format has ${metadata} metadata bytes per block`,
      );
    }
    const info = { nsid, blocks, blockSize };
    this.#log(
      `namespace ${nsid}: ${blocks} blocks of ${blockSize} bytes (${formatBytes(blocks * blockSize)})`,
    );
    return info;
  }

  // Set Features (Number of Queues), required before any I/O queue is created. Dword 0 of the
  // completion says how many submission and completion queues the controller allocated (0's based),
  // which may be more or fewer than asked for.
  #setNumberOfQueues(wanted: number): number {
    const n = wanted - 1;
    const { dw0 } = this.#adminSync(`ask for ${wanted} I/O queue pairs`, {
      opcode: ADMIN.SET_FEATURES,
      cdw10: FEATURE_NUMBER_OF_QUEUES,
      cdw11: (n << 16) | n,
    });
    const granted = Math.min((dw0 & 0xffff) + 1, (dw0 >>> 16) + 1);
    if (granted < wanted) {
      this.#log(`the controller grants ${granted} of the ${wanted} I/O queue pairs asked for`);
    }
    return Math.min(granted, wanted);
  }

  // Completion queue first, since the submission queue names it.
  #createIoQueue(q: IoQueue, interrupts: boolean): void {
    const size = q.depth - 1; // queue sizes are 0's based
    this.#adminSync(`create I/O completion queue ${q.id}`, {
      opcode: ADMIN.CREATE_CQ,
      prp1: q.memory.cq.iova,
      cdw10: (size << 16) | q.id,
      cdw11: (q.vector << 16) | (interrupts ? 1 << 1 : 0) | 1, // IV, IEN, PC (physically contiguous)
    });
    q.created.cq = true;
    this.#adminSync(`create I/O submission queue ${q.id}`, {
      opcode: ADMIN.CREATE_SQ,
      prp1: q.memory.sq.iova,
      cdw10: (size << 16) | q.id,
      cdw11: (q.id << 16) | 1, // CQID, QPRIO 0, PC
    });
    q.created.sq = true;
  }

  /**
   * Shuts the controller down and then frees its queues and disables MSI-X. Every call still
   * outstanding fails with {@link NvmeError} `"closed"` (or its own completion, if the controller
   * finished it while its queue was deleted), and every {@link NvmeTimeoutError.released} resolves.
   * Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    [this.#timer, this.#timerAt] = [undefined, Infinity];
    // Commands that never reached the controller fail first, so that nothing is submitted into
    // the command IDs the queue deletion frees.
    for (const q of this.#io) {
      const calls = new Set(q.waiting.map((c) => c.call));
      for (const call of calls) {
        call.remaining -= this.#dropWaiting(call);
        if (!call.done) {
          call.done = true;
          call.error = new NvmeError(
            call.name,
            "closed",
            `the driver closed before ${q.name} took the command`,
          );
          call.reject?.(call.error);
        }
        if (call.inDevice === 0) this.#release(call);
      }
    }
    this.#resources.dispose();
  }

  /** Closes the driver, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Closes the driver, then waits until its reaper (or poller) has returned. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await Promise.all(this.#loops);
  }
}

/**
 * The asynchronous, multi-queue driver. Each call splits its transfer into commands (at MDTS),
 * submits them to one I/O queue (round robin, or `options.queue`), and returns a Promise that
 * settles when all of them completed, the call timed out, or the driver closed. Commands beyond a
 * queue's depth wait in the driver for a free command ID.
 *
 * Completions are reaped by one loop for all the queues, which runs only while commands are in
 * flight: it reaps every completion queue, lets the callers' continuations submit their next
 * commands, and looks again; only when every queue is empty does it wait for MSI-X vector 1, which
 * all the I/O queues share (`irq.next()`: a pending interrupt is taken at once, otherwise the
 * eventfd is read off the JavaScript thread, a hop to another thread and back per wake-up). With
 * `poll: true` the loop spins on the busy queues instead, yielding to the event loop between spins.
 *
 * A call that times out rejects with {@link NvmeTimeoutError}. NVMe's Abort command is not sent (the
 * spec makes it best-effort, and it cannot reach a command not yet fetched): "abort" here means the
 * call fails and forgets its commands, while their command IDs and memory stay reserved until the
 * controller completes them or their queue is deleted; {@link NvmeTimeoutError.released} says when.
 *
 * Closing deletes the I/O queues (the controller finishes or aborts what it took from them), shuts
 * the controller down and disables it, fails every call still outstanding with {@link NvmeError}
 * `"closed"`, and only then disables MSI-X and frees the memory.
 *
 * @example
 * ```ts ignore
 * using vfio = await open("0000:00:05.0");
 * await using nvme = Nvme.init(vfio, { queues: 2 });
 * const block0 = await nvme.read(0, 1); // a Uint8Array of 512 bytes
 * await Promise.all([nvme.write(8, block0), nvme.write(16, block0)]);
 * await nvme.flush();
 * ```
 */
export class Nvme extends NvmeBase {
  /**
   * Brings up the controller: steps 1 to 5 of the module description.
   *
   * @param vfio The opened controller (its DMA pool provides the queues).
   * @param options Polling or interrupts, queues, depth, timeouts and logging.
   * @returns The driver, with {@link controller} and {@link namespace} filled in.
   * @throws {VfioError} If DMA memory cannot be mapped (e.g. in no-IOMMU mode) or MSI-X cannot be set up.
   * @throws {NvmeError} If the controller does not become ready or an admin command fails.
   */
  static init(vfio: OpenedDevice, options: NvmeOptions = {}): Nvme {
    return new Nvme(vfio, options);
  }

  private constructor(vfio: OpenedDevice, options: NvmeOptions) {
    super(vfio, options, true);
  }

  /**
   * Reads blocks of namespace 1.
   *
   * @param lba The first block.
   * @param blocks How many blocks.
   * @param buf Where to put them: a DMA buffer or part of one (without a copy). Without it, the data
   *   lands in driver memory and the Promise resolves to a copy.
   * @param options The queue and the timeout.
   * @returns The data: a view into `buf`, or a fresh array.
   * @throws {NvmeError} (rejects) If the controller fails a command (e.g. LBA Out of Range), the
   *   call times out ({@link NvmeTimeoutError}), or the driver closes first (`"closed"`).
   * @throws {RangeError} (rejects) If the blocks do not fit `buf`, or an option is out of range.
   */
  read(
    lba: number,
    blocks: number,
    buf?: DmaBuffer | DmaSpan,
    options: IoOptions = NO_OPTIONS,
  ): Promise<Uint8Array> {
    try {
      let call: Call;
      if (buf === undefined || "iova" in buf) {
        call = this.transfer(NVM.READ, lba, blocks, buf, 0, options);
      } else {
        const bytes = blocks * this.namespace.blockSize;
        if (buf.length !== undefined && bytes > buf.length) {
          throw new RangeError(`Cannot read ${blocks} blocks into ${buf.length} bytes: they take ${bytes}`);
        }
        call = this.transfer(NVM.READ, lba, blocks, buf.buffer, buf.offset ?? 0, options);
      }
      return this.settled<Uint8Array>(call);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Writes blocks of namespace 1.
   *
   * @param lba The first block.
   * @param data Whole blocks: bytes (copied before this returns), or a DMA buffer or part of one
   *   (used in place: keep it unchanged until the Promise settles).
   * @param options The queue and the timeout.
   * @returns Settles when the controller completed every command of the write.
   * @throws {NvmeError} (rejects) As {@link read}.
   * @throws {RangeError} (rejects) If the data is not whole blocks, or an option is out of range.
   */
  write(lba: number, data: Uint8Array | DmaBuffer | DmaSpan, options: IoOptions = NO_OPTIONS): Promise<void> {
    try {
      const bs = this.namespace.blockSize;
      let source: Uint8Array | DmaBuffer, offset = 0, length: number;
      if (data instanceof Uint8Array) [source, length] = [data, data.length];
      else if ("iova" in data) [source, length] = [data, data.size];
      else {
        [source, offset] = [data.buffer, data.offset ?? 0];
        length = data.length ?? data.buffer.size - offset;
      }
      const blocks = length / bs;
      if (!Number.isInteger(blocks) || blocks < 1) {
        throw new RangeError(`Cannot write ${length} bytes at LBA ${lba}: expected whole ${bs}-byte blocks`);
      }
      return this.settled<undefined>(this.transfer(NVM.WRITE, lba, blocks, source, offset, options));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Flushes the volatile write cache of namespace 1 to the medium: the writes that completed
   * before it was submitted (await them first).
   *
   * @param options The queue and the timeout.
   * @returns Settles when the flush completed.
   * @throws {NvmeError} (rejects) If the command fails, times out, or the driver closes first.
   */
  flush(options: IoOptions = NO_OPTIONS): Promise<void> {
    try {
      return this.settled<undefined>(this.transfer(NVM.FLUSH, 0, 0, undefined, 0, options));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Holds a queue's submission doorbell: commands submitted meanwhile are written to the queue, but
   * the controller does not see them until {@link resume}. (Batching under the caller's control;
   * and the tests' way to make a command that cannot complete.)
   *
   * @param queue The I/O queue, 1 to {@link queueCount}.
   */
  pause(queue: number): void {
    this.setPaused(queue, true);
  }

  /**
   * Releases a queue's doorbell, handing the controller what was submitted while paused.
   *
   * @param queue The I/O queue.
   */
  resume(queue: number): void {
    this.setPaused(queue, false);
  }
}

/**
 * The blocking driver, for callers that want one call at a time: each call submits its commands
 * (as many as the queue takes) to I/O queue 1, waits for their completions, blocking the thread,
 * and throws {@link NvmeError} for the first one that fails or times out. It runs on the same
 * queues, command IDs and timeouts as {@link Nvme}.
 *
 * Disposing it deletes the I/O queues, shuts the controller down and disables it, and then disables
 * MSI-X and frees the queue memory. The opened device stays open; the caller disposes it after.
 *
 * @example
 * ```ts ignore
 * using vfio = await open("0000:00:05.0");
 * using nvme = NvmeController.init(vfio);
 * using buf = vfio.dma.alloc(8192);
 * nvme.read({ lba: 0, blocks: 16, buffer: buf });
 * ```
 */
export class NvmeController extends NvmeBase {
  /**
   * Brings up the controller: steps 1 to 5 of the module description.
   *
   * @param vfio The opened controller (its DMA pool provides the queues).
   * @param options Polling or interrupts, timeouts, queue depth and logging.
   * @returns The driver, with {@link controller} and {@link namespace} filled in.
   * @throws {VfioError} If DMA memory cannot be mapped (e.g. in no-IOMMU mode) or MSI-X cannot be set up.
   * @throws {NvmeError} If the controller does not become ready or an admin command fails.
   */
  static init(vfio: OpenedDevice, options: NvmeOptions = {}): NvmeController {
    return new NvmeController(vfio, options);
  }

  private constructor(vfio: OpenedDevice, options: NvmeOptions) {
    super(vfio, options, false);
  }

  /**
   * Reads blocks of namespace 1 into a DMA buffer.
   *
   * @param t Where from and where to.
   * @throws {RangeError} If the transfer does not fit the buffer.
   * @throws {NvmeError} If the controller fails a command (e.g. LBA Out of Range) or times out.
   */
  read(t: Transfer): void {
    this.waitFor(
      this.transfer(NVM.READ, t.lba, t.blocks, t.buffer, t.offset ?? 0, QUEUE_1),
    );
  }

  /**
   * Writes blocks of namespace 1 from a DMA buffer.
   *
   * @param t Where from and where to.
   * @throws {RangeError} If the transfer does not fit the buffer.
   * @throws {NvmeError} If the controller fails a command or times out.
   */
  write(t: Transfer): void {
    this.waitFor(
      this.transfer(NVM.WRITE, t.lba, t.blocks, t.buffer, t.offset ?? 0, QUEUE_1),
    );
  }

  /**
   * Flushes the volatile write cache of namespace 1 to the medium.
   *
   * @throws {NvmeError} If the command fails or times out.
   */
  flush(): void {
    this.waitFor(this.transfer(NVM.FLUSH, 0, 0, undefined, 0, QUEUE_1));
  }
}

function checkTimeout(ms: number): number {
  if (typeof ms !== "number" || !(ms >= 0) || ms > 2 ** 31 - 1) {
    throw new RangeError(`Cannot wait ${ms} ms for a command: expected 0 to 2^31-1`);
  }
  return ms;
}

function fatal(action: string, csts: number): NvmeError {
  return new NvmeError(
    action,
    "fatal",
    `the controller reports a fatal status (CSTS ${hex(csts)}); reset it`,
  );
}

// Blocks the thread for a while (Atomics.wait on a private buffer, which nothing ever wakes).
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Sizes in bytes as people read them: "64 MiB". */
export function formatBytes(n: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[i]}`;
}
