/**
 * A complete userspace driver for QEMU's edu device (hw/misc/edu.c, docs/specs/edu.rst), in one file.
 *
 * It opens the device through VFIO, checks its ident register, enables bus mastering, computes a
 * factorial and waits for the completion interrupt (MSI) with `for await`, then runs DMA in both
 * directions through the IOMMU and checks the data. While it waits, a timer keeps ticking: the
 * eventfd is read off the JavaScript thread, so the event loop stays free.
 *
 * ```sh
 * deno run --allow-ffi examples/edu.ts [BDF]
 * bun examples/edu.ts [BDF]
 * ```
 *
 * `--allow-ffi` is the only permission it needs: the library reads sysfs through libc.
 *
 * The device must be bound to vfio-pci first (`vfio bind 0000:00:04.0`). BDF defaults to
 * 0000:00:04.0, where QEMU puts `-device edu,addr=04.0`.
 *
 * @module
 */
import process from "node:process";
import {
  type DmaBuffer,
  type DmaPool,
  type IommuBackend,
  loadSys,
  open,
  type OpenedDevice,
  type OpenOptions,
  type Registers,
  uapi,
  type VfioDevice,
  type VfioIrq,
} from "../mod.ts";

/** Where QEMU puts the device in the examples: `-device edu,addr=04.0`. */
export const DEFAULT_BDF = "0000:00:04.0";

/** edu's BAR0 registers: byte offsets, and the bits inside them. */
export const EDU = {
  /** RO: 0xRRrr00ed, major version RR, minor rr. */
  IDENT: 0x00,
  /** RW: reads back the bitwise NOT of what was written. */
  LIVENESS: 0x04,
  /** RW: write n to start computing n!; read the result once STATUS_COMPUTING clears. */
  FACTORIAL: 0x08,
  /** RW: STATUS_COMPUTING (RO) and STATUS_IRQ_FACTORIAL. */
  STATUS: 0x20,
  STATUS_COMPUTING: 0x01,
  /** Raise IRQ_FACTORIAL when the factorial is done. */
  STATUS_IRQ_FACTORIAL: 0x80,
  /** RO: the raised interrupt bits. */
  IRQ_STATUS: 0x24,
  /** WO: ORs the value into IRQ_STATUS and raises the interrupt. */
  IRQ_RAISE: 0x60,
  /** WO: clears these bits of IRQ_STATUS. */
  IRQ_ACK: 0x64,
  IRQ_FACTORIAL: 0x001,
  IRQ_DMA: 0x100,
  /** RW, 64-bit: DMA source, destination and byte count. */
  DMA_SRC: 0x80,
  DMA_DST: 0x88,
  DMA_COUNT: 0x90,
  /** RW: DMA_START (clears when done), DMA_TO_RAM (direction), DMA_IRQ (raise IRQ_DMA when done). */
  DMA_CMD: 0x98,
  DMA_START: 0x1,
  /** Direction: set = device buffer to RAM, clear = RAM to device buffer. */
  DMA_TO_RAM: 0x2,
  DMA_IRQ: 0x4,
  /** The device's 4 KiB DMA buffer, as addressed in DMA_SRC and DMA_DST. */
  DMA_BUFFER: 0x40000,
  DMA_BUFFER_SIZE: 0x1000,
} as const;

/** The ident register's value for edu 1.0. */
export const EDU_IDENT = 0x010000ed;
/**
 * The highest address edu can DMA to: its `dma_mask`, 28 bits by default (every IOVA must lie below
 * 256 MiB). QEMU can be given another (`-device edu,dma_mask=0xffffffff`); say so in the environment
 * variable EDU_DMA_MASK, as the lab's no-IOMMU configurations do, where edu is given physical addresses.
 */
export const EDU_DMA_LIMIT: bigint = await dmaMask();

async function dmaMask(): Promise<bigint> {
  const text = (await loadSys()).getenv("EDU_DMA_MASK");
  if (text === undefined) return (1n << 28n) - 1n;
  if (!/^(0x[0-9a-f]+|\d+)$/i.test(text)) {
    throw new TypeError(`Cannot use EDU_DMA_MASK=${text}: expected a number`);
  }
  return BigInt(text);
}

