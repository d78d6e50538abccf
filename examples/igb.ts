/**
 * A userspace driver for the Intel 82576 Gigabit Ethernet controller (QEMU's `igb`), in one file.
 *
 * It resets the port, brings the link up, gives each queue pair a transmit and a receive ring of
 * advanced descriptors in DMA memory, and either waits for each queue pair's MSI-X vector (an
 * eventfd read off the JavaScript thread) or polls the descriptors. Frames come back byte for
 * byte, and the NIC's statistics registers (GPRC, GPTC, GORC, GOTC …) are checked against what was
 * sent. A `--memcpy` mode copies a buffer through the NIC's DMA, as the kernel's VFIO selftest
 * driver for this device does: transmitted from the source buffer, received into the destination.
 *
 * ```sh
 * deno run --allow-ffi examples/igb.ts [options] [BDF [PEER]]
 * bun examples/igb.ts [options] [BDF [PEER]]
 * ```
 *
 * ```ts ignore
 * await using a = await Igb.open("0000:00:0a.0", { queues: 2 });
 * await using b = await Igb.open("0000:00:0c.0", { queues: 2 }); // on the same wire (QEMU hub)
 * const report = await exchange(a, b, { count: 64 }); // 64 IPv4/UDP frames, 60-1514 bytes, checked
 * using src = a.dma.alloc(4096), dst = b.dma.alloc(4096);
 * await a.memcpy(src, dst, 4096, { receiver: b }); // 4 frames of 1024 bytes, completion by MSI-X
 * ```
 *
 * What QEMU's emulation (hw/net/igb_core.c, QEMU 10) honours, and so what this driver relies on:
 * - transmit descriptors must be advanced ones (DEXT): legacy transmit descriptors are a TODO
 *   there and are skipped; receive descriptors are always written back in the advanced one-buffer
 *   format, so SRRCTL.DESCTYPE says so, as the datasheet requires;
 * - the link comes up only through auto-negotiation: after CTRL.RST, STATUS.LU stays clear until
 *   the PHY's BMCR restarts it (500 ms of virtual time); CTRL.SLU alone does nothing there;
 * - a frame is received only with STATUS.LU, RCTL.EN, RXDCTL.ENABLE and bus mastering on, and
 *   frames a port could not take wait in QEMU's net queue (up to 10,000 of them) and arrive the
 *   moment it can: the driver discards those at start, then zeroes the counters;
 * - with GPIE.Multiple_MSIX, a queue's writebacks raise the vector its IVAR entry names, once
 *   per writeback while EIAC auto-clears the cause (without it the next MSI-X never comes);
 * - multiple receive queues need RSS (MRQC, RETA, RSSRK with RXCSUM.PCSD): the exchange steers
 *   each frame to its queue by choosing a source IP whose Toeplitz hash lands there;
 * - a transmit doorbell (TDT) sends synchronously: by the time the write returns, the frames
 *   have gone through the hub and their descriptors are written back.
 *
 * MAC loopback (RCTL.LBM, `--loopback`) is emulated too: the port then receives what it sends
 * instead of putting it on the wire.
 *
 * @module
 */
import process from "node:process";
import { setImmediate } from "node:timers";
import { parseArgs } from "node:util";
import {
  type BackendChoice,
  type DmaBuffer,
  type DmaPool,
  open,
  type OpenedDevice,
  parsePciAddress,
  type Registers,
  VFIO_PCI_MSIX_IRQ_INDEX,
  type VfioDevice,
  type VfioIrq,
} from "../mod.ts";

/** The lab's first port: `-device igb,addr=0a.0`. */
export const DEFAULT_BDF = "0000:00:0a.0";
/** The lab's second port, on the same QEMU hub as {@link DEFAULT_BDF}. */
export const DEFAULT_PEER = "0000:00:0c.0";

/** The 82576's PCI IDs (the PF; its VFs are 8086:10ca and have another register set). */
export const PCI_ID = { vendor: 0x8086, device: 0x10c9 } as const;

/** BAR0 register offsets, by the 82576 datasheet's names (section 8). Per-queue ones take the queue. */
export const REG = {
  CTRL: 0x0000,
  STATUS: 0x0008,
  CTRL_EXT: 0x0018,
  MDIC: 0x0020,
  IMC: 0x00d8,
  RCTL: 0x0100,
  TCTL: 0x0400,
  GPIE: 0x1514,
  EIMS: 0x1524,
  EIMC: 0x1528,
  EIAC: 0x152c,
  EICR: 0x1580,
  EITR: (vector: number): number => 0x1680 + 4 * vector,
  /** Queue n's receive (byte 0) and transmit (byte 1) MSI-X vector, for n < 8. */
  IVAR: (n: number): number => 0x1700 + 4 * n,
  RXCSUM: 0x5000,
  /** Receive address 0: the port's MAC address (loaded from the EEPROM at reset). */
  RAL0: 0x5400,
  RAH0: 0x5404,
  MRQC: 0x5818,
  /** Redirection table: 128 one-byte queue numbers, indexed by the low 7 bits of the RSS hash. */
  RETA: (n: number): number => 0x5c00 + 4 * n,
  /** The 40-byte RSS (Toeplitz) key, 10 registers, byte 0 in the low byte of RSSRK(0). */
  RSSRK: (n: number): number => 0x5c80 + 4 * n,
  RDBAL: (q: number): number => 0xc000 + 0x40 * q,
  RDBAH: (q: number): number => 0xc004 + 0x40 * q,
  RDLEN: (q: number): number => 0xc008 + 0x40 * q,
  SRRCTL: (q: number): number => 0xc00c + 0x40 * q,
  RDH: (q: number): number => 0xc010 + 0x40 * q,
  RDT: (q: number): number => 0xc018 + 0x40 * q,
  RXDCTL: (q: number): number => 0xc028 + 0x40 * q,
  TDBAL: (q: number): number => 0xe000 + 0x40 * q,
  TDBAH: (q: number): number => 0xe004 + 0x40 * q,
  TDLEN: (q: number): number => 0xe008 + 0x40 * q,
  TDH: (q: number): number => 0xe010 + 0x40 * q,
  TDT: (q: number): number => 0xe018 + 0x40 * q,
  TXDCTL: (q: number): number => 0xe028 + 0x40 * q,
  // Statistics: read to clear. The 64-bit octet counters clear when their high half is read.
  GPRC: 0x4074,
  BPRC: 0x4078,
  MPRC: 0x407c,
  GPTC: 0x4080,
  GORCL: 0x4088,
  GORCH: 0x408c,
  GOTCL: 0x4090,
  GOTCH: 0x4094,
  RUC: 0x40a4,
  ROC: 0x40ac,
  TPR: 0x40d0,
  TPT: 0x40d4,
} as const;

/** Bits inside the registers and descriptors, named `REGISTER_FIELD` as in the datasheet. */
export const BIT = {
  CTRL_FD: 1 << 0,
  CTRL_SLU: 1 << 6,
  CTRL_RST: 1 << 26,
  STATUS_LU: 1 << 1,
  CTRL_EXT_DRV_LOAD: 1 << 28,
  MDIC_REG_SHIFT: 16,
  MDIC_PHY_SHIFT: 21,
  MDIC_OP_WRITE: 1 << 26,
  MDIC_READY: 1 << 28,
  MDIC_ERROR: 1 << 30,
  /** The internal PHY's MDIO address. */
  PHY_ADDRESS: 1,
  PHY_BMCR: 0,
  BMCR_SPEED1000: 1 << 6,
  BMCR_FD: 1 << 8,
  BMCR_ANRESTART: 1 << 9,
  BMCR_AUTOEN: 1 << 12,
  RCTL_EN: 1 << 1,
  RCTL_UPE: 1 << 3,
  RCTL_MPE: 1 << 4,
  /** LBM = 01b: MAC loopback. */
  RCTL_LBM_MAC: 1 << 6,
  RCTL_BAM: 1 << 15,
  RCTL_SECRC: 1 << 26,
  TCTL_EN: 1 << 1,
  TCTL_PSP: 1 << 3,
  /** Receive buffer size in 1 KiB units, bits 6:0. */
  SRRCTL_BSIZEPKT_KB: 1,
  /** DESCTYPE = 001b: advanced descriptors, one buffer. */
  SRRCTL_DESCTYPE_ADV_ONEBUF: 1 << 25,
  XDCTL_ENABLE: 1 << 25,
  /** TXDCTL.WTHRESH = 1: write each descriptor back as soon as it is done. */
  TXDCTL_WTHRESH_1: 1 << 16,
  GPIE_MULTIPLE_MSIX: 1 << 4,
  GPIE_PBA_SUPPORT: 1 << 31,
  IVAR_VALID: 0x80,
  RXCSUM_PCSD: 1 << 13,
  /** MRQC.Multiple_Receive_Queues_Enable = 010b: RSS. */
  MRQC_RSS: 0x2,
  MRQC_RSS_FIELD_IPV4: 1 << 17,
  RAH_AV: 1 << 31,
  // Advanced transmit data descriptor, CMD_TYPE_LEN (dword 2) and OLINFO_STATUS (dword 3).
  TXD_DTYP_DATA: 0x3 << 20,
  TXD_DCMD_EOP: 1 << 24,
  TXD_DCMD_IFCS: 1 << 25,
  TXD_DCMD_RS: 1 << 27,
  TXD_DCMD_DEXT: 1 << 29,
  TXD_PAYLEN_SHIFT: 14,
  /** Written back into dword 3 when the descriptor is done. */
  TXD_STAT_DD: 1 << 0,
  // Advanced receive descriptor write-back: STATUS_ERROR (dword 2), LENGTH (dword 3, bits 15:0).
  RXD_STAT_DD: 1 << 0,
  RXD_STAT_EOP: 1 << 1,
  RXD_ERR_RXE: 1 << 31,
} as const;

