/**
 * lib/irq.ts: eventfds attached with VFIO_DEVICE_SET_IRQS, software triggers, masking, waiting
 * synchronously and asynchronously, and teardown that disables the index and closes the eventfds.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
} from "../../lib/uapi/vfio.ts";
import { EDU, type FakeDeviceOptions, openLegacy, withEdu } from "./fake_sys.ts";

const EVENTFD_TRIGGER = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
const NONE_TRIGGER = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;

/** The edu device, opened; disposing closes everything and checks for leaks. */
function open(irqs: FakeDeviceOptions["irqs"] = []) {
  const fake = withEdu({ irqs });
  const { container, group, device } = openLegacy(fake);
  const dev = fake.device(EDU);
  const eventfds = () => fake.openFds().filter((f) => f.kind === "eventfd").map((f) => f.fd);
  const done = () => {
    device.close();
    group.close();
    container.close();
    assert.deepEqual(fake.leaks(), []);
  };
  return { fake, device, dev, eventfds, [Symbol.dispose]: done };
}

test("irq: info reports the index's flags and vector count", () => {
  using t = open();
  assert.deepEqual(t.device.irqInfo(VFIO_PCI_INTX_IRQ_INDEX), {
    index: 0,
    flags: 0b111,
    count: 1,
    eventfd: true,
    maskable: true,
    automasked: true,
    noresize: false,
  });
  const msix = t.device.irqInfo(VFIO_PCI_MSIX_IRQ_INDEX);
  assert.deepEqual([msix.count, msix.maskable, msix.noresize], [4, false, true]);
  assert.throws(() => t.device.irqInfo(5), /Cannot use IRQ index 5 of 0000:00:04.0: it has indexes 0..4/);
});

test("irq: enable attaches one new eventfd per vector with DATA_EVENTFD | ACTION_TRIGGER", () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 3 });
  assert.equal(irq.eventfds.length, 3);
  assert.deepEqual([...irq.eventfds], t.eventfds());
  assert.deepEqual(t.dev.irqSets, [
    { flags: EVENTFD_TRIGGER, index: VFIO_PCI_MSIX_IRQ_INDEX, start: 0, count: 3, fds: [...irq.eventfds] },
  ]);
});

test("irq: a vector count outside the index is a RangeError and opens nothing", () => {
  using t = open();
  assert.throws(
    () => t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX, { count: 2 }),
    /Cannot enable 2 vectors of IRQ index 1: it has 1/,
  );
  assert.throws(() => t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX, { count: 0 }), RangeError);
  assert.deepEqual(t.eventfds(), []);
  assert.deepEqual(t.dev.irqSets, []);
});

test("irq: an index that cannot signal an eventfd is a TypeError", () => {
  using t = open([{ index: VFIO_PCI_ERR_IRQ_INDEX, count: 1, flags: 0 }]);
  assert.throws(() => t.device.enableIrq(VFIO_PCI_ERR_IRQ_INDEX), /it cannot signal an eventfd/);
  assert.deepEqual(t.eventfds(), []);
});

test("irq: a refused SET_IRQS closes the eventfds it created", () => {
  using t = open();
  using _ = t.fake.fail("ioctl", "VFIO_DEVICE_SET_IRQS", "EINVAL");
  assert.throws(
    () => t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 4 }),
    /Cannot set eventfds for IRQ index 2 vectors 0..4/,
  );
  assert.deepEqual(t.eventfds(), []);
});

test("irq: a failing eventfd() closes the ones made before it", () => {
  using t = open();
  using _ = t.fake.fail("eventfd", undefined, "EMFILE", { after: 2 });
  assert.throws(
    () => t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 4 }),
    /Cannot create an eventfd \(eventfd: EMFILE\)/,
  );
  assert.equal(t.fake.calls.filter((c) => c.op === "eventfd").length, 3);
  assert.deepEqual(t.eventfds(), []);
  assert.deepEqual(t.dev.irqSets, []);
});