const hex = (n: number | bigint, width = 0) => `0x${n.toString(16).padStart(width, "0")}`;

/**
 * A driver for one edu device. Operations are sequential: one factorial or DMA at a time.
 *
 * Disposing it quiets the device (no interrupt on completion, interrupts acknowledged), then
 * closes the MSI, the DMA buffers, the device and its IOMMU backend, in that order.
 *
 * @example
 * ```ts ignore
 * using edu = await Edu.open("0000:00:04.0");
 * console.log(await edu.factorial(10)); // 3628800, after the completion interrupt
 * ```
 */
export class Edu implements Disposable {
  /** BAR0: the device's registers. */
  readonly bar0: Registers;
  /** The MSI vector, signalled for factorial completion and DMA completion. */
  readonly irq: VfioIrq;
  /** How long to wait for an interrupt before giving up. */
  timeoutMs = 5000;
  /** Interrupts received so far. */
  interrupts = 0;
  readonly #vfio: OpenedDevice;

  /**
   * Opens an edu device bound to vfio-pci, with DMA limited to its 28-bit mask.
   *
   * @param bdf The device's PCI address.
   * @param options IOMMU backend choice (the DMA limit is edu's unless given).
   * @returns The driver; dispose it to release everything.
   * @throws {VfioError} If the device cannot be opened (not bound to vfio-pci, group not viable …).
   * @throws {TypeError} If the device is not an edu.
   */
  static async open(bdf: string = DEFAULT_BDF, options: OpenOptions = {}): Promise<Edu> {
    return new Edu(await open(bdf, { limit: EDU_DMA_LIMIT, ...options }));
  }

  /**
   * Takes over an opened device: checks the ident, enables bus mastering and MSI.
   *
   * @param vfio The opened device; the driver owns it from now on, and closes it if this fails.
   * @throws {TypeError} If the ident register is not edu's.
   */
  constructor(vfio: OpenedDevice) {
    this.#vfio = vfio;
    try {
      this.bar0 = vfio.device.registers(0);
      const ident = this.bar0.read32(EDU.IDENT);
      if ((ident & 0xff) !== 0xed) {
        throw new TypeError(
          `Cannot drive ${vfio.device.name}: its ident register reads ${hex(ident)}, not edu's 0xRRrr00ed`,
        );
      }
      // Without bus mastering the device's DMA reads zeros and its MSI writes go nowhere.
      vfio.device.config.enableBusMaster();
      this.#quiesce();
      this.irq = vfio.device.enableIrq(uapi.VFIO_PCI_MSI_IRQ_INDEX);
    } catch (e) {
      vfio.close();
      throw e;
    }
  }

  /** The device's PCI address. */
  get name(): string {
    return this.#vfio.device.name;
  }

  /** The VFIO device, for config space and anything this driver does not wrap. */
  get device(): VfioDevice {
    return this.#vfio.device;
  }

  /** The IOMMU backend the device is attached to. */
  get backend(): IommuBackend {
    return this.#vfio.backend;
  }

  /**
   * DMA memory the device can address (below {@link EDU_DMA_LIMIT}).
   *
   * @throws {VfioError} In no-IOMMU mode, which has no IOMMU to map it through.
   */
  get dma(): DmaPool {
    return this.#vfio.dma;
  }

  /** The ident register: `{ major, minor }` version. */
  version(): { major: number; minor: number } {
    const ident = this.bar0.read32(EDU.IDENT);
    return { major: ident >>> 24, minor: (ident >>> 16) & 0xff };
  }

  /**
   * Writes the liveness register and reads it back.
   *
   * @param value A 32-bit value.
   * @returns What the device answered: `~value`, when it is alive.
   */
  liveness(value: number): number {
    this.bar0.write32(EDU.LIVENESS, value);
    return this.bar0.read32(EDU.LIVENESS);
  }

