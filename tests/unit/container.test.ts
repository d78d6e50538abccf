/**
 * lib/container.ts: the type1 container against the fake kernel: version check, IOMMU type choice,
 * IOMMU info with the argsz re-query, DMA map/unmap and their errors.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { VfioContainer } from "../../lib/container.ts";
import { DmaPool } from "../../lib/dma.ts";
import { UnsupportedError, VfioError, VfioUnavailableError } from "../../lib/errors.ts";
import { VfioGroup } from "../../lib/group.ts";
import {
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_NOIOMMU_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
} from "../../lib/uapi/vfio.ts";
import { EDU, FakeSys, openLegacy, withEdu } from "./fake_sys.ts";

/** A container with the edu group attached and the IOMMU set, plus an anonymous mapping to map. */
function attached(fake = withEdu(), type?: number) {
  const container = VfioContainer.open(fake, type === undefined ? {} : { iommuType: type });
  const group = VfioGroup.open(fake, 4);
  group.setContainer(container);
  container.setIommu();
  const vaddr = fake.mmap(0x10000, 3, 0x22, -1, 0);
  const close = () => {
    container.close();
    group.close();
    fake.munmap(vaddr, 0x10000);
  };
  return { fake, container, group, vaddr, close };
}

test("container: open checks the API version and closes the fd on a mismatch (VfioUnavailableError, no errno)", () => {
  const fake = new FakeSys();
  fake.apiVersion = 1;
  assert.throws(() => VfioContainer.open(fake), (e: unknown) => {
    assert.ok(e instanceof VfioUnavailableError);
    assert.equal(e.code, "ERR_VFIO_UNAVAILABLE");
    assert.equal(e.errno, undefined); // the ioctl succeeded: no errno to report
    assert.equal(
      e.message,
      "Cannot use VFIO API version 1 on /dev/vfio/vfio: this library speaks version 0",
    );
    return true;
  });
  assert.deepEqual(fake.leaks(), []);
});

test("container: a missing /dev/vfio/vfio is a VfioUnavailableError keeping ENOENT, and says to load vfio-pci", () => {
  const fake = new FakeSys();
  fake.vfioLoaded = false;
  assert.throws(() => VfioContainer.open(fake), (e: unknown) => {
    assert.ok(e instanceof VfioUnavailableError);
    assert.equal(e.code, "ERR_VFIO_UNAVAILABLE");
    assert.equal(e.errno, 2); // open(2) really failed
    assert.match(
      e.message,
      /^Cannot open \/dev\/vfio\/vfio \(open: ENOENT\): VFIO is not available on this machine: load it with modprobe vfio-pci/,
    );
    return true;
  });
});

test("container: EACCES on /dev/vfio/vfio says to run as root", () => {
  const fake = new FakeSys();
  using _ = fake.fail("open", "/dev/vfio/vfio", "EACCES");
  assert.throws(() => VfioContainer.open(fake), (e: unknown) => {
    assert.ok(e instanceof VfioError && !(e instanceof VfioUnavailableError));
    assert.equal(e.code, "EACCES");
    assert.match(e.message, /^Cannot open \/dev\/vfio\/vfio \(open: EACCES\): run as root/);
    return true;
  });
});

test("container: a failing GET_API_VERSION closes the container fd", () => {
  const fake = new FakeSys();
  using _ = fake.fail("ioctl", "VFIO_GET_API_VERSION", "EIO");
  assert.throws(() => VfioContainer.open(fake), /VFIO_GET_API_VERSION: EIO/);
  assert.deepEqual(fake.leaks(), []);
});

test("container: setting the IOMMU before a group is attached is a TypeError", () => {
  const fake = withEdu();
  using container = VfioContainer.open(fake);
  assert.equal(container.kind, "unset");
  assert.throws(() => container.setIommu(), /attach a group to the container first/);
  assert.throws(() => container.info(), /set the IOMMU type first/);
  assert.ok(!fake.ioctls().includes("VFIO_SET_IOMMU"));
});

test("container: TYPE1v2 is chosen when the kernel has it", () => {
  const t = attached();
  try {
    assert.equal(t.container.kind, "type1v2");
    assert.equal(t.fake.containers[0]!.type, VFIO_TYPE1v2_IOMMU);
    assert.equal(t.container.translates, true);
  } finally {
    t.close();
  }
});

test("container: without TYPE1v2 it falls back to TYPE1", () => {
  const fake = withEdu();
  fake.extensions.delete(VFIO_TYPE1v2_IOMMU);
  const t = attached(fake);
  try {
    assert.equal(t.container.kind, "type1");
    assert.equal(fake.containers[0]!.type, VFIO_TYPE1_IOMMU);
  } finally {
    t.close();
  }
});

