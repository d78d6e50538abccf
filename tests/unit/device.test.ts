/**
 * lib/device.ts: device info, regions and config space through the device fd, reset, hot reset,
 * feature probes, and what closing the device releases.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { onDeviceClose } from "../../lib/device.ts";
import { UnsupportedError, VfioError } from "../../lib/errors.ts";
import {
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
} from "../../lib/uapi/vfio.ts";
import { EDU, type FakeDeviceOptions, openLegacy, regionOffset, withEdu } from "./fake_sys.ts";

/** The edu device, opened; disposing closes everything and checks for leaks. */
function open(o: Partial<FakeDeviceOptions> = {}) {
  const fake = withEdu(o);
  const { container, group, device } = openLegacy(fake);
  const done = () => {
    device.close();
    group.close();
    container.close();
    assert.deepEqual(fake.leaks(), []);
  };
  return { fake, container, group, device, dev: fake.device(EDU), [Symbol.dispose]: done };
}

test("device: info decodes the flags and counts, and is read once", () => {
  using t = open();
  const info = t.device.info();
  assert.deepEqual(info, {
    flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
    numRegions: 9,
    numIrqs: 5,
    pci: true,
    reset: true,
  });
  assert.equal(t.device.info(), info);
  assert.equal(t.fake.ioctls().filter((n) => n === "VFIO_DEVICE_GET_INFO").length, 1);
});

test("device: the name is the canonical PCI address and the fd path names it", () => {
  using t = open();
  assert.equal(t.device.name, EDU);
  using _ = t.fake.fail("ioctl", "VFIO_DEVICE_GET_INFO", "EIO");
  assert.throws(() => t.device.info(), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.equal(e.path, "/dev/vfio/4 (0000:00:04.0)");
    assert.match(e.message, / on \/dev\/vfio\/4 \(0000:00:04.0\) \(VFIO_DEVICE_GET_INFO: EIO\)/);
    return true;
  });
  assert.equal(typeof t.device.fd, "number");
});

test("device: regions are cached per index", () => {
  using t = open();
  assert.equal(t.device.region(0), t.device.region(0));
  assert.equal(t.fake.ioctls().filter((n) => n === "VFIO_DEVICE_GET_REGION_INFO").length, 1);
});

test("device: config space reads go through the config region", () => {
  using t = open({ vendor: 0x1b36, device: 0x0010 });
  t.fake.calls = [];
  assert.equal(t.device.config.vendorId, 0x1b36);
  assert.equal(t.device.config.deviceId, 0x0010);
  const preads = t.fake.calls.filter((c) => c.op === "pread");
  assert.deepEqual(preads.map((c) => [c.offset, c.length]), [[regionOffset(7), 2], [regionOffset(7) + 2, 2]]);
});

test("device: reset issues VFIO_DEVICE_RESET", () => {
  using t = open();
  t.device.reset();
  assert.equal(t.dev.resets, 1);
});