  /**
   * Computes n! on the device and waits for its completion interrupt.
   *
   * @param n The argument; the device computes modulo 2^32, so results are exact up to 12!.
   * @returns The device's result.
   * @throws {RangeError} If n is not a 32-bit unsigned integer.
   * @throws {Error} If no interrupt arrives within {@link timeoutMs}.
   */
  async factorial(n: number): Promise<number> {
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
      throw new RangeError(`Cannot compute ${n}!: expected a 32-bit unsigned integer`);
    }
    this.bar0.write32(EDU.STATUS, EDU.STATUS_IRQ_FACTORIAL);
    this.bar0.write32(EDU.FACTORIAL, n);
    await this.#waitFor(EDU.IRQ_FACTORIAL, `compute ${n}!`);
    return this.bar0.read32(EDU.FACTORIAL);
  }

  /**
   * Copies RAM into the device's buffer by DMA, and waits for the completion interrupt.
   *
   * @param src The DMA buffer to read from (its first `count` bytes).
   * @param offset Where in the device's 4 KiB buffer to write.
   * @param count Bytes to copy.
   * @throws {RangeError} If the transfer does not fit.
   */
  async dmaToDevice(src: DmaBuffer, offset: number, count: number): Promise<void> {
    this.#checkDma(src, offset, count);
    await this.#dma(src.iova, BigInt(EDU.DMA_BUFFER + offset), count, 0);
  }

  /**
   * Copies the device's buffer into RAM by DMA, and waits for the completion interrupt.
   *
   * @param offset Where in the device's 4 KiB buffer to read.
   * @param dst The DMA buffer to write (its first `count` bytes).
   * @param count Bytes to copy.
   * @throws {RangeError} If the transfer does not fit.
   */
  async dmaFromDevice(offset: number, dst: DmaBuffer, count: number): Promise<void> {
    this.#checkDma(dst, offset, count);
    await this.#dma(BigInt(EDU.DMA_BUFFER + offset), dst.iova, count, EDU.DMA_TO_RAM);
  }

  #checkDma(buffer: DmaBuffer, offset: number, count: number): void {
    // QEMU 7.2 aborts the whole VM on a transfer that ends exactly at the end of the device's
    // buffer, so the last byte stays out of reach.
    if (
      !Number.isInteger(offset) || !Number.isInteger(count) || offset < 0 || count <= 0 ||
      offset + count >= EDU.DMA_BUFFER_SIZE || count > buffer.size
    ) {
      throw new RangeError(
        `Cannot transfer ${count} bytes at device offset ${offset}: the transfer must end before byte ` +
          `${EDU.DMA_BUFFER_SIZE - 1} of the device buffer and fit the ${buffer.size}-byte DMA buffer`,
      );
    }
  }

  async #dma(src: bigint, dst: bigint, count: number, direction: number): Promise<void> {
    if (this.bar0.read32(EDU.DMA_CMD) & EDU.DMA_START) {
      throw new TypeError("Cannot start DMA: one is running");
    }
    this.bar0.write64(EDU.DMA_SRC, src);
    this.bar0.write64(EDU.DMA_DST, dst);
    this.bar0.write64(EDU.DMA_COUNT, BigInt(count));
    this.bar0.write32(EDU.DMA_CMD, EDU.DMA_START | EDU.DMA_IRQ | direction);
    await this.#waitFor(EDU.IRQ_DMA, `copy ${count} bytes from ${hex(src)} to ${hex(dst)} by DMA`);
  }

  // Receives interrupts until one carries `bits`, acknowledging each. edu raises one MSI for
  // factorial and DMA completion alike, so IRQ_STATUS says which it was.
  async #waitFor(bits: number, action: string): Promise<number> {
    let timedOut = false;
    // next() cannot be cancelled, so the timeout fires the vector from software (VFIO's loopback
    // trigger): the loop below wakes and gives up.
    const timer = setTimeout(() => {
      timedOut = true;
      this.irq.trigger();
    }, this.timeoutMs);
    try {
      for await (const count of this.irq) {
        const status = this.bar0.read32(EDU.IRQ_STATUS);
        if (status) this.bar0.write32(EDU.IRQ_ACK, status);
        if (timedOut) {
          const why = status & bits
            ? `the device raised ${hex(bits)}, but no MSI arrived: is bus mastering on?`
            : `IRQ status ${hex(status)}`;
          throw new Error(`Cannot ${action}: no interrupt within ${this.timeoutMs} ms (${why})`);
        }
        this.interrupts += count;
        if (status & bits) return status;
      }
      throw new TypeError(`Cannot ${action}: the interrupt was closed while waiting`);
    } finally {
      clearTimeout(timer);
    }
  }

  // edu has no reset: leave it with no completion interrupt armed, no DMA running, nothing pending.
  #quiesce(): void {
    this.bar0.write32(EDU.STATUS, 0);
    const deadline = Date.now() + this.timeoutMs;
    while (this.bar0.read32(EDU.DMA_CMD) & EDU.DMA_START) {
      if (Date.now() > deadline) throw new Error(`Cannot quiesce ${this.name}: its DMA did not finish`);
    }
    this.bar0.write32(EDU.IRQ_ACK, this.bar0.read32(EDU.IRQ_STATUS));
  }

  /** Quiets the device, then closes the MSI, DMA buffers, device and backend. Idempotent. */
  close(): void {
    if (this.#vfio.device.closed) return;
    try {
      this.#quiesce();
    } finally {
      this.#vfio.close(); // DMA pool, then device (its MSI and BAR0), then the IOMMU backend
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** What {@link demo} did, for callers that check it. */
export interface DemoResult {
  /** The ident register. */
  ident: number;
  /** 10! as the device computed it. */
  factorial: number;
  /** Bytes copied each way by DMA and verified. */
  dmaBytes: number;
  /** Interrupts received. */
  interrupts: number;
  /** Timer ticks that ran while the driver waited for interrupts. */
  ticks: number;
}

/**
 * Exercises the device: ident, liveness, factorial with its interrupt, DMA both ways.
 *
 * @param edu The driver.
 * @param log Where the transcript goes.
 * @returns What was measured.
 * @throws {Error} If the device answers wrongly or DMA data does not match.
 * @throws {VfioError} If DMA memory cannot be mapped (e.g. no-IOMMU mode).
 */
export async function demo(edu: Edu, log: (line: string) => void = console.log): Promise<DemoResult> {
  const { major, minor } = edu.version();
  const ident = edu.bar0.read32(EDU.IDENT);
  log(
    `edu ${edu.name}: ident ${hex(ident, 8)} (version ${major}.${minor}), IOMMU backend ${edu.backend.kind}`,
  );
  const answer = edu.liveness(0x12345678);
  if (answer !== (~0x12345678 >>> 0)) {
    throw new Error(`Liveness check failed: 0x12345678 read back as ${hex(answer)}`);
  }
  log(`liveness: wrote 0x12345678, read back ${hex(answer, 8)}`);

  // A timer that keeps ticking proves the event loop runs while the driver awaits interrupts.
  let ticks = 0;
  const ticker = setInterval(() => ticks++, 1);
  try {
    const factorial = await edu.factorial(10);
    if (factorial !== 3628800) throw new Error(`The device computed 10! = ${factorial}`);
    log(`factorial: 10! = ${factorial}, completion interrupt received`);

    const count = 2048;
    using src = edu.dma.alloc(4096);
    using dst = edu.dma.alloc(4096);
    const sent = src.bytes, received = dst.bytes;
    for (let i = 0; i < count; i++) sent[i] = (i * 31 + 7) & 0xff;
    await edu.dmaToDevice(src, 0, count);
    log(`DMA RAM -> device: ${count} bytes from iova ${hex(src.iova)} to device ${hex(EDU.DMA_BUFFER)}`);
    await edu.dmaFromDevice(0, dst, count);
    log(`DMA device -> RAM: ${count} bytes from device ${hex(EDU.DMA_BUFFER)} to iova ${hex(dst.iova)}`);
    const bad = received.subarray(0, count).findIndex((b, i) => b !== sent[i]);
    if (bad >= 0) throw new Error(`DMA data differs at byte ${bad}: ${received[bad]} != ${sent[bad]}`);
    log(`DMA verified: the ${count} bytes came back unchanged`);
    log(
      `interrupts: ${edu.interrupts} received and acknowledged; the event loop ticked ${ticks} times meanwhile`,
    );
    return { ident, factorial, dmaBytes: count, interrupts: edu.interrupts, ticks };
  } finally {
    clearInterval(ticker);
  }
}

if (import.meta.main) {
  const bdf = process.argv[2] ?? DEFAULT_BDF;
  try {
    using edu = await Edu.open(bdf);
    await demo(edu);
  } catch (e) {
    console.error(`edu: ${e instanceof Error ? e.message : e}`);
    process.exitCode = 1;
  }
}