test("container: the iommuType option forces a type", () => {
  const t = attached(withEdu(), VFIO_TYPE1_IOMMU);
  try {
    assert.equal(t.container.kind, "type1");
    assert.ok(!t.fake.calls.some((c) => c.name === "VFIO_CHECK_EXTENSION"));
  } finally {
    t.close();
  }
});

test("container: a noiommu-N group gets the no-IOMMU type, which cannot map DMA", () => {
  const fake = withEdu({ noiommu: true });
  fake.extensions.add(VFIO_NOIOMMU_IOMMU);
  const { container, group, device } = openLegacy(fake);
  try {
    assert.equal(group.path, "/dev/vfio/noiommu-4");
    assert.equal(group.noiommu, true);
    assert.equal(container.kind, "noiommu");
    assert.equal(container.translates, false);
    assert.equal(fake.containers[0]!.type, VFIO_NOIOMMU_IOMMU);
    assert.deepEqual(container.info().iovaRanges, []);
    assert.throws(() => container.mapDma(0x1000n, 0x1000n, 0x1000), (e: unknown) => {
      assert.ok(e instanceof UnsupportedError);
      assert.equal(e.code, "ERR_VFIO_UNSUPPORTED");
      assert.equal(e.errno, undefined); // no ioctl was made, so none failed
      assert.match(e.message, /no-IOMMU mode has no IOMMU translation to program/);
      return true;
    });
    assert.throws(() => container.iovaRanges(), /no-IOMMU mode/);
    assert.ok(!fake.ioctls().includes("VFIO_IOMMU_MAP_DMA"));
  } finally {
    device.close();
    group.close();
    container.close();
  }
  assert.deepEqual(fake.leaks(), []);
});

test("container: EPERM from SET_IOMMU explains interrupt remapping", () => {
  const fake = withEdu();
  using _ = fake.fail("ioctl", "VFIO_SET_IOMMU", "EPERM");
  using container = VfioContainer.open(fake);
  using group = VfioGroup.open(fake, 4);
  group.setContainer(container);
  assert.throws(() => container.setIommu(), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.equal(e.code, "EPERM");
    assert.match(e.message, /^Cannot set IOMMU type 3 on \/dev\/vfio\/vfio \(VFIO_SET_IOMMU: EPERM\)/);
    assert.match(e.hint!, /interrupt remapping/);
    assert.match(e.hint!, /allow_unsafe_interrupts=1/);
    return true;
  });
  assert.equal(container.kind, "unset");
});

test("container: an unsupported IOMMU type says which one and how to check", () => {
  const fake = withEdu();
  using container = VfioContainer.open(fake, { iommuType: 6 });
  using group = VfioGroup.open(fake, 4);
  group.setContainer(container);
  assert.throws(() => container.setIommu(), /\(VFIO_SET_IOMMU: ENODEV\): the kernel has no IOMMU type 6/);
});

test("container: setting the same type again is a no-op, another type a TypeError", () => {
  const t = attached();
  try {
    t.container.setIommu({ type: VFIO_TYPE1v2_IOMMU });
    t.container.setIommu();
    assert.equal(t.fake.ioctls().filter((n) => n === "VFIO_SET_IOMMU").length, 1);
    assert.throws(() => t.container.setIommu({ type: VFIO_TYPE1_IOMMU }), /already uses type1v2/);
  } finally {
    t.close();
  }
});

test("container: IOMMU info is re-queried with the argsz the kernel asks for", () => {
  const t = attached();
  try {
    t.fake.calls = [];
    const info = t.container.info();
    const gets = t.fake.calls.filter((c) => c.name === "VFIO_IOMMU_GET_INFO");
    assert.equal(gets.length, 2);
    assert.equal(info.pageSizes, 0x40201000n);
    assert.equal(t.container.iommuPageSize, 4096);
    assert.deepEqual(info.iovaRanges, [{ start: 0n, last: 0xfedfffffn }, {
      start: 0xfef00000n,
      last: 0xffffffffffn,
    }]);
    assert.equal(info.dmaAvail, 65535);
  } finally {
    t.close();
  }
});

