/**
 * `vfio sriov BDF N` over the fake kernel: writing sriov_numvfs (0 first between two non-zero
 * counts), the VFs it reports, and the refusals: no SR-IOV, more VFs than the PF offers, not root,
 * a bad count, vfio-pci without enable_sriov, and a VF held open by a process.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { formatSriov, sriov } from "../../cli/sriov.ts";
import { main } from "../../cli/vfio.ts";
import type { Sys } from "../../lib/sys.ts";
import { EDU, FakeSys } from "./fake_sys.ts";

const PF = "0000:00:06.0";
const numvfs = `/sys/bus/pci/devices/${PF}/sriov_numvfs`;

function withPf(o: { cdevs?: boolean } = {}): FakeSys {
  const fake = new FakeSys();
  fake.iommufd = o.cdevs ?? false;
  fake.addDevice({ bdf: EDU, group: 4 });
  fake.addDevice({
    bdf: PF,
    group: 6,
    cdev: "vfio0",
    vendor: 0x8086,
    device: 0x10c9,
    sriov: { totalVfs: 7 },
  });
  return fake;
}

async function run(argv: string[], sys: Sys) {
  const out: string[] = [];
  const err: string[] = [];
  const status = await main(argv, (l) => out.push(l), (l) => err.push(l), () => Promise.resolve(sys));
  return { status, out: out.join("\n"), err: err.join("\n") };
}

const writes = (fake: FakeSys) => fake.calls.filter((c) => c.op === "writeText").map((c) => c.path);

test("cli sriov: makes the VFs and reports each one's address, driver, group and nodes (--json)", async () => {
  const fake = withPf({ cdevs: true });
  const r = await run(["sriov", PF, "2", "--json"], fake);
  assert.equal(r.status, 0, r.err);
  assert.deepEqual(JSON.parse(r.out), {
    version: 1,
    bdf: PF,
    driver: "vfio-pci",
    totalVfs: 7,
    previous: 0,
    numVfs: 2,
    changed: true,
    vfs: [
      {
        index: 0,
        bdf: "0000:00:06.2",
        driver: "vfio-pci",
        iommuGroup: 7,
        groupNode: "/dev/vfio/7",
        cdev: "/dev/vfio/devices/vfio1",
      },
      {
        index: 1,
        bdf: "0000:00:06.3",
        driver: "vfio-pci",
        iommuGroup: 8,
        groupNode: "/dev/vfio/8",
        cdev: "/dev/vfio/devices/vfio2",
      },
    ],
  });
});

test("cli sriov: between two non-zero counts it writes 0 first, as the kernel requires", async () => {
  const fake = withPf();
  assert.equal((await run(["sriov", PF, "2"], fake)).status, 0);
  fake.calls = [];
  const r = await run(["sriov", PF, "3"], fake);
  assert.equal(r.status, 0, r.err);
  assert.deepEqual(writes(fake), [numvfs, numvfs]);
  assert.equal(fake.readText(numvfs), "3\n");
  assert.match(r.out, /^0000:00:06\.0: 3 of 7 VFs \(was 2\); PF driver vfio-pci$/m);
  assert.match(r.out, /^ {2}VF 2 {2}0000:00:06\.4 {2}vfio-pci {2}IOMMU group 9 \(\/dev\/vfio\/9\)$/m);
  assert.match(r.out, /setVfToken/);
  fake.calls = [];
  assert.equal((await run(["sriov", PF, "0"], fake)).status, 0);
  assert.deepEqual(writes(fake), [numvfs]);
  assert.equal(fake.readText(numvfs), "0\n");
});

test("cli sriov: the same count changes nothing and needs no root", async () => {
  const fake = withPf();
  fake.uid = 1000;
  const r = await run(["sriov", PF, "0"], fake);
  assert.equal(r.status, 0, r.err);
  assert.match(r.out, /0 of 7 VFs \(unchanged\)/);
  assert.deepEqual(writes(fake), []);
});

test("cli sriov: not root, no SR-IOV, or more VFs than offered is refused before any write", async () => {
  const cases: [string[], (f: FakeSys) => void, string, RegExp][] = [
    [["sriov", PF, "2"], (f) => (f.uid = 1000), "ERR_VFIO_NOT_ROOT", /only root can write sriov_numvfs/],
    [["sriov", EDU, "1"], () => {}, "ERR_VFIO_NO_SRIOV", /no SR-IOV capability \(no sriov_totalvfs\)/],
    [
      ["sriov", PF, "8"],
      () => {},
      "ERR_VFIO_TOO_MANY_VFS",
      /it offers 7 VFs \(sriov_totalvfs\); give at most 7/,
    ],
  ];
  for (const [argv, setup, code, message] of cases) {
    const fake = withPf();
    setup(fake);
    const r = await run([...argv, "--json"], fake);
    assert.equal(r.status, 1);
    const e = JSON.parse(r.out).error;
    assert.equal(e.code, code);
    assert.match(e.message, message);
    assert.deepEqual(writes(fake), []);
  }
});

test("cli sriov: a count that is not a number is bad usage (status 2)", async () => {
  for (const n of ["two", "1.5", "65536"]) {
    const r = await run(["sriov", PF, n], withPf());
    assert.equal(r.status, 2, n);
    assert.match(r.err, /is not a number: give a whole number of VFs/);
  }
  assert.match((await run(["sriov", PF, "-1"], withPf())).err, /unknown option -1/);
  assert.equal((await run(["sriov", PF], withPf())).status, 2);
});

test("cli sriov: vfio-pci without enable_sriov fails with the kernel's ENOENT and says how to turn it on", async () => {
  const fake = withPf();
  fake.vfioPciEnableSriov = false;
  const r = await run(["sriov", PF, "2", "--json"], fake);
  assert.equal(r.status, 1);
  const e = JSON.parse(r.out).error;
  assert.equal(e.code, "ENOENT");
  assert.match(e.hint, /echo Y > \/sys\/module\/vfio_pci\/parameters\/enable_sriov/);
});

test("cli sriov: a VF held open by a process is named, and nothing is removed", () => {
  const fake = withPf();
  sriov(fake, PF, 1);
  // A process (pid 42) holds the VF's group node.
  const sys = new Proxy(fake, {
    get(target, key) {
      if (key === "readDir") {
        return (p: string) =>
          p === "/proc" ? ["42", "self"] : p === "/proc/42/fd" ? ["5"] : target.readDir(p);
      }
      if (key === "readLink") {
        return (p: string) => p === "/proc/42/fd/5" ? "/dev/vfio/7" : target.readLink(p);
      }
      if (key === "readText") return (p: string) => p === "/proc/42/comm" ? "qemu\n" : target.readText(p);
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  }) as Sys;
  fake.calls = [];
  assert.throws(() => sriov(sys, PF, 0), /process 42 \(qemu\) holds \/dev\/vfio\/7 \(0000:00:06\.2\)/);
  assert.deepEqual(writes(fake), []);
  assert.equal(fake.readText(numvfs), "1\n");
});

test("cli sriov: the text form lists the VFs, and a PF on another driver gets no token note", () => {
  const lines = formatSriov({
    version: 1,
    bdf: PF,
    driver: "igb",
    totalVfs: 7,
    previous: 0,
    numVfs: 1,
    changed: true,
    vfs: [{ index: 0, bdf: "0000:00:06.2", driver: "igbvf", iommuGroup: 7, groupNode: null, cdev: null }],
  });
  assert.deepEqual(lines, [
    "0000:00:06.0: 1 of 7 VFs (was 0); PF driver igb",
    "  VF 0  0000:00:06.2  igbvf  IOMMU group 7",
  ]);
});
