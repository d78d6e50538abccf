/**
 * The fake kernel itself: the tests above trust it to refuse what Linux refuses and to notice
 * misuse, so its own behaviour is pinned here at the Sys level.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { MAP_ANONYMOUS, MAP_PRIVATE } from "../../lib/uapi/libc.ts";
import * as V from "../../lib/uapi/vfio.ts";
import { EDU, withEdu } from "./fake_sys.ts";

const int32 = (n: number) => new Uint8Array(new Int32Array([n]).buffer);

test("fake_sys: a group opens once, and its devices hold it after its fd closes", () => {
  const fake = withEdu();
  const container = fake.open("/dev/vfio/vfio", 0);
  const group = fake.open("/dev/vfio/4", 0);
  assert.equal(fake.open("/dev/vfio/4", 0), -16); // EBUSY
  assert.equal(fake.open("/dev/vfio/5", 0), -2); // ENOENT: nothing bound in group 5
  assert.equal(fake.ioctlInt(container, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU), -22); // no group yet
  assert.equal(fake.ioctlPtr(group, V.VFIO_GROUP_SET_CONTAINER, int32(container)), 0);
  assert.equal(fake.ioctlInt(container, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU), 0);
  const device = fake.ioctlPtr(group, V.VFIO_GROUP_GET_DEVICE_FD, new TextEncoder().encode(EDU + "\0"));
  assert.ok(device > 0);
  fake.close(group);
  assert.equal(fake.containers[0]!.groups.size, 1);
  assert.equal(fake.open("/dev/vfio/4", 0), -16);
  fake.close(device);
  assert.equal(fake.containers[0]!.groups.size, 0);
  assert.equal(fake.containers[0]!.type, undefined);
  fake.close(container);
  assert.deepEqual(fake.leaks(), []);
});

test("fake_sys: a too-small argsz is raised to what the capabilities need, and none are copied", () => {
  const fake = withEdu({ regions: [{ index: 0, size: 0x2000, sparse: [{ offset: 0, size: 0x1000 }] }] });
  const container = fake.open("/dev/vfio/vfio", 0);
  const group = fake.open("/dev/vfio/4", 0);
  fake.ioctlPtr(group, V.VFIO_GROUP_SET_CONTAINER, int32(container));
  fake.ioctlInt(container, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
  const device = fake.ioctlPtr(group, V.VFIO_GROUP_GET_DEVICE_FD, new TextEncoder().encode(EDU + "\0"));
  const small = V.vfio_region_info.alloc();
  assert.equal(fake.ioctlPtr(device, V.VFIO_DEVICE_GET_REGION_INFO, small.bytes), 0);
  assert.equal(small.get("argsz"), 32 + 32); // header + sparse cap with one area
  assert.equal(small.get("cap_offset"), 0);
  assert.equal(small.get("flags") & V.VFIO_REGION_INFO_FLAG_CAPS, V.VFIO_REGION_INFO_FLAG_CAPS);
  const big = V.vfio_region_info.alloc(32);
  fake.ioctlPtr(device, V.VFIO_DEVICE_GET_REGION_INFO, big.bytes);
  assert.equal(big.get("cap_offset"), 32);
  assert.equal(V.vfio_info_cap_header.at(big.bytes, 32).get("id"), V.VFIO_REGION_INFO_CAP_SPARSE_MMAP);
  assert.equal(V.vfio_info_cap_header.at(big.bytes, 32).get("next"), 0);
  const lying = V.vfio_region_info.alloc();
  lying.set("argsz", 64);
  assert.equal(fake.ioctlPtr(device, V.VFIO_DEVICE_GET_REGION_INFO, lying.bytes), -14); // EFAULT
  assert.equal(fake.violations.length, 1);
});

test("fake_sys: an eventfd counts writes, and a read takes the whole count", async () => {
  const fake = withEdu();
  const efd = fake.eventfd(0, 0);
  const buf = new Uint8Array(8);
  assert.equal(fake.read(efd, buf), -11); // EAGAIN: the kernel would block
  const pending = fake.readAsync(efd, buf);
  fake.write(efd, new Uint8Array(new BigUint64Array([2n]).buffer));
  assert.equal(await pending, 8);
  assert.equal(new DataView(buf.buffer).getBigUint64(0, true), 2n);
  fake.close(efd);
  assert.equal(fake.close(efd), -9); // EBADF
  assert.deepEqual(fake.leaks(), [`close on fd ${efd}, which is not open`]); // a double close is a bug
});

test("fake_sys: unmapping memory whose ArrayBuffer is still attached is a violation", () => {
  const fake = withEdu();
  const a = fake.mmap(4096, 3, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  const b = fake.mmap(4096, 3, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  fake.memory(a, 4096).transfer(0);
  fake.memory(b, 4096);
  assert.equal(fake.munmap(a, 4096), 0);
  assert.equal(fake.munmap(b, 4096), 0);
  assert.equal(fake.munmap(b, 4096), -22);
  assert.equal(fake.violations.length, 2);
  assert.match(fake.violations[0]!, /was not detached first/);
  assert.match(fake.violations[1]!, /no such mapping/);
});

test("fake_sys: injections match by target, skip `after` calls, fail `times`, and lift on dispose", () => {
  const fake = withEdu();
  {
    using _ = fake.fail("open", "/dev/vfio/vfio", "EACCES", { after: 1, times: 1 });
    const first = fake.open("/dev/vfio/vfio", 0);
    assert.ok(first > 0);
    assert.equal(fake.open("/dev/vfio/vfio", 0), -13);
    assert.ok(fake.open("/dev/vfio/vfio", 0) > 0);
    assert.deepEqual(fake.calls.map((c) => c.ret! > 0 ? "ok" : c.ret), ["ok", -13, "ok"]);
  }
  {
    using _ = fake.fail("open", undefined, "EMFILE");
    assert.equal(fake.open("/dev/vfio/4", 0), -24);
  }
  assert.ok(fake.open("/dev/vfio/4", 0) > 0);
  assert.throws(() => fake.fail("open", undefined, "ENOPE"), /Unknown errno name ENOPE/);
});

test("fake_sys: sysfs follows the devices: groups, drivers and the /dev/vfio nodes", () => {
  const fake = withEdu();
  fake.addDevice({ bdf: "0000:00:05.0", group: 5, driver: "nvme" });
  assert.deepEqual(fake.readDir("/dev/vfio"), ["4", "vfio"]);
  fake.device("0000:00:05.0").driver = "vfio-pci";
  assert.deepEqual(fake.readDir("/dev/vfio"), ["4", "5", "vfio"]);
  assert.equal(
    fake.readLink("/sys/bus/pci/devices/0000:00:05.0/driver"),
    "../../../bus/pci/drivers/vfio-pci",
  );
  assert.equal(
    fake.readLink("/sys/bus/pci/devices/0000:00:05.0/iommu_group"),
    "../../../kernel/iommu_groups/5",
  );
  assert.equal(fake.readText("/sys/bus/pci/devices/0000:00:04.0/vendor"), "0x1234\n");
  assert.deepEqual(fake.readDir("/sys/kernel/iommu_groups/4/devices"), [EDU]);
  assert.equal(fake.readDir("/sys/kernel/iommu_groups/6/devices"), -2);
});

test("fake_sys: SET_IRQS eventfds on INTx/MSI/MSI-X while another of them has triggers is EINVAL; a count-0 DATA_NONE trigger disables", () => {
  const fake = withEdu();
  const container = fake.open("/dev/vfio/vfio", 0);
  const group = fake.open("/dev/vfio/4", 0);
  fake.ioctlPtr(group, V.VFIO_GROUP_SET_CONTAINER, int32(container));
  fake.ioctlInt(container, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
  const device = fake.ioctlPtr(group, V.VFIO_GROUP_GET_DEVICE_FD, new TextEncoder().encode(EDU + "\0"));
  const efd = fake.eventfd(0, 0);
  const set = (index: number, flags: number, count: number) => {
    const s = V.vfio_irq_set.alloc(4 * count);
    s.set("flags", flags).set("index", index).set("start", 0).set("count", count);
    for (let i = 0; i < count; i++) s.view.setInt32(V.vfio_irq_set.size + 4 * i, efd, true);
    return fake.ioctlPtr(device, V.VFIO_DEVICE_SET_IRQS, s.bytes);
  };
  const EVENTFD = V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER;
  const NONE = V.VFIO_IRQ_SET_DATA_NONE | V.VFIO_IRQ_SET_ACTION_TRIGGER;
  assert.equal(set(V.VFIO_PCI_MSIX_IRQ_INDEX, EVENTFD, 1), 0);
  assert.equal(set(V.VFIO_PCI_INTX_IRQ_INDEX, EVENTFD, 1), -22); // EINVAL: MSI-X is active
  assert.equal(set(V.VFIO_PCI_MSI_IRQ_INDEX, EVENTFD, 1), -22);
  assert.equal(set(V.VFIO_PCI_ERR_IRQ_INDEX, EVENTFD, 1), 0); // not an interrupt type: allowed
  assert.equal(set(V.VFIO_PCI_MSIX_IRQ_INDEX, EVENTFD, 1), 0); // the active type may be re-set
  assert.equal(set(V.VFIO_PCI_MSIX_IRQ_INDEX, NONE, 0), 0); // disables MSI-X
  assert.deepEqual(fake.device(EDU).irqs[V.VFIO_PCI_MSIX_IRQ_INDEX]!.triggers, []);
  assert.equal(set(V.VFIO_PCI_INTX_IRQ_INDEX, EVENTFD, 1), 0);
  assert.deepEqual(
    fake.device(EDU).irqSets.map((s) => s.index),
    [
      V.VFIO_PCI_MSIX_IRQ_INDEX,
      V.VFIO_PCI_ERR_IRQ_INDEX,
      V.VFIO_PCI_MSIX_IRQ_INDEX,
      V.VFIO_PCI_MSIX_IRQ_INDEX,
      0,
    ],
  );
  for (const fd of [efd, device, group, container]) fake.close(fd);
  assert.deepEqual(fake.leaks(), []);
});

test("fake_sys: type1 map and unmap of a range that wraps past 2^64 are EOVERFLOW since 6.19, EINVAL before", () => {
  for (const [release, errno] of [["7.3.4", -75], ["6.12.57", -22]] as const) {
    const fake = withEdu();
    fake.release = release;
    const container = fake.open("/dev/vfio/vfio", 0);
    const group = fake.open("/dev/vfio/4", 0);
    fake.ioctlPtr(group, V.VFIO_GROUP_SET_CONTAINER, int32(container));
    fake.ioctlInt(container, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
    const vaddr = fake.mmap(0x2000, 3, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const map = (iova: bigint) => {
      const m = V.vfio_iommu_type1_dma_map.alloc();
      m.set("flags", 3).set("vaddr", vaddr).set("iova", iova).set("size", 0x2000n);
      return fake.ioctlPtr(container, V.VFIO_IOMMU_MAP_DMA, m.bytes);
    };
    const unmap = (iova: bigint) => {
      const u = V.vfio_iommu_type1_dma_unmap.alloc();
      u.set("iova", iova).set("size", 0x2000n);
      return fake.ioctlPtr(container, V.VFIO_IOMMU_UNMAP_DMA, u.bytes);
    };
    // vfio_dma_map_limit_test overflow: the top page of the 64-bit space plus one more.
    assert.equal(map(0xfffffffffffff000n), errno, release);
    assert.equal(unmap(0xfffffffffffff000n), errno, release);
    // Past the reported ranges without wrapping stays EINVAL; inside them, the same size maps.
    assert.equal(map(0xfffffffffffe0000n), -22, release);
    assert.equal(map(0x100000n), 0, release);
    assert.equal(unmap(0x100000n), 0, release);
    fake.close(group);
    fake.close(container);
    fake.memory(vaddr, 0x2000).transfer(0);
    fake.munmap(vaddr, 0x2000);
    assert.deepEqual(fake.leaks(), [], release);
  }
});