test("container: without capabilities the IOVA space is the whole 64 bits", () => {
  const fake = withEdu();
  fake.iovaRanges = undefined;
  fake.dmaAvail = undefined;
  const t = attached(fake);
  try {
    fake.calls = [];
    assert.deepEqual(t.container.info(), {
      pageSizes: 0x40201000n,
      iovaRanges: [{ start: 0n, last: 0xffffffffffffffffn }],
      dmaAvail: undefined,
    });
    assert.equal(fake.ioctls().filter((n) => n === "VFIO_IOMMU_GET_INFO").length, 1);
  } finally {
    t.close();
  }
});

test("container: DMA_AVAIL is read fresh each time, the ranges once", () => {
  const t = attached();
  try {
    const first = t.container.info();
    assert.equal(first.dmaAvail, 65535);
    // The kernel now reports other ranges: the container keeps the ones it read first.
    t.fake.iovaRanges = [{ start: 0x100000n, last: 0x1fffffn }];
    t.container.mapDma(t.vaddr, 0x100000n, 0x1000);
    const second = t.container.info();
    assert.equal(second.dmaAvail, 65534);
    assert.deepEqual(second.iovaRanges, first.iovaRanges);
    assert.deepEqual(t.container.iovaRanges(), first.iovaRanges);
  } finally {
    t.close();
  }
});

test("container: mapDma maps read-write by default, read-only on request", () => {
  const t = attached();
  try {
    t.container.mapDma(t.vaddr, 0x100000n, 0x2000);
    t.container.mapDma(t.vaddr + 0x2000n, 0x200000n, 0x1000, { write: false });
    const kernel = t.fake.containers[0]!.mappings;
    assert.deepEqual(kernel.get(0x100000n), {
      iova: 0x100000n,
      size: 0x2000n,
      vaddr: t.vaddr,
      flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
    });
    assert.equal(kernel.get(0x200000n)!.flags, VFIO_DMA_MAP_FLAG_READ);
    assert.deepEqual([...t.container.mappings], [[0x100000n, 0x2000], [0x200000n, 0x1000]]);
  } finally {
    t.close();
  }
});

test("container: mapDma refuses misaligned, empty, out-of-range and overlapping maps without an ioctl", () => {
  const t = attached();
  try {
    t.container.mapDma(t.vaddr, 0x100000n, 0x2000);
    t.fake.calls = [];
    const c = t.container;
    assert.throws(
      () => c.mapDma(t.vaddr + 1n, 0x200000n, 0x1000),
      /multiples of the IOMMU page size 0x1000/,
    );
    assert.throws(() => c.mapDma(t.vaddr, 0x200800n, 0x1000), RangeError);
    assert.throws(() => c.mapDma(t.vaddr, 0x200000n, 0x800), RangeError);
    assert.throws(() => c.mapDma(t.vaddr, 0x200000n, 0), RangeError);
    assert.throws(
      () => c.mapDma(t.vaddr, 0xfee00000n, 0x1000),
      /outside the IOMMU's IOVA ranges 0x0..0xfedfffff/,
    );
    assert.throws(() => c.mapDma(t.vaddr, 0xfedff000n, 0x2000), /outside the IOMMU's IOVA ranges/);
    assert.throws(
      () => c.mapDma(t.vaddr, 0x101000n, 0x1000),
      /overlaps the mapping at 0x100000 \(size 0x2000\)/,
    );
    assert.throws(() => c.mapDma(t.vaddr, 0xff000n, 0x2000), /overlaps/);
    assert.ok(!t.fake.ioctls().includes("VFIO_IOMMU_MAP_DMA"));
    assert.equal(t.container.mappings.size, 1);
  } finally {
    t.close();
  }
});

test("container: ENOMEM from MAP_DMA names RLIMIT_MEMLOCK, its value and ulimit -l", () => {
  const fake = withEdu();
  fake.memlock = 32n << 10n;
  const t = attached(fake);
  try {
    assert.throws(() => t.container.mapDma(t.vaddr, 0x100000n, 0x10000), (e: unknown) => {
      assert.ok(e instanceof VfioError);
      assert.equal(e.code, "ENOMEM");
      assert.match(
        e.message,
        /^Cannot map DMA at iova 0x100000 \(size 0x10000\) on \/dev\/vfio\/vfio \(VFIO_IOMMU_MAP_DMA: ENOMEM\)/,
      );
      assert.match(e.hint!, /pinning 64 KiB for DMA counts against RLIMIT_MEMLOCK, which is 32 KiB/);
      assert.match(e.hint!, /ulimit -l/);
      return true;
    });
    assert.equal(t.container.mappings.size, 0);
  } finally {
    t.close();
  }
});

test("container: other MAP_DMA errors carry their own fixes", () => {
  const t = attached();
  try {
    assert.throws(
      () => t.container.mapDma(0x1000n, 0x100000n, 0x1000),
      /EFAULT\): the virtual address range is not mapped/,
    );
    t.fake.dmaAvail = 0;
    assert.throws(() => t.container.mapDma(t.vaddr, 0x100000n, 0x1000), /ENOSPC\): .*dma_entry_limit/);
  } finally {
    t.close();
  }
});

