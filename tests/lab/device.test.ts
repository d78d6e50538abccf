// Device info, config space, regions and registers against the real kernel, under every backend.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { UnsupportedError, VfioError } from "../../lib/errors.ts";
import { openPciDevice } from "../../lib/open.ts";
import {
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
  VFIO_DEVICE_FEATURE_MIGRATION,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_PCI_NUM_REGIONS,
} from "../../lib/uapi/vfio.ts";
import { PCI_COMMAND, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY } from "../../lib/uapi/pci.ts";
import { backends, EDU, edu, EDU_BEHIND_PORT, NVME, sys } from "./_fixture.ts";

const sysfs = (bdf: string, attr: string) =>
  readFileSync(`/sys/bus/pci/devices/${bdf}/${attr}`, "utf8").trim();

/** BAR sizes from sysfs `resource`: one "start end flags" line per resource, BARs first. */
function sysfsBarSizes(bdf: string): number[] {
  return sysfs(bdf, "resource").split("\n").slice(0, 6).map((line) => {
    const [start, end] = line.trim().split(/\s+/).map((x) => BigInt(x));
    return start === 0n && end === 0n ? 0 : Number(end! - start! + 1n);
  });
}

for (const mode of backends()) {
  test(`${mode.name}: device info reports a vfio-pci device with all PCI regions and IRQs`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    const info = v.device.info();
    assert.equal(info.pci, true);
    assert.equal(info.numRegions, VFIO_PCI_NUM_REGIONS);
    assert.equal(info.numIrqs, VFIO_PCI_NUM_IRQS);
  });

  for (const bdf of [EDU, NVME]) {
    test(`${mode.name}: ${bdf} config space matches sysfs (vendor, device, class, BAR sizes)`, () => {
      using v = openPciDevice(sys, bdf, mode.options);
      const cfg = v.device.config;
      assert.equal(cfg.vendorId, Number(sysfs(bdf, "vendor")));
      assert.equal(cfg.deviceId, Number(sysfs(bdf, "device")));
      assert.equal(cfg.classCode, Number(sysfs(bdf, "class")));
      assert.equal(cfg.read16(0), Number(sysfs(bdf, "vendor")));
      const sizes = sysfsBarSizes(bdf);
      for (let i = 0; i < 6; i++) {
        assert.equal(v.device.regionInfo(VFIO_PCI_BAR0_REGION_INDEX + i).size, sizes[i], `BAR${i} size`);
      }
    });

    test(`${mode.name}: ${bdf} every implemented BAR has region info and maps`, () => {
      using v = openPciDevice(sys, bdf, mode.options);
      let mapped = 0;
      for (let i = 0; i < 6; i++) {
        const region = v.device.region(i);
        if (region.info.size === 0) continue;
        assert.ok(region.info.readable && region.info.writable, `BAR${i} is read/write`);
        for (const area of region.mmapAreas) {
          const m = region.map(area.offset, area.size);
          assert.ok(m.address > 0n);
          region.unmap(m);
          mapped++;
        }
      }
      assert.ok(mapped >= 1, "at least one BAR area was mapped");
      const cfg = v.device.regionInfo(VFIO_PCI_CONFIG_REGION_INDEX);
      assert.ok(cfg.size >= 256 && cfg.readable && !cfg.mmap);
    });
  }

  test(`${mode.name}: NVMe BAR0 reports the MSI-X table as a sparse or msix-mappable region`, () => {
    using v = openPciDevice(sys, NVME, mode.options);
    const info = v.device.regionInfo(0);
    // vfio-pci either carves the MSI-X table out (sparse mmap) or says it may be mapped.
    assert.ok(info.msixMappable || info.sparse !== undefined, JSON.stringify(info));
  });

  for (const path of ["auto", "pread"] as const) {
    test(`${mode.name}: edu ident, liveness and factorial through the ${path} register path`, () => {
      using v = openPciDevice(sys, EDU, mode.options);
      using bar0 = v.device.registers(0, { path });
      assert.equal(bar0.path, path === "auto" ? "mmap" : "pread");
      assert.equal(bar0.read32(edu.IDENT), 0x010000ed);
      for (const x of [0, 1, 0x12345678, 0xffffffff]) {
        bar0.write32(edu.LIVENESS, x);
        assert.equal(bar0.read32(edu.LIVENESS), ~x >>> 0);
      }
      bar0.write32(edu.STATUS, 0);
      bar0.write32(edu.FACTORIAL, 10);
      const deadline = Date.now() + 5000;
      while (bar0.read32(edu.STATUS) & edu.STATUS_BUSY) {
        assert.ok(Date.now() < deadline, "factorial finished");
      }
      assert.equal(bar0.read32(edu.FACTORIAL), 3628800);
      // 64-bit access where edu allows it (its DMA registers).
      bar0.write64(edu.DMA_SRC, 0x1234_5678_9abc_def0n);
      assert.equal(bar0.read64(edu.DMA_SRC), 0x1234_5678_9abc_def0n);
    });
  }

  test(`${mode.name}: register accesses outside the BAR are rejected before touching the device`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    using bar0 = v.device.registers(0);
    const size = v.device.regionInfo(0).size;
    assert.throws(() => bar0.read32(size), RangeError);
    assert.throws(() => bar0.read32(size - 2), RangeError);
    assert.throws(() => bar0.write32(-4, 0), RangeError);
    assert.throws(() => bar0.read32(2), /unaligned/);
    assert.throws(() => v.device.region(0).read(size - 4, 8), RangeError);
    assert.throws(() => v.device.region(99), RangeError);
    assert.equal(bar0.read32(edu.IDENT), 0x010000ed);
  });

  test(`${mode.name}: bus mastering and memory decode are set through config space`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    const cfg = v.device.config;
    cfg.write16(PCI_COMMAND, cfg.read16(PCI_COMMAND) & ~PCI_COMMAND_MASTER);
    cfg.enableBusMaster();
    const cmd = cfg.read16(PCI_COMMAND);
    assert.equal(cmd & (PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY), PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY);
  });

  test(`${mode.name}: PCI capabilities of the NVMe controller include MSI-X and PCI Express`, () => {
    using v = openPciDevice(sys, NVME, mode.options);
    const ids = v.device.config.capabilities().map((c) => c.id);
    assert.ok(ids.includes(0x11), `MSI-X in ${ids}`);
    assert.ok(ids.includes(0x10), `PCIe in ${ids}`);
  });

  test(`${mode.name}: reset on a device without a reset method is refused before any ioctl`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    assert.equal(v.device.info().reset, false, "QEMU's edu on the root bus has no FLR, PM or bus reset");
    assert.throws(() => v.device.reset(), (e: unknown) => {
      assert.ok(e instanceof UnsupportedError);
      assert.equal(e.errno, undefined, "no ioctl failed: the library refused");
      assert.match(e.message, /no function-level reset/);
      return true;
    });
    // The device is untouched and still answers.
    using bar0 = v.device.registers(0);
    assert.equal(bar0.read32(edu.IDENT), 0x010000ed);
  });

  test(`${mode.name}: reset of the NVMe controller (FLR) disables it and keeps config space`, () => {
    using nvme = openPciDevice(sys, NVME, mode.options);
    assert.equal(nvme.device.info().reset, true, "QEMU's NVMe controller supports FLR");
    using bar0 = nvme.device.registers(0);
    nvme.device.config.enableMemory();
    const vendor = nvme.device.config.vendorId;
    nvme.device.reset();
    // After a reset the controller is disabled (CC.EN = 0 at BAR0 0x14), and the kernel restored
    // config space around it: the BARs still decode and the IDs read back.
    assert.equal(bar0.read32(0x14) & 1, 0);
    assert.equal(nvme.device.config.vendorId, vendor);
    assert.notEqual(bar0.read32(0x00), 0xffffffff, "CAP reads back after the reset");
  });

  test(`${mode.name}: hot reset resets the bus behind a root port, presenting the right ownership`, () => {
    using v = openPciDevice(sys, EDU_BEHIND_PORT, mode.options);
    const affected = v.device.hotResetInfo();
    assert.deepEqual(affected.map((d) => d.bdf), [EDU_BEHIND_PORT]);
    // Legacy reports IOMMU groups; a cdev bound to an iommufd reports device IDs.
    assert.equal(affected[0]!.devid, mode.name === "iommufd");
    using bar0 = v.device.registers(0);
    v.device.hotReset();
    // The kernel saved and restored config space around the reset: the device answers again.
    assert.equal(bar0.read32(edu.IDENT), 0x010000ed);
  });

  test(`${mode.name}: hot reset of a device on the root bus is refused with ENODEV`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    assert.throws(() => v.device.hotResetInfo(), (e: unknown) => {
      assert.ok(e instanceof VfioError);
      assert.equal(e.code, "ENODEV");
      return true;
    });
  });

  test(`${mode.name}: device features are probed (low-power entry yes, migration no)`, () => {
    using v = openPciDevice(sys, EDU, mode.options);
    assert.equal(
      v.device.featureSupported(VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, VFIO_DEVICE_FEATURE_SET),
      true,
    );
    assert.equal(
      v.device.featureSupported(VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, VFIO_DEVICE_FEATURE_GET),
      false,
    );
    assert.equal(v.device.featureSupported(VFIO_DEVICE_FEATURE_MIGRATION, VFIO_DEVICE_FEATURE_GET), false);
  });
}
