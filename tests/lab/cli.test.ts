// The vfio CLI (cli/vfio.ts) as a user runs it: a subprocess on this runtime, mostly with --json,
// checked against sysfs and the kernel: list, info, bind/unbind round trip, doctor, bad input.
// On Deno it runs with --allow-ffi and nothing else: the one permission cli/README.md promises.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { basename } from "node:path";
import process from "node:process";
import { VfioGroup } from "../../lib/group.ts";
import { openPciDevice } from "../../lib/open.ts";
import { BLOCKER, EDU, EDU2, HAS_IOMMU, NVME, sys } from "./_fixture.ts";

const SLOW = { timeout: 120_000 };
const REPO = new URL("../../", import.meta.url).pathname;
const CLI = `${REPO}cli/vfio.ts`;
const IS_DENO = "Deno" in globalThis;
/** The runtime's arguments before the script: on Deno, --allow-ffi alone (not -A). */
const RUN = IS_DENO ? ["run", "--allow-ffi"] : [];
const PKG = JSON.parse(readFileSync(`${REPO}package.json`, "utf8"));
const PCI = "/sys/bus/pci/devices";
const listDir = (dir: string): string[] => {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
};
/** The device cdevs the kernel made (vfioN; noiommu-vfioN without an IOMMU, Linux 7.3+). */
const CDEVS = listDir("/dev/vfio/devices");
/** What chooseBackend must pick: iommufd where the kernel has /dev/iommu and device cdevs. */
const BACKEND = listDir("/dev").includes("iommu") && CDEVS.length > 0 ? "iommufd" : "legacy";

// deno-lint-ignore no-explicit-any
type Json = any; // parsed CLI output; its shape is what the tests check

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON. */
  json: () => Json;
  /** Everything, for assertion messages. */
  output: string;
}

