// Container and group setup against the real kernel: API version, extensions, IOMMU selection and
// info, group status and viability, and the errors for unusable groups and unbound devices.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { VfioContainer } from "../../lib/container.ts";
import { DeviceNotBoundError, VfioError } from "../../lib/errors.ts";
import { GroupNotViableError, VfioGroup } from "../../lib/group.ts";
import { iommuGroupOf } from "../../lib/sysfs.ts";
import {
  VFIO_NOIOMMU_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
} from "../../lib/uapi/vfio.ts";
import { BLOCKER, EDU, EDU2, HAS_IOMMU, sys } from "./_fixture.ts";

test("container: API version is checked and extensions are probed", () => {
  using c = VfioContainer.open(sys);
  assert.equal(c.kind, "unset");
  if (HAS_IOMMU) {
    assert.equal(c.checkExtension(VFIO_TYPE1v2_IOMMU), true);
    assert.equal(c.checkExtension(VFIO_TYPE1_IOMMU), true);
    assert.equal(c.checkExtension(VFIO_UNMAP_ALL), true);
  } else {
    assert.equal(c.checkExtension(VFIO_NOIOMMU_IOMMU), true);
  }
  assert.equal(c.checkExtension(0x7fff), false);
});

test("group: opened from a PCI address, status viable, container set after attach", () => {
  using c = VfioContainer.open(sys);
  using g = VfioGroup.forDevice(sys, EDU);
  assert.equal(g.group, iommuGroupOf(sys, EDU));
  assert.equal(g.noiommu, !HAS_IOMMU);
  assert.equal(g.path, HAS_IOMMU ? `/dev/vfio/${g.group}` : `/dev/vfio/noiommu-${g.group}`);
  assert.deepEqual(g.status(), { viable: true, containerSet: false });
  g.setContainer(c);
  assert.deepEqual(g.status(), { viable: true, containerSet: true });
  c.setIommu();
  assert.equal(c.kind, HAS_IOMMU ? "type1v2" : "noiommu");
  g.unsetContainer();
  assert.deepEqual(g.status(), { viable: true, containerSet: false });
});

test("container: TYPE1 can be forced instead of TYPE1v2", { skip: !HAS_IOMMU && "no IOMMU" }, () => {
  using c = VfioContainer.open(sys, { iommuType: VFIO_TYPE1_IOMMU });
  using d = c.openDevice(EDU);
  assert.equal(c.kind, "type1");
  assert.equal(d.info().pci, true);
});

test("container: IOMMU info reports page sizes, IOVA ranges and DMA_AVAIL", {
  skip: !HAS_IOMMU && "no IOMMU",
}, () => {
  using c = VfioContainer.open(sys);
  c.openDevice(EDU);
  const info = c.info();
  assert.ok((info.pageSizes & 0x1000n) !== 0n, `4 KiB pages in ${info.pageSizes.toString(16)}`);
  assert.ok(info.iovaRanges.length >= 1);
  // intel-iommu reserves the MSI window 0xfee00000..0xfeefffff: no reported range may cover it.
  for (const r of info.iovaRanges) {
    assert.ok(r.start <= r.last);
    assert.ok(
      r.last < 0xfee00000n || r.start > 0xfeefffffn,
      `range ${r.start}..${r.last} covers the MSI window`,
    );
  }
  assert.ok(typeof info.dmaAvail === "number" && info.dmaAvail > 0, `dmaAvail ${info.dmaAvail}`);
  assert.equal(c.iommuPageSize, 4096);
});

const NOIOMMU_SKIP = "no-IOMMU mode makes one group per device, so no group can be made non-viable";

test("group: a group with a device on another driver is not viable, and the error names it", {
  skip: HAS_IOMMU ? false : NOIOMMU_SKIP,
}, () => {
  const group = iommuGroupOf(sys, EDU2);
  assert.equal(iommuGroupOf(sys, BLOCKER), group, "the lab puts 06.0 and 06.1 in one group");
  const g = VfioGroup.open(sys, group);
  assert.equal(g.status().viable, false);
  using c = VfioContainer.open(sys);
  assert.throws(() => g.setContainer(c), (e: unknown) => {
    assert.ok(e instanceof GroupNotViableError);
    assert.deepEqual(e.blockers.map((b) => b.bdf), [BLOCKER]);
    assert.match(e.message, new RegExp(`${BLOCKER.replaceAll(".", "\\.")} is bound to virtio-pci`));
    assert.match(e.message, /vfio bind 0000:00:06\.1/);
    return true;
  });
  g.close();
  // The high-level path reports the same, and leaves nothing open.
  assert.throws(() => c.openDevice(EDU2), GroupNotViableError);
  assert.equal(c.groups.size, 0);
});

test("group: no-IOMMU mode gives each vfio-pci device a group of its own", {
  skip: HAS_IOMMU ? "only no-IOMMU mode makes per-device groups" : false,
}, () => {
  assert.notEqual(iommuGroupOf(sys, EDU2), iommuGroupOf(sys, EDU));
});

test("group: opening a group twice fails with EBUSY and says who holds it", () => {
  using g = VfioGroup.forDevice(sys, EDU);
  assert.throws(() => VfioGroup.forDevice(sys, EDU), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.equal(e.code, "EBUSY");
    assert.match(e.message, /already open/);
    return true;
  });
  assert.equal(g.closed, false);
});

test("device: a device not bound to vfio-pci cannot be opened, and the error says how to bind it", () => {
  const dir = `/sys/bus/pci/devices/${EDU2}`;
  // Unbind 06.0 from vfio-pci, so no device of its group is bound any more; rebind afterwards.
  writeFileSync(`${dir}/driver/unbind`, EDU2);
  try {
    using c = VfioContainer.open(sys);
    assert.throws(() => c.openDevice(EDU2), (e: unknown) => {
      assert.ok(e instanceof DeviceNotBoundError);
      assert.equal(e.code, "ERR_VFIO_DEVICE_NOT_BOUND");
      if (HAS_IOMMU) assert.equal(e.errno, undefined, "the group node is absent: no syscall failed");
      // Without an IOMMU the group itself goes with the vfio-pci binding: sysfs's readlink says ENOENT.
      else assert.deepEqual([e.op, e.code === "ERR_VFIO_DEVICE_NOT_BOUND", e.errno], ["readlink", true, 2]);
      assert.equal(e.driver, undefined, "06.0 was left with no driver");
      assert.match(e.message, /vfio-pci/);
      assert.match(e.message, /vfio bind 0000:00:06\.0/);
      return true;
    });
  } finally {
    writeFileSync(`${dir}/driver_override`, "vfio-pci");
    writeFileSync("/sys/bus/pci/drivers_probe", EDU2);
  }
  assert.match(readFileSync(`${dir}/uevent`, "utf8"), /DRIVER=vfio-pci/);
});

test("device: getting a device from a group without a container fails with a fix", () => {
  using g = VfioGroup.forDevice(sys, EDU);
  assert.throws(() => g.getDevice(EDU), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.match(e.message, /VFIO_GROUP_GET_DEVICE_FD/);
    assert.match(e.message, /container/);
    return true;
  });
});
