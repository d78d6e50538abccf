/**
 * Peer-to-peer DMA against the fake kernel: DMA-BUF export of a BAR (VfioDevice.exportDmaBuf),
 * IOMMU_IOAS_MAP_FILE (IommufdIoas.mapFile), the backend-neutral mapPeerRegion on both backends,
 * and the hint when iommufd is asked to map a BAR's mmap.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { VfioContainer } from "../../lib/container.ts";
import { UnsupportedError } from "../../lib/errors.ts";
import type { IommuBackend } from "../../lib/iommu.ts";
import { IommufdIoas } from "../../lib/iommufd.ts";
import { ERRNO } from "../../lib/uapi/libc.ts";
import { caught, EDU, type FakeDmaBuf, FakeSys } from "./fake_sys.ts";

const PEER = "0000:00:06.0";
const BAR = 0x100000; // 1 MiB, as edu's BAR0
const IOVA = 0x8000000n;

/** Two edus with 1 MiB BAR0s, iommufd on (cdevs vfio0 and vfio1). */
function withPeers(release?: string): FakeSys {
  const fake = new FakeSys();
  fake.iommufd = true;
  if (release) fake.release = release;
  fake.addDevice({ bdf: EDU, group: 4, cdev: "vfio0", regions: [{ index: 0, size: BAR }] });
  fake.addDevice({ bdf: PEER, group: 6, cdev: "vfio1", regions: [{ index: 0, size: BAR }] });
  return fake;
}

const featureCalls = (fake: FakeSys) => fake.ioctls().filter((n) => n === "VFIO_DEVICE_FEATURE").length;
const dmaBufsOf = (fake: FakeSys, bdf = PEER): FakeDmaBuf[] => fake.device(bdf).dmaBufs;

const backends = [
  { name: "legacy", open: (fake: FakeSys): IommuBackend => VfioContainer.open(fake) },
  { name: "iommufd", open: (fake: FakeSys): IommuBackend => IommufdIoas.open(fake) },
] as const;

// --- exportDmaBuf -----------------------------------------------------------------------------

