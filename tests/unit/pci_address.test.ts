/**
 * lib/pci_address.ts and the sysfs paths built from it: only well-formed PCI addresses get through,
 * before any file is touched.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { InvalidPciAddressError } from "../../lib/errors.ts";
import { VfioGroup } from "../../lib/group.ts";
import { canonicalPciAddress, formatPciAddress, parsePciAddress } from "../../lib/pci_address.ts";
import { driverOf, iommuGroupOf, pciAttr, pciDeviceDir } from "../../lib/sysfs.ts";
import { withEdu } from "./fake_sys.ts";

const BAD = [
  "",
  "../../../etc",
  "0000:00:04.0/../../x",
  "/sys/bus/pci/devices/0000:00:04.0",
  "0000:00:04.0\n",
  " 0000:00:04.0",
  "0000:00:20.0", // device 0x20 > 0x1f
  "0000:00:04.8", // function 8
  "00000:00:04.0",
  "0000:000:04.0",
  "0000:00:04",
  "0000:00:04.0.0",
  "gggg:00:04.0",
  "0000:00:04.-1",
];

test("pci_address: parses with and without a domain", () => {
  assert.deepEqual(parsePciAddress("0000:00:04.0"), { domain: 0, bus: 0, device: 4, function: 0 });
  assert.deepEqual(parsePciAddress("00:1f.7"), { domain: 0, bus: 0, device: 0x1f, function: 7 });
  assert.deepEqual(parsePciAddress("abcd:ff:1f.3"), { domain: 0xabcd, bus: 0xff, device: 0x1f, function: 3 });
});

test("pci_address: formats the canonical sysfs name, lower case and zero-padded", () => {
  assert.equal(canonicalPciAddress("0:3:4.1"), "0000:03:04.1");
  assert.equal(canonicalPciAddress("00:04.0"), "0000:00:04.0");
  assert.equal(canonicalPciAddress("ABCD:EF:1A.2"), "abcd:ef:1a.2");
  assert.equal(formatPciAddress({ domain: 1, bus: 2, device: 3, function: 4 }), "0001:02:03.4");
});

test("pci_address: rejects paths, traversal, whitespace and bad slots with an InvalidPciAddressError", () => {
  for (const bad of BAD) {
    assert.throws(() => parsePciAddress(bad), (e: unknown) => {
      assert.ok(e instanceof InvalidPciAddressError, `${JSON.stringify(bad)} gave ${e}`);
      assert.equal(e.code, "ERR_VFIO_INVALID_PCI_ADDRESS");
      assert.equal(e.errno, undefined);
      assert.equal(e.input, bad);
      assert.match(e.message, /Cannot parse PCI address .*expected DDDD:BB:DD.F/);
      return true;
    });
  }
});

test("pci_address: sysfs helpers reject a bad address before any sysfs access", () => {
  const fake = withEdu();
  for (const bad of BAD) {
    assert.throws(() => pciDeviceDir(bad), InvalidPciAddressError);
    assert.throws(() => iommuGroupOf(fake, bad), InvalidPciAddressError);
    assert.throws(() => driverOf(fake, bad), InvalidPciAddressError);
    assert.throws(() => pciAttr(fake, bad, "vendor"), InvalidPciAddressError);
    assert.throws(() => VfioGroup.forDevice(fake, bad), InvalidPciAddressError);
    assert.throws(() => VfioGroup.open(fake, 4, { device: bad }), InvalidPciAddressError);
  }
  assert.deepEqual(fake.calls, []);
});

test("pci_address: formatPciAddress rejects out-of-range parts with a RangeError", () => {
  const ok = { domain: 0, bus: 0, device: 4, function: 0 };
  for (
    const bad of [{ domain: 0x10000 }, { bus: 0x100 }, { device: 0x20 }, { function: 8 }, { bus: -1 }, {
      device: 1.5,
    }]
  ) {
    assert.throws(
      () => formatPciAddress({ ...ok, ...bad }),
      /Cannot format PCI address .*: a part is out of range/,
    );
  }
});

test("pci_address: a short address is canonicalized in the sysfs path", () => {
  assert.equal(pciDeviceDir("00:04.0"), "/sys/bus/pci/devices/0000:00:04.0");
});
