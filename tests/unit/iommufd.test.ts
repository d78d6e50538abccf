/**
 * lib/iommufd.ts: the iommufd backend against the fake kernel: the IOAS, DMA map/unmap, IOVA ranges
 * with the EMSGSIZE re-query, allowed IOVAs, device cdev bind and attach, their errors, and the
 * fake's iommufd rules themselves.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { DmaPool } from "../../lib/dma.ts";
import { DeviceNotBoundError, UnsupportedError, VfioUnavailableError } from "../../lib/errors.ts";
import { VfioGroup } from "../../lib/group.ts";
import { IommufdIoas } from "../../lib/iommufd.ts";
import { chooseBackend, openPciDevice } from "../../lib/open.ts";
import {
  IOMMU_DESTROY,
  iommu_destroy,
  IOMMU_IOAS_ALLOC,
  iommu_ioas_alloc,
  IOMMU_IOAS_IOVA_RANGES,
  iommu_ioas_iova_ranges,
  IOMMU_IOAS_MAP,
  iommu_ioas_map,
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  IOMMU_IOAS_UNMAP,
  iommu_ioas_unmap,
  iommu_iova_range,
} from "../../lib/uapi/iommufd.ts";
import { ERRNO } from "../../lib/uapi/libc.ts";
import {
  VFIO_DEVICE_ATTACH_IOMMUFD_PT,
  vfio_device_attach_iommufd_pt,
  VFIO_DEVICE_BIND_IOMMUFD,
  vfio_device_bind_iommufd,
  VFIO_DEVICE_GET_INFO,
  vfio_device_info,
} from "../../lib/uapi/vfio.ts";
import { caught, EDU, type FakeDeviceOptions, type FakeSys, type IoasState, withEdu } from "./fake_sys.ts";

const CDEV = "/dev/vfio/devices/vfio0";
const U64_MAX = 0xffffffffffffffffn;
const RW = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;
const e = (name: string) => -ERRNO[name]!;
/** The x86 MSI window the fake's default IOVA ranges leave out. */
const MSI = { start: 0xfee00000n, last: 0xfeefffffn };

/** A fake with iommufd on and the edu device, whose cdev is vfio0. */
function withIommufd(o: Partial<FakeDeviceOptions> = {}): FakeSys {
  const fake = withEdu({ cdev: "vfio0", ...o });
  fake.iommufd = true;
  return fake;
}

/** The fake's IOAS `id` in the first iommufd opened. */
function ioasState(fake: FakeSys, id = 1): IoasState {
  const o = fake.iommufds[0]!.objects.get(id);
  assert.equal(o?.kind, "ioas");
  return (o as { ioas: IoasState }).ioas;
}

/** Anonymous memory to map. */
const anon = (fake: FakeSys, size = 0x10000) => fake.mmap(size, 3, 0x22, -1, 0);

// Raw calls, for the fake's own rules.
function rawIoas(fake: FakeSys): { fd: number; id: number } {
  const fd = fake.open("/dev/iommu", 2);
  const a = iommu_ioas_alloc.alloc();
  assert.equal(fake.ioctlPtr(fd, IOMMU_IOAS_ALLOC, a.bytes), 0);
  return { fd, id: a.get("out_ioas_id") };
}
function rawBind(fake: FakeSys, cdev: number, iommufd: number): number {
  const b = vfio_device_bind_iommufd.alloc();
  b.set("iommufd", iommufd);
  return fake.ioctlPtr(cdev, VFIO_DEVICE_BIND_IOMMUFD, b.bytes);
}
function rawAttach(fake: FakeSys, cdev: number, pt: number): [number, number] {
  const a = vfio_device_attach_iommufd_pt.alloc();
  a.set("pt_id", pt);
  return [fake.ioctlPtr(cdev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, a.bytes), a.get("pt_id")];
}
function rawMap(
  fake: FakeSys,
  fd: number,
  id: number,
  vaddr: bigint,
  iova: bigint,
  length: bigint,
  flags = RW,
) {
  const m = iommu_ioas_map.alloc();
  m.set("flags", flags).set("ioas_id", id).set("user_va", vaddr).set("length", length).set("iova", iova);
  return fake.ioctlPtr(fd, IOMMU_IOAS_MAP, m.bytes);
}
function rawUnmap(fake: FakeSys, fd: number, id: number, iova: bigint, length: bigint): [number, bigint] {
  const u = iommu_ioas_unmap.alloc();
  u.set("ioas_id", id).set("iova", iova).set("length", length);
  return [fake.ioctlPtr(fd, IOMMU_IOAS_UNMAP, u.bytes), u.get("length")];
}
function rawDestroy(fake: FakeSys, fd: number, id: number): number {
  const d = iommu_destroy.alloc();
  d.set("id", id);
  return fake.ioctlPtr(fd, IOMMU_DESTROY, d.bytes);
}

// --- the IOAS -------------------------------------------------------------------------------------

