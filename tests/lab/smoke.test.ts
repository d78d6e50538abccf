// Checks the promises of the lab harness (scripts/lab/run.sh) from inside the guest: which devices are
// where, which driver owns them, how they are grouped, and which VFIO interfaces the kernel offers in
// each configuration. If one of these fails, the other lab tests' failures are probably not the library's.
// Node APIs only, and flat top-level tests, so it runs unchanged under `deno test` and `bun test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync } from "node:fs";
import { basename } from "node:path";
import process from "node:process";

const env = process.env;
const kernel = env.VFIO_TS_LAB_KERNEL;
const iommu = env.VFIO_TS_LAB_IOMMU;
const custom = kernel === "custom" || kernel === "custom7"; // built here with IOMMUFD and the cdev
const linux7 = kernel === "custom7" || kernel === "stock7";
const noiommu = iommu === "none";
const skip = env.VFIO_TS_LAB === "1" ? false : "runs only inside the lab guest (scripts/lab/run.sh)";

const PCI = "/sys/bus/pci/devices";
const EDU = "0000:00:04.0";
const NVME = "0000:00:05.0";
const EDU2 = "0000:00:06.0"; // multifunction edu, group not viable under intel-iommu
const RNG = "0000:00:06.1"; // virtio-rng, stays on virtio-pci
const ROOT_PORT = "0000:00:07.0"; // PCIe root port, on pcieport
const EDU3 = "0000:01:00.0"; // edu alone behind ROOT_PORT, so a bus reset is possible
const VFIO_DEVICES = [EDU, NVME, EDU2, EDU3];
/** Every device the harness bound to vfio-pci (the ones above, plus the 7.x lab's peer edu and NICs). */
const vfioBound = () =>
  readdirSync(PCI).filter((bdf) => {
    try {
      return basename(readlinkSync(`${PCI}/${bdf}/driver`)) === "vfio-pci";
    } catch {
      return false;
    }
  });

function link(path: string): string | undefined {
  try {
    return basename(readlinkSync(path));
  } catch {
    return undefined;
  }
}
const driverOf = (bdf: string) => link(`${PCI}/${bdf}/driver`);
const groupOf = (bdf: string) => link(`${PCI}/${bdf}/iommu_group`);
const attr = (bdf: string, name: string) => readFileSync(`${PCI}/${bdf}/${name}`, "utf8").trim();
const groupMembers = (group: string) => readdirSync(`/sys/kernel/iommu_groups/${group}/devices`).sort();

test("lab env: names a known configuration", { skip }, () => {
  assert.ok(["stock", "custom", "stock7", "custom7"].includes(kernel ?? ""), `VFIO_TS_LAB_KERNEL=${kernel}`);
  assert.ok(iommu === "intel" || iommu === "none", `VFIO_TS_LAB_IOMMU=${iommu}`);
  assert.ok(!(kernel?.startsWith("stock") && noiommu), "the stock kernels have no noiommu mode");
  if (env.VFIO_TS_LAB_CONFIG) {
    assert.equal(env.VFIO_TS_LAB_CONFIG, `${kernel}-${noiommu ? "noiommu" : "intel"}`);
  }
});

test("lab env: VFIO_TS_NVME_IMAGE is the 64 MiB NVMe backing image", { skip }, () => {
  const image = env.VFIO_TS_NVME_IMAGE;
  assert.ok(image, "VFIO_TS_NVME_IMAGE is set");
  assert.equal(statSync(image).size, 64 * 1024 * 1024);
});

test("lab devices: the fixed PCI topology is present", { skip }, () => {
  const ids = (bdf: string) => `${attr(bdf, "vendor")}:${attr(bdf, "device")}`;
  assert.equal(ids(EDU), "0x1234:0x11e8");
  assert.equal(ids(NVME), "0x1b36:0x0010");
  assert.equal(ids(EDU2), "0x1234:0x11e8");
  assert.equal(ids(RNG), "0x1af4:0x1005");
  assert.equal(ids(ROOT_PORT), "0x1b36:0x000c");
  assert.equal(ids(EDU3), "0x1234:0x11e8");
  assert.match(
    readlinkSync(`${PCI}/${EDU3}`),
    new RegExp(`/${ROOT_PORT}/${EDU3}$`),
    "01:00.0 sits behind 00:07.0",
  );
});

