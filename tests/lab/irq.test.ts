// Interrupts against the real kernel: MSI and INTx from edu through eventfds, the loopback trigger,
// masking, async waiting that leaves the event loop running, and re-arming after reset.
import { test } from "node:test";
import assert from "node:assert/strict";
import { openPciDevice } from "../../lib/open.ts";
import {
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
} from "../../lib/uapi/vfio.ts";
import { backends, EDU, edu, EDU_BEHIND_PORT, NVME, quiesceEdu, sys } from "./_fixture.ts";

for (const mode of backends()) {
  test(`${mode.name}: edu IRQ info lists INTx and one MSI vector`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    const intx = v.device.irqInfo(VFIO_PCI_INTX_IRQ_INDEX);
    assert.equal(intx.count, 1);
    assert.equal(intx.eventfd && intx.maskable && intx.automasked, true);
    const msi = v.device.irqInfo(VFIO_PCI_MSI_IRQ_INDEX);
    assert.equal(msi.count, 1);
    assert.equal(msi.eventfd, true);
    assert.equal(v.device.irqInfo(VFIO_PCI_MSIX_IRQ_INDEX).count, 0);
  });

  test(`${mode.name}: edu MSI arrives on the eventfd when the device raises it`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    v.device.config.enableBusMaster();
    using bar0 = v.device.registers(0);
    quiesceEdu(bar0);
    using msi = v.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
    assert.equal(msi.wait({ timeoutMs: 0 }), 0, "nothing pending before the device raises");
    bar0.write32(edu.IRQ_RAISE, 0x1);
    assert.equal(msi.wait({ timeoutMs: 5000 }), 1);
    assert.equal(bar0.read32(edu.IRQ_STATUS) & 1, 1);
    bar0.write32(edu.IRQ_ACK, 0x1);
    assert.equal(bar0.read32(edu.IRQ_STATUS), 0);
  });

  test(`${mode.name}: loopback trigger signals the eventfd without the device`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    using msi = v.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
    msi.trigger();
    msi.trigger();
    assert.equal(msi.wait({ timeoutMs: 1000 }), 2);
  });

  test(`${mode.name}: factorial completion interrupt awaited without blocking the event loop`, async () => {
    using v = openPciDevice(sys, EDU, mode.options);
    v.device.config.enableBusMaster();
    using bar0 = v.device.registers(0);
    quiesceEdu(bar0);
    using msi = v.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
    try {
      // The wait starts before anything can raise the interrupt, and the factorial is only started
      // from a timer: if next() blocked the thread, the timer could never run and this would hang.
      const pending = msi.next();
      let timerRan = false;
      setTimeout(() => {
        timerRan = true;
        bar0.write32(edu.STATUS, edu.STATUS_IRQ_ON_FINISH);
        bar0.write32(edu.FACTORIAL, 12);
      }, 10);
      assert.equal(await pending, 1);
      assert.equal(timerRan, true);
      assert.equal(bar0.read32(edu.FACTORIAL), 479001600);
    } finally {
      quiesceEdu(bar0);
    }
  });

  test(`${mode.name}: for await yields interrupts and ends when the IRQ closes`, async () => {
    using v = openPciDevice(sys, EDU, mode.options);
    const msi = v.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
    const seen: number[] = [];
    const loop = (async () => {
      for await (const n of msi) {
        seen.push(n);
        if (seen.length === 2) setTimeout(() => msi.close(), 0);
        else setTimeout(() => msi.trigger(), 0);
      }
    })();
    msi.trigger();
    await loop;
    assert.deepEqual(seen, [1, 1]);
    assert.equal(msi.closed, true);
  });

  test(`${mode.name}: closing an IRQ with a pending wait resolves it and releases the eventfd`, async () => {
    using v = openPciDevice(sys, EDU, mode.options);
    const msi = v.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
    const efd = msi.eventfds[0]!;
    const pending = msi.next();
    msi.close();
    assert.equal(await pending, 0);
    await new Promise((r) => setTimeout(r, 0));
    assert.ok(sys.readLink(`/proc/self/fd/${efd}`) !== "anon_inode:[eventfd]", "eventfd closed");
  });

  test(`${mode.name}: edu INTx arrives, is automasked, and fires again after unmask`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    using bar0 = v.device.registers(0);
    quiesceEdu(bar0);
    using intx = v.device.enableIrq(VFIO_PCI_INTX_IRQ_INDEX);
    bar0.write32(edu.IRQ_RAISE, 0x2);
    assert.equal(intx.wait({ timeoutMs: 5000 }), 1);
    bar0.write32(edu.IRQ_ACK, 0x2);
    intx.unmask();
    bar0.write32(edu.IRQ_RAISE, 0x4);
    assert.equal(intx.wait({ timeoutMs: 5000 }), 1);
    bar0.write32(edu.IRQ_ACK, 0x4);
    intx.unmask();
    // Masked: the device's interrupt is held back until unmask.
    intx.mask();
    bar0.write32(edu.IRQ_RAISE, 0x8);
    assert.equal(intx.wait({ timeoutMs: 200 }), 0);
    intx.unmask();
    assert.equal(intx.wait({ timeoutMs: 5000 }), 1);
    bar0.write32(edu.IRQ_ACK, 0x8);
    intx.unmask();
  });

  test(`${mode.name}: MSI-X on the NVMe controller fires before and after a device reset`, () => {
    using v = openPciDevice(sys, NVME, mode.options);
    const info = v.device.irqInfo(VFIO_PCI_MSIX_IRQ_INDEX);
    assert.ok(info.count >= 2, `NVMe has ${info.count} MSI-X vectors`);
    using msix = v.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
    msix.trigger({ start: 1 });
    assert.equal(msix.wait({ vector: 1, timeoutMs: 1000 }), 1);
    assert.equal(msix.wait({ timeoutMs: 0 }), 0);
    v.device.reset();
    // The kernel keeps vfio's interrupt setup across VFIO_DEVICE_RESET (it saves and restores the
    // MSI-X state around the FLR): the eventfds fire without a re-arm.
    msix.trigger({ start: 0 });
    assert.equal(msix.wait({ timeoutMs: 1000 }), 1, "vector 0 fires after the reset, before any rearm");
    msix.rearm(); // still allowed: it attaches the same eventfds again
    msix.trigger({ start: 1 });
    assert.equal(msix.wait({ vector: 1, timeoutMs: 1000 }), 1);
  });

  test(`${mode.name}: an MSI raised by the device arrives after a hot reset without a re-arm`, () => {
    using v = openPciDevice(sys, EDU_BEHIND_PORT, mode.options);
    v.device.config.enableBusMaster();
    using bar0 = v.device.registers(0);
    quiesceEdu(bar0);
    using msi = v.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
    bar0.write32(edu.IRQ_RAISE, 1);
    assert.equal(msi.wait({ timeoutMs: 5000 }), 1);
    bar0.write32(edu.IRQ_ACK, 1);
    v.device.hotReset();
    // The bus reset cleared the device; the kernel restored its config space (MSI address and data,
    // bus mastering) around it, so the device-raised interrupt reaches the same eventfd.
    assert.equal(bar0.read32(edu.IDENT), 0x010000ed);
    bar0.write32(edu.IRQ_RAISE, 1);
    assert.equal(msi.wait({ timeoutMs: 5000 }), 1, "the MSI arrives after the hot reset, before any rearm");
    bar0.write32(edu.IRQ_ACK, 1);
  });
}
