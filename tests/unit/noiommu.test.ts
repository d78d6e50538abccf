/**
 * No-IOMMU mode through iommufd (Linux 7.3+) against the fake kernel: the noiommu-vfioN cdev, the
 * backend's kind and translates, DMA memory given physical addresses (IOMMU_IOAS_NOIOMMU_GET_PA)
 * and the physical contiguity that needs, and the fake's own GET_PA rules.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { VfioContainer } from "../../lib/container.ts";
import { DmaPool } from "../../lib/dma.ts";
import { UnsupportedError } from "../../lib/errors.ts";
import { IommufdIoas } from "../../lib/iommufd.ts";
import { chooseBackend, openPciDevice } from "../../lib/open.ts";
import { deviceCdev } from "../../lib/sysfs.ts";
import {
  IOMMU_IOAS_MAP,
  iommu_ioas_map,
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_NOIOMMU_GET_PA,
  iommu_ioas_noiommu_get_pa,
} from "../../lib/uapi/iommufd.ts";
import { ERRNO, O_RDWR } from "../../lib/uapi/libc.ts";
import { caught, EDU, FakeSys } from "./fake_sys.ts";

const PEER = "0000:00:06.0";
const CDEV = "/dev/vfio/devices/noiommu-vfio0";
const HUGE = 2 * 1024 * 1024;

/** No IOMMU: edu is a noiommu device (legacy group noiommu-0, cdev noiommu-vfio0 from 7.3 on). */
function withNoiommu(release?: string): FakeSys {
  const fake = new FakeSys();
  fake.iommufd = true;
  if (release) fake.release = release;
  fake.extensions.add(8); // VFIO_NOIOMMU_IOMMU
  fake.addDevice({ bdf: EDU, group: 0, noiommu: true, cdev: "noiommu-vfio0" });
  return fake;
}

test("noiommu: the noiommu-vfioN cdev is found and picks iommufd, from 7.3 on", () => {
  const fake = withNoiommu();
  assert.equal(deviceCdev(fake, EDU), CDEV);
  assert.equal(chooseBackend(fake), "iommufd");
  const old = withNoiommu("7.2.13");
  assert.equal(deviceCdev(old, EDU), undefined);
  assert.equal(chooseBackend(old), "legacy");
  using h = openPciDevice(old, EDU);
  assert.equal(h.backend.kind, "noiommu"); // the legacy group noiommu-0
});

test("noiommu: an IOAS of no-IOMMU devices is iommufd-noiommu and does not translate, until they leave", () => {
  const fake = withNoiommu();
  using ioas = IommufdIoas.open(fake);
  assert.equal(ioas.kind, "iommufd");
  const d = ioas.openDevice(EDU);
  assert.equal(ioas.kind, "iommufd-noiommu");
  assert.equal(ioas.translates, false);
  assert.deepEqual(ioas.iovaRanges(), [{ start: 0n, last: 0xffffffffffffffffn }]);
  d.close();
  assert.equal(ioas.kind, "iommufd");
  assert.equal(ioas.translates, true);
});

test("noiommu: a device behind an IOMMU cannot join an IOAS of no-IOMMU devices (TypeError, before the open)", () => {
  const fake = withNoiommu();
  fake.addDevice({ bdf: PEER, group: 6, cdev: "vfio1" });
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const opens = fake.calls.filter((c) => c.op === "open").length;
  assert.throws(
    () => ioas.openDevice(PEER),
    /holds devices without an IOMMU and 0000:00:06\.0 is behind one/,
  );
  assert.equal(fake.calls.filter((c) => c.op === "open").length, opens);
});

test("noiommu: openDeviceFd tells a no-IOMMU cdev by its node's name", () => {
  const fake = withNoiommu();
  using ioas = IommufdIoas.open(fake);
  ioas.openDeviceFd(fake.open(CDEV, O_RDWR), EDU);
  assert.equal(ioas.kind, "iommufd-noiommu");
});

test("noiommu: opening the cdev without CAP_SYS_RAWIO is EPERM, with the hint", () => {
  const fake = withNoiommu();
  fake.uid = 1000;
  using ioas = IommufdIoas.open(fake);
  const err = caught(() => ioas.openDevice(EDU));
  assert.equal(err.code, "EPERM");
  assert.match(err.hint!, /needs CAP_SYS_RAWIO/);
});

test("noiommu: DMA buffers are mapped into the IOAS and given their physical address", () => {
  const fake = withNoiommu();
  {
    using h = openPciDevice(fake, EDU);
    assert.equal(h.backend.kind, "iommufd-noiommu");
    const buf = h.dma.alloc(4096);
    const [ioasIova] = [...h.backend.mappings.keys()];
    assert.notEqual(buf.iova, ioasIova); // the bus address is physical, not the IOVA
    assert.ok(buf.iova >= fake.physBase && buf.iova % 4096n === 0n);
    assert.equal(h.backend.busAddress(ioasIova!, 4096), buf.iova);
    assert.equal(buf.iovaAt(0x10), buf.iova + 0x10n);
    assert.ok(fake.ioctls().includes("IOMMU_IOAS_NOIOMMU_GET_PA"));
    buf.free();
    assert.equal(h.backend.mappings.size, 0);
  }
  assert.deepEqual(fake.leaks(), []);
});

