// Peer-to-peer DMA against the real kernel: edu A (0000:00:04.0) DMA-reads edu B's BAR0
// (0000:00:08.0) through the IOMMU, mapped with the backend-neutral mapPeerRegion (legacy: type1
// maps B's BAR mmap; iommufd: a DMA-BUF of it, IOMMU_IOAS_MAP_FILE), on each backend the lab kernel
// offers; and iommufd's refusal to map a BAR by its mmap address, with the hint.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { DmaPool } from "../../lib/dma.ts";
import { UnsupportedError, VfioError } from "../../lib/errors.ts";
import type { IommuBackend } from "../../lib/iommu.ts";
import type { Registers } from "../../lib/mmio.ts";
import { openIommu } from "../../lib/open.ts";
import { backends, EDU, edu, EDU_PEER, HAS_IOMMU, quiesceEdu, sys } from "./_fixture.ts";

const SLOW = { timeout: 120_000 };
const IDENT = 0x010000ed;
/** Where B's BAR0 is mapped for A: below edu's 28-bit DMA mask, above what the pool hands out first. */
const PEER_IOVA = 0x8000000n;

const hasPeer = (() => {
  try {
    return readdirSync("/sys/bus/pci/devices").includes(EDU_PEER);
  } catch {
    return false;
  }
})();
const noPeer = !hasPeer && `this guest has no second edu at ${EDU_PEER}`;

/** Whether the kernel exports a VFIO DMA-BUF (Linux 6.19+ with CONFIG_VFIO_PCI_DMABUF), asked of B. */
function dmaBufSupported(): boolean | string {
  if (!hasPeer || !HAS_IOMMU) return false;
  using backend = openIommu(sys, { backend: "legacy" });
  const b = backend.openDevice(EDU_PEER);
  try {
    b.exportDmaBuf(0, { ranges: [{ offset: 0, length: 4096 }] }).close();
    return true;
  } catch (e) {
    if (e instanceof UnsupportedError) return e.hint ?? e.message;
    throw e;
  }
}
const dmaBuf = dmaBufSupported();

/** edu A copies `count` bytes from `src` to `dst` (IOVAs or its buffer), and waits. */
function eduDma(bar0: Registers, src: bigint, dst: bigint, count: number, toRam: boolean): void {
  bar0.write64(edu.DMA_SRC, src);
  bar0.write64(edu.DMA_DST, dst);
  bar0.write64(edu.DMA_COUNT, BigInt(count));
  bar0.write32(edu.DMA_CMD, edu.DMA_START | (toRam ? edu.DMA_TO_RAM : 0));
  const deadline = Date.now() + 5000;
  while (bar0.read32(edu.DMA_CMD) & edu.DMA_START) {
    if (Date.now() > deadline) throw new Error("edu DMA did not finish");
  }
}

/** A reads `count` bytes at `iova` into its device buffer, then writes them to a fresh DMA buffer. */
function readThroughA(backend: IommuBackend, a: Registers, iova: bigint, count: number): Uint8Array {
  using pool = new DmaPool(sys, backend, { limit: edu.DMA_LIMIT });
  using out = pool.alloc(4096);
  out.bytes.fill(0xee);
  eduDma(a, iova, BigInt(edu.DMA_BUFFER), count, false);
  eduDma(a, BigInt(edu.DMA_BUFFER), out.iova, count, true);
  return out.bytes.slice(0, count);
}