test("irq: trigger fires vectors with DATA_NONE | ACTION_TRIGGER, and wait sees them", () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
  assert.equal(irq.wait({ vector: 1, timeoutMs: 0 }), 0); // nothing yet: poll times out
  irq.trigger({ start: 1 });
  assert.deepEqual(t.dev.irqSets.at(-1), { flags: NONE_TRIGGER, index: 2, start: 1, count: 1, fds: [] });
  assert.equal(irq.wait({ vector: 0, timeoutMs: 0 }), 0);
  assert.equal(irq.wait({ vector: 1, timeoutMs: 0 }), 1);
  assert.equal(irq.wait({ vector: 1, timeoutMs: 0 }), 0); // the read reset the counter
  irq.trigger({ start: 0, count: 2 });
  t.fake.raise(EDU, VFIO_PCI_MSIX_IRQ_INDEX, 0);
  assert.equal(irq.wait({ vector: 0, timeoutMs: 0 }), 2);
  assert.equal(irq.wait({ vector: 1, timeoutMs: 0 }), 1);
});

test("irq: vectors outside the enabled ones are RangeErrors", () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
  const before = t.dev.irqSets.length;
  assert.throws(() => irq.trigger({ start: 2 }), /Cannot use vector 2 of IRQ index 2: 2 are enabled/);
  assert.throws(() => irq.trigger({ start: 1, count: 2 }), RangeError);
  assert.throws(() => irq.wait({ vector: 5, timeoutMs: 0 }), RangeError);
  assert.throws(() => irq.mask({ start: 3 }), RangeError);
  assert.throws(() => irq.trigger({ start: -1, count: 2 }), /Cannot use vector -1 of IRQ index 2/);
  assert.throws(() => irq.unmask({ start: 0.5 }), RangeError);
  assert.throws(() => irq.trigger({ start: 0, count: 0 }), RangeError);
  assert.equal(t.dev.irqSets.length, before);
});

test("irq: mask and unmask send ACTION_MASK and ACTION_UNMASK; an automasked INTx needs the unmask", () => {
  using t = open();
  const intx = t.device.enableIrq(VFIO_PCI_INTX_IRQ_INDEX);
  intx.mask();
  assert.deepEqual(t.dev.irqSets.at(-1), {
    flags: VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK,
    index: 0,
    start: 0,
    count: 1,
    fds: [],
  });
  assert.equal(t.fake.raise(EDU, 0), false);
  intx.unmask();
  assert.equal(t.dev.irqSets.at(-1)!.flags, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK);
  assert.equal(t.fake.raise(EDU, 0), true);
  assert.equal(t.fake.raise(EDU, 0), false); // automasked after the first
  assert.equal(intx.wait(), 1);
  intx.unmask();
  assert.equal(t.fake.raise(EDU, 0), true);
});

test("irq: masking an index the kernel cannot mask is a VfioError", () => {
  using t = open();
  const msi = t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
  assert.throws(() => msi.mask(), /Cannot mask IRQ index 1 vectors 0..1 .*\(VFIO_DEVICE_SET_IRQS: ENOTTY\)/);
});

test("irq: rearm attaches the same eventfds again", () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
  t.device.reset();
  irq.rearm();
  assert.equal(t.dev.irqSets.length, 2);
  assert.deepEqual(t.dev.irqSets[1], t.dev.irqSets[0]);
});

test("irq: close disables the index with count 0, closes the eventfds, and is idempotent", () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
  const fds = [...irq.eventfds];
  irq.close();
  irq.close();
  assert.equal(irq.closed, true);
  assert.deepEqual(t.dev.irqSets.slice(1), [{ flags: NONE_TRIGGER, index: 2, start: 0, count: 0, fds: [] }]);
  assert.deepEqual(t.eventfds(), []);
  assert.deepEqual(t.fake.calls.filter((c) => c.op === "close" && fds.includes(c.fd!)).map((c) => c.fd), fds);
  assert.throws(() => irq.trigger(), /Cannot use IRQ index 2: it is closed/);
  assert.throws(() => irq.wait({ vector: 0, timeoutMs: 0 }), TypeError);
  assert.deepEqual(t.dev.irqs[2]!.triggers, []);
});

test("irq: the device closes its interrupts when it closes", () => {
  using t = open();
  // MSI-X and the error IRQ: two indexes vfio-pci lets be live at once.
  const a = t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
  const b = t.device.enableIrq(VFIO_PCI_ERR_IRQ_INDEX);
  t.device.close();
  assert.ok(a.closed && b.closed);
  assert.deepEqual(t.dev.irqSets.slice(2).map((s) => [s.index, s.count]), [[3, 0], [2, 0]]); // reverse order
  assert.deepEqual(t.eventfds(), []);
});