test("exportDmaBuf: exports all of a BAR by default, as an fd the device closes with itself", () => {
  const fake = withPeers();
  using ioas = IommufdIoas.open(fake);
  const peer = ioas.openDevice(PEER);
  const buf = peer.exportDmaBuf(0);
  assert.equal(buf.size, BAR);
  assert.deepEqual(buf.ranges, [{ offset: 0, length: BAR }]);
  assert.equal(fake.openFds().find((f) => f.fd === buf.fd)?.kind, "dmabuf");
  const [kernel] = dmaBufsOf(fake);
  assert.deepEqual(kernel!.ranges, [{ offset: 0n, length: BigInt(BAR) }]);
  peer.close();
  assert.equal(buf.closed, true);
  assert.equal(kernel!.revoked, true);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("exportDmaBuf: slices of the BAR, in order; closing the DMA-BUF early is fine", () => {
  const fake = withPeers();
  using ioas = IommufdIoas.open(fake);
  const peer = ioas.openDevice(PEER);
  {
    using buf = peer.exportDmaBuf(0, {
      ranges: [{ offset: 0x2000, length: 0x1000 }, { offset: 0, length: 0x3000 }],
    });
    assert.equal(buf.size, 0x4000);
  }
  assert.deepEqual(dmaBufsOf(fake)[0]!.ranges, [{ offset: 0x2000n, length: 0x1000n }, {
    offset: 0n,
    length: 0x3000n,
  }]);
  assert.equal(fake.openFds().filter((f) => f.kind === "dmabuf").length, 0);
});

test("exportDmaBuf: a region that is no implemented BAR, or a bad range, is a RangeError before the ioctl", () => {
  const fake = withPeers();
  using ioas = IommufdIoas.open(fake);
  const peer = ioas.openDevice(PEER);
  const before = featureCalls(fake);
  assert.throws(() => peer.exportDmaBuf(7), /only BARs \(regions 0-5\)/);
  assert.throws(() => peer.exportDmaBuf(2), /the BAR is not implemented/);
  assert.throws(() => peer.exportDmaBuf(0, { ranges: [] }), /give 1 to 1024 ranges/);
  for (
    const r of [{ offset: 1, length: 0x1000 }, { offset: 0, length: 0 }, { offset: 0, length: BAR + 0x1000 }]
  ) {
    assert.throws(() => peer.exportDmaBuf(0, { ranges: [r] }), RangeError);
  }
  assert.equal(featureCalls(fake), before);
});

test("exportDmaBuf: a kernel before 6.19 (ENOTTY) is UnsupportedError naming 6.19 and the kernel", () => {
  const fake = withPeers("6.18.2");
  using ioas = IommufdIoas.open(fake);
  const err = caught(() => ioas.openDevice(PEER).exportDmaBuf(0));
  assert.ok(err instanceof UnsupportedError);
  assert.equal(err.errno, ERRNO.ENOTTY);
  assert.match(err.hint!, /VFIO_DEVICE_FEATURE_DMA_BUF needs Linux 6\.19 or later .*this kernel is 6\.18\.2/);
});

test("exportDmaBuf: a 7.3 kernel built without CONFIG_VFIO_PCI_DMABUF is UnsupportedError too", () => {
  const fake = withPeers();
  fake.dmaBufExport = false;
  using c = VfioContainer.open(fake);
  const err = caught(() => c.openDevice(PEER).exportDmaBuf(0));
  assert.ok(err instanceof UnsupportedError);
  assert.match(err.hint!, /CONFIG_VFIO_PCI_DMABUF/);
});

// --- mapFile ----------------------------------------------------------------------------------

test("mapFile: maps a DMA-BUF at an IOVA, booked like mapDma and unmapped by unmapDma", () => {
  const fake = withPeers();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const peer = ioas.openDevice(PEER);
  using buf = peer.exportDmaBuf(0, { ranges: [{ offset: 0, length: 0x1000 }] });
  ioas.mapFile(buf.fd, IOVA, { length: 0x1000, write: false });
  assert.equal(ioas.mappings.get(IOVA), 0x1000);
  const ioasState = fake.iommufds[0]!.objects.get(ioas.ioasId) as {
    ioas: { mappings: Map<bigint, unknown> };
  };
  const m = ioasState.ioas.mappings.get(IOVA) as { file?: { dmaBuf: FakeDmaBuf }; flags: number };
  assert.equal(m.file?.dmaBuf, dmaBufsOf(fake)[0]);
  buf.close(); // the kernel holds the DMA-BUF while it is mapped
  assert.throws(() => ioas.mapDma(0x7f0000000000n, IOVA, 0x1000), /overlaps the mapping at 0x8000000/);
  ioas.unmapDma(IOVA, 0x1000);
  assert.equal(ioas.mappings.size, 0);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("mapFile: a multi-range DMA-BUF is EOPNOTSUPP and a revoked one ENODEV, from the kernel", () => {
  const fake = withPeers();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  using other = IommufdIoas.open(fake);
  const peer = other.openDevice(PEER);
  using two = peer.exportDmaBuf(0, {
    ranges: [{ offset: 0, length: 0x1000 }, { offset: 0x2000, length: 0x1000 }],
  });
  const err = caught(() => ioas.mapFile(two.fd, IOVA, { length: 0x2000 }));
  assert.equal(err.code, "EOPNOTSUPP");
  assert.match(err.hint!, /single-range VFIO PCI DMA-BUFs/);
  using one = peer.exportDmaBuf(0, { ranges: [{ offset: 0, length: 0x1000 }] });
  dmaBufsOf(fake)[1]!.revoked = true; // as a reset of the peer would
  assert.equal(caught(() => ioas.mapFile(one.fd, IOVA, { length: 0x1000 })).code, "ENODEV");
  assert.equal(ioas.mappings.size, 0);
});

test("mapFile: bad arguments are refused before the ioctl; a kernel before 6.13 is UnsupportedError", () => {
  const fake = withPeers();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const mapFiles = () => fake.ioctls().filter((n) => n === "IOMMU_IOAS_MAP_FILE").length;
  const before = mapFiles();
  assert.throws(() => ioas.mapFile(-1, IOVA, { length: 0x1000 }), TypeError);
  assert.throws(() => ioas.mapFile(3, IOVA, { start: 0x10, length: 0x1000 }), /multiple of the page size/);
  assert.throws(() => ioas.mapFile(3, IOVA + 1n, { length: 0x1000 }), /multiples of the IOMMU page size/);
  assert.throws(() => ioas.mapFile(3, IOVA, { length: 0x1000, read: false, write: false }), /no access/);
  assert.equal(mapFiles(), before);
  const old = withPeers("6.12.117");
  using ioas2 = IommufdIoas.open(old);
  ioas2.openDevice(EDU);
  const err = caught(() => ioas2.mapFile(3, IOVA, { length: 0x1000 }));
  assert.ok(err instanceof UnsupportedError);
  assert.match(err.hint!, /IOMMU_IOAS_MAP_FILE needs Linux 6\.13 or later; this kernel is 6\.12\.117/);
});

// --- mapPeerRegion, on both backends ----------------------------------------------------------

for (const b of backends) {
  test(`mapPeerRegion (${b.name}): maps the peer's BAR at the IOVA; closing it unmaps and releases the backing`, () => {
    const fake = withPeers();
    using backend = b.open(fake);
    backend.openDevice(EDU);
    const peer = backend.openDevice(PEER);
    const peerMapping = backend.mapPeerRegion(peer, 0, IOVA, { length: 0x1000 });
    assert.equal(peerMapping.iova, IOVA);
    assert.equal(peerMapping.size, 0x1000);
    assert.equal(backend.mappings.get(IOVA), 0x1000);
    if (b.name === "legacy") {
      // type1 takes the BAR's mmap (VM_PFNMAP) as it is.
      const [m] = [...fake.containers[0]!.mappings.values()];
      assert.ok(fake.mappings().some((x) => x.what === `${PEER} region 0` && x.address === m!.vaddr));
    } else {
      assert.equal(dmaBufsOf(fake).length, 1);
      assert.equal(fake.ioctls().filter((n) => n === "IOMMU_IOAS_MAP_FILE").length, 1);
    }
    peerMapping.close();
    peerMapping.close();
    assert.equal(backend.mappings.size, 0);
    assert.equal(fake.mappings().filter((x) => x.what.endsWith("region 0")).length, 0);
    assert.equal(fake.openFds().filter((f) => f.kind === "dmabuf").length, 0);
    backend.close();
    assert.deepEqual(fake.leaks(), []);
  });

  test(`mapPeerRegion (${b.name}): closes with the backend, and with the peer device`, () => {
    const fake = withPeers();
    {
      using backend = b.open(fake);
      backend.openDevice(EDU);
      backend.mapPeerRegion(backend.openDevice(PEER), 0, IOVA);
      assert.equal(backend.mappings.get(IOVA), BAR);
    }
    assert.deepEqual(fake.leaks(), []);
    using backend = b.open(fake);
    backend.openDevice(EDU);
    const peer = backend.openDevice(PEER);
    const mapping = backend.mapPeerRegion(peer, 0, IOVA, { offset: 0x1000, length: 0x2000, write: false });
    peer.close();
    assert.equal(mapping.closed, true);
    assert.equal(backend.mappings.size, 0);
    backend.close();
    assert.deepEqual(fake.leaks(), []);
  });

  test(`mapPeerRegion (${b.name}): a bad region, range or IOVA is refused before anything is mapped`, () => {
    const fake = withPeers();
    using backend = b.open(fake);
    backend.openDevice(EDU);
    const peer = backend.openDevice(PEER);
    const mapCalls = () =>
      fake.calls.filter((c) =>
        (c.op === "mmap" && c.fd !== -1) || // a BAR (reading the IOVA ranges maps a scratch page)
        ["VFIO_IOMMU_MAP_DMA", "IOMMU_IOAS_MAP_FILE", "VFIO_DEVICE_FEATURE"].includes(c.name!)
      ).length;
    const before = mapCalls();
    assert.throws(() => backend.mapPeerRegion(peer, 7, IOVA), /only BARs/);
    assert.throws(() => backend.mapPeerRegion(peer, 2, IOVA), /inside the 0-byte BAR/);
    assert.throws(() => backend.mapPeerRegion(peer, 0, IOVA, { offset: 0x800 }), /page-aligned/);
    assert.throws(() => backend.mapPeerRegion(peer, 0, IOVA, { length: BAR + 0x1000 }), RangeError);
    assert.throws(() => backend.mapPeerRegion(peer, 0, 0xfee00000n), /outside the IOMMU's IOVA ranges/);
    assert.throws(() => backend.mapPeerRegion({} as never, 0, IOVA), TypeError);
    assert.equal(mapCalls(), before);
    assert.equal(backend.mappings.size, 0);
    assert.equal(fake.mappings().length, 0);
  });
}

test("mapPeerRegion: in no-IOMMU mode it is UnsupportedError on both backends", () => {
  const fake = new FakeSys();
  fake.iommufd = true;
  fake.extensions.add(8); // VFIO_NOIOMMU_IOMMU
  fake.addDevice({ bdf: EDU, group: 0, noiommu: true, cdev: "noiommu-vfio0" });
  fake.addDevice({ bdf: PEER, group: 1, noiommu: true, cdev: "noiommu-vfio1" });
  for (const open of [() => VfioContainer.open(fake), () => IommufdIoas.open(fake)]) {
    using backend: IommuBackend = open();
    backend.openDevice(EDU);
    const err = caught(() => backend.mapPeerRegion(backend.openDevice(PEER), 0, IOVA));
    assert.ok(err instanceof UnsupportedError);
    assert.match(err.hint!, /no-IOMMU mode has no IOMMU to map a peer's BAR into/);
  }
});

test("mapPeerRegion (iommufd): a kernel without DMA-BUF export is UnsupportedError, and nothing stays mapped", () => {
  const fake = withPeers("6.18.0");
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const err = caught(() => ioas.mapPeerRegion(ioas.openDevice(PEER), 0, IOVA));
  assert.ok(err instanceof UnsupportedError);
  assert.match(err.hint!, /6\.19/);
  assert.equal(ioas.mappings.size, 0);
});

// --- a BAR's mmap through mapDma --------------------------------------------------------------

test("mapDma (iommufd): a BAR's mmap fails in the kernel (EFAULT), with a hint to mapPeerRegion", () => {
  const fake = withPeers();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const peer = ioas.openDevice(PEER);
  const region = peer.region(0);
  const m = region.map(0, 0x1000);
  const err = caught(() => ioas.mapDma(m.address, IOVA, 0x1000));
  assert.equal(err.code, "EFAULT");
  assert.match(err.hint!, /an mmap of 0000:00:06\.0 region 0, device memory that iommufd cannot pin/);
  assert.match(err.hint!, /mapPeerRegion/);
  region.unmap(m);
  // Anything else unmapped keeps the plain hint.
  assert.match(caught(() => ioas.mapDma(m.address, IOVA, 0x1000)).hint!, /not mapped in this process/);
});

test("mapDma (legacy): type1 maps a BAR's mmap (VM_PFNMAP) as it is", () => {
  const fake = withPeers();
  using c = VfioContainer.open(fake);
  c.openDevice(EDU);
  const region = c.openDevice(PEER).region(0);
  const m = region.map(0, 0x1000);
  c.mapDma(m.address, IOVA, 0x1000);
  assert.equal(c.busAddress(IOVA, 0x1000), IOVA);
  c.unmapDma(IOVA, 0x1000);
  region.unmap(m);
});

test("busAddress: the IOVA itself when the IOMMU translates; a range outside one mapping is a RangeError", () => {
  const fake = withPeers();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const mem = fake.mmap(0x2000, 3, 0x22, -1, 0);
  ioas.mapDma(mem, IOVA, 0x2000);
  assert.equal(ioas.busAddress(IOVA + 0x1000n, 0x1000), IOVA + 0x1000n);
  assert.throws(() => ioas.busAddress(IOVA + 0x1000n, 0x2000), /inside one mapping/);
  assert.throws(() => ioas.busAddress(0n, 0x1000), RangeError);
  ioas.unmapDma(IOVA, 0x2000);
  fake.munmap(mem, 0x2000);
});
