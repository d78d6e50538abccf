/**
 * lib/group.ts and lib/sysfs.ts: opening groups, viability, attaching, getting devices, and the
 * errors that say how to fix each failure.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { VfioContainer } from "../../lib/container.ts";
import {
  DeviceNotBoundError,
  DeviceNotFoundError,
  InvalidPciAddressError,
  VfioError,
  VfioUnavailableError,
} from "../../lib/errors.ts";
import { GroupNotViableError, VfioGroup } from "../../lib/group.ts";
import { deviceCdev, driverOf, groupDevices, groupNode, iommuGroupOf, pciAttr } from "../../lib/sysfs.ts";
import { EDU, FakeSys, openLegacy, withEdu } from "./fake_sys.ts";

/** Group 7 with a vfio-pci device and two devices on other drivers, plus an unbound one. */
function mixedGroup(): FakeSys {
  const fake = new FakeSys();
  fake.addDevice({ bdf: "0000:00:06.0", group: 7 });
  fake.addDevice({ bdf: "0000:00:06.1", group: 7, driver: "virtio-pci" });
  fake.addDevice({ bdf: "0000:00:06.2", group: 7, driver: undefined });
  fake.addDevice({ bdf: "0000:00:06.3", group: 7, driver: "e1000e" });
  return fake;
}

test("sysfs: the group of a device is the basename of its iommu_group link", () => {
  const fake = withEdu();
  assert.equal(iommuGroupOf(fake, "00:04.0"), 4);
  assert.ok(
    fake.calls.some((c) => c.op === "readLink" && c.path === `/sys/bus/pci/devices/${EDU}/iommu_group`),
  );
  assert.ok(fake.calls.every((c) => c.path!.startsWith(`/sys/bus/pci/devices/${EDU}/`)));
});

test("sysfs: a missing device and a device without a group get different fixes", () => {
  const fake = withEdu();
  assert.throws(() => iommuGroupOf(fake, "0000:00:09.0"), (e: unknown) => {
    assert.ok(e instanceof DeviceNotFoundError);
    assert.deepEqual([e.code, e.errno, e.bdf], ["ERR_VFIO_DEVICE_NOT_FOUND", 2, "0000:00:09.0"]);
    assert.match(e.hint!, /no PCI device 0000:00:09.0: see lspci/);
    return true;
  });
  fake.addDevice({ bdf: "0000:00:05.0", group: undefined, driver: "nvme" });
  assert.throws(() => iommuGroupOf(fake, "0000:00:05.0"), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.equal(e.code, "ENOENT");
    assert.match(e.message, /Cannot find the IOMMU group of 0000:00:05.0/);
    assert.match(e.hint!, /intel_iommu=on or amd_iommu=on/);
    assert.match(e.hint!, /enable_unsafe_noiommu_mode=1/);
    return true;
  });
});

test("sysfs: in no-IOMMU mode a device without a group is one not bound to vfio-pci", () => {
  const fake = withEdu({ group: undefined, driver: "edu" });
  fake.files.set("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode", "Y\n");
  assert.throws(() => iommuGroupOf(fake, EDU), (e: unknown) => {
    assert.ok(e instanceof DeviceNotBoundError);
    assert.deepEqual([e.code, e.bdf, e.driver], ["ERR_VFIO_DEVICE_NOT_BOUND", EDU, "edu"]);
    assert.equal(e.errno, 2); // the readlink of iommu_group really failed
    assert.match(e.message, /0000:00:04.0 is bound to edu, not vfio-pci: run `vfio bind 0000:00:04.0`/);
    return true;
  });
});

test("sysfs: drivers, members and attributes come from sysfs", () => {
  const fake = mixedGroup();
  assert.equal(driverOf(fake, "0000:00:06.1"), "virtio-pci");
  assert.equal(driverOf(fake, "0000:00:06.2"), undefined);
  assert.deepEqual(groupDevices(fake, 7), ["0000:00:06.0", "0000:00:06.1", "0000:00:06.2", "0000:00:06.3"]);
  assert.throws(() => groupDevices(fake, 8), /Cannot list the devices of IOMMU group 8 .*ENOENT/);
  assert.equal(pciAttr(fake, "0000:00:06.0", "vendor"), "0x1234");
  assert.equal(pciAttr(fake, "0000:00:06.0", "nope"), undefined);
});