test("lab devices: 00:04.0, 00:05.0, 00:06.0 and 01:00.0 are bound to vfio-pci", { skip }, () => {
  for (const bdf of VFIO_DEVICES) assert.equal(driverOf(bdf), "vfio-pci", bdf);
});

test("lab devices: 00:06.1 stays on virtio-pci and 00:07.0 on pcieport", { skip }, () => {
  assert.equal(driverOf(RNG), "virtio-pci");
  assert.equal(driverOf(ROOT_PORT), "pcieport");
});

test("lab vfio: the legacy container node /dev/vfio/vfio exists", { skip }, () => {
  assert.ok(existsSync("/dev/vfio/vfio"));
});

test("lab vfio: every vfio-pci device has its group node", { skip }, () => {
  for (const bdf of VFIO_DEVICES) {
    const group = groupOf(bdf);
    assert.ok(group, `${bdf} has an IOMMU group`);
    const node = noiommu ? `/dev/vfio/noiommu-${group}` : `/dev/vfio/${group}`;
    assert.ok(existsSync(node), `${node} exists`);
  }
});

test("lab groups: 00:04.0, 00:05.0 and 01:00.0 are alone in their groups", { skip }, () => {
  for (const bdf of [EDU, NVME, EDU3]) {
    const group = groupOf(bdf);
    assert.ok(group, `${bdf} has a group`);
    assert.deepEqual(groupMembers(group), [bdf]);
  }
});

test("lab groups: 00:06.0 shares its group with 00:06.1, so it is not viable", { skip }, () => {
  const group = groupOf(EDU2);
  assert.ok(group, "00:06.0 has a group");
  if (noiommu) {
    // noiommu groups are made per device by vfio-pci; the virtio function has none at all.
    assert.equal(groupOf(RNG), undefined);
    assert.deepEqual(groupMembers(group), [EDU2]);
  } else {
    assert.equal(groupOf(RNG), group);
    assert.deepEqual(groupMembers(group), [EDU2, RNG]);
  }
});

test("lab iommu: intel-iommu with interrupt remapping, or none at all", { skip }, () => {
  const units = existsSync("/sys/class/iommu") ? readdirSync("/sys/class/iommu") : [];
  if (noiommu) {
    assert.deepEqual(units, []);
    assert.equal(readFileSync("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode", "utf8").trim(), "Y");
  } else {
    assert.ok(units.some((u) => u.startsWith("dmar")), `IOMMU units: ${units}`);
    // Remapped MSI vectors show up as IR-PCI-MSI* (the 9p shares' virtio devices use MSI-X).
    assert.match(readFileSync("/proc/interrupts", "utf8"), /IR-PCI-MSI/);
  }
});

test("lab iommufd: /dev/iommu exists exactly on the custom kernel", { skip }, () => {
  assert.equal(existsSync("/dev/iommu"), custom);
});

test("lab cdev: a /dev/vfio/devices node per vfio-pci device on the custom kernels", { skip }, () => {
  if (!custom) {
    assert.equal(existsSync("/dev/vfio/devices"), false);
    return;
  }
  for (const bdf of VFIO_DEVICES) {
    const names = readdirSync(`${PCI}/${bdf}/vfio-dev`);
    assert.equal(names.length, 1, `${bdf}/vfio-dev`);
    // With an IOMMU: vfioN. Without one, Linux 6.12 makes no cdev (sysfs still lists vfio-dev/vfioN)
    // and 7.3 makes noiommu-vfioN.
    if (!noiommu || linux7) {
      assert.match(names[0]!, noiommu ? /^noiommu-vfio\d+$/ : /^vfio\d+$/);
      assert.ok(existsSync(`/dev/vfio/devices/${names[0]}`), `/dev/vfio/devices/${names[0]}`);
    }
  }
});

test("lab noiommu: /dev/vfio/noiommu-N nodes exist only in noiommu mode", { skip }, () => {
  const nodes = readdirSync("/dev/vfio").filter((n) => n.startsWith("noiommu-"));
  assert.equal(nodes.length, noiommu ? vfioBound().length : 0, `nodes: ${nodes}`);
  if (noiommu) assert.ok(VFIO_DEVICES.every((d) => vfioBound().includes(d)));
});
