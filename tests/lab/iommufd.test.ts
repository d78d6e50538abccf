// iommufd and the VFIO device cdev against the real kernel, including the negative cases of the
// kernel's own selftests (tools/testing/selftests/vfio): access before bind, a bad iommufd, a
// repeated bind, and attaching to a page table that does not exist.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { IommufdIoas } from "../../lib/iommufd.ts";
import { chooseBackend, openPciDevice } from "../../lib/open.ts";
import { deviceCdev } from "../../lib/sysfs.ts";
import { IOMMU_IOAS_ALLOC, iommu_ioas_alloc } from "../../lib/uapi/iommufd.ts";
import { O_RDWR } from "../../lib/uapi/libc.ts";
import {
  VFIO_DEVICE_ATTACH_IOMMUFD_PT,
  vfio_device_attach_iommufd_pt,
  VFIO_DEVICE_BIND_IOMMUFD,
  vfio_device_bind_iommufd,
  VFIO_DEVICE_GET_INFO,
  vfio_device_info,
} from "../../lib/uapi/vfio.ts";
import { backends, EDU, edu, HAS_IOMMU, openFds, sys } from "./_fixture.ts";

const HAS_IOMMUFD = backends().some((b) => b.name === "iommufd");
const skip = !HAS_IOMMUFD && "this lab kernel has no iommufd and device cdev";

const EINVAL = -22, EBADF = -9, ENOENT = -2, EBADFD = -77;

/** Opens EDU's cdev without binding it, for the raw negative tests. */
function rawCdev(): number {
  const cdev = deviceCdev(sys, EDU);
  assert.ok(cdev, "EDU has a cdev");
  const fd = sys.open(cdev, O_RDWR);
  assert.ok(fd >= 0, `open ${cdev}: ${fd}`);
  return fd;
}

function bind(deviceFd: number, iommufd: number): number {
  const b = vfio_device_bind_iommufd.alloc();
  b.set("iommufd", iommufd);
  return sys.ioctlPtr(deviceFd, VFIO_DEVICE_BIND_IOMMUFD, b.bytes);
}

test("iommufd: auto selection picks iommufd when /dev/iommu and the cdevs exist", () => {
  const list = (dir: string) => {
    try {
      return readdirSync(dir);
    } catch {
      return [];
    }
  };
  // What the kernel offers, read here independently of lib/open.ts: /dev/iommu and device cdevs
  // (vfioN with an IOMMU; noiommu-vfioN without one, Linux 7.3+).
  const cdevs = list("/dev/vfio/devices");
  const iommufd = list("/dev").includes("iommu") && cdevs.length > 0;
  assert.equal(chooseBackend(sys), iommufd ? "iommufd" : "legacy");
  using v = openPciDevice(sys, EDU);
  const kind = iommufd ? (HAS_IOMMU ? "iommufd" : "iommufd-noiommu") : HAS_IOMMU ? "type1v2" : "noiommu";
  assert.equal(v.backend.kind, kind);
  if (!HAS_IOMMU && !iommufd) assert.ok(list("/dev/vfio").some((n) => n.startsWith("noiommu-")));
  if (!HAS_IOMMU && iommufd) assert.ok(cdevs.every((n) => n.startsWith("noiommu-vfio")), `${cdevs}`);
});

test("iommufd: the environment variable overrides the automatic choice", { skip }, () => {
  const before = process.env.VFIO_TS_BACKEND;
  process.env.VFIO_TS_BACKEND = "legacy";
  try {
    assert.equal(chooseBackend(sys), "legacy");
  } finally {
    if (before === undefined) delete process.env.VFIO_TS_BACKEND;
    else process.env.VFIO_TS_BACKEND = before;
  }
});

test("iommufd: device info before bind fails", { skip }, () => {
  const fd = rawCdev();
  try {
    const info = vfio_device_info.alloc();
    assert.equal(sys.ioctlPtr(fd, VFIO_DEVICE_GET_INFO, info.bytes), EINVAL);
  } finally {
    sys.close(fd);
  }
});

test("iommufd: binding to a bad iommufd fails", { skip }, () => {
  const fd = rawCdev();
  const notIommufd = sys.open("/dev/null", O_RDWR);
  try {
    assert.equal(bind(fd, -1), EINVAL); // a negative fd is refused before lookup
    assert.equal(bind(fd, 999_999), EBADF); // no such fd
    assert.equal(bind(fd, notIommufd), EBADFD); // an fd that is not an iommufd
  } finally {
    sys.close(notIommufd);
    sys.close(fd);
  }
});

test("iommufd: a repeated bind fails", { skip }, () => {
  using ioas = IommufdIoas.open(sys);
  const fd = rawCdev();
  try {
    assert.equal(bind(fd, ioas.fd), 0);
    assert.equal(bind(fd, ioas.fd), EINVAL);
  } finally {
    sys.close(fd);
  }
});

test("iommufd: attaching to a page table that does not exist fails", { skip }, () => {
  using ioas = IommufdIoas.open(sys);
  const fd = rawCdev();
  try {
    assert.equal(bind(fd, ioas.fd), 0);
    const a = vfio_device_attach_iommufd_pt.alloc();
    a.set("pt_id", 0xdead);
    assert.equal(sys.ioctlPtr(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, a.bytes), ENOENT);
    a.set("pt_id", ioas.ioasId);
    assert.equal(sys.ioctlPtr(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, a.bytes), 0);
  } finally {
    sys.close(fd);
  }
});

test("iommufd: a bound device cannot be bound again through a second open of its cdev", { skip }, () => {
  using v = openPciDevice(sys, EDU, { backend: "iommufd" });
  // The cdev itself opens any number of times; only one open may be bound (vfio_df_open).
  const second = rawCdev();
  try {
    assert.equal(bind(second, (v.backend as IommufdIoas).fd), EINVAL);
  } finally {
    sys.close(second);
  }
  assert.equal(v.device.info().pci, true);
});

test("iommufd: already open fds are adopted, as a privileged helper would pass them", { skip }, () => {
  const before = openFds();
  const iommufd = sys.open("/dev/iommu", O_RDWR);
  const devfd = rawCdev();
  {
    using ioas = IommufdIoas.open(sys, { iommufd });
    // The adopted iommufd really works: allocate a second IOAS on it directly.
    const a = iommu_ioas_alloc.alloc();
    assert.equal(sys.ioctlPtr(ioas.fd, IOMMU_IOAS_ALLOC, a.bytes), 0);
    const device = ioas.openDeviceFd(devfd, EDU);
    using bar0 = device.registers(0);
    assert.equal(bar0.read32(edu.IDENT), 0x010000ed);
  }
  assert.equal(openFds(), before, "the backend closed both adopted fds");
});