test("iommufd: open allocates an IOAS; close unmaps all, destroys it, then closes /dev/iommu", () => {
  const fake = withIommufd();
  const ioas = IommufdIoas.open(fake);
  assert.equal(ioas.kind, "iommufd");
  assert.equal(ioas.translates, true);
  assert.equal(ioas.ioasId, 1);
  assert.equal(ioasState(fake).id, 1);
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/iommu"]);
  ioas.close();
  assert.deepEqual(fake.ioctls(), ["IOMMU_IOAS_ALLOC", "IOMMU_IOAS_UNMAP", "IOMMU_DESTROY"]);
  assert.equal(fake.calls.at(-1)?.op, "close");
  assert.equal(fake.iommufds[0]!.released, true);
  assert.equal(ioas.closed, true);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: without /dev/iommu open is a VfioUnavailableError keeping ENOENT, pointing to the legacy backend", () => {
  const fake = withEdu({ cdev: "vfio0" }); // iommufd off, the default
  const err = caught(() => IommufdIoas.open(fake));
  assert.ok(err instanceof VfioUnavailableError);
  assert.equal(err.errno, ERRNO.ENOENT);
  assert.equal(err.path, "/dev/iommu");
  assert.match(err.hint!, /CONFIG_IOMMUFD, Linux 6\.2\+\): use the legacy backend/);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: EACCES on /dev/iommu is a VfioError that says to run as root or grant access", () => {
  const fake = withIommufd();
  using _ = fake.fail("open", "/dev/iommu", "EACCES");
  const err = caught(() => IommufdIoas.open(fake));
  assert.ok(!(err instanceof VfioUnavailableError));
  assert.equal(err.code, "EACCES");
  assert.match(err.hint!, /run as root, or give your user access to \/dev\/iommu/);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: a failed IOMMU_IOAS_ALLOC is reported with its errno and closes /dev/iommu", () => {
  const fake = withIommufd();
  using _ = fake.fail("ioctl", "IOMMU_IOAS_ALLOC", "ENOMEM");
  const err = caught(() => IommufdIoas.open(fake));
  assert.equal(err.op, "IOMMU_IOAS_ALLOC");
  assert.equal(err.code, "ENOMEM");
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: open adopts an iommufd fd passed in, allocates its IOAS there, and closes that fd", () => {
  const fake = withIommufd();
  const fd = fake.open("/dev/iommu", 2);
  const ioas = IommufdIoas.open(fake, { iommufd: fd });
  assert.equal(ioas.fd, fd);
  assert.equal(fake.iommufds.length, 1);
  assert.equal(ioasState(fake).id, ioas.ioasId);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

// --- devices --------------------------------------------------------------------------------------

test("iommufd: openDevice opens the cdev, binds it to the iommufd and attaches it to the IOAS", () => {
  const fake = withIommufd();
  const ioas = IommufdIoas.open(fake);
  const device = ioas.openDevice("00:04.0");
  assert.equal(device.name, EDU);
  assert.deepEqual(fake.ioctls().slice(1), ["VFIO_DEVICE_BIND_IOMMUFD", "VFIO_DEVICE_ATTACH_IOMMUFD_PT"]);
  assert.deepEqual(fake.openFds().map((f) => [f.kind, f.path]), [["iommufd", "/dev/iommu"], ["cdev", CDEV]]);
  const state = ioasState(fake);
  assert.equal(state.devices.size, 1);
  assert.equal([...state.devices][0]!.device.bdf, EDU);
  assert.notEqual(state.hwpt, undefined);
  assert.equal(device.info().pci, true);
  ioas.close();
  assert.equal(device.closed, true);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: a bound cdev device works as on the legacy path: info, registers, IRQs, reset", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  const device = ioas.openDevice(EDU);
  assert.deepEqual(device.info(), {
    flags: device.info().flags,
    numRegions: 9,
    numIrqs: 5,
    pci: true,
    reset: true,
  });
  fake.device(EDU).regions[0]!.data.set([0xef, 0xbe, 0xad, 0xde]);
  assert.equal(device.registers(0).read32(0), 0xdeadbeef);
  assert.equal(device.config.vendorId, 0x1234);
  device.enableIrq(1);
  assert.equal(fake.raise(EDU, 1), true);
  device.reset();
  assert.equal(fake.device(EDU).resets, 1);
  device.close();
  assert.deepEqual(fake.device(EDU).irqs[1]!.triggers, []);
  assert.equal(ioasState(fake).devices.size, 0);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: hotReset on a cdev device passes no group fds; info reports devids; an unowned dependent is EPERM", () => {
  const fake = withIommufd({ hotReset: [{ bdf: EDU, group: 4 }] });
  fake.addDevice({ bdf: "0000:00:05.0", group: 5 });
  {
    using ioas = IommufdIoas.open(fake);
    const device = ioas.openDevice(EDU);
    const devid = [...fake.iommufds[0]!.objects].find(([, o]) => o.kind === "device")![0];
    assert.deepEqual(device.hotResetInfo(), [{ bdf: EDU, id: devid, devid: true }]);
    device.hotReset();
    assert.equal(fake.device(EDU).resets, 1);
    fake.device(EDU).hotReset = [{ bdf: EDU, group: 4 }, { bdf: "0000:00:05.0", group: 5 }];
    assert.deepEqual(device.hotResetInfo()[1], { bdf: "0000:00:05.0", id: -1, devid: true });
    const err = caught(() => device.hotReset());
    assert.equal(err.code, "EPERM");
    assert.equal(fake.device(EDU).resets, 1);
  }
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: openDevice of a device bound to another driver is DeviceNotBoundError naming that driver", () => {
  const fake = withIommufd({ driver: "e1000" });
  using ioas = IommufdIoas.open(fake);
  assert.throws(() => ioas.openDevice(EDU), (err: unknown) => {
    assert.ok(err instanceof DeviceNotBoundError);
    assert.equal(err.driver, "e1000");
    assert.equal(err.code, "ERR_VFIO_DEVICE_NOT_BOUND");
    return true;
  });
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/iommu"]);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: openDevice of a vfio-pci device with no vfio-dev entry is UnsupportedError with the cdev hint", () => {
  const fake = withIommufd({ cdev: undefined });
  using ioas = IommufdIoas.open(fake);
  assert.throws(() => ioas.openDevice(EDU), (err: unknown) => {
    assert.ok(err instanceof UnsupportedError);
    assert.match(err.hint!, /CONFIG_VFIO_DEVICE_CDEV, Linux 6\.6\+\): use the legacy backend/);
    return true;
  });
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: on a kernel without device cdevs (vfio-dev listed, no node) openDevice is UnsupportedError, before any open", () => {
  const fake = withIommufd();
  fake.deviceCdevs = false;
  using ioas = IommufdIoas.open(fake);
  const err = caught(() => ioas.openDevice(EDU));
  assert.ok(err instanceof UnsupportedError);
  assert.equal(err.errno, undefined);
  assert.match(err.hint!, /CONFIG_VFIO_DEVICE_CDEV/);
  assert.equal(fake.calls.filter((c) => c.op === "open" && c.path === CDEV).length, 0);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: a second openDevice of a bound device fails at the bind with EINVAL and closes the second cdev fd", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  const first = ioas.openDevice(EDU);
  const err = caught(() => ioas.openDevice(EDU));
  assert.equal(err.op, "VFIO_DEVICE_BIND_IOMMUFD");
  assert.equal(err.code, "EINVAL");
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/iommu", CDEV]);
  assert.equal(first.info().pci, true); // the first is untouched
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: openDevice while the device's group is open the legacy way fails at the bind with EBUSY", () => {
  const fake = withIommufd();
  const group = VfioGroup.open(fake, 4);
  using ioas = IommufdIoas.open(fake);
  const err = caught(() => ioas.openDevice(EDU));
  assert.equal(err.op, "VFIO_DEVICE_BIND_IOMMUFD");
  assert.equal(err.code, "EBUSY");
  assert.deepEqual(fake.openFds().map((f) => f.kind), ["group", "iommufd"]);
  group.close();
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: the legacy group cannot be opened (EBUSY) while a device of it is bound through its cdev", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  const device = ioas.openDevice(EDU);
  assert.equal(caught(() => VfioGroup.open(fake, 4)).code, "EBUSY");
  device.close();
  VfioGroup.open(fake, 4).close(); // unbound: the group opens again
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: a failed bind (injected EFAULT) closes the cdev fd and leaves nothing bound", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  {
    using _ = fake.fail("ioctl", "VFIO_DEVICE_BIND_IOMMUFD", "EFAULT");
    const err = caught(() => ioas.openDevice(EDU));
    assert.equal(err.op, "VFIO_DEVICE_BIND_IOMMUFD");
    assert.equal(err.code, "EFAULT");
    assert.equal(err.path, CDEV);
  }
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/iommu"]);
  assert.ok(![...fake.iommufds[0]!.objects.values()].some((o) => o.kind === "device"));
  ioas.openDevice(EDU).close(); // and it can be opened afterwards
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: a failed attach (injected EINVAL) closes the cdev fd, which unbinds the device", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  {
    using _ = fake.fail("ioctl", "VFIO_DEVICE_ATTACH_IOMMUFD_PT", "EINVAL");
    const err = caught(() => ioas.openDevice(EDU));
    assert.equal(err.op, "VFIO_DEVICE_ATTACH_IOMMUFD_PT");
    assert.equal(err.code, "EINVAL");
    assert.match(err.message, /attach 0000:00:04\.0 to IOAS 1/);
  }
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/iommu"]);
  assert.ok(![...fake.iommufds[0]!.objects.values()].some((o) => o.kind === "device"));
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: without interrupt remapping the bind is EPERM and the cdev fd is closed", () => {
  const fake = withIommufd();
  fake.isolatedMsi = false;
  using ioas = IommufdIoas.open(fake);
  const err = caught(() => ioas.openDevice(EDU));
  assert.equal(err.op, "VFIO_DEVICE_BIND_IOMMUFD");
  assert.equal(err.code, "EPERM");
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: openDeviceFd binds and attaches a cdev fd passed in, and the IOAS closes it", () => {
  const fake = withIommufd();
  const ioas = IommufdIoas.open(fake);
  const fd = fake.open(CDEV, 2);
  const device = ioas.openDeviceFd(fd, EDU);
  assert.equal(device.fd, fd);
  assert.equal(ioasState(fake).devices.size, 1);
  assert.equal(device.info().pci, true);
  ioas.close();
  assert.equal(device.closed, true);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: openDeviceFd closes the fd it was given when the bind fails", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  const fd = fake.open(CDEV, 2);
  using _ = fake.fail("ioctl", "VFIO_DEVICE_BIND_IOMMUFD", "ENOMEM");
  assert.equal(caught(() => ioas.openDeviceFd(fd, EDU)).code, "ENOMEM");
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/iommu"]);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: close closes the devices before IOMMU_DESTROY, which would be EBUSY while one is attached", () => {
  const fake = withIommufd();
  const ioas = IommufdIoas.open(fake);
  const device = ioas.openDevice(EDU);
  assert.equal(rawDestroy(fake, ioas.fd, ioas.ioasId), e("EBUSY"));
  const cdevFd = device.fd;
  ioas.close();
  const closeAt = fake.calls.findIndex((c) => c.op === "close" && c.fd === cdevFd);
  const destroyAt = fake.calls.findIndex((c) => c.name === "IOMMU_DESTROY" && c.ret === 0);
  assert.ok(closeAt >= 0 && closeAt < destroyAt, "the cdev closes before the IOAS is destroyed");
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: closing the IOAS frees DMA pool buffers before unmapping all and destroying it", () => {
  const fake = withIommufd();
  const ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const pool = new DmaPool(fake, ioas);
  const buf = pool.alloc(4096);
  assert.equal(ioasState(fake).mappings.get(buf.iova)?.length, 4096n);
  ioas.close();
  const names = fake.calls.filter((c) => c.op === "ioctl" || c.op === "munmap").map((c) => c.name ?? c.op);
  assert.deepEqual(names.slice(-4), ["IOMMU_IOAS_UNMAP", "munmap", "IOMMU_IOAS_UNMAP", "IOMMU_DESTROY"]);
  assert.deepEqual(fake.leaks(), []);
});

