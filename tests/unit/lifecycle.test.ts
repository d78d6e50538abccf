/**
 * Lifecycle across container, group and device (the low-level API): every close order releases
 * every fd and mapping without throwing, failed opens leave nothing open, closing twice is fine,
 * and use after close is a TypeError that says what was closed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { VfioContainer } from "../../lib/container.ts";
import { DmaPool } from "../../lib/dma.ts";
import { VfioError } from "../../lib/errors.ts";
import { VfioGroup } from "../../lib/group.ts";
import { VFIO_PCI_MSIX_IRQ_INDEX } from "../../lib/uapi/vfio.ts";
import { EDU, type FakeSys, withEdu } from "./fake_sys.ts";

/** Opens everything through the low-level API and puts a register mapping, an IRQ and DMA in place. */
function openAll(fake: FakeSys) {
  const container = VfioContainer.open(fake);
  const group = VfioGroup.open(fake, 4);
  group.setContainer(container);
  container.setIommu();
  const device = group.getDevice(EDU);
  const regs = device.registers(0);
  const irq = device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
  const pool = new DmaPool(fake, container);
  const buf = pool.alloc(8192);
  return { container, group, device, regs, irq, pool, buf };
}

const ORDERS = [
  ["container", "group", "device"],
  ["container", "device", "group"],
  ["group", "container", "device"],
  ["group", "device", "container"],
  ["device", "container", "group"],
  ["device", "group", "container"],
] as const;

for (const order of ORDERS) {
  test(`lifecycle: closing ${order.join(", ")} releases every fd and mapping`, () => {
    const fake = withEdu();
    const all = openAll(fake);
    assert.equal(fake.openFds().length, 5); // container, group, device, two eventfds
    assert.equal(fake.mappings().length, 2); // BAR0 and the DMA buffer
    for (const name of order) all[name].close();
    assert.deepEqual(fake.leaks(), []);
    assert.ok(all.regs.closed && all.irq.closed && all.buf.freed);
    assert.ok(all.container.closed && all.group.closed && all.device.closed);
    assert.equal(fake.containers[0]!.mappings.size, 0);
    for (const name of order) all[name].close(); // and again: nothing left to do
    assert.deepEqual(fake.leaks(), []);
  });
}

test("lifecycle: disposing with using releases everything in reverse order", () => {
  const fake = withEdu();
  let kinds = new Map<number, string>();
  {
    using container = VfioContainer.open(fake);
    using group = VfioGroup.open(fake, 4);
    group.setContainer(container);
    container.setIommu();
    using device = group.getDevice(EDU);
    using _regs = device.registers(0); // BAR0: 4096 bytes
    using _irq = device.enableIrq(0);
    using pool = new DmaPool(fake, container);
    using _buf = pool.alloc(8192); // 8192 bytes, to tell its munmap from BAR0's
    kinds = new Map(fake.openFds().map((f) => [f.fd, f.kind]));
    fake.calls = [];
  }
  const label = (c: { op: string; name?: string; fd?: number; length?: number }) =>
    c.name ??
      (c.op === "close" ? `close ${kinds.get(c.fd!)}` : c.op === "munmap" ? `munmap ${c.length}` : c.op);
  // The buffer, the pool (no syscall), the IRQ, the registers, the device, the group, the container.
  assert.deepEqual(fake.calls.map(label), [
    "VFIO_IOMMU_UNMAP_DMA",
    "munmap 8192",
    "VFIO_DEVICE_SET_IRQS",
    "close eventfd",
    "munmap 4096",
    "close device",
    "close group",
    "close container",
  ]);
  assert.deepEqual(fake.leaks(), []);
});