test("sysfs: the group node is /dev/vfio/N, or noiommu-N in no-IOMMU mode", () => {
  const fake = withEdu();
  fake.addDevice({ bdf: "0000:00:05.0", group: 5, noiommu: true });
  assert.deepEqual(groupNode(fake, 4), { path: "/dev/vfio/4", noiommu: false });
  assert.deepEqual(groupNode(fake, 5), { path: "/dev/vfio/noiommu-5", noiommu: true });
});

test("sysfs: no group node means nothing is bound to vfio-pci (DeviceNotBoundError, no errno); no /dev/vfio means no VFIO", () => {
  const fake = withEdu({ driver: "edu" });
  for (const open of [() => groupNode(fake, 4), () => VfioGroup.open(fake, 4, { device: "00:04.0" })]) {
    assert.throws(open, (e: unknown) => {
      assert.ok(e instanceof DeviceNotBoundError);
      assert.deepEqual([e.code, e.errno, e.bdf, e.driver], [
        "ERR_VFIO_DEVICE_NOT_BOUND",
        undefined,
        EDU,
        "edu",
      ]);
      assert.equal(e.path, "/dev/vfio/4");
      assert.match(
        e.message,
        /^Cannot open VFIO group 4 on \/dev\/vfio\/4: 0000:00:04.0 is bound to edu, not vfio-pci: run `vfio bind 0000:00:04.0`$/,
      );
      return true;
    });
  }
  assert.ok(!fake.calls.some((c) => c.op === "open"));
  fake.vfioLoaded = false;
  assert.throws(() => groupNode(fake, 4), (e: unknown) => {
    assert.ok(e instanceof VfioUnavailableError);
    assert.equal(e.errno, 2);
    assert.match(e.message, /modprobe vfio-pci/);
    return true;
  });
});

test("sysfs: the device cdev is found under vfio-dev, and only when its node exists", () => {
  const fake = withEdu({ cdev: "vfio3" });
  fake.iommufd = true;
  assert.equal(deviceCdev(fake, EDU), "/dev/vfio/devices/vfio3");
  fake.deviceCdevs = false; // sysfs still lists vfio-dev/vfio3 (Linux 6.1+), but no node is made
  assert.equal(deviceCdev(fake, EDU), undefined);
  fake.deviceCdevs = true;
  fake.device(EDU).cdev = undefined;
  assert.equal(deviceCdev(fake, EDU), undefined);
});

test("group: open rejects group numbers that are not non-negative integers", () => {
  const fake = withEdu();
  for (const n of [-1, 1.5, NaN]) assert.throws(() => VfioGroup.open(fake, n), RangeError);
  assert.deepEqual(fake.calls, []);
});

test("group: forDevice finds the group through sysfs", () => {
  const fake = withEdu();
  using group = VfioGroup.forDevice(fake, EDU);
  assert.equal(group.group, 4);
  assert.equal(group.path, "/dev/vfio/4");
  assert.equal(group.noiommu, false);
});

test("group: EBUSY on open says another user holds the group", () => {
  const fake = withEdu();
  using _first = VfioGroup.open(fake, 4);
  assert.throws(() => VfioGroup.open(fake, 4), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.equal(e.code, "EBUSY");
    assert.equal(e.path, "/dev/vfio/4");
    // No /proc in the fake, so no holder can be named.
    assert.match(
      e.hint!,
      /^group 4 is already open in another process \(QEMU, another driver\), or this one; close it there first$/,
    );
    return true;
  });
  assert.equal(fake.openFds().length, 1);
});

test("group: EACCES on /dev/vfio/N says to run as root or hand the node over with vfio bind --user", () => {
  const fake = withEdu();
  using _ = fake.fail("open", "/dev/vfio/4", "EACCES");
  assert.throws(() => VfioGroup.open(fake, 4), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.match(
      e.message,
      /^Cannot open \/dev\/vfio\/4 \(open: EACCES\): no permission on \/dev\/vfio\/4/,
    );
    assert.match(e.hint!, /vfio bind BDF --user \$USER/);
    return true;
  });
  assert.deepEqual(fake.leaks(), []);
});

