/**
 * What the lab guest provides (scripts/lab/run.sh), and helpers shared by the lab tests.
 *
 * The lab boots with a fixed topology:
 * - 0000:00:04.0 QEMU edu, bound to vfio-pci, alone in its IOMMU group;
 * - 0000:00:05.0 QEMU NVMe, bound to vfio-pci, backed by VFIO_TS_NVME_IMAGE;
 * - 0000:00:06.0 a second edu on vfio-pci, sharing its group with 0000:00:06.1, a virtio device
 *   left on virtio-pci, so that group is not viable;
 * - 0000:01:00.0 a third edu on vfio-pci, alone behind a PCIe root port at 0000:00:07.0, so that
 *   a hot (secondary bus) reset is possible;
 * - 0000:00:08.0 a fourth edu on vfio-pci, alone in its group: a peer for peer-to-peer DMA;
 * - 0000:00:0a.0 and 0000:00:0c.0 two Intel 82576 NICs (QEMU igb) on vfio-pci, joined by a QEMU hub;
 *   each is an SR-IOV PF (vfio-pci.enable_sriov=1) whose VFs appear at its devfn + 0x80, stride 2.
 *
 * @module
 */
import { readdirSync } from "node:fs";
import { loadSys } from "../../ffi/mod.ts";
import type { Registers } from "../../lib/mmio.ts";
import type { Sys } from "../../lib/sys.ts";

export const EDU = "0000:00:04.0";
export const NVME = "0000:00:05.0";
export const EDU2 = "0000:00:06.0";
export const BLOCKER = "0000:00:06.1";
/** A third edu behind a PCIe root port, so that a bus (hot) reset is possible. */
export const EDU_BEHIND_PORT = "0000:01:00.0";
/** A fourth edu, alone in its group: the peer of {@link EDU} for peer-to-peer DMA (dma-buf). */
export const EDU_PEER = "0000:00:08.0";
/**
 * Two Intel 82576 NICs (QEMU igb, 8086:10c9) whose ports share a QEMU hub, so what one sends the
 * other receives. Each is an SR-IOV PF with up to 8 VFs (8086:10ca) at its devfn + 0x80, stride 2:
 * IGB0's at 0000:00:1a.0, 00:1a.2, ... 00:1b.6; IGB1's at 0000:00:1c.0 ... 00:1d.6.
 */
export const IGB0 = "0000:00:0a.0";
export const IGB1 = "0000:00:0c.0";
/** The MAC addresses run.sh gives the two igb ports. */
export const IGB0_MAC = "52:54:00:12:34:0a";
export const IGB1_MAC = "52:54:00:12:34:0c";

/** The lab configuration this guest was booted with, e.g. `stock-intel`, `custom7-noiommu`. */
export const CONFIG = process.env.VFIO_TS_LAB_CONFIG ?? "";
if (!CONFIG) throw new Error("Cannot run the lab tests outside the lab: run them with scripts/lab/suite.sh");

/** Whether the guest has an IOMMU (otherwise it runs in vfio no-IOMMU mode). */
export const HAS_IOMMU = !CONFIG.endsWith("noiommu");

/** The syscall backend of the runtime under test. */
export const sys: Sys = await loadSys();

/** The number of open fds of this process, from /proc/self/fd. */
export function openFds(): number {
  return readdirSync("/proc/self/fd").length;
}

/** Sleeps without blocking the event loop. */
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** edu's registers (QEMU hw/misc/edu.c). */
export const edu = {
  IDENT: 0x00,
  LIVENESS: 0x04,
  FACTORIAL: 0x08,
  STATUS: 0x20,
  STATUS_BUSY: 0x01,
  STATUS_IRQ_ON_FINISH: 0x80,
  IRQ_STATUS: 0x24,
  IRQ_RAISE: 0x60,
  IRQ_ACK: 0x64,
  DMA_SRC: 0x80,
  DMA_DST: 0x88,
  DMA_COUNT: 0x90,
  DMA_CMD: 0x98,
  DMA_START: 0x1,
  DMA_TO_RAM: 0x2, // direction bit: set = device buffer to RAM
  DMA_IRQ: 0x4,
  DMA_BUFFER: 0x40000,
  /** The device's DMA mask: 28 bits, or what run.sh gave QEMU (EDU_DMA_MASK, in no-IOMMU mode). */
  DMA_LIMIT: BigInt(process.env.EDU_DMA_MASK ?? (1n << 28n) - 1n),
} as const;

/** An IOMMU backend the lab kernel offers, for tests that run under each. */
export interface BackendMode {
  /** `legacy` or `iommufd`. */
  name: "legacy" | "iommufd";
  /** Options for openPciDevice/openIommu selecting it. */
  options: { backend: "legacy" | "iommufd" };
}

/** The backends this guest's kernel offers; every device test runs under each. */
export function backends(): BackendMode[] {
  const modes: BackendMode[] = [{ name: "legacy", options: { backend: "legacy" } }];
  const hasIommufd = (() => {
    try {
      return readdirSync("/dev").includes("iommu") && readdirSync("/dev/vfio/devices").length > 0;
    } catch {
      return false;
    }
  })();
  if (hasIommufd && HAS_IOMMU && process.env.VFIO_TS_LAB_IOMMUFD !== "0") {
    modes.push({ name: "iommufd", options: { backend: "iommufd" } });
  }
  return modes;
}

/**
 * Puts edu back in a known state (it has no reset): interrupts acknowledged, no interrupt on
 * factorial completion, no DMA in flight. Tests that use edu's registers call it first.
 */
export function quiesceEdu(bar0: Registers): void {
  bar0.write32(edu.STATUS, 0);
  const deadline = Date.now() + 5000;
  while (bar0.read32(edu.DMA_CMD) & edu.DMA_START) {
    if (Date.now() > deadline) throw new Error("edu DMA did not finish");
  }
  bar0.write32(edu.IRQ_ACK, bar0.read32(edu.IRQ_STATUS));
}

/** Long lab tests (1000 cycles under TCG) get this timeout; Bun's default is 5 s. */
export const LONG = { timeout: 300_000 };