test("lifecycle: use after close is a TypeError naming what was closed", () => {
  const fake = withEdu();
  const all = openAll(fake);
  const bufBytes = all.buf.bytes;
  all.container.close();
  all.group.close();
  all.device.close();
  assert.throws(() => all.device.info(), /Cannot use \/dev\/vfio\/4 \(0000:00:04.0\): it is closed/);
  assert.throws(() => all.device.fd, TypeError);
  assert.throws(() => all.device.reset(), TypeError);
  assert.throws(() => all.group.status(), /Cannot use \/dev\/vfio\/4: it is closed/);
  assert.throws(
    () => all.container.checkExtension(1),
    /Cannot use \/dev\/vfio\/vfio: the IOMMU backend is closed/,
  );
  assert.throws(
    () => all.container.mapDma(0x1000n, 0x1000n, 0x1000),
    /Cannot use \/dev\/vfio\/vfio: the .* backend is closed/,
  );
  assert.throws(() => all.regs.read32(0), /its registers are closed/);
  assert.throws(() => all.irq.trigger(), /Cannot use IRQ index 2: it is closed/);
  assert.throws(() => all.buf.bytes, /it was freed/);
  assert.throws(() => all.pool.alloc(4096), /the pool is closed/);
  assert.equal(bufBytes.length, 0);
  assert.deepEqual(fake.leaks(), []);
});

test("lifecycle: a container open that fails after open(2) leaves no fd", () => {
  const fake = withEdu();
  using _ = fake.fail("ioctl", "VFIO_GET_API_VERSION", "ENOTTY");
  assert.throws(() => VfioContainer.open(fake), VfioError);
  assert.deepEqual(fake.leaks(), []);
});

test("lifecycle: SET_IOMMU refused (EPERM) leaves no fd once the caller closes what it opened", () => {
  const fake = withEdu();
  using _ = fake.fail("ioctl", "VFIO_SET_IOMMU", "EPERM");
  const container = VfioContainer.open(fake);
  try {
    assert.throws(() => container.openDevice(EDU), /VFIO_SET_IOMMU: EPERM/);
    assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/vfio/vfio"]);
  } finally {
    container.close();
  }
  assert.deepEqual(fake.leaks(), []);
});

test("lifecycle: GET_DEVICE_FD refused (ENODEV) leaves the group closable and nothing behind", () => {
  const fake = withEdu();
  using _ = fake.fail("ioctl", "VFIO_GROUP_GET_DEVICE_FD", "ENODEV");
  const container = VfioContainer.open(fake);
  const group = VfioGroup.open(fake, 4);
  group.setContainer(container);
  container.setIommu();
  assert.throws(() => group.getDevice(EDU), /ENODEV/);
  assert.equal(fake.openFds().length, 2);
  group.close();
  container.close();
  assert.deepEqual(fake.leaks(), []);
});

test("lifecycle: a group that cannot attach leaves nothing behind", () => {
  const fake = withEdu();
  fake.addDevice({ bdf: "0000:00:04.1", group: 4, driver: "snd_hda_intel" });
  const container = VfioContainer.open(fake);
  assert.throws(() => container.openDevice(EDU), /0000:00:04.1 is bound to snd_hda_intel/);
  assert.deepEqual(fake.openFds().map((f) => f.path), ["/dev/vfio/vfio"]);
  container.close();
  assert.deepEqual(fake.leaks(), []);
});

test("lifecycle: a refused SET_CONTAINER leaves the group unattached", () => {
  const fake = withEdu();
  using _ = fake.fail("ioctl", "VFIO_GROUP_SET_CONTAINER", "EBUSY");
  using container = VfioContainer.open(fake);
  using group = VfioGroup.open(fake, 4);
  assert.throws(() => group.setContainer(container), /Cannot attach group 4 to the container/);
  assert.equal(group.container, undefined);
  assert.equal(container.groups.size, 0);
});

test("lifecycle: close errors are reported after everything else was released", () => {
  const fake = withEdu();
  const all = openAll(fake);
  all.group.close();
  all.device.close();
  using _ = fake.fail("close", "/dev/vfio/vfio", "EIO");
  assert.throws(() => all.container.close(), /Cannot close on \/dev\/vfio\/vfio \(close: EIO\)/);
  assert.equal(all.container.closed, true);
  all.container.close();
  assert.deepEqual(fake.leaks(), []);
});