for (const mode of HAS_IOMMU ? backends() : []) {
  const skip = noPeer ||
    (mode.name === "iommufd" && dmaBuf !== true &&
      `this kernel exports no VFIO DMA-BUF, which iommufd needs for a peer's BAR: ${dmaBuf}`);

  test(`p2p (${mode.name}): edu A DMA-reads edu B's ident and liveness through mapPeerRegion`, {
    ...SLOW,
    skip,
  }, () => {
    using backend = openIommu(sys, mode.options);
    const a = backend.openDevice(EDU);
    const b = backend.openDevice(EDU_PEER);
    a.config.enableBusMaster();
    using aBar = a.registers(0);
    using bBar = b.registers(0);
    quiesceEdu(aBar);
    using peer = backend.mapPeerRegion(b, 0, PEER_IOVA, { length: 4096, write: false });
    assert.equal(peer.iova, PEER_IOVA);
    assert.equal(backend.mappings.get(PEER_IOVA), 4096);

    const ident = new DataView(readThroughA(backend, aBar, PEER_IOVA + BigInt(edu.IDENT), 4).buffer);
    assert.equal(ident.getUint32(0, true), IDENT, "A read B's ident register through the IOMMU");

    bBar.write32(edu.LIVENESS, 0x12345678);
    const live = new DataView(readThroughA(backend, aBar, PEER_IOVA + BigInt(edu.LIVENESS), 4).buffer);
    assert.equal(live.getUint32(0, true), ~0x12345678 >>> 0, "B inverted what it was given, as A saw it");
    peer.close();
    assert.equal(backend.mappings.has(PEER_IOVA), false);
  });

  test(`p2p (${mode.name}): the peer mapping goes with B's device, and the backend stays usable`, {
    ...SLOW,
    skip,
  }, () => {
    using backend = openIommu(sys, mode.options);
    backend.openDevice(EDU);
    const b = backend.openDevice(EDU_PEER);
    const peer = backend.mapPeerRegion(b, 0, PEER_IOVA, { length: 4096 });
    b.close();
    assert.equal(peer.closed, true);
    assert.equal(backend.mappings.size, 0);
    const again = backend.openDevice(EDU_PEER);
    backend.mapPeerRegion(again, 0, PEER_IOVA, { length: 4096 }).close();
  });
}

test("p2p (iommufd): mapDma of a BAR's mmap address is refused by the kernel, with the mapPeerRegion hint", {
  ...SLOW,
  skip: noPeer || (!HAS_IOMMU && "needs an IOMMU") ||
    (!backends().some((b) => b.name === "iommufd") && "this lab kernel has no iommufd"),
}, () => {
  using backend = openIommu(sys, { backend: "iommufd" });
  backend.openDevice(EDU);
  const b = backend.openDevice(EDU_PEER);
  const region = b.region(0);
  const m = region.map(0, 4096);
  try {
    assert.throws(() => backend.mapDma(m.address, PEER_IOVA, 4096), (e: unknown) => {
      assert.ok(e instanceof VfioError);
      console.log(`iommufd refused a BAR mmap: ${e.op} ${e.code}`);
      assert.match(e.hint!, /an mmap of 0000:00:08\.0 region 0, device memory that iommufd cannot pin/);
      assert.match(e.hint!, /mapPeerRegion/);
      return true;
    });
    assert.equal(backend.mappings.size, 0);
  } finally {
    region.unmap(m);
  }
});

test("p2p (legacy): type1 maps a BAR by its mmap address", {
  ...SLOW,
  skip: noPeer || (!HAS_IOMMU && "needs an IOMMU"),
}, () => {
  using backend = openIommu(sys, { backend: "legacy" });
  backend.openDevice(EDU);
  const region = backend.openDevice(EDU_PEER).region(0);
  const m = region.map(0, 4096);
  try {
    backend.mapDma(m.address, PEER_IOVA, 4096);
    backend.unmapDma(PEER_IOVA, 4096);
  } finally {
    region.unmap(m);
  }
});

test("p2p: in no-IOMMU mode mapPeerRegion is UnsupportedError", {
  skip: noPeer || (HAS_IOMMU && "needs no-IOMMU mode"),
}, () => {
  using backend = openIommu(sys);
  backend.openDevice(EDU);
  const b = backend.openDevice(EDU_PEER);
  assert.throws(() => backend.mapPeerRegion(b, 0, PEER_IOVA), UnsupportedError);
});