function vfio(...args: string[]): Run {
  const r = spawnSync(process.execPath, [...RUN, CLI, ...args], { encoding: "utf8", timeout: 90_000 });
  const output = `vfio ${args.join(" ")}: status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, json: () => JSON.parse(r.stdout), output };
}

/** Checks a `--json` failure: the error object cli/README.md documents on stdout, nothing on stderr. */
function assertJsonError(r: Run, name: string | undefined, code: string): Json {
  assert.equal(r.stderr, "", r.output);
  const parsed = r.json();
  assert.equal(parsed.version, 1, r.output);
  assert.deepEqual(Object.keys(parsed.error).sort(), ["code", "errno", "hint", "message", "name", "path"]);
  if (name !== undefined) assert.equal(parsed.error.name, name, r.output);
  assert.equal(parsed.error.code, code, r.output);
  assert.equal(typeof parsed.error.message, "string");
  return parsed.error;
}

function link(path: string): string | null {
  try {
    return basename(readlinkSync(path));
  } catch {
    return null;
  }
}
const driverOf = (bdf: string) => link(`${PCI}/${bdf}/driver`);
const groupOf = (bdf: string) => {
  const g = link(`${PCI}/${bdf}/iommu_group`);
  return g === null ? null : Number(g);
};

test("cli list: the lab devices with their IDs, groups, drivers and VFIO status", SLOW, () => {
  const r = vfio("list", "--json");
  assert.equal(r.status, 0, r.output);
  const result = r.json();
  assert.equal(result.version, 1);
  const by = new Map(result.devices.map((d: { bdf: string }) => [d.bdf, d]));
  const get = (bdf: string): Json => {
    assert.ok(by.has(bdf), `${bdf} listed`);
    return by.get(bdf);
  };
  for (const bdf of [EDU, NVME, EDU2, BLOCKER]) {
    const d = get(bdf);
    assert.equal(d.iommuGroup, groupOf(bdf), `${bdf} group`);
    assert.equal(d.driver, driverOf(bdf), `${bdf} driver`);
    // A device has a cdev when the kernel made a node for the vfio-dev entry sysfs lists for it.
    const cdev = listDir(`${PCI}/${bdf}/vfio-dev`).some((n) => CDEVS.includes(n));
    assert.equal(d.vfio.cdev !== null, cdev, `${bdf} cdev ${d.vfio.cdev}`);
    if (cdev) assert.ok(existsSync(d.vfio.cdev), d.vfio.cdev);
  }
  assert.deepEqual([get(EDU).vendor, get(EDU).device, get(EDU).class], ["1234", "11e8", "00ff00"]);
  assert.deepEqual([get(NVME).vendor, get(NVME).device, get(NVME).className], [
    "1b36",
    "0010",
    "Mass storage",
  ]);
  for (const bdf of [EDU, NVME, EDU2]) {
    const d = get(bdf);
    assert.equal(d.driver, "vfio-pci");
    assert.equal(d.vfio.bound, true);
    assert.equal(
      d.vfio.groupNode,
      HAS_IOMMU ? `/dev/vfio/${d.iommuGroup}` : `/dev/vfio/noiommu-${d.iommuGroup}`,
    );
  }
  assert.equal(get(EDU).vfio.groupViable, true);
  assert.equal(get(BLOCKER).driver, "virtio-pci");
  assert.equal(get(BLOCKER).vfio.bound, false);
  if (HAS_IOMMU) {
    assert.equal(get(BLOCKER).iommuGroup, get(EDU2).iommuGroup, "00:06.0 and 00:06.1 share a group");
    assert.equal(get(EDU2).vfio.groupViable, false);
    assert.equal(get(EDU).iommuGroup, 4);
  } else {
    assert.equal(get(BLOCKER).iommuGroup, null, "no-IOMMU mode groups only vfio-pci devices");
    assert.equal(get(EDU2).vfio.groupViable, true);
  }
  const text = vfio("list");
  assert.equal(text.status, 0, text.output);
  assert.match(text.stdout, /^ADDRESS\s+ID\s+CLASS\s+GROUP\s+DRIVER\s+VFIO$/m);
  assert.match(
    text.stdout,
    /^0000:00:04\.0\s+1234:11e8\s+00ff00 Unclassified\s+\d+\s+vfio-pci\s+bound, \/dev\/vfio\//m,
  );
});

test("cli info: edu has six BAR regions, BAR0 of 1 MiB, one MSI vector, and the chosen backend", SLOW, () => {
  const r = vfio("info", EDU, "--json");
  assert.equal(r.status, 0, r.output);
  const info = r.json();
  assert.equal(info.version, 1);
  assert.equal(info.sysfs.bdf, EDU);
  const bars = info.regions.filter((g: { name: string }) => /^BAR\d$/.test(g.name));
  assert.equal(bars.length, 6);
  assert.equal(bars[0].size, 1 << 20);
  assert.deepEqual(
    bars[0].flagNames,
    ["READ", "WRITE", "MMAP"].concat(bars[0].flagNames.includes("CAPS") ? ["CAPS"] : []),
  );
  assert.deepEqual(bars.slice(1).map((g: { size: number }) => g.size), [0, 0, 0, 0, 0]);
  const config = info.regions.find((g: { name: string }) => g.name === "CONFIG");
  assert.equal(config.index, 7);
  assert.equal(config.size, info.config.size);
  const irq = (name: string) => info.irqs.find((q: { name: string }) => q.name === name);
  assert.equal(irq("MSI").count, 1);
  assert.ok(irq("MSI").flagNames.includes("EVENTFD"));
  assert.equal(irq("INTX").count, 1);
  assert.equal(irq("MSIX").count, 0);
  assert.equal(info.config.vendor, 0x1234);
  assert.equal(info.config.device, 0x11e8);
  assert.ok(info.device.flagNames.includes("PCI"));
  assert.ok(info.capabilities.some((c: { name: string }) => c.name === "MSI"));
  assert.equal(info.msi.vectors, 1);
  assert.equal(info.msix, null);
  assert.equal(info.bars.length, 1);
  assert.deepEqual([info.bars[0].index, info.bars[0].space, info.bars[0].size], [0, "memory", 1 << 20]);
  assert.equal(info.backend.chosen, BACKEND);
  const kind = BACKEND === "iommufd" ? "iommufd" : HAS_IOMMU ? "type1v2" : "noiommu";
  assert.equal(info.backend.kind, kind === "iommufd" && !HAS_IOMMU ? "iommufd-noiommu" : kind);
  assert.equal(info.backend.translates, HAS_IOMMU);
  if (HAS_IOMMU) {
    assert.ok(info.backend.iovaRanges.length > 0);
    for (const x of info.backend.iovaRanges) assert.ok(BigInt(x.start) <= BigInt(x.last));
  } else {
    assert.deepEqual(info.backend.iovaRanges, []);
  }
  const text = vfio("info", "00:04.0");
  assert.equal(text.status, 0, text.output);
  assert.match(text.stdout, /^0000:00:04\.0 1234:11e8 Unclassified \[00ff00\]/);
  assert.match(text.stdout, /BAR0\s+size 1 MiB, offset 0x0 <READ,WRITE,MMAP/);
  assert.match(text.stdout, /MSI\s+count 1 <EVENTFD/);
  assert.match(text.stdout, /\] MSI: Enable[+-] Count=1\/1/);
  assert.match(text.stdout, new RegExp(`IOMMU backend: ${BACKEND} `));
});

test("cli info: NVMe shows MSI-X with its table, and --backend legacy is honoured", SLOW, () => {
  const r = vfio("info", NVME, "--json", "--backend", "legacy");
  assert.equal(r.status, 0, r.output);
  const info = r.json();
  assert.equal(info.backend.chosen, "legacy");
  assert.ok(info.msix.tableSize >= 2, `${info.msix.tableSize} MSI-X vectors`);
  const msix = info.irqs.find((q: { name: string }) => q.name === "MSIX");
  assert.equal(msix.count, info.msix.tableSize);
  const bar = info.regions.find((g: { index: number }) => g.index === info.msix.tableBir);
  assert.ok(bar.size > info.msix.tableOffset);
  assert.ok(info.capabilities.some((c: { name: string }) => c.name === "EXP"), "NVMe is PCI Express");
});

test("cli bind/unbind: 00:06.1 goes to vfio-pci and back to virtio-pci", SLOW, () => {
  assert.equal(driverOf(BLOCKER), "virtio-pci");
  const saved = `/run/vfio-ts/${BLOCKER}.driver`;
  try {
    const b = vfio("bind", BLOCKER, "--json");
    assert.equal(b.status, 0, b.output);
    const bound = b.json();
    assert.deepEqual(
      [bound.bdf, bound.driver, bound.previous, bound.changed, bound.savedIn],
      [BLOCKER, "vfio-pci", "virtio-pci", true, saved],
    );
    assert.equal(driverOf(BLOCKER), "vfio-pci");
    assert.equal(readFileSync(`${PCI}/${BLOCKER}/driver_override`, "utf8").trim(), "vfio-pci");
    assert.equal(readFileSync(saved, "utf8").trim(), "virtio-pci");
    assert.equal(bound.iommuGroup, groupOf(BLOCKER));
    assert.ok(bound.groupNode?.startsWith("/dev/vfio/"), bound.groupNode);

    const again = vfio("bind", BLOCKER, "--json");
    assert.equal(again.status, 0, again.output);
    assert.deepEqual([again.json().changed, again.json().previous], [false, "virtio-pci"]);

    const listed = vfio("list", "--json").json().devices.find((d: { bdf: string }) => d.bdf === EDU2);
    assert.equal(listed.vfio.groupViable, true, "00:06.0's group is viable with 00:06.1 on vfio-pci");
    if (HAS_IOMMU) {
      using group = VfioGroup.forDevice(sys, EDU2);
      assert.equal(group.status().viable, true, "the kernel agrees");
    }
    const doc = vfio("doctor", EDU2, "--json");
    assert.equal(doc.status, 0, doc.output);
    assert.equal(doc.json().ok, true);

    // A device in use is not unbound: the kernel would block until its user let go.
    {
      using held = openPciDevice(sys, BLOCKER);
      const busy = vfio("unbind", BLOCKER);
      assert.equal(busy.status, 1, busy.output);
      assert.match(
        busy.stderr,
        new RegExp(`^vfio unbind: Cannot unbind ${BLOCKER} from vfio-pci: process ${process.pid} `),
      );
      const busyJson = vfio("unbind", BLOCKER, "--json");
      assert.equal(busyJson.status, 1, busyJson.output);
      const e = assertJsonError(busyJson, "CliError", "ERR_VFIO_DEVICE_BUSY");
      assert.match(e.message, new RegExp(`process ${process.pid} \\(`));
      assert.equal(e.errno, null);
      assert.ok(e.path?.startsWith("/dev/vfio/"), e.path);
      assert.equal(driverOf(BLOCKER), "vfio-pci");
      if (BACKEND === "legacy") {
        // A group node opens once: doctor's open sees EBUSY and names the holder (lib/proc.ts).
        const doc = vfio("doctor", BLOCKER, "--json");
        const perm = doc.json().checks.find((c: { id: string }) => c.id === "permissions");
        assert.equal(perm?.status, "warn", doc.output);
        assert.match(perm.message, new RegExp(`in use by process ${process.pid} \\(.*\\(EBUSY\\)`));
      }
      held.close();
    }

    const u = vfio("unbind", BLOCKER, "--json");
    assert.equal(u.status, 0, u.output);
    assert.deepEqual([u.json().driver, u.json().previous, u.json().changed], [
      "virtio-pci",
      "vfio-pci",
      true,
    ]);
    assert.equal(driverOf(BLOCKER), "virtio-pci");
    assert.equal(existsSync(saved), false, "the record is gone");
    assert.equal(readFileSync(`${PCI}/${BLOCKER}/driver_override`, "utf8").trim(), "(null)");
    const none = vfio("unbind", BLOCKER);
    assert.equal(none.status, 1, none.output);
    assert.match(
      none.stderr,
      /Cannot unbind 0000:00:06\.1 from vfio-pci: it is bound to virtio-pci, not vfio-pci/,
    );
  } finally {
    // Whatever failed above, leave the lab's topology as the other tests expect it.
    if (driverOf(BLOCKER) !== "virtio-pci") {
      writeFileSync(`${PCI}/${BLOCKER}/driver_override`, "\n");
      if (driverOf(BLOCKER) !== null) writeFileSync(`${PCI}/${BLOCKER}/driver/unbind`, BLOCKER);
      writeFileSync("/sys/bus/pci/drivers_probe", BLOCKER);
    }
    rmSync(saved, { force: true });
  }
  if (HAS_IOMMU) {
    const listed = vfio("list", "--json").json().devices.find((d: { bdf: string }) => d.bdf === EDU2);
    assert.equal(listed.vfio.groupViable, false, "not viable again");
  }
});

/**
 * Copies what the CLI needs (its sources, package.json and this runtime's binary, which lives in
 * the repo's node_modules) into a fresh world-readable directory, so that another user can run it
 * wherever the repo is: a clone inside a 0700 home is unreadable to them, binary included.
 */
function worldReadableCopy(): { dir: string; home: string; runtime: string; cli: string } {
  const dir = mkdtempSync("/tmp/vfio-cli-nobody-");
  for (const d of ["cli", "lib", "ffi"]) cpSync(`${REPO}${d}`, `${dir}/${d}`, { recursive: true });
  copyFileSync(`${REPO}package.json`, `${dir}/package.json`);
  const runtime = `${dir}/${basename(process.execPath)}`;
  copyFileSync(process.execPath, runtime);
  const home = `${dir}/home`;
  mkdirSync(home);
  const chmod = spawnSync("chmod", ["-R", "a+rX", dir], { encoding: "utf8" });
  assert.equal(chmod.status, 0, chmod.stderr);
  chmodSync(runtime, 0o755);
  chmodSync(home, 0o777); // the runtime's caches
  return { dir, home, runtime, cli: `${dir}/cli/vfio.ts` };
}

test(
  "cli bind: refused with a clear error when not root, before anything changes",
  { ...SLOW, skip: existsSync("/usr/bin/setpriv") ? false : "needs setpriv (util-linux)" },
  () => {
    const copy = worldReadableCopy();
    try {
      const nobody = (...args: string[]) => {
        const argv = ["--reuid=65534", "--regid=65534", "--clear-groups", copy.runtime, ...RUN, copy.cli];
        const r = spawnSync("setpriv", [...argv, ...args], {
          cwd: copy.dir,
          encoding: "utf8",
          env: { ...process.env, HOME: copy.home, DENO_DIR: `${copy.home}/deno`, XDG_CACHE_HOME: copy.home },
          timeout: 100_000,
        });
        return { ...r, output: `status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}` };
      };
      const r = nobody("bind", BLOCKER);
      assert.equal(r.status, 1, r.output);
      assert.match(
        r.stderr,
        /^vfio bind: Cannot bind 0000:00:06\.1 to vfio-pci: sysfs driver bindings can only be changed by root; run it with sudo\n$/,
      );
      const j = nobody("bind", BLOCKER, "--json");
      assert.equal(j.status, 1, j.output);
      assert.equal(j.stderr, "", j.output);
      assert.deepEqual(JSON.parse(j.stdout).error, {
        name: "CliError",
        code: "ERR_VFIO_NOT_ROOT",
        errno: null,
        message:
          "Cannot bind 0000:00:06.1 to vfio-pci: sysfs driver bindings can only be changed by root; run it with sudo",
        hint: "run it with sudo",
        path: null,
      });
      assert.equal(driverOf(BLOCKER), "virtio-pci");
      assert.equal(existsSync(`/run/vfio-ts/${BLOCKER}.driver`), false);
    } finally {
      rmSync(copy.dir, { recursive: true, force: true });
    }
  },
);

test("cli doctor: the 00:06.x group is not viable, with the fix; the backend is reported", SLOW, () => {
  const r = vfio("doctor", "--json");
  const result = r.json();
  assert.equal(result.version, 1);
  assert.equal(result.backend, BACKEND);
  const check = (id: string, bdf: string | null = null) =>
    result.checks.find((c: { id: string; bdf: string | null }) => c.id === id && c.bdf === bdf);
  assert.equal(check("vfio").status, "ok");
  assert.match(check("backend").message, new RegExp(`the ${BACKEND} backend`));
  assert.equal(check("memlock").status, "ok", "root has CAP_IPC_LOCK");
  for (const bdf of [EDU, NVME, EDU2]) assert.equal(check("driver", bdf).status, "ok", bdf);
  assert.equal(check("group-viable", EDU).status, "ok");
  // Root opens the nodes: no "no read/write access" (Deno's permissions are not the file's).
  assert.equal(check("permissions", EDU).status, "ok", check("permissions", EDU).message);
  assert.match(check("permissions", EDU).message, /opens for reading and writing/);
  if (HAS_IOMMU) {
    assert.equal(r.status, 1, r.output);
    assert.equal(result.ok, false);
    assert.equal(check("iommu").status, "ok");
    assert.equal(check("interrupt-remapping").status, "ok", "intremap=on: IR- chips in /proc/interrupts");
    const viable = check("group-viable", EDU2);
    assert.equal(viable.status, "fail");
    assert.match(viable.message, /0000:00:06\.1 is bound to virtio-pci/);
    assert.equal(viable.fix, `vfio bind ${BLOCKER}`);
    const failed = result.checks.filter((c: { status: string }) => c.status === "fail");
    assert.deepEqual(failed.map((c: { id: string }) => c.id), ["group-viable"], "nothing else fails");
    const text = vfio("doctor");
    assert.equal(text.status, 1, text.output);
    assert.match(
      text.stdout,
      /^FAIL {2}IOMMU group \d+ of 0000:00:06\.0 is not viable: 0000:00:06\.1 is bound to virtio-pci$/m,
    );
    assert.match(text.stdout, /^ {6}fix: vfio bind 0000:00:06\.1$/m);
  } else {
    assert.equal(r.status, 0, r.output);
    assert.equal(check("iommu").status, "warn");
    assert.match(check("iommu").message, /no-IOMMU mode/);
    assert.match(check("kernel").message, /no-IOMMU mode: enabled/);
  }
  const one = vfio("doctor", EDU, "--json");
  assert.equal(one.status, 0, one.output);
  assert.equal(one.json().ok, true);
  assert.equal(
    one.json().checks.some((c: { bdf: string | null }) => c.bdf === EDU2),
    false,
    "only the device asked",
  );
});

test("cli: a PCI address that does not parse is rejected with status 2 before any sysfs access", SLOW, () => {
  for (
    const args of [["info", "../../x"], ["bind", "../../x"], ["unbind", "0000:00:04.0/../../x"], [
      "doctor",
      "x",
    ]]
  ) {
    const r = vfio(...args);
    assert.equal(r.status, 2, r.output);
    assert.equal(r.stdout, "");
    assert.match(
      r.stderr,
      /^vfio \w+: Cannot parse PCI address ".*": expected DDDD:BB:DD\.F\b.*, e\.g\. 0000:00:04\.0\n$/,
    );
  }
  const j = vfio("bind", "../../x", "--json");
  assert.equal(j.status, 2, j.output);
  assertJsonError(j, undefined, "ERR_VFIO_INVALID_PCI_ADDRESS");
});

const STRACE = existsSync("/usr/bin/strace") ? false : "needs strace, which is not installed";

test(
  "cli: strace shows no sysfs access for a PCI address that does not parse",
  { ...SLOW, skip: STRACE },
  () => {
    // strace shows which files the process touched: no PCI sysfs path, and nothing built from "x".
    const dir = mkdtempSync("/tmp/vfio-cli-");
    try {
      const trace = `${dir}/trace`;
      const argv = ["-f", "-qq", "-e", "trace=%file", "-o", trace, process.execPath];
      const r = spawnSync("strace", [...argv, ...RUN, CLI, "bind", "../../x"], {
        encoding: "utf8",
        timeout: 90_000,
      });
      assert.equal(r.status, 2, `${r.stdout}\n${r.stderr}`);
      const touched = readFileSync(trace, "utf8").split("\n").filter((l) => !/\bexecve\(/.test(l));
      assert.ok(touched.length > 0, "strace recorded the run");
      assert.deepEqual(touched.filter((l) => l.includes("/sys/bus/pci") || l.includes("../../x")), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test("cli: usage errors exit with status 2, failures with 1 and one line", SLOW, () => {
  for (
    const args of [[], ["frobnicate"], ["info"], ["bind", EDU, EDU], ["list", "--nope"], [
      "info",
      EDU,
      "--backend",
      "x",
    ]]
  ) {
    const r = vfio(...args);
    assert.equal(r.status, 2, r.output);
    assert.equal(r.stdout, "", r.output);
    assert.match(r.stderr, /^vfio[^\n]*\n$/, "one line");
  }
  // With --json, usage errors are JSON on stdout too, with the same status.
  for (
    const args of [["list", "--nope"], ["list", "--backend", "legacy"], ["info", EDU, "--backend", "x"], [
      "x",
    ]]
  ) {
    const r = vfio(...args, "--json");
    assert.equal(r.status, 2, r.output);
    assertJsonError(r, "CliError", "ERR_VFIO_USAGE");
  }
  const missing = vfio("info", "0000:00:1f.7");
  assert.equal(missing.status, 1, missing.output);
  assert.match(missing.stderr, /^vfio info: Cannot find PCI device 0000:00:1f\.7\b[^\n]*\n$/);
  const missingJson = vfio("info", "0000:00:1f.7", "--json");
  assert.equal(missingJson.status, 1, missingJson.output);
  const e = assertJsonError(missingJson, "DeviceNotFoundError", "ERR_VFIO_DEVICE_NOT_FOUND");
  assert.match(e.path, /^\/sys\/bus\/pci\/devices\/0000:00:1f\.7\b/);
  const help = vfio("--help");
  assert.equal(help.status, 0, help.output);
  assert.match(help.stdout, /^usage: vfio <command>/);
  const version = vfio("--version");
  assert.equal(version.status, 0, version.output);
  assert.equal(version.stdout, `${PKG.name} ${PKG.version}\n`);
  if (HAS_IOMMU) {
    // The kernel's refusal, in the library's words: the group of 00:06.0 is not viable.
    const r = vfio("info", EDU2, "--backend", "legacy");
    assert.equal(r.status, 1, r.output);
    assert.match(
      r.stderr,
      /^vfio info: Cannot .*0000:00:06\.1 is bound to virtio-pci.*vfio bind 0000:00:06\.1.*\n$/,
    );
  }
});