test("container: unmapDma needs the exact mapping and removes it in the kernel", () => {
  const t = attached();
  try {
    t.container.mapDma(t.vaddr, 0x100000n, 0x2000);
    assert.throws(() => t.container.unmapDma(0x100000n, 0x1000), /no mapping starts there with that size/);
    assert.throws(() => t.container.unmapDma(0x101000n, 0x1000), RangeError);
    t.container.unmapDma(0x100000n, 0x2000);
    assert.equal(t.fake.containers[0]!.mappings.size, 0);
    assert.equal(t.container.mappings.size, 0);
  } finally {
    t.close();
  }
});

test("container: unmapAll uses VFIO_DMA_UNMAP_FLAG_ALL when the kernel has it", () => {
  const t = attached();
  try {
    t.container.mapDma(t.vaddr, 0x100000n, 0x1000);
    t.container.mapDma(t.vaddr + 0x1000n, 0x200000n, 0x1000);
    t.fake.calls = [];
    t.container.unmapAll();
    assert.equal(t.fake.ioctls().filter((n) => n === "VFIO_IOMMU_UNMAP_DMA").length, 1);
    assert.equal(t.fake.containers[0]!.mappings.size, 0);
    assert.equal(t.container.mappings.size, 0);
  } finally {
    t.close();
  }
});

test("container: unmapAll unmaps one by one on kernels without VFIO_UNMAP_ALL", () => {
  const fake = withEdu();
  fake.extensions.delete(VFIO_UNMAP_ALL);
  const t = attached(fake);
  try {
    t.container.mapDma(t.vaddr, 0x100000n, 0x1000);
    t.container.mapDma(t.vaddr + 0x1000n, 0x200000n, 0x1000);
    fake.calls = [];
    t.container.unmapAll();
    assert.equal(fake.ioctls().filter((n) => n === "VFIO_IOMMU_UNMAP_DMA").length, 2);
    assert.equal(fake.containers[0]!.mappings.size, 0);
  } finally {
    t.close();
  }
});

test("container: when the last group leaves, the kernel drops the IOMMU and the mappings are forgotten", () => {
  const t = attached();
  try {
    t.container.mapDma(t.vaddr, 0x100000n, 0x1000);
    t.group.unsetContainer();
    assert.equal(t.container.kind, "unset");
    assert.equal(t.container.mappings.size, 0);
    assert.equal(t.fake.containers[0]!.mappings.size, 0);
    t.fake.calls = [];
    t.container.close();
    assert.ok(!t.fake.ioctls().includes("VFIO_IOMMU_UNMAP_DMA"));
  } finally {
    t.close();
  }
});

test("container: close unmaps what is left, then closes the fd; use after close is a TypeError", () => {
  const t = attached();
  t.container.mapDma(t.vaddr, 0x100000n, 0x1000);
  t.container.close();
  assert.equal(t.fake.containers[0]!.mappings.size, 0);
  assert.equal(t.container.closed, true);
  assert.throws(() => t.container.fd, /Cannot use \/dev\/vfio\/vfio: it is closed/);
  assert.throws(() => t.container.mapDma(t.vaddr, 0x200000n, 0x1000), /the IOMMU backend is closed/);
  assert.throws(() => t.container.iovaRanges(), TypeError);
  assert.throws(() => t.container.openDevice(EDU), TypeError);
  t.container.close();
  t.close();
  assert.deepEqual(t.fake.leaks(), []);
});

test("container: openDevice opens the group, attaches it, sets the IOMMU and gets the device", () => {
  const fake = withEdu();
  const container = VfioContainer.open(fake);
  const device = container.openDevice("00:04.0");
  assert.equal(device.name, EDU);
  assert.equal(container.kind, "type1v2");
  assert.equal(container.groups.size, 1);
  assert.deepEqual(fake.openFds().map((f) => f.kind), ["container", "group", "device"]);
  container.close();
  assert.equal(device.closed, true);
  assert.deepEqual(fake.leaks(), []);
});

