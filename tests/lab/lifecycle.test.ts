// Object lifecycle against the real kernel: every order of closing container, group and device;
// use after close; and 1000 open/close cycles without leaking a file descriptor.
import { test } from "node:test";
import assert from "node:assert/strict";
import { VfioContainer } from "../../lib/container.ts";
import { VfioGroup } from "../../lib/group.ts";
import { openPciDevice } from "../../lib/open.ts";
import { backends, EDU, edu, LONG, openFds, sys } from "./_fixture.ts";

function permutations<T>(xs: T[]): T[][] {
  if (xs.length <= 1) return [xs];
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
}

for (const order of permutations(["container", "group", "device"] as const)) {
  test(`lifecycle: closing ${order.join(", ")} in that order leaks nothing`, () => {
    const before = openFds();
    const container = VfioContainer.open(sys);
    const group = VfioGroup.forDevice(sys, EDU);
    group.setContainer(container);
    container.setIommu();
    const device = group.getDevice(EDU);
    using bar0 = device.registers(0);
    assert.equal(bar0.read32(edu.IDENT), 0x010000ed);
    const objects = { container, group, device };
    for (const name of order) {
      objects[name].close();
      objects[name].close(); // idempotent
    }
    assert.equal(openFds(), before);
    assert.throws(() => bar0.read32(0), /closed/);
    assert.throws(() => device.info(), /closed/);
    assert.throws(() => group.status(), /closed/);
    assert.throws(() => container.checkExtension(1), /closed/);
    // The group is free again: another open succeeds.
    using again = openPciDevice(sys, EDU);
    assert.equal(again.device.info().pci, true);
  });
}

for (const mode of backends()) {
  test(`${mode.name}: 1000 open/close cycles leave no file descriptor behind`, LONG, () => {
    const before = openFds();
    for (let i = 0; i < 1000; i++) {
      using v = openPciDevice(sys, EDU, mode.options);
      if (i % 250 === 0) assert.equal(v.device.registers(0).read32(edu.IDENT), 0x010000ed);
    }
    assert.equal(openFds(), before);
  });

  test(`${mode.name}: a failed open leaves no file descriptor behind`, () => {
    const before = openFds();
    using held = openPciDevice(sys, EDU, mode.options);
    assert.throws(() => openPciDevice(sys, EDU, mode.options));
    assert.throws(() => openPciDevice(sys, "0000:00:1f.7", mode.options), /no PCI device/);
    held.close();
    assert.equal(openFds(), before);
  });
}