/** The shortest frame this driver sends, without the FCS: shorter ones are padded by the receiver. */
export const MIN_FRAME = 60;
/** The longest frame without jumbo frames (RCTL.LPE clear): 14-byte header and 1500-byte payload. */
export const MAX_FRAME = 1514;
/** The receive queue pairs this driver handles: IVAR registers 0-7 each carry one pair's vectors. */
export const MAX_QUEUES = 8;
/** Ring sizes: RDLEN and TDLEN are multiples of 128 bytes, 8 descriptors of 16 bytes. */
export const RING_ALIGN = 8;
/** The largest ring the datasheet allows. */
export const MAX_RING = 4096;
/** Bytes per descriptor, transmit and receive. */
const DESC = 16;
/** Each descriptor's buffer: one frame, up to 2 KiB (SRRCTL.BSIZEPACKET). */
const FRAME_BUFFER = 2048;

/** Options for {@link Igb.open} and {@link Igb.attach}, all checked before the device is touched. */
export interface IgbOptions {
  /** Transmit/receive queue pairs, each with its own MSI-X vector, 1 to {@link MAX_QUEUES} (default 1). */
  queues?: number;
  /**
   * Descriptors per ring, a multiple of {@link RING_ALIGN} from 8 to {@link MAX_RING} (default 256).
   * Without an IOMMU a ring must fit in one page: at most 256.
   */
  ringSize?: number;
  /** Poll the descriptors instead of waiting for MSI-X interrupts. */
  poll?: boolean;
  /** MAC loopback (RCTL.LBM): the port receives what it transmits, and nothing goes on the wire. */
  loopback?: boolean;
  /** Accept every unicast and multicast frame, not only those for the port's address. */
  promiscuous?: boolean;
  /** Limit for the link to come up and for every wait, in ms (default 5000). */
  timeoutMs?: number;
  /** Where progress lines go (default: nowhere). */
  log?: (line: string) => void;
}

/** Options for {@link Igb.open}. */
export interface IgbOpenOptions extends IgbOptions {
  /** The IOMMU backend (default auto: iommufd where the kernel has it). */
  backend?: BackendChoice;
}

interface Settings {
  queues: number;
  ringSize: number;
  poll: boolean;
  loopback: boolean;
  promiscuous: boolean;
  timeoutMs: number;
  log: (line: string) => void;
}

function settings(o: IgbOptions): Settings {
  const int = (name: string, v: unknown, min: number, max: number) => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      throw new RangeError(`Cannot use ${name} ${String(v)}: expected an integer from ${min} to ${max}`);
    }
    return v;
  };
  const ringSize = int("ringSize", o.ringSize ?? 256, RING_ALIGN, MAX_RING);
  if (ringSize % RING_ALIGN !== 0) {
    throw new RangeError(
      `Cannot use ringSize ${ringSize}: RDLEN and TDLEN must be multiples of 128 bytes, so a ring holds a ` +
        `multiple of ${RING_ALIGN} descriptors`,
    );
  }
  if (o.log !== undefined && typeof o.log !== "function") {
    throw new TypeError("Cannot use log: not a function");
  }
  return {
    queues: int("queues", o.queues ?? 1, 1, MAX_QUEUES),
    ringSize,
    poll: o.poll === true,
    loopback: o.loopback === true,
    promiscuous: o.promiscuous === true,
    timeoutMs: int("timeoutMs", o.timeoutMs ?? 5000, 1, 0x7fffffff),
    log: o.log ?? (() => {}),
  };
}

/** The NIC's statistics since the driver started (the registers clear on read; the driver sums them). */
export interface IgbCounters {
  /** Good packets received. */
  gprc: number;
  /** Good packets transmitted. */
  gptc: number;
  /** Good octets received, FCS included. */
  gorc: number;
  /** Good octets transmitted, FCS included. */
  gotc: number;
  /** Broadcast and multicast packets received. */
  bprc: number;
  mprc: number;
  /** Undersized (shorter than 64 bytes with FCS; padded) and oversized packets received. */
  ruc: number;
  roc: number;
  /** Total packets received and transmitted. */
  tpr: number;
  tpt: number;
}

const COUNTERS: readonly (keyof IgbCounters)[] = [
  "gprc",
  "gptc",
  "gorc",
  "gotc",
  "bprc",
  "mprc",
  "ruc",
  "roc",
  "tpr",
  "tpt",
];

const hex = (n: number) => `0x${(n >>> 0).toString(16).padStart(8, "0")}`;
const immediate = () => new Promise<void>((resolve) => setImmediate(resolve));
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// Frame buffers live as long as any port whose rings may hold them: ports that share a DMA pool
// swap buffers when they forward (IgbQueue.forwardTo), so a port's buffers may sit in another
// port's rings. They are freed when the last port using the pool closes.
const arenas = new WeakMap<DmaPool, { users: number; buffers: DmaBuffer[] }>();

/**
 * One transmit/receive queue pair of a port, with its rings and its MSI-X vector (the queue's
 * index). The burst methods allocate nothing: they are the hot path of a poll loop.
 */
export class IgbQueue {
  /** Descriptors per ring. */
  readonly size: number;
  readonly #igb: Igb;
  readonly #bar: Registers;
  readonly #irq: VfioIrq | undefined;
  readonly #rx: Uint32Array;
  readonly #tx: Uint32Array;
  // Descriptor words the NIC writes back are read through the buffers' volatile accessors: a
  // typed-array load in a polling loop may be hoisted by the JIT and never see the write.
  readonly #rxDone: Registers;
  readonly #txDone: Registers;
  readonly #rxRing: DmaBuffer;
  readonly #txRing: DmaBuffer;
  // Each slot's frame buffer: its device address in two halves, and the memory.
  readonly #rxLo: Uint32Array;
  readonly #rxHi: Uint32Array;
  readonly #rxFrames: Uint8Array[];
  readonly #txLo: Uint32Array;
  readonly #txHi: Uint32Array;
  readonly #txFrames: Uint8Array[];
  readonly #rdt: number;
  readonly #tdt: number;
  #rxNext = 0;
  #txTail = 0;
  #txClean = 0;
  // The last slot of each batch handed to the NIC (txFlush), oldest at #batchHead.
  readonly #batchEnds: Int32Array;
  #batchHead = 0;
  #batchTail = 0;
  #interrupts = 0;
  #event: Promise<number> | undefined;

