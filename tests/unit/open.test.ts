/**
 * lib/open.ts: choosing the IOMMU backend and opening a device with its backend and DMA pool as
 * one handle that releases everything, also when opening fails halfway.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DeviceNotBoundError,
  DeviceNotFoundError,
  InvalidPciAddressError,
  VfioError,
} from "../../lib/errors.ts";
import { chooseBackend, openIommu, openPciDevice } from "../../lib/open.ts";
import { VFIO_TYPE1_IOMMU } from "../../lib/uapi/vfio.ts";
import { EDU, withEdu } from "./fake_sys.ts";

test("open: openPciDevice opens the device in a type1v2 container and closes it all", () => {
  const fake = withEdu();
  const h = openPciDevice(fake, "00:04.0");
  assert.equal(h.backend.kind, "type1v2");
  assert.equal(h.device.name, EDU);
  assert.equal(h.device.info().pci, true);
  assert.deepEqual(fake.openFds().map((f) => f.kind), ["container", "group", "device"]);
  h.close();
  assert.equal(h.device.closed, true);
  assert.equal(h.backend.closed, true);
  assert.deepEqual(fake.leaks(), []);
  h.close();
});

test("open: the DMA pool is made on first use and freed with the handle", () => {
  const fake = withEdu();
  {
    using h = openPciDevice(fake, EDU, { limit: 0xffffffn });
    assert.equal(fake.mappings().length, 0);
    const buf = h.dma.alloc(4096);
    assert.equal(h.dma, h.dma);
    assert.ok(buf.iova < 0xffffffn);
    h.device.registers(0);
    h.device.enableIrq(1);
  }
  assert.deepEqual(fake.leaks(), []);
});

test("open: the iommuType option reaches the container", () => {
  const fake = withEdu();
  using h = openPciDevice(fake, EDU, { iommuType: VFIO_TYPE1_IOMMU });
  assert.equal(h.backend.kind, "type1");
});

test("open: a busy group fails with the hint and leaves nothing open", () => {
  const fake = withEdu();
  using _ = fake.fail("open", "/dev/vfio/4", "EBUSY");
  assert.throws(() => openPciDevice(fake, EDU), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.equal(e.code, "EBUSY");
    assert.match(e.hint!, /already open in another process/);
    return true;
  });
  assert.deepEqual(fake.leaks(), []);
});

test("open: a device not bound to vfio-pci fails with the bind hint and leaves nothing open", () => {
  const fake = withEdu({ driver: "edu" });
  assert.throws(() => openPciDevice(fake, EDU), (e: unknown) => {
    assert.ok(e instanceof DeviceNotBoundError);
    assert.equal(e.driver, "edu");
    assert.match(e.message, /0000:00:04\.0 is bound to edu, not vfio-pci: run `vfio bind 0000:00:04\.0`/);
    return true;
  });
  assert.deepEqual(fake.leaks(), []);
});

test("open: a failing SET_IOMMU or GET_DEVICE_FD leaves nothing open", () => {
  const fake = withEdu();
  for (
    const [ioctl, code] of [["VFIO_SET_IOMMU", "EPERM"], ["VFIO_GROUP_GET_DEVICE_FD", "ENODEV"]] as const
  ) {
    using _ = fake.fail("ioctl", ioctl, code);
    assert.throws(() => openPciDevice(fake, EDU), new RegExp(`${ioctl}: ${code}`));
    assert.deepEqual(fake.leaks(), []);
  }
});

test("open: a malformed address fails before any sysfs access and leaves nothing open", () => {
  const fake = withEdu();
  assert.throws(() => openPciDevice(fake, "../../../etc/passwd"), InvalidPciAddressError);
  assert.ok(!fake.calls.some((c) => /^read(Text|Link|Dir)$/.test(c.op) && c.path!.startsWith("/sys")));
  assert.deepEqual(fake.leaks(), []);
});

test("open: a missing device is a DeviceNotFoundError before any VFIO node is opened", () => {
  const fake = withEdu();
  assert.throws(() => openPciDevice(fake, "0000:00:09.0"), (e: unknown) => {
    assert.ok(e instanceof DeviceNotFoundError);
    assert.equal(e.bdf, "0000:00:09.0");
    return true;
  });
  assert.ok(!fake.calls.some((c) => c.op === "open"));
  assert.deepEqual(fake.leaks(), []);
});

test("open: auto picks legacy without /dev/iommu, iommufd when it and device cdevs exist", () => {
  const fake = withEdu({ cdev: "vfio0" });
  assert.equal(chooseBackend(fake), "legacy");
  fake.iommufd = true;
  assert.equal(chooseBackend(fake), "iommufd");
  assert.equal(chooseBackend(fake, "legacy"), "legacy");
  fake.device(EDU).cdev = undefined;
  assert.equal(chooseBackend(fake), "legacy");
});

test("open: VFIO_TS_BACKEND overrides auto, and an unknown name is a TypeError", () => {
  const fake = withEdu();
  fake.env.VFIO_TS_BACKEND = "iommufd";
  assert.equal(chooseBackend(fake), "iommufd");
  assert.equal(chooseBackend(fake, "legacy"), "legacy"); // an explicit choice wins
  fake.env.VFIO_TS_BACKEND = "vfio";
  assert.throws(
    () => chooseBackend(fake),
    /Cannot use VFIO backend "vfio": expected auto, legacy or iommufd/,
  );
  assert.throws(() => chooseBackend(fake, "x" as "auto"), TypeError);
});

test("open: openIommu with legacy gives a container with no group yet", () => {
  const fake = withEdu();
  using backend = openIommu(fake, { backend: "legacy" });
  assert.equal(backend.kind, "unset");
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/vfio/vfio"]);
});