test("group: ENODEV on open says to bind a device to vfio-pci", () => {
  const fake = withEdu();
  using _ = fake.fail("open", "/dev/vfio/4", "ENODEV");
  assert.throws(
    () => VfioGroup.open(fake, 4),
    /\(open: ENODEV\): no device of IOMMU group 4 is bound to vfio-pci/,
  );
});

test("group: status reports viability and whether a container is set", () => {
  const fake = withEdu();
  using container = VfioContainer.open(fake);
  using group = VfioGroup.open(fake, 4);
  assert.deepEqual(group.status(), { viable: true, containerSet: false });
  group.setContainer(container);
  assert.deepEqual(group.status(), { viable: true, containerSet: true });
  assert.equal(group.container, container);
  assert.ok(container.groups.has(group));
});

test("group: a non-viable group names each device on another driver and how to fix it", () => {
  const fake = mixedGroup();
  using container = VfioContainer.open(fake);
  using group = VfioGroup.open(fake, 7);
  assert.deepEqual(group.status(), { viable: false, containerSet: false });
  assert.throws(() => group.setContainer(container), (e: unknown) => {
    assert.ok(e instanceof GroupNotViableError);
    assert.ok(e instanceof VfioError);
    assert.equal(e.name, "GroupNotViableError");
    assert.equal(e.code, "ERR_VFIO_GROUP_NOT_VIABLE");
    assert.equal(e.errno, undefined); // refused from GET_STATUS before SET_CONTAINER could say EPERM
    assert.equal(e.group, 7);
    assert.deepEqual(e.blockers, [
      { bdf: "0000:00:06.1", driver: "virtio-pci" },
      { bdf: "0000:00:06.3", driver: "e1000e" },
    ]);
    assert.match(e.message, /Cannot use IOMMU group 7, which is not viable on \/dev\/vfio\/7/);
    assert.match(e.hint!, /0000:00:06.1 is bound to virtio-pci; 0000:00:06.3 is bound to e1000e/);
    assert.match(e.hint!, /vfio bind 0000:00:06.1, vfio bind 0000:00:06.3/);
    assert.doesNotMatch(e.hint!, /06\.[02]/); // vfio-pci and unbound devices do not block
    return true;
  });
  assert.ok(!fake.ioctls().includes("VFIO_GROUP_SET_CONTAINER"));
  assert.equal(group.container, undefined);
});

test("group: a group made viable by rebinding attaches", () => {
  const fake = mixedGroup();
  fake.device("0000:00:06.1").driver = "vfio-pci";
  fake.device("0000:00:06.3").driver = undefined;
  using container = VfioContainer.open(fake);
  using group = VfioGroup.open(fake, 7);
  group.setContainer(container);
  assert.equal(group.status().containerSet, true);
});

test("group: attaching to a second container is a TypeError; the same one is a no-op", () => {
  const fake = withEdu();
  using a = VfioContainer.open(fake);
  using b = VfioContainer.open(fake);
  using group = VfioGroup.open(fake, 4);
  group.setContainer(a);
  group.setContainer(a);
  assert.equal(fake.ioctls().filter((n) => n === "VFIO_GROUP_SET_CONTAINER").length, 1);
  assert.throws(() => group.setContainer(b), /Cannot attach \/dev\/vfio\/4 to a second container/);
});

test("group: getDevice before the IOMMU is set says to attach and set it first", () => {
  const fake = withEdu();
  using container = VfioContainer.open(fake);
  using group = VfioGroup.open(fake, 4);
  assert.throws(
    () => group.getDevice(EDU),
    /\(VFIO_GROUP_GET_DEVICE_FD: EINVAL\): attach the group to a container/,
  );
  group.setContainer(container);
  assert.throws(() => group.getDevice(EDU), /set its IOMMU type first/);
  assert.equal(fake.openFds().length, 2);
});

test("group: getDevice of a device on another driver names the driver and vfio bind", () => {
  const fake = mixedGroup();
  fake.device("0000:00:06.1").driver = undefined; // unbound devices keep the group viable
  fake.device("0000:00:06.3").driver = undefined;
  const { container, group, device } = openLegacy(fake, "0000:00:06.0", 7);
  try {
    assert.throws(() => group.getDevice("0000:00:06.2"), (e: unknown) => {
      assert.ok(e instanceof VfioError);
      assert.equal(e.code, "ENODEV");
      assert.match(e.message, /Cannot get device 0000:00:06.2 from group 7/);
      assert.match(e.hint!, /0000:00:06.2 is bound to no driver, not vfio-pci: run `vfio bind 0000:00:06.2`/);
      return true;
    });
  } finally {
    device.close();
    group.close();
    container.close();
  }
  assert.deepEqual(fake.leaks(), []);
});