test("container: openDevice reuses the group for a second device of it", () => {
  const fake = withEdu();
  fake.addDevice({ bdf: "0000:00:04.1", group: 4 });
  using container = VfioContainer.open(fake);
  container.openDevice(EDU);
  container.openDevice("0000:00:04.1");
  assert.equal(fake.calls.filter((c) => c.op === "open" && c.path === "/dev/vfio/4").length, 1);
  assert.equal(fake.openFds().filter((f) => f.kind === "device").length, 2);
});

test("container: a failed openDevice closes the group it opened", () => {
  const fake = withEdu();
  using container = VfioContainer.open(fake);
  {
    using _ = fake.fail("ioctl", "VFIO_SET_IOMMU", "EPERM");
    assert.throws(() => container.openDevice(EDU), /interrupt remapping/);
  }
  assert.deepEqual(fake.openFds().map((f) => f.kind), ["container"]);
  {
    using _ = fake.fail("ioctl", "VFIO_GROUP_GET_DEVICE_FD", "ENODEV");
    assert.throws(() => container.openDevice(EDU), /ENODEV/);
  }
  assert.deepEqual(fake.openFds().map((f) => f.kind), ["container"]);
  assert.equal(container.groups.size, 0);
  const device = container.openDevice(EDU); // and it still works after
  assert.equal(device.info().pci, true);
});

test("container: mapDma refuses vaddr 0n, negative addresses, ranges past 2^64, no access and a non-safe-integer size before any ioctl", () => {
  const t = attached();
  try {
    t.container.info(); // the page size and ranges, read once: the argument checks need them
    t.fake.calls = [];
    const c = t.container;
    const outside = /vaddr must be non-zero, .*and both ranges inside 64 bits/;
    assert.throws(() => c.mapDma(0n, 0x100000n, 0x1000), outside);
    assert.throws(() => c.mapDma(-0x1000n, 0x100000n, 0x1000), outside);
    assert.throws(() => c.mapDma(t.vaddr, -0x1000n, 0x1000), outside);
    assert.throws(() => c.mapDma(0xfffffffffffff000n, 0x100000n, 0x2000), outside);
    assert.throws(() => c.mapDma(t.vaddr, 0xfffffffffffff000n, 0x2000), outside);
    assert.throws(
      () => c.mapDma(t.vaddr, 0x100000n, 0x1000, { read: false, write: false }),
      (e: unknown) => e instanceof RangeError && /with no access: allow read, write or both/.test(e.message),
    );
    for (const size of [2 ** 53, 2 ** 64, 0x1000 + 0.5, NaN, Infinity]) {
      assert.throws(
        () => c.mapDma(t.vaddr, 0x100000n, size),
        (e: unknown) => e instanceof TypeError && /size a safe integer/.test(e.message),
        String(size),
      );
    }
    assert.deepEqual(t.fake.ioctls(), []);
    assert.equal(c.mappings.size, 0);
  } finally {
    t.close();
  }
});

test("container: iommuPageSize after close is a TypeError", () => {
  const t = attached();
  assert.equal(t.container.iommuPageSize, 4096);
  t.close();
  assert.throws(() => t.container.iommuPageSize, (e: unknown) => {
    assert.ok(e instanceof TypeError);
    assert.match(e.message, /Cannot use \/dev\/vfio\/vfio: the .* backend is closed/);
    return true;
  });
});

test("container: a group the container opened stays its own to close after the caller unsets it", () => {
  const fake = withEdu();
  const container = VfioContainer.open(fake);
  const device = container.openDevice(EDU);
  device.close();
  const group = [...container.groups][0]!;
  group.unsetContainer();
  assert.equal(container.groups.size, 0);
  container.close();
  assert.equal(group.closed, true, "the container closed the group it had opened");
  assert.deepEqual(fake.leaks(), []);
});

test("container: memory whose unmap failed waits while a caller's group keeps the closed container alive", () => {
  const fake = withEdu();
  const container = VfioContainer.open(fake);
  const group = VfioGroup.open(fake, 4); // the caller's, not the container's
  group.setContainer(container);
  container.setIommu();
  const pool = new DmaPool(fake, container);
  pool.alloc(1);
  {
    using _ = fake.fail("ioctl", "VFIO_IOMMU_UNMAP_DMA", "EINVAL");
    assert.throws(() => container.close());
  }
  // The kernel still maps the buffer for the device: its memory must stay.
  assert.equal(fake.containers[0]!.mappings.size, 1);
  assert.equal(fake.mappings().length, 1);
  assert.deepEqual(fake.violations, []);
  group.close(); // the last group leaves: the kernel drops the IOMMU and its mappings
  assert.deepEqual(fake.mappings(), []);
  assert.deepEqual(fake.leaks(), []);
});