// --- DMA ------------------------------------------------------------------------------------------

test("iommufd: mapDma maps at the fixed IOVA with the access flags; unmapDma removes exactly that mapping", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const vaddr = anon(fake);
  ioas.mapDma(vaddr, 0x100000n, 0x2000);
  ioas.mapDma(vaddr + 0x2000n, 0x200000n, 0x1000, { write: false });
  const maps = ioasState(fake).mappings;
  assert.deepEqual(maps.get(0x100000n), { iova: 0x100000n, length: 0x2000n, vaddr, flags: RW });
  assert.equal(maps.get(0x200000n)?.flags, IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE);
  assert.deepEqual([...ioas.mappings], [[0x100000n, 0x2000], [0x200000n, 0x1000]]);
  ioas.unmapDma(0x100000n, 0x2000);
  assert.deepEqual([...maps.keys()], [0x200000n]);
  ioas.close();
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: mapDma checks IOVAs past 2^53 and sizes past 2^32 exactly, and passes them whole", () => {
  // Before an attach the IOAS takes every IOVA and pins nothing, so any address can be mapped.
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  const vaddr = anon(fake);
  const high = 1n << 60n;
  ioas.mapDma(vaddr, high, 0x1_0000_1000);
  assert.equal(ioasState(fake).mappings.get(high)?.length, 0x1_0000_1000n);
  ioas.mapDma(vaddr, high + 0x1_0000_1000n, 0x1000);
  const calls = fake.calls.length;
  assert.throws(
    () => ioas.mapDma(vaddr, high + 0x1_0000_0000n, 0x1000),
    /overlaps the mapping at 0x1000000000000000/,
  );
  assert.throws(() => ioas.mapDma(vaddr, high + 1n, 0x1000), /multiples of the IOMMU page size 0x1000/);
  assert.throws(() => ioas.mapDma(vaddr, U64_MAX - 0xfffn, 0x2000), /inside 64 bits/);
  assert.throws(() => ioas.mapDma(vaddr, 0n, 2 ** 53 - 1), /multiples/);
  assert.equal(fake.calls.length, calls, "refused before any ioctl");
  ioas.mapDma(vaddr, U64_MAX - 0xfffn, 0x1000); // the last page of the address space
  ioas.mapDma(vaddr, 2n ** 53n - 0x1000n, 0x2000); // across 2^53
  assert.deepEqual(ioas.findMapping(2n ** 53n, 1), { iova: 2n ** 53n - 0x1000n, size: 0x2000 });
  ioas.unmapDma(high, 0x1_0000_1000);
  assert.equal(ioasState(fake).mappings.has(high), false);
  ioas.close();
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: unmapAll sends iova 0 with length U64_MAX and empties the IOAS", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const vaddr = anon(fake);
  ioas.mapDma(vaddr, 0x100000n, 0x1000);
  ioas.mapDma(vaddr + 0x1000n, 0x300000n, 0x1000);
  ioas.unmapAll();
  assert.equal(ioasState(fake).mappings.size, 0);
  assert.equal(ioas.mappings.size, 0);
  assert.equal(fake.ioctls().at(-1), "IOMMU_IOAS_UNMAP");
  ioas.close();
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: mapDma past RLIMIT_MEMLOCK is ENOMEM with the memlock hint, and nothing is mapped", () => {
  const fake = withIommufd();
  fake.memlock = 0x1000n;
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const vaddr = anon(fake);
  const err = caught(() => ioas.mapDma(vaddr, 0x100000n, 0x2000));
  assert.equal(err.op, "IOMMU_IOAS_MAP");
  assert.equal(err.code, "ENOMEM");
  assert.match(err.hint!, /pinning 8 KiB for DMA counts against RLIMIT_MEMLOCK, which is 4 KiB/);
  assert.equal(ioasState(fake).mappings.size, 0);
  assert.equal(ioas.mappings.size, 0);
  ioas.close();
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: mapDma of memory the process has not mapped is EFAULT with its hint", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const err = caught(() => ioas.mapDma(0x10000000n, 0x100000n, 0x1000));
  assert.equal(err.code, "EFAULT");
  assert.match(err.hint!, /the virtual address range is not mapped in this process/);
  assert.equal(ioas.mappings.size, 0);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: mapDma over a mapping made behind the library's back is EEXIST with its hint", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const vaddr = anon(fake);
  assert.equal(rawMap(fake, ioas.fd, ioas.ioasId, vaddr, 0x100000n, 0x1000n), 0);
  const err = caught(() => ioas.mapDma(vaddr + 0x1000n, 0x100000n, 0x1000));
  assert.equal(err.code, "EEXIST");
  assert.match(err.hint!, /the IOVA range overlaps an existing mapping/);
  ioas.close(); // unmap-all takes the foreign mapping too
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: mappings made before any attach are pinned by it: past RLIMIT_MEMLOCK openDevice fails with ENOMEM", () => {
  const fake = withIommufd();
  fake.memlock = 0x1000n;
  using ioas = IommufdIoas.open(fake);
  const vaddr = anon(fake);
  ioas.mapDma(vaddr, 0x100000n, 0x2000); // no domain yet: nothing is pinned
  const err = caught(() => ioas.openDevice(EDU));
  assert.equal(err.op, "VFIO_DEVICE_ATTACH_IOMMUFD_PT");
  assert.equal(err.code, "ENOMEM");
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/iommu"]);
  assert.equal(ioasState(fake).hwpt, undefined);
  ioas.close();
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: a mapping made before the attach over the MSI window makes openDevice fail with EADDRINUSE (98)", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  const vaddr = anon(fake);
  ioas.mapDma(vaddr, MSI.start, 0x1000); // allowed: with no device nothing is reserved
  const err = caught(() => ioas.openDevice(EDU));
  assert.equal(err.op, "VFIO_DEVICE_ATTACH_IOMMUFD_PT");
  assert.equal(err.errno, 98);
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/iommu"]);
  ioas.close();
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

// --- IOVA ranges ----------------------------------------------------------------------------------

test("iommufd: iovaRanges is all of 0..U64_MAX before an attach, leaves out the MSI window after, and returns on detach", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  assert.deepEqual(ioas.iovaRanges(), [{ start: 0n, last: U64_MAX }]);
  const device = ioas.openDevice(EDU);
  assert.deepEqual(ioas.iovaRanges(), [
    { start: 0n, last: MSI.start - 1n },
    { start: MSI.last + 1n, last: 0xffffffffffn },
  ]);
  const vaddr = anon(fake);
  assert.throws(() => ioas.mapDma(vaddr, MSI.start, 0x1000), /outside the IOMMU's IOVA ranges/);
  device.close();
  assert.deepEqual(ioas.iovaRanges(), [{ start: 0n, last: U64_MAX }]);
  ioas.close();
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: iovaRanges asks again with the count from EMSGSIZE when more than 8 ranges come back", () => {
  const fake = withIommufd();
  fake.iovaRanges = Array.from({ length: 10 }, (_, i) => ({
    start: BigInt(i) << 32n,
    last: (BigInt(i) << 32n) + 0xfffffffn,
  }));
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const before = fake.calls.length;
  assert.deepEqual(ioas.iovaRanges(), fake.iovaRanges);
  const rets = fake.calls.slice(before).filter((c) => c.name === "IOMMU_IOAS_IOVA_RANGES").map((c) => c.ret);
  assert.deepEqual(rets, [e("EMSGSIZE"), 0]);
  assert.deepEqual(fake.mappings(), []); // both scratch pages were unmapped
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: iovaRanges is read once per change: cached until an attach or detach", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  const count = () => fake.ioctls().filter((n) => n === "IOMMU_IOAS_IOVA_RANGES").length;
  ioas.iovaRanges();
  ioas.iovaRanges();
  assert.equal(count(), 1);
  const device = ioas.openDevice(EDU);
  ioas.iovaRanges();
  assert.equal(count(), 2);
  device.close();
  ioas.iovaRanges();
  assert.equal(count(), 3);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: iommuPageSize is the CPU page while the IOAS alignment is 1, and the IOMMU's 64 KiB page once attached", () => {
  const fake = withIommufd();
  fake.iovaPgsizes = 0x10000n | 0x200000n;
  using ioas = IommufdIoas.open(fake);
  assert.equal(ioas.iommuPageSize, 4096);
  const device = ioas.openDevice(EDU);
  assert.equal(ioas.iommuPageSize, 0x10000);
  const memory = anon(fake, 0x20000);
  const vaddr = (memory + 0xffffn) & ~0xffffn; // the library wants the address 64 KiB-aligned too
  assert.throws(() => ioas.mapDma(vaddr, 0x100000n, 0x1000), /multiples of the IOMMU page size 0x10000/);
  ioas.mapDma(vaddr, 0x100000n, 0x10000);
  ioas.unmapAll();
  device.close();
  assert.equal(ioas.iommuPageSize, 4096);
  ioas.close();
  fake.munmap(memory, 0x20000);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: a DmaPool made before the attach allocates outside the reserved window the attach adds", () => {
  const fake = withIommufd();
  // The device reserves 0x100000..0x1fffff, low enough for the allocator's first fit to reach.
  fake.iovaRanges = [{ start: 0n, last: 0xfffffn }, { start: 0x200000n, last: 0xffffffffffffn }];
  using ioas = IommufdIoas.open(fake);
  const pool = new DmaPool(fake, ioas);
  const a = pool.alloc(4096);
  assert.equal(a.iova, 0x1000n);
  ioas.openDevice(EDU);
  const b = pool.alloc(0x100000); // 1 MiB no longer fits below the window
  assert.equal(b.iova, 0x200000n);
  assert.deepEqual([...ioasState(fake).mappings.keys()], [0x1000n, 0x200000n]);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

// --- allowed IOVAs --------------------------------------------------------------------------------

test("iommufd: allowIovas hands the ranges to the kernel through process memory; an empty list clears them", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  const ranges = [{ start: 0x100000n, last: 0x1fffffn }, { start: 0x400000n, last: 0x7fffffn }];
  ioas.allowIovas(ranges);
  assert.deepEqual(ioasState(fake).allowed, ranges);
  ioas.allowIovas([]);
  assert.deepEqual(ioasState(fake).allowed, []);
  assert.deepEqual(fake.mappings(), []); // the scratch pages went back
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: allowIovas over the MSI window once a device is attached is EADDRINUSE (98) and changes nothing", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(EDU);
  const err = caught(() => ioas.allowIovas([{ start: 0xf0000000n, last: 0xffffffffn }]));
  assert.equal(err.op, "IOMMU_IOAS_ALLOW_IOVAS");
  assert.equal(err.errno, 98);
  assert.deepEqual(ioasState(fake).allowed, []);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: allowed IOVAs over the MSI window make a later attach fail with EADDRINUSE (98)", () => {
  const fake = withIommufd();
  using ioas = IommufdIoas.open(fake);
  ioas.allowIovas([{ start: 0xf0000000n, last: 0xffffffffn }]);
  const err = caught(() => ioas.openDevice(EDU));
  assert.equal(err.op, "VFIO_DEVICE_ATTACH_IOMMUFD_PT");
  assert.equal(err.errno, 98);
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/iommu"]);
  ioas.allowIovas([]);
  ioas.openDevice(EDU); // with the restriction lifted the attach succeeds
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

// --- openPciDevice and chooseBackend ----------------------------------------------------------------

test("iommufd: openPciDevice with backend iommufd opens the cdev and maps DMA into the IOAS", () => {
  const fake = withIommufd();
  const h = openPciDevice(fake, EDU, { backend: "iommufd" });
  assert.equal(h.backend.kind, "iommufd");
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/iommu", CDEV]);
  const buf = h.dma.alloc(4096);
  assert.equal(ioasState(fake).mappings.get(buf.iova)?.length, 4096n);
  h.close();
  assert.equal(h.device.closed, true);
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: openPciDevice picks iommufd by itself when /dev/iommu and device cdevs exist", () => {
  const fake = withIommufd();
  assert.equal(chooseBackend(fake), "iommufd");
  const h = openPciDevice(fake, EDU);
  assert.equal(h.backend.kind, "iommufd");
  assert.deepEqual(fake.openFds().map((f) => f.kind), ["iommufd", "cdev"]);
  h.close();
  assert.deepEqual(fake.leaks(), []);
});

test("iommufd: openPciDevice with backend iommufd closes the IOAS when the device is not bound to vfio-pci", () => {
  const fake = withIommufd({ driver: undefined });
  assert.throws(() => openPciDevice(fake, EDU, { backend: "iommufd" }), DeviceNotBoundError);
  assert.deepEqual(fake.leaks(), []);
});

// --- the fake kernel's iommufd rules ------------------------------------------------------------------

test("fake iommufd: leaks() lists an open iommufd, a bound cdev and the mappings of a live IOAS", () => {
  const fake = withIommufd();
  const ioas = rawIoas(fake);
  const cdev = fake.open(CDEV, 2);
  assert.equal(rawBind(fake, cdev, ioas.fd), 0);
  assert.equal(rawAttach(fake, cdev, ioas.id)[0], 0);
  const vaddr = anon(fake);
  assert.equal(rawMap(fake, ioas.fd, ioas.id, vaddr, 0x100000n, 0x1000n), 0);
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), [
    `fd ${ioas.fd} (/dev/iommu) is open`,
    `fd ${cdev} (${CDEV}) is open`,
    "IOAS 1 maps iova 0x100000 (4096 bytes)",
    `munmap(0x${vaddr.toString(16)}): still mapped in IOAS 1 at iova 0x100000`,
  ]);
});

test("fake iommufd: a bound cdev holds the iommufd: closing its fd keeps the IOAS until the cdev closes", () => {
  const fake = withIommufd();
  const ioas = rawIoas(fake);
  const cdev = fake.open(CDEV, 2);
  assert.equal(rawBind(fake, cdev, ioas.fd), 0);
  assert.equal(rawAttach(fake, cdev, ioas.id)[0], 0);
  const vaddr = anon(fake);
  assert.equal(rawMap(fake, ioas.fd, ioas.id, vaddr, 0x100000n, 0x1000n), 0);
  fake.close(ioas.fd);
  assert.equal(fake.iommufds[0]!.released, false);
  assert.equal(ioasState(fake).mappings.size, 1);
  fake.close(cdev);
  assert.equal(fake.iommufds[0]!.released, true);
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

test("fake iommufd: an unbound cdev opens more than once and refuses GET_INFO, pread and mmap with EINVAL", () => {
  const fake = withIommufd();
  const ioas = rawIoas(fake);
  const cdev = fake.open(CDEV, 2);
  const other = fake.open(CDEV, 2);
  assert.ok(other >= 0);
  const info = vfio_device_info.alloc();
  assert.equal(fake.ioctlPtr(cdev, VFIO_DEVICE_GET_INFO, info.bytes), e("EINVAL"));
  assert.equal(fake.pread(cdev, new Uint8Array(4), 0), e("EINVAL"));
  assert.equal(fake.mmap(0x1000, 3, 1, cdev, 0), BigInt(e("EINVAL")));
  assert.equal(rawAttach(fake, cdev, ioas.id)[0], e("EINVAL"));
  assert.equal(rawBind(fake, cdev, ioas.fd), 0);
  assert.equal(fake.ioctlPtr(cdev, VFIO_DEVICE_GET_INFO, info.bytes), 0);
  assert.equal(rawBind(fake, cdev, ioas.fd), e("EINVAL")); // bound already
  assert.equal(rawBind(fake, other, ioas.fd), e("EINVAL")); // the device is bound through another fd
  [cdev, other, ioas.fd].forEach((fd) => fake.close(fd));
  assert.deepEqual(fake.leaks(), []);
});

test("fake iommufd: bind to a closed fd is EBADF, to a fd that is not an iommufd EBADFD", () => {
  const fake = withIommufd();
  const cdev = fake.open(CDEV, 2);
  const efd = fake.eventfd(0, 0);
  assert.equal(rawBind(fake, cdev, 99), e("EBADF"));
  assert.equal(rawBind(fake, cdev, efd), e("EBADFD"));
  [cdev, efd].forEach((fd) => fake.close(fd));
  assert.deepEqual(fake.leaks(), []);
});

test("fake iommufd: attach to an unknown ID is ENOENT, to a device EINVAL; it returns the hw page table's ID", () => {
  const fake = withIommufd();
  const ioas = rawIoas(fake);
  const cdev = fake.open(CDEV, 2);
  assert.equal(rawBind(fake, cdev, ioas.fd), 0);
  const devid = 2;
  assert.equal(fake.iommufds[0]!.objects.get(devid)?.kind, "device");
  assert.equal(rawAttach(fake, cdev, 77)[0], e("ENOENT"));
  assert.equal(rawAttach(fake, cdev, devid)[0], e("EINVAL"));
  const [ret, pt] = rawAttach(fake, cdev, ioas.id);
  assert.equal(ret, 0);
  assert.equal(pt, ioasState(fake).hwpt);
  assert.equal(rawDestroy(fake, ioas.fd, pt), e("EBUSY"));
  assert.equal(rawDestroy(fake, ioas.fd, devid), e("EBUSY"));
  assert.equal(rawDestroy(fake, ioas.fd, 77), e("ENOENT"));
  fake.close(cdev);
  assert.equal(rawDestroy(fake, ioas.fd, ioas.id), 0);
  fake.close(ioas.fd);
  assert.deepEqual(fake.leaks(), []);
});

test("fake iommufd: IOMMU_IOAS_MAP is EINVAL off the alignment, in a reserved range or without access; EEXIST on overlap", () => {
  const fake = withIommufd();
  const ioas = rawIoas(fake);
  const vaddr = anon(fake);
  assert.equal(rawMap(fake, ioas.fd, ioas.id, vaddr, 0x123n, 0x1000n), 0); // alignment 1 without a device
  assert.equal(rawUnmap(fake, ioas.fd, ioas.id, 0x123n, 0x1000n)[0], 0);
  const cdev = fake.open(CDEV, 2);
  assert.equal(rawBind(fake, cdev, ioas.fd), 0);
  assert.equal(rawAttach(fake, cdev, ioas.id)[0], 0);
  const map = (iova: bigint, flags = RW, va = vaddr) =>
    rawMap(fake, ioas.fd, ioas.id, va, iova, 0x1000n, flags);
  assert.equal(map(0x100800n), e("EINVAL"));
  assert.equal(map(0x100000n, RW, vaddr + 0x800n), e("EINVAL"));
  assert.equal(map(MSI.start), e("EINVAL"));
  assert.equal(map(0x100000n, IOMMU_IOAS_MAP_FIXED_IOVA), e("EINVAL"));
  assert.equal(rawMap(fake, ioas.fd, ioas.id, vaddr, 0x100000n, 0n), e("EINVAL"));
  assert.equal(map(0x100000n), 0);
  assert.equal(map(0x100000n), e("EEXIST"));
  assert.equal(rawMap(fake, ioas.fd, 77, vaddr, 0x200000n, 0x1000n), e("ENOENT"));
  [cdev, ioas.fd].forEach((fd) => fake.close(fd));
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

test("fake iommufd: IOMMU_IOAS_UNMAP takes whole mappings only (a cut one or an empty range is ENOENT)", () => {
  const fake = withIommufd();
  const ioas = rawIoas(fake);
  const vaddr = anon(fake);
  assert.deepEqual(rawUnmap(fake, ioas.fd, ioas.id, 0n, U64_MAX), [0, 0n]); // empty: still succeeds
  for (const iova of [0x100000n, 0x102000n]) {
    assert.equal(rawMap(fake, ioas.fd, ioas.id, vaddr, iova, 0x2000n), 0);
  }
  assert.equal(rawUnmap(fake, ioas.fd, ioas.id, 0x100000n, 0x1000n)[0], e("ENOENT"));
  assert.equal(rawUnmap(fake, ioas.fd, ioas.id, 0x900000n, 0x1000n)[0], e("ENOENT"));
  // Lowest first: the whole first mapping goes before the cut second one stops it.
  assert.equal(rawUnmap(fake, ioas.fd, ioas.id, 0x100000n, 0x3000n)[0], e("ENOENT"));
  assert.deepEqual([...ioasState(fake).mappings.keys()], [0x102000n]);
  assert.deepEqual(rawUnmap(fake, ioas.fd, ioas.id, 0x100000n, 0x10000n), [0, 0x2000n]);
  fake.close(ioas.fd);
  fake.munmap(vaddr, 0x10000);
  assert.deepEqual(fake.leaks(), []);
});

test("fake iommufd: IOMMU_IOAS_IOVA_RANGES writes what fits, sets the count and is EMSGSIZE when short", () => {
  const fake = withIommufd();
  const ioas = rawIoas(fake);
  const cdev = fake.open(CDEV, 2);
  assert.equal(rawBind(fake, cdev, ioas.fd), 0);
  assert.equal(rawAttach(fake, cdev, ioas.id)[0], 0);
  const vaddr = anon(fake, 0x1000);
  const q = iommu_ioas_iova_ranges.alloc();
  q.set("ioas_id", ioas.id).set("num_iovas", 1).set("allowed_iovas", vaddr);
  assert.equal(fake.ioctlPtr(ioas.fd, IOMMU_IOAS_IOVA_RANGES, q.bytes), e("EMSGSIZE"));
  assert.equal(q.get("num_iovas"), 2);
  assert.equal(q.get("out_iova_alignment"), 0x1000n);
  const out = new Uint8Array(fake.memory(vaddr, 0x1000));
  assert.deepEqual(
    [iommu_iova_range.at(out, 0).get("start"), iommu_iova_range.at(out, 0).get("last")],
    [0n, MSI.start - 1n],
  );
  assert.equal(iommu_iova_range.at(out, 16).get("last"), 0n); // nothing past the room given
  q.set("num_iovas", 2).set("allowed_iovas", 0x10000000n);
  assert.equal(fake.ioctlPtr(ioas.fd, IOMMU_IOAS_IOVA_RANGES, q.bytes), e("EFAULT"));
  out.buffer.transfer(0);
  [cdev, ioas.fd].forEach((fd) => fake.close(fd));
  fake.munmap(vaddr, 0x1000);
  assert.deepEqual(fake.leaks(), []);
});