test("group: getDevice of a vfio-pci device from another group says it is not in the group", () => {
  const fake = withEdu();
  fake.addDevice({ bdf: "0000:00:05.0", group: 5 });
  const { container, group, device } = openLegacy(fake);
  try {
    assert.throws(() => group.getDevice("0000:00:05.0"), /0000:00:05.0 is not in IOMMU group 4/);
    assert.throws(() => group.getDevice("../05.0"), InvalidPciAddressError);
  } finally {
    device.close();
    group.close();
    container.close();
  }
});

test("group: unsetContainer with a device open is EBUSY and says to close the devices first", () => {
  const fake = withEdu();
  const { container, group, device } = openLegacy(fake);
  assert.throws(
    () => group.unsetContainer(),
    /\(VFIO_GROUP_UNSET_CONTAINER: EBUSY\): close the group's devices first/,
  );
  assert.equal(group.container, container);
  device.close();
  group.unsetContainer();
  assert.equal(group.container, undefined);
  assert.equal(container.groups.size, 0);
  group.unsetContainer(); // no container: nothing to do
  group.close();
  container.close();
  assert.deepEqual(fake.leaks(), []);
});

test("group: a closed group's devices keep working, and the container forgets it after them", () => {
  const fake = withEdu();
  const { container, group, device } = openLegacy(fake);
  group.close();
  assert.equal(group.closed, true);
  assert.equal(container.groups.size, 1); // the device holds the group in the kernel
  assert.equal(device.info().numRegions, 9);
  assert.throws(() => VfioGroup.open(fake, 4), /EBUSY/);
  device.close();
  assert.equal(container.groups.size, 0);
  assert.equal(container.kind, "unset");
  container.close();
  assert.deepEqual(fake.leaks(), []);
});

test("group: close is idempotent and use after close is a TypeError", () => {
  const fake = withEdu();
  const group = VfioGroup.open(fake, 4);
  group.close();
  group.close();
  assert.equal(fake.calls.filter((c) => c.op === "close").length, 1);
  assert.throws(() => group.status(), /Cannot use \/dev\/vfio\/4: it is closed/);
  assert.throws(() => group.getDevice(EDU), TypeError);
  assert.throws(() => group.fd, TypeError);
  assert.deepEqual(fake.leaks(), []);
});

test("group: open(2**53) and open(1e21) are RangeErrors that touch no file", () => {
  const fake = withEdu();
  for (const n of [2 ** 53, 1e21, 2 ** 32]) {
    assert.throws(() => VfioGroup.open(fake, n), (e: unknown) => {
      assert.ok(e instanceof RangeError);
      assert.match(e.message, /^Cannot open VFIO group .*: group numbers are integers in 0..2\^32-1$/);
      return true;
    });
  }
  assert.deepEqual(fake.calls, []);
});

test("group: unsetContainer after close is a TypeError", () => {
  const fake = withEdu();
  const group = VfioGroup.open(fake, 4);
  group.close();
  fake.calls = [];
  assert.throws(() => group.unsetContainer(), (e: unknown) => {
    assert.ok(e instanceof TypeError);
    assert.match(e.message, /Cannot use \/dev\/vfio\/4: it is closed/);
    return true;
  });
  assert.deepEqual(fake.calls, []);
});

test("sysfs: pciAttr with a path as the attribute (../../../etc/passwd) is a TypeError before any read", () => {
  const fake = withEdu();
  for (const attr of ["../../../etc/passwd", "driver/../../x", "", ".hidden", "a/b"]) {
    assert.throws(() => pciAttr(fake, EDU, attr), (e: unknown) => {
      assert.ok(e instanceof TypeError);
      assert.match(e.message, /Cannot read PCI attribute .*: expected a plain file name/);
      return true;
    });
  }
  assert.deepEqual(fake.calls, []);
  assert.equal(pciAttr(fake, EDU, "vendor"), "0x1234"); // a plain name still reads
});