  /** @internal Made by {@link Igb}; the rings and frames come from its DMA pool. */
  constructor(
    igb: Igb,
    /** The queue pair's number, which is also its MSI-X vector. */
    readonly index: number,
    size: number,
    bar: Registers,
    irq: VfioIrq | undefined,
    rings: [DmaBuffer, DmaBuffer],
    frames: { lo: Uint32Array; hi: Uint32Array; views: Uint8Array[] },
  ) {
    this.#igb = igb;
    this.size = size;
    this.#bar = bar;
    this.#irq = irq;
    [this.#rxRing, this.#txRing] = rings;
    this.#rx = this.#rxRing.view(Uint32Array, { length: 4 * size });
    this.#tx = this.#txRing.view(Uint32Array, { length: 4 * size });
    this.#rxDone = this.#rxRing.volatile;
    this.#txDone = this.#txRing.volatile;
    this.#rxLo = frames.lo.subarray(0, size);
    this.#rxHi = frames.hi.subarray(0, size);
    this.#rxFrames = frames.views.slice(0, size);
    this.#txLo = frames.lo.subarray(size, 2 * size);
    this.#txHi = frames.hi.subarray(size, 2 * size);
    this.#txFrames = frames.views.slice(size, 2 * size);
    this.#rdt = REG.RDT(index);
    this.#tdt = REG.TDT(index);
    this.#batchEnds = new Int32Array(size);
  }

  /** The port this queue belongs to. */
  get port(): Igb {
    return this.#igb;
  }

  // --- Bring-up ----------------------------------------------------------------------------------

  /** @internal Programs the receive ring (queue disabled): every slot armed, none given yet. */
  programRx(): void {
    const bar = this.#bar, q = this.index;
    for (let i = 0; i < this.size; i++) this.#arm(i);
    const [lo, hi] = split(this.#rxRing.iova);
    bar.write32(REG.RDBAL(q), lo);
    bar.write32(REG.RDBAH(q), hi);
    bar.write32(REG.RDLEN(q), this.size * DESC);
    bar.write32(
      REG.SRRCTL(q),
      BIT.SRRCTL_DESCTYPE_ADV_ONEBUF | (FRAME_BUFFER >> 10) * BIT.SRRCTL_BSIZEPKT_KB,
    );
    bar.write32(REG.RDH(q), 0);
    bar.write32(REG.RDT(q), 0);
    this.#rxNext = 0;
  }

  /** @internal Programs the transmit ring (queue disabled), empty. */
  programTx(): void {
    const bar = this.#bar, q = this.index;
    this.#tx.fill(0);
    const [lo, hi] = split(this.#txRing.iova);
    bar.write32(REG.TDBAL(q), lo);
    bar.write32(REG.TDBAH(q), hi);
    bar.write32(REG.TDLEN(q), this.size * DESC);
    bar.write32(REG.TDH(q), 0);
    bar.write32(REG.TDT(q), 0);
    this.#txTail = this.#txClean = 0;
    this.#batchHead = this.#batchTail = 0;
  }

  /**
   * @internal Enables or disables the receive and/or transmit ring and waits until the NIC says so
   * (the datasheet's order: a ring is reprogrammed only while its ENABLE reads 0).
   */
  async setEnabled(on: boolean, rings: { rx?: boolean; tx?: boolean }, timeoutMs: number): Promise<void> {
    const bar = this.#bar, q = this.index;
    const regs = [...(rings.rx ? [REG.RXDCTL(q)] : []), ...(rings.tx ? [REG.TXDCTL(q)] : [])];
    for (const r of regs) {
      bar.write32(r, on ? BIT.XDCTL_ENABLE | (r === REG.TXDCTL(q) ? BIT.TXDCTL_WTHRESH_1 : 0) : 0);
    }
    await until(
      () => regs.every((r) => ((bar.read32(r) & BIT.XDCTL_ENABLE) !== 0) === on),
      timeoutMs,
      () =>
        `Cannot ${on ? "enable" : "disable"} queue ${q} of ${this.#igb.name}: its ENABLE bit did not follow`,
    );
  }

  /** @internal Gives the NIC every receive slot but one (a full ring would look empty). */
  start(): void {
    this.#bar.write32(this.#rdt, this.size - 1);
  }

  // --- Receive -------------------------------------------------------------------------------------

  #arm(slot: number): void {
    const d = this.#rx, w = 4 * slot;
    d[w] = this.#rxLo[slot]!;
    d[w + 1] = this.#rxHi[slot]!;
    d[w + 2] = 0; // the header address; zeroing it also clears DD in the write-back layout
    d[w + 3] = 0;
  }

  #rxSlot(k: number): number {
    const s = this.#rxNext + k;
    return s >= this.size ? s - this.size : s;
  }

  /**
   * Counts the frames received and not yet released, in order, up to `max`.
   *
   * @param max The most to count (default: the ring).
   * @returns How many slots from the next one are done (DD).
   */
  rxReady(max: number = this.size - 1): number {
    let n = 0;
    while (n < max && (this.#rxDone.read32(this.#rxSlot(n) * DESC + 8) & BIT.RXD_STAT_DD) !== 0) n++;
    return n;
  }

  /**
   * The length of the k-th ready frame, checked: one buffer (EOP) and no frame error.
   *
   * @param k 0 for the next frame.
   * @returns Its length in bytes, without the FCS (RCTL.SECRC strips it).
   * @throws {Error} If the NIC wrote back an error or a frame spanning buffers.
   */
  rxLength(k: number): number {
    const at = this.#rxSlot(k) * DESC;
    const status = this.#rxDone.read32(at + 8);
    if ((status & (BIT.RXD_STAT_EOP | BIT.RXD_ERR_RXE)) !== BIT.RXD_STAT_EOP) {
      throw new Error(
        `Cannot take the frame in slot ${this.#rxSlot(k)} of ${this.#igb.name} queue ${this.index}: ` +
          `status ${hex(status)} (EOP clear, or RXE set)`,
      );
    }
    return this.#rxDone.read32(at + 12) & 0xffff;
  }

  /**
   * The buffer of the k-th ready frame (2 KiB; the frame is its first {@link rxLength} bytes). Valid
   * until the frame is released.
   *
   * @param k 0 for the next frame.
   * @returns The view.
   */
  rxFrame(k: number): Uint8Array {
    return this.#rxFrames[this.#rxSlot(k)]!;
  }

  /**
   * Gives the next `n` receive slots back to the NIC, with one RDT write.
   *
   * @param n How many frames were consumed.
   */
  rxRelease(n: number): void {
    if (n <= 0) return;
    for (let k = 0; k < n; k++) this.#arm(this.#rxSlot(k));
    this.#rxNext = this.#rxSlot(n);
    this.#bar.write32(this.#rdt, this.#rxNext === 0 ? this.size - 1 : this.#rxNext - 1);
  }

  // --- Transmit ------------------------------------------------------------------------------------

  /**
   * Reclaims the transmit descriptors the NIC has written back.
   *
   * @returns How many slots are free for {@link txFrame}/{@link txPrepare}.
   */
  txFree(): number {
    // Only the last descriptor of each flushed batch asks for a write-back (RS), as DPDK's
    // tx_rs_thresh does: the NIC completes descriptors in order, so its DD covers the batch.
    const ends = this.#batchEnds, size = this.size;
    let head = this.#batchHead;
    while (head !== this.#batchTail) {
      const end = ends[head]!;
      if ((this.#txDone.read32(end * DESC + 12) & BIT.TXD_STAT_DD) === 0) break;
      this.#txClean = end + 1 === size ? 0 : end + 1;
      if (++head === size) head = 0;
    }
    this.#batchHead = head;
    const tail = this.#txTail, clean = this.#txClean;
    const used = tail >= clean ? tail - clean : tail + size - clean;
    return size - 1 - used;
  }

  /** Transmit descriptors handed to the NIC and not yet reclaimed (after the last {@link txFree}). */
  get txInFlight(): number {
    const used = this.#txTail - this.#txClean;
    return used >= 0 ? used : used + this.size;
  }

  #txSlot(k: number): number {
    const s = this.#txTail + k;
    return s >= this.size ? s - this.size : s;
  }

  /**
   * The buffer of the k-th free transmit slot (2 KiB), to write a frame into.
   *
   * @param k 0 for the next slot; must be below {@link txFree}.
   * @returns The view.
   */
  txFrame(k: number): Uint8Array {
    return this.#txFrames[this.#txSlot(k)]!;
  }

  /**
   * Writes the descriptor of the k-th free slot: one advanced data descriptor for a whole frame,
   * with the FCS appended (IFCS).
   *
   * @param k 0 for the next slot; must be below {@link txFree}.
   * @param length The frame's length without FCS, {@link MIN_FRAME} to {@link MAX_FRAME} (the
   *   caller's promise on this path: {@link Igb.send} checks it).
   */
  txPrepare(k: number, length: number): void {
    const slot = this.#txSlot(k);
    this.#txDescriptor(slot, this.#txLo[slot]!, this.#txHi[slot]!, length);
  }

  #txDescriptor(slot: number, lo: number, hi: number, length: number): void {
    const d = this.#tx, w = 4 * slot;
    d[w] = lo;
    d[w + 1] = hi;
    d[w + 2] = length | BIT.TXD_DTYP_DATA | BIT.TXD_DCMD_DEXT | BIT.TXD_DCMD_IFCS | BIT.TXD_DCMD_EOP;
    d[w + 3] = (length << BIT.TXD_PAYLEN_SHIFT) >>> 0; // PAYLEN; also clears DD
  }

  /**
   * Hands the next `n` prepared descriptors to the NIC with one TDT write; the last asks for a
   * write-back (RS), which raises the queue's vector.
   *
   * @param n How many were prepared.
   */
  txFlush(n: number): void {
    if (n <= 0) return;
    const last = this.#txSlot(n - 1);
    const w = 4 * last + 2;
    this.#tx[w] = this.#tx[w]! | BIT.TXD_DCMD_RS;
    this.#batchEnds[this.#batchTail] = last;
    if (++this.#batchTail === this.size) this.#batchTail = 0;
    this.#txTail = last + 1 === this.size ? 0 : last + 1;
    this.#bar.write32(this.#tdt, this.#txTail);
  }

  /**
   * Forwards up to `max` received frames out of another queue without copying: each frame's buffer
   * moves to the other queue's transmit ring, and the transmit slot's (already sent) buffer takes
   * its place in this receive ring. Both ports must share a DMA pool (one IOMMU address space).
   *
   * @param out Where the frames go, e.g. the other port's queue.
   * @param max The burst size.
   * @returns How many frames were forwarded.
   */
  forwardTo(out: IgbQueue, max: number): number {
    if (out.#igb.dma !== this.#igb.dma) {
      throw new TypeError(
        `Cannot forward from ${this.#igb.name} to ${out.#igb.name} without copying: their frame buffers are ` +
          "in different IOMMU address spaces; attach both ports with one DmaPool (Igb.attach)",
      );
    }
    const free = out.txFree();
    if (max > free) max = free;
    const done = this.#rxDone, size = this.size, outSize = out.size;
    let n = 0;
    for (let rs = this.#rxNext, ts = out.#txTail; n < max; n++) {
      // One read of the status word per frame: done, one buffer, no error.
      const status = done.read32(rs * DESC + 8);
      if ((status & BIT.RXD_STAT_DD) === 0) break;
      if ((status & (BIT.RXD_STAT_EOP | BIT.RXD_ERR_RXE)) !== BIT.RXD_STAT_EOP) this.rxLength(n); // throws
      const length = done.read32(rs * DESC + 12) & 0xffff;
      const lo = this.#rxLo[rs]!, hi = this.#rxHi[rs]!, frame = this.#rxFrames[rs]!;
      this.#rxLo[rs] = out.#txLo[ts]!;
      this.#rxHi[rs] = out.#txHi[ts]!;
      this.#rxFrames[rs] = out.#txFrames[ts]!;
      out.#txLo[ts] = lo;
      out.#txHi[ts] = hi;
      out.#txFrames[ts] = frame;
      out.#txDescriptor(ts, lo, hi, length);
      if (++rs === size) rs = 0;
      if (++ts === outSize) ts = 0;
    }
    if (n === 0) return 0;
    // Receive slots first: what `out` sends may come straight back to this port (QEMU delivers
    // during the TDT write).
    this.rxRelease(n);
    out.txFlush(n);
    return n;
  }

  // --- Direct descriptors (memcpy) -----------------------------------------------------------------

  /** @internal Posts receive descriptors for device addresses from slot 0 of a freshly programmed ring. */
  postRaw(addresses: readonly bigint[]): void {
    addresses.forEach((a, slot) => {
      const [lo, hi] = split(a), w = 4 * slot;
      this.#rx[w] = lo;
      this.#rx[w + 1] = hi;
      this.#rx[w + 2] = this.#rx[w + 3] = 0;
    });
    this.#bar.write32(this.#rdt, addresses.length);
  }

  /** @internal Sends from device addresses, one frame each, with one TDT write. */
  sendRaw(frames: readonly { address: bigint; length: number }[]): void {
    frames.forEach(({ address, length }, k) => {
      const [lo, hi] = split(address);
      this.#txDescriptor(this.#txSlot(k), lo, hi, length);
    });
    this.txFlush(frames.length);
  }

  /** @internal The write-back of receive slot `slot` (after postRaw): done, and its length. */
  rawDone(slot: number): { done: boolean; status: number; length: number } {
    const status = this.#rxDone.read32(slot * DESC + 8);
    return {
      done: (status & BIT.RXD_STAT_DD) !== 0,
      status,
      length: this.#rxDone.read32(slot * DESC + 12) & 0xffff,
    };
  }

  // --- Waiting -----------------------------------------------------------------------------------

  /**
   * MSI-X interrupts this queue's vector delivered (pending ones are counted when no wait is
   * in progress).
   */
  get interrupts(): number {
    if (this.#irq && !this.#event && !this.#irq.closed) {
      this.#interrupts += this.#irq.wait({ vector: this.index, timeoutMs: 0 });
    }
    return this.#interrupts;
  }

  // Concurrent waiters on one vector share one eventfd read: two reads of one eventfd would each
  // wait for the next interrupt, and one wake-up reaches only one of them.
  #nextEvent(irq: VfioIrq): Promise<number> {
    return this.#event ??= irq.next({ vector: this.index }).then((n) => {
      this.#event = undefined;
      this.#interrupts += n;
      return n;
    }, (e) => {
      this.#event = undefined;
      throw e;
    });
  }

  /**
   * Waits until `done()` holds: for this queue's MSI-X vector (the condition is checked first, then
   * after each interrupt), or by polling.
   *
   * @param done The condition.
   * @param what What is awaited, for the timeout's message.
   * @param options `first`: wait for an interrupt before the first check (interrupt mode).
   * @throws {Error} After the port's timeout, naming `what`.
   */
  async waitFor(done: () => boolean, what: string, options: { first?: boolean } = {}): Promise<void> {
    const irq = this.#irq, timeoutMs = this.#igb.timeoutMs;
    const fail = () =>
      new Error(
        `Cannot ${what} on ${this.#igb.name} queue ${this.index}: not within ${timeoutMs} ms ` +
          `(${irq ? `MSI-X vector ${this.index}, ${this.#interrupts} interrupts so far` : "polling"}; ` +
          `RDH ${this.#bar.read32(REG.RDH(this.index))} RDT ${this.#bar.read32(this.#rdt)} ` +
          `TDH ${this.#bar.read32(REG.TDH(this.index))} TDT ${this.#bar.read32(this.#tdt)})`,
      );
    if (!irq) {
      await until(done, timeoutMs, fail);
      return;
    }
    if (!options.first && done()) return;
    let timedOut = false;
    // next() cannot be cancelled: the timeout fires the vector from software, which wakes it.
    const timer = setTimeout(() => {
      timedOut = true;
      if (!irq.closed) irq.trigger({ start: this.index });
    }, timeoutMs);
    try {
      for (;;) {
        const n = await this.#nextEvent(irq);
        if (done()) return;
        if (timedOut) throw fail();
        if (n === 0 || irq.closed) throw new Error(`Cannot ${what}: ${this.#igb.name} was closed`);
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Waits for a received frame.
   *
   * @param min How many frames to wait for (default 1).
   * @returns How many are ready.
   */
  async waitRx(min = 1): Promise<number> {
    await this.waitFor(() => this.rxReady(min) >= min, `receive ${min} frame${min === 1 ? "" : "s"}`);
    return this.rxReady();
  }

  /** Waits until the NIC has written back every transmit descriptor handed to it. */
  async waitTx(): Promise<void> {
    await this.waitFor(() => {
      this.txFree();
      return this.txInFlight === 0;
    }, "complete transmission");
  }
}

/**
 * A driver for one 82576 port (PF) bound to vfio-pci.
 *
 * Start-up: function reset (VFIO), software reset (CTRL.RST), bus mastering, auto-negotiation
 * restarted through the PHY and waited for (STATUS.LU), the receive filter (RCTL), the queue
 * pairs' rings, RSS when there are several, and unless polling, MSI-X: vector q for queue pair q
 * (IVAR), auto-cleared (EIAC), unthrottled (EITR), unmasked (EIMS). Frames that were waiting for
 * the port are discarded and the statistics zeroed before it is handed over.
 *
 * Closing quiesces the port (interrupts masked, receive and transmit disabled, CTRL.RST), then
 * disables MSI-X and frees the DMA memory, then closes what it owns. `await using` also waits
 * for pending waits to settle.
 *
 * @example
 * ```ts ignore
 * await using igb = await Igb.open("0000:00:0a.0", { loopback: true });
 * igb.send([frame]); // 60-1514 bytes
 * const [back] = await igb.receive(1);
 * ```
 */
export class Igb implements AsyncDisposable, Disposable {
  /** The queue pairs; queue pair q uses MSI-X vector q. */
  readonly queues: IgbQueue[] = [];
  readonly #device: VfioDevice;
  readonly #dma: DmaPool;
  readonly #owner: { close(): void } | undefined;
  readonly #o: Settings;
  readonly #bar: Registers;
  #irq: VfioIrq | undefined;
  #mac = "";
  #rctl = 0;
  #closed = false;
  readonly #totals: IgbCounters = Object.fromEntries(COUNTERS.map((c) => [c, 0])) as unknown as IgbCounters;
  readonly #memory: DmaBuffer[] = [];
  #arena: { users: number; buffers: DmaBuffer[] } | undefined;

  /**
   * Opens a port bound to vfio-pci with an IOMMU backend and DMA pool of its own, and starts it.
   *
   * @param bdf The port's PCI address.
   * @param options Queues, rings, interrupts or polling, loopback, backend.
   * @returns The running driver; dispose it to release everything.
   * @throws {RangeError} If an option is out of range (before anything is opened).
   * @throws {InvalidPciAddressError} If `bdf` is not a PCI address (before anything is opened).
   * @throws {TypeError} If the device is not an 82576 PF.
   * @throws {VfioError} If the device cannot be opened or its DMA memory mapped.
   * @throws {Error} If the link does not come up within the timeout.
   */
  static async open(bdf: string, options: IgbOpenOptions = {}): Promise<Igb> {
    settings(options);
    parsePciAddress(bdf);
    if (options.backend !== undefined && !["auto", "legacy", "iommufd"].includes(options.backend)) {
      throw new RangeError(`Cannot use backend ${String(options.backend)}: expected auto, legacy or iommufd`);
    }
    const vfio: OpenedDevice = await open(bdf, options.backend ? { backend: options.backend } : {});
    let dma: DmaPool;
    try {
      requireIgb(vfio.device); // first: the wrong device is the clearer error than "no DMA here"
      dma = vfio.dma; // made on first use; it refuses on the legacy no-IOMMU container
    } catch (e) {
      vfio.close();
      throw e;
    }
    return Igb.attach(vfio.device, dma, options, vfio);
  }

  /**
   * Starts a port on a device opened by the caller, with frames and rings from the given DMA pool.
   * Ports attached with one pool (devices of one IOMMU backend) can forward to each other without
   * copying ({@link IgbQueue.forwardTo}). Open the devices before making the pool: the legacy
   * container learns its IOVA ranges when the first group joins.
   *
   * @param device The port, opened through a backend.
   * @param dma DMA memory in the device's IOMMU address space.
   * @param options Queues, rings, interrupts or polling, loopback.
   * @param owner What closing the driver closes; default: the device.
   * @returns The running driver.
   * @throws {RangeError} If an option is out of range, or a ring cannot fit one page without an IOMMU.
   * @throws {TypeError} If the device is not an 82576 PF.
   */
  static async attach(
    device: VfioDevice,
    dma: DmaPool,
    options: IgbOptions = {},
    owner?: { close(): void },
  ): Promise<Igb> {
    let igb: Igb | undefined;
    try {
      const o = settings(options);
      requireIgb(device);
      if (!dma.backend.translates && o.ringSize * DESC > dma.sys.pageSize) {
        throw new RangeError(
          `Cannot use ringSize ${o.ringSize} without an IOMMU: a ring must be physically contiguous, one ` +
            `${dma.sys.pageSize}-byte page, so at most ${dma.sys.pageSize / DESC} descriptors`,
        );
      }
      igb = new Igb(device, dma, o, owner);
      await igb.#start();
      return igb;
    } catch (e) {
      try {
        if (igb) igb.close();
        else (owner ?? device).close();
      } catch {
        // The start-up error says more than a failed teardown after it.
      }
      throw e;
    }
  }

  private constructor(device: VfioDevice, dma: DmaPool, o: Settings, owner: { close(): void } | undefined) {
    this.#device = device;
    this.#dma = dma;
    this.#o = o;
    this.#owner = owner;
    this.#bar = device.registers(0);
  }

  /** The port's PCI address. */
  get name(): string {
    return this.#device.name;
  }

  /** The VFIO device. */
  get device(): VfioDevice {
    return this.#device;
  }

  /** The DMA pool its rings and frames come from, in the port's IOMMU address space. */
  get dma(): DmaPool {
    return this.#dma;
  }

  /** BAR0: the port's registers. */
  get registers(): Registers {
    return this.#bar;
  }

  /** The port's MAC address (receive address 0), e.g. `52:54:00:12:34:0a`. */
  get mac(): string {
    return this.#mac;
  }

  /** Whether it polls instead of waiting for MSI-X. */
  get polling(): boolean {
    return this.#o.poll;
  }

  /** Whether MAC loopback is on. */
  get loopback(): boolean {
    return this.#o.loopback;
  }

  /** The limit for each wait, in ms. */
  get timeoutMs(): number {
    return this.#o.timeoutMs;
  }

  /** Whether the link is up (STATUS.LU). */
  get linkUp(): boolean {
    return (this.#bar.read32(REG.STATUS) & BIT.STATUS_LU) !== 0;
  }

  /** Timings of the start-up steps, in ms. */
  readonly timings: { reset: number; link: number; drained: number } = { reset: 0, link: 0, drained: 0 };

  async #start(): Promise<void> {
    const bar = this.#bar, o = this.#o, device = this.#device;
    let t = performance.now();
    // The function reset (FLR) clears what a previous user left; CTRL.RST then puts the MAC in its
    // documented state (and is all there is without a reset method).
    if (device.info().reset) device.reset();
    bar.write32(REG.IMC, 0xffffffff);
    bar.write32(REG.EIMC, 0xffffffff);
    bar.write32(REG.CTRL, bar.read32(REG.CTRL) | BIT.CTRL_RST);
    await sleep(1); // the datasheet asks for 1 ms before the next access
    await until(
      () => (bar.read32(REG.CTRL) & BIT.CTRL_RST) === 0,
      o.timeoutMs,
      () => `Cannot reset ${this.name}: CTRL.RST stays set`,
    );
    bar.write32(REG.IMC, 0xffffffff);
    bar.write32(REG.EIMC, 0xffffffff);
    this.timings.reset = round(performance.now() - t);
    device.config.enableBusMaster(); // descriptor and frame DMA, and MSI-X messages
    bar.write32(REG.CTRL_EXT, bar.read32(REG.CTRL_EXT) | BIT.CTRL_EXT_DRV_LOAD);
    const ral = bar.read32(REG.RAL0), rah = bar.read32(REG.RAH0);
    if (!(rah & BIT.RAH_AV)) throw new Error(`Cannot read the MAC address of ${this.name}: RAH0.AV is clear`);
    this.#mac = [ral, ral >>> 8, ral >>> 16, ral >>> 24, rah, rah >>> 8]
      .map((b) => (b & 0xff).toString(16).padStart(2, "0")).join(":");

    // DMA memory, before the port is told about any of it: a frame buffer per descriptor, the rings.
    const arena = arenas.get(this.#dma) ?? { users: 0, buffers: [] };
    arenas.set(this.#dma, arena);
    arena.users++;
    this.#arena = arena;
    const perQueue = this.#frames(arena, 2 * o.ringSize, o.queues);
    if (!o.poll) {
      // One vector per queue pair, enabled before the port is told to use them.
      this.#irq = device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: o.queues });
    }
    for (let q = 0; q < o.queues; q++) {
      const rings: [DmaBuffer, DmaBuffer] = [this.#alloc(o.ringSize * DESC), this.#alloc(o.ringSize * DESC)];
      this.queues.push(new IgbQueue(this, q, o.ringSize, bar, this.#irq, rings, perQueue[q]!));
    }

    // Link: CTRL.SLU for the datasheet; QEMU brings the link up only when auto-negotiation
    // completes, which a reset stops, so it is restarted through the PHY's control register.
    t = performance.now();
    bar.write32(REG.CTRL, bar.read32(REG.CTRL) | BIT.CTRL_SLU | BIT.CTRL_FD);
    await this.#writePhy(
      BIT.PHY_BMCR,
      BIT.BMCR_AUTOEN | BIT.BMCR_ANRESTART | BIT.BMCR_FD | BIT.BMCR_SPEED1000,
    );
    await until(
      () => this.linkUp,
      o.timeoutMs,
      () =>
        `Cannot bring the link of ${this.name} up: STATUS.LU is still clear after ${o.timeoutMs} ms ` +
        `(STATUS ${hex(bar.read32(REG.STATUS))})`,
      5,
    );
    this.timings.link = round(performance.now() - t);

    // Receive filter, queues, RSS.
    for (const queue of this.queues) {
      await queue.setEnabled(false, { rx: true, tx: true }, o.timeoutMs);
      queue.programRx();
      queue.programTx();
    }
    // No receive checksum offload (IPOFLD, TUOFLD): nothing here reads its verdict, and QEMU would
    // compute every frame's IP and UDP checksums to give it.
    bar.write32(REG.RXCSUM, 0);
    if (o.queues > 1) this.#setupRss();
    else bar.write32(REG.MRQC, 0);
    this.#rctl = BIT.RCTL_EN | BIT.RCTL_BAM | BIT.RCTL_SECRC |
      (o.promiscuous ? BIT.RCTL_UPE | BIT.RCTL_MPE : 0) | (o.loopback ? BIT.RCTL_LBM_MAC : 0);
    for (const queue of this.queues) await queue.setEnabled(true, { rx: true, tx: true }, o.timeoutMs);
    bar.write32(REG.RCTL, this.#rctl);
    bar.write32(REG.TCTL, bar.read32(REG.TCTL) | BIT.TCTL_EN | BIT.TCTL_PSP);

    // Interrupts: queue pair q's receive and transmit write-backs raise vector q.
    bar.write32(REG.GPIE, BIT.GPIE_MULTIPLE_MSIX | BIT.GPIE_PBA_SUPPORT);
    const vectors = (1 << o.queues) - 1;
    for (let q = 0; q < o.queues; q++) {
      bar.write32(REG.IVAR(q), (q | BIT.IVAR_VALID) | ((q | BIT.IVAR_VALID) << 8));
      bar.write32(REG.EITR(q), 0);
    }
    bar.write32(REG.EIAC, vectors);

    // Frames QEMU held for the port while it could not receive arrive as soon as it can: take them
    // and drop them, until a refill brings no more, then start the counters from zero.
    t = performance.now();
    let discarded = 0;
    for (const queue of this.queues) queue.start();
    for (let more = true; more && discarded < 100_000;) {
      more = false;
      for (const queue of this.queues) {
        const n = queue.rxReady();
        if (n > 0) {
          queue.rxRelease(n);
          discarded += n;
          more = true;
        }
      }
    }
    this.#readCounters();
    for (const c of COUNTERS) this.#totals[c] = 0;
    this.timings.drained = round(performance.now() - t);
    if (this.#irq) {
      // No MSI-X was sent while EIMS was clear; the causes the drain raised are dropped.
      bar.write32(REG.EICR, vectors);
      bar.write32(REG.EIMS, vectors);
    }
    o.log(
      `${this.name}: MAC ${this.#mac}, link up in ${this.timings.link} ms, ${o.queues} queue pair${
        o.queues === 1 ? "" : "s"
      } of ${o.ringSize} descriptors, ${
        this.#irq ? (o.queues === 1 ? "MSI-X vector 0" : `MSI-X vectors 0-${o.queues - 1}`) : "polling"
      }${o.loopback ? ", MAC loopback" : ""}${discarded ? `; ${discarded} stale frames discarded` : ""}`,
    );
  }

  // Frame buffers: several per DMA buffer, one page each without an IOMMU (only a page is known to
  // be physically contiguous there).
  #frames(
    arena: { buffers: DmaBuffer[] },
    perQueue: number,
    queues: number,
  ): { lo: Uint32Array; hi: Uint32Array; views: Uint8Array[] }[] {
    const chunk = this.#dma.backend.translates ? 64 : Math.max(1, this.#dma.sys.pageSize / FRAME_BUFFER);
    const total = perQueue * queues;
    const lo = new Uint32Array(total), hi = new Uint32Array(total), views: Uint8Array[] = [];
    for (let i = 0; i < total; i += chunk) {
      const n = Math.min(chunk, total - i);
      const buf = this.#dma.alloc(n * FRAME_BUFFER);
      arena.buffers.push(buf);
      const bytes = buf.bytes;
      for (let k = 0; k < n; k++) {
        [lo[i + k], hi[i + k]] = split(buf.iova + BigInt(k * FRAME_BUFFER));
        views.push(bytes.subarray(k * FRAME_BUFFER, (k + 1) * FRAME_BUFFER));
      }
    }
    return Array.from({ length: queues }, (_, q) => ({
      lo: lo.subarray(q * perQueue, (q + 1) * perQueue),
      hi: hi.subarray(q * perQueue, (q + 1) * perQueue),
      views: views.slice(q * perQueue, (q + 1) * perQueue),
    }));
  }

  #alloc(size: number): DmaBuffer {
    const buf = this.#dma.alloc(size);
    this.#memory.push(buf);
    return buf;
  }

  // RSS over the IPv4 addresses: RETA entry i names queue i mod N, with the usual Toeplitz key.
  #setupRss(): void {
    const bar = this.#bar, n = this.#o.queues;
    for (let i = 0; i < 10; i++) {
      bar.write32(
        REG.RSSRK(i),
        RSS_KEY.slice(4 * i, 4 * i + 4).reduce((v, b, j) => v | (b << (8 * j)), 0) >>> 0,
      );
    }
    for (let i = 0; i < 32; i++) {
      let v = 0;
      for (let j = 0; j < 4; j++) v |= ((4 * i + j) % n) << (8 * j);
      bar.write32(REG.RETA(i), v >>> 0);
    }
    bar.write32(REG.RXCSUM, BIT.RXCSUM_PCSD); // the RSS hash in the write-back
    bar.write32(REG.MRQC, BIT.MRQC_RSS | BIT.MRQC_RSS_FIELD_IPV4);
  }

  async #writePhy(reg: number, value: number): Promise<void> {
    const bar = this.#bar;
    bar.write32(
      REG.MDIC,
      value | (reg << BIT.MDIC_REG_SHIFT) | (BIT.PHY_ADDRESS << BIT.MDIC_PHY_SHIFT) | BIT.MDIC_OP_WRITE,
    );
    let mdic = 0;
    await until(
      () => ((mdic = bar.read32(REG.MDIC)) & BIT.MDIC_READY) !== 0,
      this.#o.timeoutMs,
      () => `Cannot write PHY register ${reg} of ${this.name}: MDIC.READY stays clear`,
    );
    if (mdic & BIT.MDIC_ERROR) {
      throw new Error(
        `Cannot write PHY register ${reg} of ${this.name}: MDIC reports an error (${hex(mdic)})`,
      );
    }
  }

  #readCounters(): void {
    const bar = this.#bar, t = this.#totals;
    t.gprc += bar.read32(REG.GPRC);
    t.gptc += bar.read32(REG.GPTC);
    t.gorc += bar.read32(REG.GORCL) + bar.read32(REG.GORCH) * 2 ** 32; // low half first
    t.gotc += bar.read32(REG.GOTCL) + bar.read32(REG.GOTCH) * 2 ** 32;
    t.bprc += bar.read32(REG.BPRC);
    t.mprc += bar.read32(REG.MPRC);
    t.ruc += bar.read32(REG.RUC);
    t.roc += bar.read32(REG.ROC);
    t.tpr += bar.read32(REG.TPR);
    t.tpt += bar.read32(REG.TPT);
  }

  /**
   * The statistics registers, summed since the port started (each read clears them).
   *
   * @returns A copy of the totals.
   */
  counters(): IgbCounters {
    this.#readCounters();
    return { ...this.#totals };
  }

  #queue(queue: number | undefined): IgbQueue {
    const q = queue ?? 0;
    const found = this.queues[q];
    if (!Number.isInteger(q) || !found) {
      throw new RangeError(
        `Cannot use queue ${q} of ${this.name}: it has queues 0-${this.queues.length - 1}`,
      );
    }
    return found;
  }

  /**
   * Sends frames on one queue, copied into its transmit buffers, with one doorbell write.
   *
   * @param frames Ethernet frames without FCS, {@link MIN_FRAME} to {@link MAX_FRAME} bytes each.
   * @param options The queue (default 0).
   * @returns How many were queued: all of them, or as many as the ring had room for.
   * @throws {RangeError} If a frame's size is out of range or the queue does not exist (nothing sent).
   */
  send(frames: readonly Uint8Array[], options: { queue?: number } = {}): number {
    this.#open();
    const q = this.#queue(options.queue);
    frames.forEach((f, i) => {
      if (!(f instanceof Uint8Array) || f.length < MIN_FRAME || f.length > MAX_FRAME) {
        throw new RangeError(
          `Cannot send frame ${i} of ${f instanceof Uint8Array ? f.length : String(f)} bytes: frames are ` +
            `${MIN_FRAME} to ${MAX_FRAME} bytes without the FCS (no jumbo frames)`,
        );
      }
    });
    const n = Math.min(frames.length, q.txFree());
    for (let k = 0; k < n; k++) {
      const f = frames[k]!;
      q.txFrame(k).set(f);
      q.txPrepare(k, f.length);
    }
    q.txFlush(n);
    return n;
  }

  /**
   * Receives frames from one queue, waiting for its MSI-X vector (or polling) until `count` have
   * arrived.
   *
   * @param count How many frames.
   * @param options The queue (default 0).
   * @returns Copies of the frames, in arrival order.
   * @throws {Error} If they do not all arrive within the timeout.
   */
  async receive(count: number, options: { queue?: number } = {}): Promise<Uint8Array[]> {
    this.#open();
    const q = this.#queue(options.queue);
    if (!Number.isSafeInteger(count) || count < 0) throw new RangeError(`Cannot receive ${count} frames`);
    const out: Uint8Array[] = [];
    while (out.length < count) {
      await q.waitFor(() => q.rxReady(1) > 0, `receive frame ${out.length + 1} of ${count}`);
      const n = Math.min(q.rxReady(), count - out.length);
      for (let k = 0; k < n; k++) out.push(q.rxFrame(k).slice(0, q.rxLength(k)));
      q.rxRelease(n);
    }
    return out;
  }

  /**
   * Copies `length` bytes from `src` to `dst` through the NIC's DMA, as the kernel's VFIO selftest
   * driver does: the bytes are transmitted as frames of up to `chunkSize` from `src` and received
   * straight into `dst`, on queue 0 of both ports, and the receiver's completion interrupt is
   * awaited (or its descriptors polled). The receiving queue is reprogrammed for the copy (its
   * descriptors point into `dst`) and restored after; it takes every frame during the copy
   * (promiscuous, RSS off).
   *
   * The NIC parses each chunk as an Ethernet frame: QEMU drops one whose bytes 12-13 announce
   * IPv4 or IPv6 with a malformed header, which then times out with that reason.
   *
   * @param src Memory this port can read (from its DMA pool).
   * @param dst Memory the receiver can write (from its DMA pool).
   * @param length Bytes, at least {@link MIN_FRAME} (a frame's minimum).
   * @param options `receiver`: the port that receives (default this one, which needs MAC loopback);
   *   `chunkSize`: bytes per frame, 60 to 1514 (default 1024, the selftest's).
   * @returns The frames used and the receiver's interrupts during the copy.
   * @throws {RangeError} If a size is out of range (nothing touched).
   * @throws {TypeError} If a buffer is not from the right pool, or this port has no loopback and no receiver.
   */
  async memcpy(
    src: DmaBuffer,
    dst: DmaBuffer,
    length: number,
    options: { receiver?: Igb; chunkSize?: number } = {},
  ): Promise<{ frames: number; interrupts: number }> {
    this.#open();
    const receiver = options.receiver ?? this;
    if (!(receiver instanceof Igb)) throw new TypeError("Cannot copy: the receiver is not an Igb");
    receiver.#open();
    if (receiver === this && !this.#o.loopback) {
      throw new TypeError(
        `Cannot copy through ${this.name} alone without MAC loopback: open it with { loopback: true }, or pass ` +
          "{ receiver } (a port on the same wire)",
      );
    }
    const chunk = options.chunkSize ?? 1024;
    if (!Number.isInteger(chunk) || chunk < MIN_FRAME || chunk > MAX_FRAME) {
      throw new RangeError(
        `Cannot copy in chunks of ${chunk} bytes: a frame is ${MIN_FRAME} to ${MAX_FRAME}`,
      );
    }
    if (!this.#dma.buffers.has(src) || !receiver.#dma.buffers.has(dst)) {
      throw new TypeError(
        "Cannot copy: src must be a live buffer of the sender's DMA pool and dst one of the receiver's",
      );
    }
    if (!Number.isSafeInteger(length) || length < MIN_FRAME || length > src.size || length > dst.size) {
      throw new RangeError(
        `Cannot copy ${length} bytes: expected ${MIN_FRAME} up to the buffers' sizes (${src.size}, ${dst.size})`,
      );
    }
    // Equal chunks of at most chunkSize, none below the minimum frame.
    let n = Math.ceil(length / chunk);
    while (n > 1 && Math.floor(length / n) < MIN_FRAME) n--;
    const sizes = Array.from({ length: n }, (_, i) => Math.floor(length / n) + (i < length % n ? 1 : 0));
    const tx = this.queues[0]!, rx = receiver.queues[0]!;
    tx.txFree();
    if (tx.txInFlight > 0 || rx.rxReady() > 0) {
      throw new TypeError(
        `Cannot copy: queue 0 of ${this.name} or ${receiver.name} is busy; receive or wait first`,
      );
    }
    const rbar = receiver.#bar, irq = receiver.#irq;
    const mrqc = rbar.read32(REG.MRQC);
    const before = rx.interrupts;
    const perRound = Math.min(tx.size, rx.size) - 1;
    // The receive ring is reprogrammed with its queue disabled, as the datasheet asks of a ring the
    // NIC may have prefetched from.
    rbar.write32(REG.RCTL, receiver.#rctl | BIT.RCTL_UPE | BIT.RCTL_MPE | BIT.RCTL_BAM);
    rbar.write32(REG.MRQC, 0);
    try {
      for (let first = 0, offset = 0; first < n; first += perRound) {
        const round = sizes.slice(first, first + perRound);
        const offsets = round.map((s) => (offset += s) - s);
        await rx.setEnabled(false, { rx: true }, this.#o.timeoutMs);
        rx.programRx();
        await rx.setEnabled(true, { rx: true }, this.#o.timeoutMs);
        if (irq) irq.wait({ vector: 0, timeoutMs: 0 }); // a stale count must not pass for completion
        rx.postRaw(offsets.map((o) => dst.iova + BigInt(o)));
        tx.sendRaw(round.map((s, i) => ({ address: src.iova + BigInt(offsets[i]!), length: s })));
        const ether = (i: number) => (src.bytes[offsets[i]! + 12]! << 8) | src.bytes[offsets[i]! + 13]!;
        await rx.waitFor(() => round.every((_, i) => rx.rawDone(i).done), `copy ${round.length} chunks`, {
          first: true,
        }).catch((e) => {
          const lost = round.findIndex((_, i) => !rx.rawDone(i).done);
          const type = lost >= 0 ? ether(lost) : 0;
          const why = type === 0x0800 || type === 0x86dd
            ? `; its bytes 12-13 read 0x${
              type.toString(16)
            }, so the NIC parsed it as IP and may have dropped it`
            : "";
          throw new Error(
            `${e.message}; chunk ${first + lost} at offset ${offsets[lost]} did not arrive${why}`,
          );
        });
        round.forEach((s, i) => {
          const { status, length: got } = rx.rawDone(i);
          if (got !== s || (status & (BIT.RXD_STAT_EOP | BIT.RXD_ERR_RXE)) !== BIT.RXD_STAT_EOP) {
            throw new Error(
              `Cannot copy chunk ${first + i}: ${got} of ${s} bytes arrived (status ${hex(status)})`,
            );
          }
        });
        await tx.waitTx();
      }
    } finally {
      rbar.write32(REG.MRQC, mrqc);
      rbar.write32(REG.RCTL, receiver.#rctl);
      await rx.setEnabled(false, { rx: true }, this.#o.timeoutMs);
      rx.programRx();
      await rx.setEnabled(true, { rx: true }, this.#o.timeoutMs);
      rx.start();
    }
    return { frames: n, interrupts: rx.interrupts - before };
  }

  #open(): void {
    if (this.#closed) throw new TypeError(`Cannot use ${this.name}: the driver is closed`);
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Quiesces the port (interrupts masked, receive and transmit off, CTRL.RST), disables MSI-X,
   * frees its DMA memory, and closes what it owns (the device, or what {@link open} opened).
   * Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const bar = this.#bar;
    const steps: (() => void)[] = [
      () => {
        if (bar.closed) return;
        bar.write32(REG.EIMC, 0xffffffff);
        bar.write32(REG.IMC, 0xffffffff);
        bar.write32(REG.RCTL, 0);
        bar.write32(REG.TCTL, 0);
        for (const q of this.queues) {
          bar.write32(REG.RXDCTL(q.index), 0);
          bar.write32(REG.TXDCTL(q.index), 0);
        }
        bar.write32(REG.CTRL_EXT, bar.read32(REG.CTRL_EXT) & ~BIT.CTRL_EXT_DRV_LOAD);
        // The reset forgets the rings, so nothing can reach the memory freed below.
        bar.write32(REG.CTRL, bar.read32(REG.CTRL) | BIT.CTRL_RST);
      },
      () => this.#irq?.close(),
      ...this.#memory.splice(0).map((b) => () => b.free()),
      () => {
        const arena = this.#arena;
        this.#arena = undefined;
        if (arena && --arena.users === 0) { for (const b of arena.buffers.splice(0)) b.free(); }
      },
      () => (this.#owner ?? this.#device).close(),
    ];
    const errors: unknown[] = [];
    for (const step of steps) {
      try {
        step();
      } catch (e) {
        errors.push(e);
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `Cannot close ${this.name} cleanly`);
  }

  /** Closes the driver, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Closes the driver, as {@link close}, and lets pending waits settle. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await immediate();
  }
}

/** Splits a device address into the two 32-bit halves a descriptor or register pair takes. */
function split(address: bigint): [number, number] {
  return [Number(address & 0xffffffffn), Number(address >> 32n)];
}

const round = (ms: number) => Math.round(ms * 10) / 10;

/** Polls `done` until it holds, yielding to the event loop between looks; throws `fail()` on timeout. */
async function until(
  done: () => boolean,
  timeoutMs: number,
  fail: () => string | Error,
  intervalMs = 0,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (let spin = performance.now() + 0.05;;) {
    if (done()) return;
    const now = performance.now();
    if (now > deadline) {
      const e = fail();
      throw typeof e === "string" ? new Error(e) : e;
    }
    // Spin briefly (a frame in flight usually lands within microseconds), then let the event
    // loop run.
    if (now > spin) {
      await (intervalMs ? sleep(intervalMs) : immediate());
      spin = performance.now() + 0.05;
    }
  }
}

// --- Frames ----------------------------------------------------------------------------------------

/** The usual Toeplitz key (Microsoft's RSS verification key), as Linux and DPDK use by default. */
const RSS_KEY = [
  0x6d,
  0x5a,
  0x56,
  0xda,
  0x25,
  0x5b,
  0x0e,
  0xc2,
  0x41,
  0x67,
  0x25,
  0x3d,
  0x43,
  0xa3,
  0x8f,
  0xb0,
  0xd0,
  0xca,
  0x2b,
  0xcb,
  0xae,
  0x7b,
  0x30,
  0xb4,
  0x77,
  0xcb,
  0x2d,
  0xa3,
  0x80,
  0x30,
  0xf2,
  0x0c,
  0x6a,
  0x42,
  0xb7,
  0x3b,
  0xbe,
  0xac,
  0x01,
  0xfa,
];

/**
 * The RSS hash of an IPv4 frame between two addresses (Toeplitz over source then destination
 * address, as the NIC computes it with {@link RSS_KEY}).
 *
 * @param src Source address, 4 bytes.
 * @param dst Destination address, 4 bytes.
 * @returns The 32-bit hash.
 */
export function rssHash(src: readonly number[], dst: readonly number[]): number {
  let hash = 0, window = ((RSS_KEY[0]! << 24) | (RSS_KEY[1]! << 16) | (RSS_KEY[2]! << 8) | RSS_KEY[3]!) >>> 0;
  [...src, ...dst].forEach((byte, i) => {
    const next = RSS_KEY[i + 4]!;
    for (let bit = 7; bit >= 0; bit--) {
      if ((byte >> bit) & 1) hash = (hash ^ window) >>> 0;
      window = ((window << 1) | ((next >> bit) & 1)) >>> 0;
    }
  });
  return hash;
}

/** The destination IPv4 address of the frames {@link buildFrame} makes. */
const DST_IP = [10, 0, 0, 2];

/**
 * A source IPv4 address whose frames RSS puts on `queue` of a port with `queues` queues.
 *
 * @param queue The queue.
 * @param queues The port's queues.
 * @returns The address.
 */
export function steerTo(queue: number, queues: number): number[] {
  for (let host = 1; host < 1 << 16; host++) {
    const ip = [10, 1, host >> 8, host & 0xff];
    if (queues === 1 || (rssHash(ip, DST_IP) & 0x7f) % queues === queue) return ip;
  }
  throw new RangeError(`Cannot steer to queue ${queue} of ${queues}`);
}

/** What {@link buildFrame} writes. */
export interface FrameSpec {
  /** Destination and source MAC addresses, `aa:bb:cc:dd:ee:ff`. */
  dst: string;
  src: string;
  /** Frame length without FCS, {@link MIN_FRAME} to {@link MAX_FRAME}. */
  size: number;
  /** Sequence number, in the payload's first 4 bytes; the rest of the payload derives from it. */
  seq: number;
  /** Source IPv4 address (default 10.1.0.1); see {@link steerTo}. */
  srcIp?: readonly number[];
}

/**
 * Writes an IPv4/UDP frame into `out` (which must hold `size` bytes): Ethernet header, IPv4 header
 * with its checksum, UDP header (no checksum), and a payload that starts with the sequence number.
 *
 * @param out Where to write.
 * @param spec Addresses, size and sequence number.
 * @returns `out`'s first `size` bytes.
 */
export function buildFrame(out: Uint8Array, spec: FrameSpec): Uint8Array {
  const { size, seq } = spec;
  if (!Number.isInteger(size) || size < MIN_FRAME || size > MAX_FRAME || out.length < size) {
    throw new RangeError(`Cannot build a frame of ${size} bytes`);
  }
  const f = out.subarray(0, size);
  const mac = (s: string) => s.split(":").map((h) => parseInt(h, 16));
  f.set(mac(spec.dst), 0);
  f.set(mac(spec.src), 6);
  f[12] = 0x08, f[13] = 0x00; // IPv4
  const ip = f.subarray(14, 34);
  ip.set([
    0x45,
    0,
    (size - 14) >> 8,
    (size - 14) & 0xff,
    (seq >> 8) & 0xff,
    seq & 0xff,
    0x40,
    0,
    64,
    17,
    0,
    0,
  ]);
  ip.set(spec.srcIp ?? [10, 1, 0, 1], 12);
  ip.set(DST_IP, 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += (ip[i]! << 8) | ip[i + 1]!;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  ip[10] = (~sum >> 8) & 0xff, ip[11] = ~sum & 0xff;
  const udp = size - 34;
  f.set([0x30, 0x39, 0x30, 0x3a, udp >> 8, udp & 0xff, 0, 0], 34); // ports 12345 → 12346
  new DataView(f.buffer, f.byteOffset + 42, 4).setUint32(0, seq >>> 0);
  for (let i = 46, x = (seq * 2654435761) >>> 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    f[i] = x >>> 24;
  }
  return f;
}

/** Frame sizes for {@link exchange}: the edges first, then spread over 60-1514. */
export function frameSizes(count: number): number[] {
  const edges = [60, 61, 64, 127, 128, 255, 256, 511, 512, 1023, 1024, 1500, 1513, 1514];
  let x = 0x2545f491;
  return Array.from({ length: count }, (_, i) => {
    if (i < edges.length) return edges[i]!;
    x = (x * 1103515245 + 12345) >>> 0;
    return MIN_FRAME + (x >>> 8) % (MAX_FRAME - MIN_FRAME + 1);
  });
}

/** What {@link exchange} did. */
export interface ExchangeReport {
  /** Frames sent and received byte for byte. */
  frames: number;
  /** Their bytes without FCS. */
  bytes: number;
  /** Frames per queue pair. */
  perQueue: number[];
  /** Counter deltas over the exchange. */
  sender: IgbCounters;
  receiver: IgbCounters;
  /** Interrupts per vector during the exchange (zeros when polling). */
  senderInterrupts: number[];
  receiverInterrupts: number[];
  /** Wall time, ms. */
  ms: number;
}

function delta(after: IgbCounters, before: IgbCounters): IgbCounters {
  return Object.fromEntries(COUNTERS.map((c) => [c, after[c] - before[c]])) as unknown as IgbCounters;
}

/**
 * Sends `count` IPv4/UDP frames of assorted sizes ({@link frameSizes}) from one port to another (or
 * to itself, with loopback), frame i on queue pair i mod N, steered by RSS to the same queue on the
 * receiver; checks every frame byte for byte, the queue it arrived on, and the NICs' counters.
 *
 * @param sender The transmitting port.
 * @param receiver The receiving port (the sender itself with MAC loopback); same number of queues.
 * @param options How many frames.
 * @returns What was sent and measured.
 * @throws {Error} On a lost, corrupted or misrouted frame, or counters that disagree.
 */
export async function exchange(
  sender: Igb,
  receiver: Igb,
  options: { count?: number } = {},
): Promise<ExchangeReport> {
  const count = options.count ?? 64;
  if (!Number.isSafeInteger(count) || count < 1) throw new RangeError(`Cannot exchange ${count} frames`);
  const queues = sender.queues.length;
  if (receiver.queues.length !== queues) {
    throw new RangeError(
      `Cannot exchange: ${sender.name} has ${queues} queues, ${receiver.name} ${receiver.queues.length}`,
    );
  }
  const sizes = frameSizes(count);
  const srcIps = Array.from({ length: queues }, (_, q) => steerTo(q, queues));
  const spec = (seq: number): FrameSpec => ({
    dst: receiver.mac,
    src: sender.mac,
    size: sizes[seq]!,
    seq,
    srcIp: srcIps[seq % queues]!,
  });
  const expected = new Uint8Array(MAX_FRAME);
  const ints = (igb: Igb) => igb.queues.map((q) => q.interrupts);
  const [s0, r0] = [sender.counters(), receiver.counters()];
  const [si0, ri0] = [ints(sender), ints(receiver)];
  const perQueue = new Array<number>(queues).fill(0);
  const t = performance.now();
  // In rounds of at most a ring's worth per queue, so no receive ring overflows (QEMU drops a
  // frame for a full ring once another ring has room).
  const perRound = Math.min(sender.queues[0]!.size, receiver.queues[0]!.size) - 1;
  for (let first = 0; first < count; first += perRound * queues) {
    const last = Math.min(count, first + perRound * queues);
    for (let q = 0; q < queues; q++) {
      const frames: Uint8Array[] = [];
      for (let seq = first + q; seq < last; seq += queues) {
        frames.push(buildFrame(new Uint8Array(sizes[seq]!), spec(seq)));
      }
      const sent = sender.send(frames, { queue: q });
      if (sent !== frames.length) {
        throw new Error(`Cannot send: queue ${q} took ${sent} of ${frames.length} frames`);
      }
    }
    for (let q = 0; q < queues; q++) {
      const want = Math.ceil((last - first - q) / queues);
      const got = await receiver.receive(want, { queue: q });
      for (const frame of got) {
        const seq = frame.length >= 46 ? new DataView(frame.buffer, 42, 4).getUint32(0) : -1;
        if (!(seq >= first && seq < last) || seq % queues !== q) {
          throw new Error(`Cannot match a ${frame.length}-byte frame on queue ${q}: sequence number ${seq}`);
        }
        const want = buildFrame(expected, spec(seq));
        const bad = frame.length !== want.length
          ? Math.min(frame.length, want.length)
          : frame.findIndex((b, i) => b !== want[i]);
        if (bad >= 0) {
          throw new Error(
            `Frame ${seq} (${want.length} bytes) came back as ${frame.length} bytes, differing at byte ${bad}`,
          );
        }
        perQueue[q]!++;
      }
    }
    for (const q of sender.queues) await q.waitTx();
  }
  const ms = round(performance.now() - t);
  const [s1, r1] = [sender.counters(), receiver.counters()];
  const report: ExchangeReport = {
    frames: count,
    bytes: sizes.reduce((a, b) => a + b, 0),
    perQueue,
    sender: delta(s1, s0),
    receiver: delta(r1, r0),
    senderInterrupts: ints(sender).map((n, q) => n - si0[q]!),
    receiverInterrupts: ints(receiver).map((n, q) => n - ri0[q]!),
    ms,
  };
  const octets = report.bytes + 4 * count; // the counters include each frame's FCS
  const check = (what: string, got: number, want: number) => {
    if (got !== want) throw new Error(`Cannot confirm the counters: ${what} is ${got}, expected ${want}`);
  };
  check(`GPTC of ${sender.name}`, report.sender.gptc, count);
  check(`GOTC of ${sender.name}`, report.sender.gotc, octets);
  check(`GPRC of ${receiver.name}`, report.receiver.gprc, count);
  check(`GORC of ${receiver.name}`, report.receiver.gorc, octets);
  return report;
}

// --- The command line ------------------------------------------------------------------------------

const USAGE = `usage: igb.ts [options] [BDF [PEER]]

Brings up Intel 82576 ports (QEMU igb) bound to vfio-pci: reset, link up, descriptor rings in DMA
memory, an MSI-X vector per queue pair. Then sends --count IPv4/UDP frames of assorted sizes
(60-1514 bytes) from BDF to PEER, each checked byte for byte on arrival and against both NICs'
statistics registers (GPTC/GOTC, GPRC/GORC). BDF defaults to ${DEFAULT_BDF}, PEER to
${DEFAULT_PEER} (the lab's two ports, on one QEMU hub).

options:
  --loopback        MAC loopback (RCTL.LBM) on BDF alone: it receives what it sends
  --memcpy BYTES    instead, copy BYTES from one DMA buffer to another through the NIC (transmitted
                    from the source, received into the destination, chunks of 1024), await the
                    completion interrupt, and compare
  --queues N        queue pairs, 1-${MAX_QUEUES}, each with its own MSI-X vector (default 2; 1 for --memcpy)
  --ring N          descriptors per ring, a multiple of ${RING_ALIGN} from 8 to ${MAX_RING} (default 256, which
                    is also the most without an IOMMU)
  --count N         frames to exchange (default 64)
  --poll            poll the descriptors instead of waiting for MSI-X interrupts
  --timeout MS      limit for the link and for each wait (default 5000)
  --backend B       IOMMU backend: auto, legacy or iommufd (default auto)
  --json            print one JSON object instead of the transcript
  -h, --help        this text`;

/** What the command line did, as --json prints it. */
export interface Report {
  ok: boolean;
  mode?: "exchange" | "memcpy";
  ports?: { bdf: string; mac: string; backend: string; linkMs: number }[];
  interrupts?: "msix" | "poll";
  queues?: number;
  exchange?: ExchangeReport;
  memcpy?: { bytes: number; frames: number; interrupts: number; ms: number };
  error?: { name: string; message: string };
}

const CLI_OPTIONS = {
  loopback: { type: "boolean", default: false },
  memcpy: { type: "string" },
  queues: { type: "string" },
  ring: { type: "string", default: "256" },
  count: { type: "string", default: "64" },
  poll: { type: "boolean", default: false },
  timeout: { type: "string", default: "5000" },
  backend: { type: "string", default: "auto" },
  json: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

/**
 * Runs the command line.
 *
 * @param args The arguments after the script name.
 * @returns The exit status: 0 done, 1 failed, 2 bad usage.
 */
export async function main(args: string[]): Promise<number> {
  let bdf: string, peer: string | undefined, o: IgbOpenOptions, count: number, memcpy: number | undefined;
  let json = false;
  try {
    const { values: v, positionals } = parseArgs({ args, allowPositionals: true, options: CLI_OPTIONS });
    if (v.help) {
      console.log(USAGE);
      return 0;
    }
    if (positionals.length > 2) throw new TypeError("expected at most BDF and PEER");
    if (v.loopback && positionals.length > 1) throw new TypeError("--loopback takes one port");
    const int = (name: string, s: string) => {
      if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) {
        throw new TypeError(`--${name} ${s} is not a number`);
      }
      return Number(s);
    };
    if (v.backend !== "auto" && v.backend !== "legacy" && v.backend !== "iommufd") {
      throw new TypeError(`unknown backend ${v.backend}`);
    }
    json = v.json;
    bdf = positionals[0] ?? DEFAULT_BDF;
    peer = v.loopback ? undefined : positionals[1] ?? DEFAULT_PEER;
    count = int("count", v.count);
    memcpy = v.memcpy === undefined ? undefined : int("memcpy", v.memcpy);
    o = {
      queues: int("queues", v.queues ?? (memcpy === undefined ? "2" : "1")),
      ringSize: int("ring", v.ring),
      poll: v.poll,
      loopback: v.loopback,
      timeoutMs: int("timeout", v.timeout),
      backend: v.backend,
    };
    settings(o); // range errors are usage errors, before any device is opened
    parsePciAddress(bdf);
    if (peer !== undefined) parsePciAddress(peer);
    if (count < 1) throw new RangeError("--count must be at least 1");
    if (memcpy !== undefined && memcpy < MIN_FRAME) {
      throw new RangeError(`--memcpy must be at least ${MIN_FRAME}`);
    }
  } catch (e) {
    console.error(`igb: ${e instanceof Error ? e.message : e}\n${USAGE}`);
    return 2;
  }
  const report: Report = { ok: false };
  const say = json ? () => {} : (line: string) => console.log(line);
  try {
    await run(bdf, peer, o, count, memcpy, report, say);
    report.ok = true;
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    report.error = { name: err.name, message: err.message };
    console.error(`igb: ${err.message}`);
  }
  if (json) console.log(JSON.stringify(report));
  return report.ok ? 0 : 1;
}

async function run(
  bdf: string,
  peer: string | undefined,
  o: IgbOpenOptions,
  count: number,
  memcpy: number | undefined,
  report: Report,
  say: (line: string) => void,
): Promise<void> {
  const log = say;
  await using a = await Igb.open(bdf, { ...o, log });
  await using b = peer === undefined ? undefined : await Igb.open(peer, { ...o, log });
  const receiver = b ?? a;
  report.ports = [a, ...(b ? [b] : [])].map((p) => ({
    bdf: p.name,
    mac: p.mac,
    backend: p.dma.backend.kind,
    linkMs: p.timings.link,
  }));
  report.interrupts = o.poll ? "poll" : "msix";
  report.queues = a.queues.length;
  say(`IOMMU backend ${a.dma.backend.kind}; ${o.poll ? "polling" : "MSI-X interrupts"}`);
  if (memcpy !== undefined) {
    report.mode = "memcpy";
    using src = a.dma.alloc(memcpy), dst = receiver.dma.alloc(memcpy);
    const data = src.bytes;
    for (let i = 0; i < memcpy; i++) data[i] = (i * 31 + 7) & 0xff;
    const t = performance.now();
    const r = await a.memcpy(src, dst, memcpy, { receiver });
    const ms = round(performance.now() - t);
    const bad = dst.bytes.subarray(0, memcpy).findIndex((x, i) => x !== data[i]);
    if (bad >= 0) {
      throw new Error(`Cannot verify the copy: byte ${bad} is ${dst.bytes[bad]}, expected ${data[bad]}`);
    }
    say(
      `memcpy: ${memcpy} bytes from ${a.name} iova 0x${src.iova.toString(16)} to ${receiver.name} iova ` +
        `0x${dst.iova.toString(16)} in ${r.frames} frames, ${ms} ms, ${r.interrupts} completion interrupt${
          r.interrupts === 1 ? "" : "s"
        }; byte-exact`,
    );
    report.memcpy = { bytes: memcpy, frames: r.frames, interrupts: r.interrupts, ms };
    return;
  }
  report.mode = "exchange";
  const x = await exchange(a, receiver, { count });
  report.exchange = x;
  say(
    `sent ${x.frames} frames (${x.bytes} bytes, 60-1514 each) from ${a.name} to ${receiver.name} in ${x.ms} ms; ` +
      `all arrived byte for byte, per queue ${x.perQueue.join("/")}`,
  );
  say(
    `counters: ${a.name} GPTC ${x.sender.gptc} GOTC ${x.sender.gotc}; ${receiver.name} GPRC ${x.receiver.gprc} ` +
      `GORC ${x.receiver.gorc} (frames + 4-byte FCS each)`,
  );
  if (!o.poll) {
    say(
      `MSI-X: ${a.name} vectors ${x.senderInterrupts.join("/")} (transmit), ${receiver.name} vectors ` +
        `${x.receiverInterrupts.join("/")} (receive)`,
    );
  }
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));

/** Refuses a device that is not an 82576 PF, from its config space IDs. */
function requireIgb(device: VfioDevice): void {
  const vendor = device.config.read16(0), id = device.config.read16(2);
  if (vendor !== PCI_ID.vendor || id !== PCI_ID.device) {
    throw new TypeError(
      `Cannot drive ${device.name}: it is ${vendor.toString(16)}:${
        id.toString(16)
      }, not an 82576 PF (8086:10c9)`,
    );
  }
}