test("device: reset without a reset method is an UnsupportedError with no errno, points to hotReset, and issues no VFIO_DEVICE_RESET", () => {
  using t = open({ reset: false });
  assert.throws(() => t.device.reset(), (e: unknown) => {
    assert.ok(e instanceof UnsupportedError);
    assert.ok(e instanceof VfioError);
    assert.equal(e.code, "ERR_VFIO_UNSUPPORTED");
    assert.equal(e.errno, undefined);
    assert.doesNotMatch(e.message, /\(VFIO_DEVICE_RESET: /); // no errno in the message: no ioctl failed
    assert.match(e.message, /Cannot reset 0000:00:04.0 .*no function-level reset method .*try hotReset\(\)/);
    return true;
  });
  assert.ok(!t.fake.ioctls().includes("VFIO_DEVICE_RESET"));
  assert.equal(t.dev.resets, 0);
});

test("device: a failing reset is reported, not ignored", () => {
  using t = open();
  using _ = t.fake.fail("ioctl", "VFIO_DEVICE_RESET", "EIO");
  assert.throws(() => t.device.reset(), /Cannot reset 0000:00:04.0 .*\(VFIO_DEVICE_RESET: EIO\)/);
});

test("device: hotResetInfo re-queries after ENOSPC and decodes each affected device", () => {
  using t = open({ hotReset: [{ bdf: "0000:00:04.0", group: 4 }, { bdf: "0001:02:1f.7", group: 9 }] });
  assert.deepEqual(t.device.hotResetInfo(), [
    { bdf: "0000:00:04.0", id: 4, devid: false },
    { bdf: "0001:02:1f.7", id: 9, devid: false },
  ]);
  assert.equal(t.fake.ioctls().filter((n) => n === "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO").length, 2);
});

test("device: hotResetInfo without a bus or slot reset is an ENODEV VfioError", () => {
  using t = open();
  assert.throws(() => t.device.hotResetInfo(), /VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: ENODEV/);
});

test("device: hotReset presents the container's group fds, and a refusal says what to own", () => {
  using t = open({ hotReset: [{ bdf: EDU, group: 4 }] });
  t.device.hotReset();
  assert.equal(t.dev.resets, 1);
  assert.throws(() => t.device.hotReset({ groupFds: [] }), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.equal(e.code, "EPERM");
    assert.match(
      e.hint!,
      /every device the reset affects must be owned by this process: see hotResetInfo\(\)/,
    );
    return true;
  });
  assert.equal(t.dev.resets, 1);
});

test("device: featureSupported probes, and not-supported answers are false", () => {
  using t = open();
  t.dev.features.add(VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY);
  assert.equal(t.device.featureSupported(VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, VFIO_DEVICE_FEATURE_SET), true);
  assert.equal(t.device.featureSupported(10, VFIO_DEVICE_FEATURE_GET), false);
  using _ = t.fake.fail("ioctl", "VFIO_DEVICE_FEATURE", "EIO");
  assert.throws(() => t.device.featureSupported(10, VFIO_DEVICE_FEATURE_GET), /VFIO_DEVICE_FEATURE: EIO/);
});

test("device: close releases interrupts, then mappings, then the fd, and is idempotent", () => {
  using t = open();
  t.device.registers(0);
  t.device.enableIrq(0);
  t.fake.calls = [];
  let notified = 0;
  onDeviceClose(t.device, () => notified++);
  t.device.close();
  t.device.close();
  assert.deepEqual(t.fake.calls.map((c) => c.name ?? c.op), [
    "VFIO_DEVICE_SET_IRQS",
    "close",
    "munmap",
    "close",
  ]);
  assert.equal(t.fake.calls.at(-1)!.fd, t.fake.calls.find((c) => c.name === "VFIO_DEVICE_SET_IRQS")!.fd);
  assert.equal(notified, 1);
  assert.equal(t.device.closed, true);
  assert.throws(() => t.device.registers(0), TypeError);
});

test("device: a bad region or IRQ index is a RangeError before any region ioctl", () => {
  using t = open();
  t.device.info();
  t.fake.calls = [];
  assert.throws(() => t.device.registers(9), RangeError);
  assert.throws(() => t.device.enableIrq(7), RangeError);
  assert.deepEqual(t.fake.calls, []);
});

test("device: a failing teardown step still releases the rest, then reports the error", () => {
  using t = open();
  const regs = t.device.registers(0);
  const irq = t.device.enableIrq(2, { count: 2 });
  {
    using _ = t.fake.fail("ioctl", "VFIO_DEVICE_SET_IRQS", "EIO");
    assert.throws(() => t.device.close(), /Cannot disable IRQ index 2 .*\(VFIO_DEVICE_SET_IRQS: EIO\)/);
  }
  assert.ok(irq.closed && regs.closed && t.device.closed);
  assert.deepEqual(t.fake.mappings(), []);
  assert.ok(!t.fake.openFds().some((f) => f.kind === "device" || f.kind === "eventfd"));
});
