// No-IOMMU mode through iommufd (Linux 7.3+) against the real kernel: the noiommu-vfioN cdev is
// detected and chosen, the backend says it does not translate, and edu DMA works both ways with the
// physical addresses IOMMU_IOAS_NOIOMMU_GET_PA gives; the legacy no-IOMMU container still refuses DMA.
import { test } from "node:test";
import assert from "node:assert/strict";
import { UnsupportedError } from "../../lib/errors.ts";
import type { Registers } from "../../lib/mmio.ts";
import { chooseBackend, openPciDevice } from "../../lib/open.ts";
import { deviceCdev } from "../../lib/sysfs.ts";
import { EDU, edu, HAS_IOMMU, quiesceEdu, sys } from "./_fixture.ts";

const SLOW = { timeout: 120_000 };
const cdev = HAS_IOMMU ? undefined : deviceCdev(sys, EDU);
const skip = HAS_IOMMU
  ? "needs no-IOMMU mode"
  : !cdev?.includes("/noiommu-vfio")
  ? "this kernel makes no noiommu-vfioN cdev (Linux 7.3+ with CONFIG_IOMMUFD_NOIOMMU)"
  : false;

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

test(
  "noiommu: the noiommu-vfioN cdev is detected, chosen, and makes an iommufd-noiommu backend",
  { skip },
  () => {
    assert.match(cdev!, /^\/dev\/vfio\/devices\/noiommu-vfio\d+$/);
    assert.equal(chooseBackend(sys), "iommufd");
    using h = openPciDevice(sys, EDU);
    assert.equal(h.backend.kind, "iommufd-noiommu");
    assert.equal(h.backend.translates, false);
    using bar0 = h.device.registers(0);
    assert.equal(bar0.read32(edu.IDENT), 0x010000ed);
  },
);

test("noiommu: edu DMA works both ways with physical addresses from IOMMU_IOAS_NOIOMMU_GET_PA", {
  ...SLOW,
  skip,
}, () => {
  using h = openPciDevice(sys, EDU, { limit: edu.DMA_LIMIT });
  h.device.config.enableBusMaster();
  using bar0 = h.device.registers(0);
  quiesceEdu(bar0);
  // edu masks DMA addresses to 28 bits: the pool takes new pages until the kernel's lie below 256 MiB.
  const src = h.dma.alloc(4096);
  const dst = h.dma.alloc(4096);
  const [srcIova, dstIova] = [...h.backend.mappings.keys()];
  console.log(
    `physical addresses: ${src.iova.toString(16)} (iova ${srcIova!.toString(16)}), ${dst.iova.toString(16)}`,
  );
  assert.notEqual(src.iova, srcIova, "the device is given the physical address, not the IOVA");
  assert.equal(h.backend.busAddress(dstIova!, 4096), dst.iova);
  for (let i = 0; i < 2048; i++) src.bytes[i] = (i * 7 + 3) & 0xff;
  dst.bytes.fill(0);
  eduDma(bar0, src.iova, BigInt(edu.DMA_BUFFER), 2048, false); // RAM -> edu
  eduDma(bar0, BigInt(edu.DMA_BUFFER), dst.iova, 2048, true); // edu -> RAM
  assert.deepEqual(dst.bytes.subarray(0, 2048), src.bytes.subarray(0, 2048));
  assert.throws(() => h.dma.alloc(8192), /only one page \(4096 bytes\) is physically contiguous/);
});

test(
  "noiommu: the legacy no-IOMMU container still has no DMA",
  { skip: HAS_IOMMU && "needs no-IOMMU mode" },
  () => {
    using h = openPciDevice(sys, EDU, { backend: "legacy" });
    assert.equal(h.backend.kind, "noiommu");
    assert.throws(() => h.dma.alloc(4096), UnsupportedError);
  },
);