test("irq: enableIrq of an index that is already live is a TypeError, with no eventfd or SET_IRQS", () => {
  using t = open();
  const live = t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
  const sets = t.dev.irqSets.length;
  t.fake.calls = [];
  assert.throws(
    () => t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 1 }),
    (e: unknown) => {
      assert.ok(e instanceof TypeError);
      assert.match(e.message, /Cannot enable IRQ index 2 of 0000:00:04.0: it is already enabled/);
      return true;
    },
  );
  assert.ok(!t.fake.ioctls().includes("VFIO_DEVICE_SET_IRQS"));
  assert.ok(!t.fake.calls.some((c) => c.op === "eventfd"));
  assert.equal(t.dev.irqSets.length, sets);
  assert.deepEqual(t.eventfds(), [...live.eventfds]); // the first one's eventfds are untouched
  live.close();
  t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX).close(); // once closed, it can be enabled again
});

test("irq: enabling INTx, MSI or MSI-X while another of them is live is a TypeError naming the active type, with no SET_IRQS", () => {
  using t = open();
  const cases: [number, number, RegExp][] = [
    [VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX, /Cannot enable INTx on 0000:00:04.0: MSI-X is active/],
    [VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, /Cannot enable MSI on 0000:00:04.0: MSI-X is active/],
    [VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, /Cannot enable MSI on 0000:00:04.0: INTx is active/],
    [VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, /Cannot enable MSI-X on 0000:00:04.0: MSI is active/],
  ];
  for (const [active, other, message] of cases) {
    const live = t.device.enableIrq(active);
    const sets = t.dev.irqSets.length;
    t.fake.calls = [];
    assert.throws(() => t.device.enableIrq(other), (e: unknown) => {
      assert.ok(e instanceof TypeError);
      assert.match(e.message, message);
      assert.match(e.message, /one interrupt type at a time/);
      return true;
    });
    assert.ok(!t.fake.ioctls().includes("VFIO_DEVICE_SET_IRQS"));
    assert.ok(!t.fake.calls.some((c) => c.op === "eventfd"));
    assert.equal(t.dev.irqSets.length, sets);
    live.close();
  }
  t.device.enableIrq(VFIO_PCI_INTX_IRQ_INDEX).close(); // nothing live: accepted
});

test("irq: enableIrq with count 0, 1.5 or NaN is a RangeError before any ioctl, GET_IRQ_INFO included", () => {
  using t = open();
  t.fake.calls = [];
  for (const count of [0, 1.5, NaN]) {
    assert.throws(
      () => t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count }),
      (e: unknown) => {
        assert.ok(e instanceof RangeError);
        assert.match(
          e.message,
          new RegExp(`Cannot enable ${count} vectors of IRQ index 2: count must be a positive integer`),
        );
        return true;
      },
    );
  }
  assert.deepEqual(t.fake.calls, []);
  assert.deepEqual(t.eventfds(), []);
});

test("irq: a closed IRQ is forgotten by the device", () => {
  using t = open();
  t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX).close();
  const sets = t.dev.irqSets.length;
  t.device.close();
  assert.equal(t.dev.irqSets.length, sets); // no second disable
});

test("irq: next() resolves with the count when the device interrupts", async () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
  const p = irq.next();
  t.fake.raise(EDU, VFIO_PCI_MSI_IRQ_INDEX);
  assert.equal(await p, 1);
  t.fake.raise(EDU, VFIO_PCI_MSI_IRQ_INDEX);
  t.fake.raise(EDU, VFIO_PCI_MSI_IRQ_INDEX);
  assert.equal(await irq.next(), 2);
});

test("irq: close while next() is pending resolves it with 0 and closes the eventfds after", async () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
  const fds = [...irq.eventfds];
  const p = irq.next({ vector: 1 });
  await Promise.resolve();
  irq.close();
  assert.deepEqual(t.eventfds(), fds); // still open: a read is in flight on one of them
  assert.equal(t.dev.irqSets.at(-1)!.count, 0);
  assert.equal(await p, 0);
  assert.deepEqual(t.eventfds(), []);
});