test("noiommu: more than a page needs a hugepage at least as large, refused before any mmap", () => {
  const fake = withNoiommu();
  using h = openPciDevice(fake, EDU);
  h.dma.allocator; // the pool reads the IOVA ranges (through a scratch page) when it is made
  const mmaps = () => fake.calls.filter((c) => c.op === "mmap").length;
  const before = mmaps();
  assert.throws(() => h.dma.alloc(8192), /only one page \(4096 bytes\) is physically contiguous/);
  assert.throws(() => h.dma.alloc(2 * HUGE, { hugepageSize: HUGE }), /only one hugepage \(2097152 bytes\)/);
  assert.equal(mmaps(), before);
  const buf = h.dma.alloc(HUGE, { hugepageSize: HUGE });
  assert.equal(buf.iova % BigInt(HUGE), 0n);
  assert.equal(buf.size, HUGE);
});

test("noiommu: pages above the device's limit are held aside while new ones are taken, then released", () => {
  const fake = withNoiommu();
  // The kernel hands out two pages above edu's 28-bit mask, then one below it.
  fake.physQueue = [0x20000000n, 0x20002000n, 0x3000000n];
  using h = openPciDevice(fake, EDU, { limit: (1n << 28n) - 1n });
  const buf = h.dma.alloc(4096);
  assert.equal(buf.iova, 0x3000000n, "the device is given the reachable page's physical address");
  assert.equal(h.backend.mappings.size, 1, "the rejected pages were unmapped from the IOAS");
  assert.equal(fake.mappings().filter((m) => m.what === "anonymous memory").length, 1);
  buf.free();
  h.close();
  assert.deepEqual(fake.leaks(), []);
});

test("noiommu: a physical address above the device's limit is refused after the tries, and nothing stays mapped", () => {
  const fake = withNoiommu();
  fake.physBase = 0x20000000n; // 512 MiB: above edu's 28-bit DMA mask
  using h = openPciDevice(fake, EDU, { limit: (1n << 28n) - 1n });
  const err = (() => {
    try {
      h.dma.alloc(4096);
    } catch (e) {
      return e as Error;
    }
    assert.fail("expected a throw");
  })();
  assert.ok(err instanceof RangeError);
  assert.match(err.message, /physical address 0x2\w+: it ends above the device's limit 0xfffffff/);
  assert.equal(h.backend.mappings.size, 0);
  assert.equal(fake.mappings().filter((m) => m.what === "anonymous memory").length, 0);
});

test("noiommu: GET_PA without CAP_SYS_RAWIO is EPERM, and missing (ENOTTY) is UnsupportedError naming 7.3", () => {
  const fake = withNoiommu();
  using h = openPciDevice(fake, EDU);
  const mem = fake.mmap(4096, 3, 0x22, -1, 0);
  h.backend.mapDma(mem, 0x10000n, 4096);
  fake.uid = 1000;
  const perm = caught(() => h.backend.busAddress(0x10000n, 4096));
  assert.equal(perm.code, "EPERM");
  assert.match(perm.hint!, /CAP_SYS_RAWIO/);
  fake.uid = 0;
  {
    using _ = fake.fail("ioctl", "IOMMU_IOAS_NOIOMMU_GET_PA", "ENOTTY");
    const err = caught(() => h.backend.busAddress(0x10000n, 4096));
    assert.ok(err instanceof UnsupportedError);
    assert.match(err.hint!, /IOMMU_IOAS_NOIOMMU_GET_PA needs Linux 7\.3 or later/);
  }
  assert.throws(() => h.backend.busAddress(0x10000n, 8192), /inside one mapping/);
  h.backend.unmapDma(0x10000n, 4096);
  fake.munmap(mem, 4096);
});

test("noiommu: the legacy no-IOMMU container still cannot map, nor make a pool", () => {
  const fake = withNoiommu("7.2.13");
  using c = VfioContainer.open(fake);
  c.openDevice(EDU);
  assert.equal(c.translates, false);
  assert.throws(() => new DmaPool(fake, c), UnsupportedError);
  assert.throws(() => c.mapDma(0x1000n, 0x1000n, 0x1000), UnsupportedError);
});

test("fake: GET_PA reports the physically contiguous bytes from the IOVA, capped by length", () => {
  const fake = withNoiommu();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const map = (mem: bigint, iova: bigint, length: number) => {
    const m = iommu_ioas_map.alloc();
    m.set("flags", IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE).set("ioas_id", ioas.ioasId);
    m.set("user_va", mem).set("length", BigInt(length)).set("iova", iova);
    assert.equal(fake.ioctlPtr(ioas.fd, IOMMU_IOAS_MAP, m.bytes), 0);
  };
  const pa = (iova: bigint, length: bigint) => {
    const q = iommu_ioas_noiommu_get_pa.alloc();
    q.set("ioas_id", ioas.ioasId).set("iova", iova).set("length", length);
    const r = fake.ioctlPtr(ioas.fd, IOMMU_IOAS_NOIOMMU_GET_PA, q.bytes);
    return r < 0 ? r : { phys: q.get("out_phys"), length: q.get("length") };
  };
  const pages = fake.mmap(0x3000, 3, 0x22, -1, 0);
  map(pages, 0x100000n, 0x3000);
  const first = pa(0x100000n, 0x3000n) as { phys: bigint; length: bigint };
  assert.equal(first.length, 0x1000n); // the next page is not physically adjacent
  assert.deepEqual(pa(0x100800n, 0x3000n), { phys: first.phys + 0x800n, length: 0x800n });
  assert.equal(pa(0x200000n, 1n), -ERRNO.ENOENT!);
  assert.equal(pa(0x100000n, 0n), -ERRNO.EINVAL!);
  const huge = fake.mmap(HUGE, 3, 0x22 | 0x40000 | (21 << 26), -1, 0);
  map(huge, 0x400000n, HUGE);
  assert.equal((pa(0x400000n, BigInt(HUGE)) as { length: bigint }).length, BigInt(HUGE));
  assert.equal((pa(0x401000n, 0x10n) as { length: bigint }).length, 0x10n);
});
