// SR-IOV against the real kernel, on the igb PF (0000:00:0a.0, vfio-pci, enable_sriov): `vfio sriov`
// makes VFs, each in an IOMMU group of its own on vfio-pci; the PF's VF token gates them (EACCES
// without it or with another, on each backend the kernel offers); their config space reads; and
// they go away cleanly with sriov_numvfs back to 0.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import type { SriovResult } from "../../cli/sriov.ts";
import { main } from "../../cli/vfio.ts";
import { UnsupportedError, VfioError } from "../../lib/errors.ts";
import { openIommu, openPciDevice } from "../../lib/open.ts";
import { backends, HAS_IOMMU, IGB0, sys } from "./_fixture.ts";

const SLOW = { timeout: 120_000 };
const TOKEN = "bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3";
const WRONG = "00000000-0000-0000-0000-000000000001";
const PF_DIR = `/sys/bus/pci/devices/${IGB0}`;

const read = (path: string) => (existsSync(path) ? readFileSync(path, "utf8").trim() : undefined);
const skip = !existsSync(PF_DIR)
  ? `this guest has no igb at ${IGB0}`
  : read(`${PF_DIR}/sriov_totalvfs`) === undefined
  ? "this kernel has no SR-IOV (CONFIG_PCI_IOV)"
  : read("/sys/module/vfio_pci/parameters/enable_sriov") !== "Y"
  ? "vfio-pci's enable_sriov is off"
  : false;

/** Runs `vfio sriov IGB0 n --json` in this process and returns its result. */
async function setVfs(n: number): Promise<SriovResult> {
  const out: string[] = [];
  const err: string[] = [];
  const status = await main(["sriov", IGB0, String(n), "--json"], (l) => out.push(l), (l) => err.push(l));
  assert.equal(status, 0, `vfio sriov ${IGB0} ${n}: ${out.join("\n")}${err.join("\n")}`);
  return JSON.parse(out.join("\n"));
}

/** Makes `n` VFs for the test, and removes them after it, also when it fails. */
async function withVfs(n: number, fn: (r: SriovResult) => void | Promise<void>): Promise<void> {
  const r = await setVfs(n);
  try {
    await fn(r);
  } finally {
    await setVfs(0);
  }
}

function caught(fn: () => unknown): VfioError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof VfioError, `expected a VfioError, got ${e}`);
    return e;
  }
  assert.fail("expected a throw");
}

test(
  "sriov: vfio sriov makes 2 VFs on the igb PF, each in a group of its own on vfio-pci",
  { ...SLOW, skip },
  async () => {
    await withVfs(2, (r) => {
      assert.equal(r.bdf, IGB0);
      assert.equal(r.driver, "vfio-pci");
      assert.equal(r.numVfs, 2);
      assert.equal(r.vfs.length, 2);
      assert.equal(new Set(r.vfs.map((v) => v.iommuGroup)).size, 2, "each VF has a group of its own");
      for (const vf of r.vfs) {
        assert.equal(vf.driver, "vfio-pci");
        assert.ok(vf.groupNode && existsSync(vf.groupNode), `${vf.bdf}'s group node ${vf.groupNode}`);
        assert.equal(read(`/sys/bus/pci/devices/${vf.bdf}/device`), "0x10ca");
      }
      console.log(`VFs: ${r.vfs.map((v) => `${v.bdf} group ${v.iommuGroup}`).join(", ")}`);
    });
    assert.equal(read(`${PF_DIR}/sriov_numvfs`), "0");
  },
);

test("sriov: changing 2 VFs to 3 goes through 0, as the kernel requires", { ...SLOW, skip }, async () => {
  await withVfs(2, async () => {
    const r = await setVfs(3);
    assert.equal(r.previous, 2);
    assert.equal(r.vfs.length, 3);
  });
});

for (const mode of HAS_IOMMU ? backends() : []) {
  test(`sriov (${mode.name}): a VF opens only with the PF's token (EACCES without, or with another)`, {
    ...SLOW,
    skip,
  }, async () => {
    await withVfs(2, (r) => {
      const vf = r.vfs[0]!.bdf;
      using pf = openPciDevice(sys, IGB0, mode.options);
      pf.device.setVfToken(TOKEN);
      const none = caught(() => openPciDevice(sys, vf, mode.options));
      if (none instanceof UnsupportedError) throw none;
      assert.equal(none.code, "EACCES", none.message);
      assert.match(
        none.hint!,
        /no VF token was given; .* is a VF of 0000:00:0a\.0, which is bound to vfio-pci/,
      );
      let wrong: VfioError | undefined;
      try {
        openPciDevice(sys, vf, { ...mode.options, vfToken: WRONG }).close();
      } catch (e) {
        assert.ok(e instanceof VfioError);
        wrong = e;
      }
      if (wrong instanceof UnsupportedError) {
        // iommufd before 6.17 has no VFIO_DEVICE_BIND_FLAG_TOKEN: the library says so.
        assert.match(wrong.hint!, /VFIO_DEVICE_BIND_FLAG_TOKEN needs Linux 6\.17/);
        return;
      }
      assert.equal(wrong?.code, "EACCES", wrong?.message ?? "the wrong token was taken");
      assert.match(wrong!.hint!, /the VF token 00000000-0000-0000-0000-000000000001 is not the PF's/);
      using ok = openPciDevice(sys, vf, { ...mode.options, vfToken: TOKEN });
      assert.equal(ok.device.config.read16(0), 0x8086, "the VF's vendor ID, read through its config region");
      assert.equal(ok.device.config.read16(2), 0x10ca, "the VF's device ID");
      assert.ok(ok.device.info().numRegions >= 9);
    });
  });
}

test("sriov: two VFs open side by side in one container, and go away with numvfs 0 once closed", {
  ...SLOW,
  skip: skip || (!HAS_IOMMU && "needs an IOMMU"),
}, async () => {
  await withVfs(2, (r) => {
    using pfBackend = openIommu(sys, { backend: "legacy" });
    pfBackend.openDevice(IGB0).setVfToken(TOKEN);
    using backend = openIommu(sys, { backend: "legacy" });
    const vfs = r.vfs.map((v) => backend.openDevice(v.bdf, { vfToken: TOKEN }));
    assert.deepEqual(vfs.map((d) => d.config.read16(2)), [0x10ca, 0x10ca]);
  });
  // withVfs wrote 0 after everything above closed: the kernel removed both VFs without waiting.
  assert.equal(read(`${PF_DIR}/sriov_numvfs`), "0");
  assert.equal(existsSync(`${PF_DIR}/virtfn0`), false);
});

test(
  "sriov: the CLI refuses N above sriov_totalvfs, and a device without SR-IOV",
  { ...SLOW, skip },
  async () => {
    const total = Number(read(`${PF_DIR}/sriov_totalvfs`));
    const out: string[] = [];
    assert.equal(await main(["sriov", IGB0, String(total + 1), "--json"], (l) => out.push(l)), 1);
    assert.equal(JSON.parse(out.join("\n")).error.code, "ERR_VFIO_TOO_MANY_VFS");
    out.length = 0;
    assert.equal(await main(["sriov", "0000:00:04.0", "1", "--json"], (l) => out.push(l)), 1);
    assert.equal(JSON.parse(out.join("\n")).error.code, "ERR_VFIO_NO_SRIOV");
  },
);