test("irq: the async iterator yields each interrupt and ends on close", async () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
  const seen: number[] = [];
  const loop = (async () => {
    for await (const n of irq) {
      seen.push(n);
      if (seen.length === 2) irq.close();
      else t.fake.raise(EDU, VFIO_PCI_MSI_IRQ_INDEX);
    }
  })();
  t.fake.raise(EDU, VFIO_PCI_MSI_IRQ_INDEX);
  await loop;
  assert.deepEqual(seen, [1, 1]);
  assert.deepEqual(t.eventfds(), []);
});

test("irq: a failing eventfd read is a VfioError", () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
  irq.trigger();
  using _ = t.fake.fail("read", undefined, "EIO");
  assert.throws(() => irq.wait({ vector: 0, timeoutMs: 0 }), /Cannot read IRQ 1 eventfd \(read: EIO\)/);
});

test("irq: close wakes every pending next(), even two on the same vector", async () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 });
  const waits = [irq.next({ vector: 0 }), irq.next({ vector: 0 }), irq.next({ vector: 1 })];
  await Promise.resolve();
  irq.close();
  assert.deepEqual(await Promise.all(waits), [0, 0, 0]);
  assert.deepEqual(t.eventfds(), []);
});

test("irq: next() reports a bad vector or a closed IRQ by rejecting, never by throwing", async () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
  const bad = irq.next({ vector: 1 });
  await assert.rejects(bad, /Cannot use vector 1 of IRQ index 1: 1 are enabled/);
  irq.close();
  await assert.rejects(irq.next(), /Cannot use IRQ index 1: it is closed/);
});

test("irq: a count above 2^32 is read whole, by wait() and by next()", async () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
  const add = (n: bigint) => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, n, true);
    assert.equal(t.fake.write(irq.eventfds[0]!, b), 8);
  };
  add(2n ** 32n + 3n);
  assert.equal(irq.wait({ timeoutMs: 0 }), 2 ** 32 + 3);
  const p = irq.next();
  await Promise.resolve();
  add(2n ** 40n + 2n ** 31n);
  assert.equal(await p, 2 ** 40 + 2 ** 31);
});

test("irq: reads off the thread get a buffer each, and reuse it for the next ones", async () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
  const buffers: Uint8Array[] = [];
  const readAsync = t.fake.readAsync.bind(t.fake);
  t.fake.readAsync = (fd, buf) => {
    buffers.push(buf);
    return readAsync(fd, buf);
  };
  const signal = (n: number) =>
    assert.equal(t.fake.write(irq.eventfds[0]!, new Uint8Array([n, 0, 0, 0, 0, 0, 0, 0])), 8);
  // Two readers of one vector: each wake-up is written into its reader's own buffer, before either
  // continues (a shared buffer would hand both the second count).
  const first = irq.next(), second = irq.next();
  await Promise.resolve();
  signal(1);
  signal(5);
  assert.deepEqual(await Promise.all([first, second]), [1, 5]);
  assert.equal(buffers.length, 2);
  assert.notEqual(buffers[0], buffers[1]);
  // Later reads take the buffers back: none is made per wake-up.
  for (const n of [2, 3]) {
    const p = irq.next();
    await Promise.resolve();
    signal(n);
    assert.equal(await p, n);
  }
  assert.equal(buffers.length, 4);
  assert.ok(buffers.slice(2).every((b) => b === buffers[0] || b === buffers[1]));
});

test("irq: next() of a pending interrupt reads it at once, as a shared settled promise for small counts", async () => {
  using t = open();
  const irq = t.device.enableIrq(VFIO_PCI_MSI_IRQ_INDEX);
  const signal = (n: number) =>
    assert.equal(t.fake.write(irq.eventfds[0]!, new Uint8Array([n, 0, 0, 0, 0, 0, 0, 0])), 8);
  t.fake.calls = [];
  signal(1);
  const first = irq.next();
  signal(1);
  const second = irq.next();
  assert.equal(first, second); // nothing made per wake-up
  assert.deepEqual(await Promise.all([first, second]), [1, 1]);
  signal(40); // above the shared ones
  assert.equal(await irq.next(), 40);
  assert.ok(!t.fake.calls.some((c) => c.op === "readAsync"), "no read went off the thread");
});
