/**
 * The vfio CLI (cli/) over the fake: the command line (strict options, exit status 2, --version,
 * JSON errors with nulls), bind/unbind through the Sys seam (getuid, mkdir, unlink), the holders
 * lib/proc.ts finds, and doctor's permission check, which never blames the file mode for a refusal
 * that is not the file mode's.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { bind, statePath, unbind } from "../../cli/bind.ts";
import { doctor } from "../../cli/doctor.ts";
import { CliError, denoPermissionFlag, errorJson, explainPermission } from "../../cli/errors.ts";
import { main } from "../../cli/vfio.ts";
import { VfioError } from "../../lib/errors.ts";
import { fileHolders } from "../../lib/proc.ts";
import type { Sys } from "../../lib/sys.ts";
import { EDU, FakeSys, withEdu } from "./fake_sys.ts";

const OTHER = "0000:00:06.1";
const VFIO_PCI = "/sys/bus/pci/drivers/vfio-pci";

/** Processes for the fake /proc: pid → comm and the paths its fds link to. */
type Procs = Record<number, { comm: string; fds: string[] } | "unreadable" | "throws">;

/**
 * The fake, plus what it does not model: vfio-pci's driver directory, the sysfs files that move a
 * device between drivers (driver_override, unbind, drivers_probe, bind), and /proc.
 */
function withDrivers(fake: FakeSys, procs: Procs = {}): Sys {
  const previous = new Map<string, string | undefined>();
  const dev = (path: string) => /^\/sys\/bus\/pci\/devices\/([^/]+)\//.exec(path)?.[1];
  const proc = /^\/proc\/(\d+)\/(fd|comm)(?:\/(\d+))?$/;
  const over: Partial<Sys> = {
    readDir(path) {
      if (path === VFIO_PCI) return ["bind", "new_id", "unbind"];
      if (path === "/proc") return [...Object.keys(procs), "self"].sort();
      const m = proc.exec(path);
      if (m) {
        const p = procs[Number(m[1])];
        return p === undefined
          ? -2
          : p === "unreadable"
          ? -13
          : p === "throws"
          ? ["0"]
          : p.fds.map((_, i) => String(i));
      }
      return fake.readDir(path);
    },
    readLink(path) {
      const m = proc.exec(path);
      if (m) {
        const p = procs[Number(m[1])];
        if (p === "throws") throw new Error("a backend that throws");
        if (p === "unreadable") return -13;
        return p?.fds[Number(m[3])] ?? -2;
      }
      return fake.readLink(path);
    },
    readText(path) {
      const m = proc.exec(path);
      if (m) {
        const p = procs[Number(m[1])];
        return typeof p === "object" ? `${p.comm}\n` : -2;
      }
      return fake.readText(path);
    },
    writeText(path, text) {
      const r = fake.writeText(path, text);
      const bdf = dev(path);
      if (bdf !== undefined && path.endsWith("/driver/unbind")) {
        previous.set(bdf, fake.device(bdf).driver);
        fake.device(bdf).driver = undefined;
      }
      if (path === "/sys/bus/pci/drivers_probe") {
        const override = fake.files.get(`/sys/bus/pci/devices/${text}/driver_override`)?.trim();
        const d = fake.device(text);
        d.driver = override === "vfio-pci" ? "vfio-pci" : previous.get(text) ?? d.driver;
      }
      const bound = /^\/sys\/bus\/pci\/drivers\/([^/]+)\/bind$/.exec(path)?.[1];
      if (bound) fake.device(text).driver = bound;
      return r;
    },
  };
  return new Proxy(fake, {
    get(target, key) {
      if (key in over) return over[key as keyof Sys];
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  }) as unknown as Sys;
}

/** Runs the CLI's main() on a fake and collects its output. */
async function run(argv: string[], sys?: Sys | (() => never)) {
  const out: string[] = [];
  const err: string[] = [];
  const status = await main(
    argv,
    (l) => out.push(l),
    (l) => err.push(l),
    () => Promise.resolve(typeof sys === "function" ? sys() : sys ?? withDrivers(withEdu())),
  );
  return { status, out: out.join("\n"), err: err.join("\n") };
}

test("cli: usage errors exit with 2, as one line, or as JSON with --json", async () => {
  for (
    const argv of [
      [],
      ["frob"],
      ["list", "--nope"],
      ["list", "-x"],
      ["info"],
      ["bind", EDU, EDU],
      ["info", EDU, "--backend", "foo"],
      ["info", EDU, "--backend"],
      ["list", "--backend", "legacy"],
      ["bind", EDU, "--driver", "e1000e"],
    ]
  ) {
    const text = await run(argv);
    assert.equal(text.status, 2, argv.join(" "));
    assert.equal(text.out, "");
    assert.match(text.err, /^vfio[ :][^\n]*$/, "one line");
    const json = await run([...argv, "--json"]);
    assert.equal(json.status, 2, argv.join(" "));
    assert.equal(json.err, "");
    const e = JSON.parse(json.out);
    assert.equal(e.version, 1);
    assert.deepEqual(Object.keys(e.error), ["name", "code", "errno", "message", "hint", "path"]);
    assert.deepEqual([e.error.name, e.error.code, e.error.errno, e.error.path], [
      "CliError",
      "ERR_VFIO_USAGE",
      null,
      null,
    ]);
  }
  assert.match((await run(["list", "--nope"])).err, /^vfio: unknown option --nope: run `vfio --help`/);
  assert.match((await run(["frob"])).err, /^vfio: unknown command "frob": the commands are list, info/);
  assert.equal((await run(["list", "--json=1"])).status, 2);
  assert.equal(JSON.parse((await run(["list", "--json=1"])).out).error.code, "ERR_VFIO_USAGE");
});

test("cli: an address that is not a PCI address is status 2, before the backend loads", async () => {
  const fail = () => {
    throw new Error("the backend must not load");
  };
  const r = await run(["bind", "../../x", "--json"], fail);
  assert.equal(r.status, 2);
  assert.equal(JSON.parse(r.out).error.code, "ERR_VFIO_INVALID_PCI_ADDRESS");
  assert.match((await run(["info", "x"], fail)).err, /^vfio info: Cannot parse PCI address "x"/);
});

test("cli: --version and -V print package.json's name and version", async () => {
  const { default: pkg } = await import("../../package.json", { with: { type: "json" } });
  for (const flag of ["--version", "-V"]) {
    const r = await run([flag]);
    assert.deepEqual([r.status, r.out], [0, `${pkg.name} ${pkg.version}`]);
  }
  const j = await run(["--version", "--json"]);
  assert.deepEqual(JSON.parse(j.out), { version: 1, name: pkg.name, packageVersion: pkg.version });
});

test("cli: a Deno permission refusal says which flag, never a file permission problem", async () => {
  const notCapable = Object.assign(
    new Error('Requires ffi access to "libc.so.6", run again with the --allow-ffi flag'),
    { name: "NotCapable" },
  );
  assert.equal(denoPermissionFlag(notCapable), "--allow-ffi");
  const eacces = Object.assign(new Error("Permission denied (os error 13)"), { name: "PermissionDenied" });
  assert.equal(denoPermissionFlag(eacces), undefined, "the OS's EACCES is not Deno's refusal");
  assert.equal(explainPermission(eacces), eacces);
  const explained = explainPermission(notCapable);
  assert.ok(explained instanceof CliError);
  assert.equal(explained.code, "ERR_VFIO_DENO_PERMISSION");
  assert.match(explained.hint ?? "", /deno run --allow-ffi/);
  const r = await run(["doctor", "--json"], () => {
    throw notCapable;
  });
  assert.equal(r.status, 1);
  assert.equal(JSON.parse(r.out).error.code, "ERR_VFIO_DENO_PERMISSION");
  assert.doesNotMatch(r.out, /chmod|chown/);
});

test("cli: JSON errors carry the VfioError fields, null where the library has undefined", () => {
  const withErrno = errorJson(
    new VfioError({ op: "open", errno: 16, path: "/dev/vfio/4", hint: "close it" }),
  );
  assert.deepEqual(withErrno.error, {
    name: "VfioError",
    code: "EBUSY",
    errno: 16,
    message: "Cannot run open on /dev/vfio/4 (open: EBUSY): close it",
    hint: "close it",
    path: "/dev/vfio/4",
  });
  const bare = errorJson(new VfioError({ op: "parse", code: "ERR_VFIO_X" }));
  assert.deepEqual([bare.error.errno, bare.error.hint, bare.error.path], [null, null, null]);
  const plain = errorJson(new AggregateError([new Error("a"), new Error("b")], "Cannot close it"));
  assert.deepEqual(plain.error, {
    name: "AggregateError",
    code: null,
    errno: null,
    message: "Cannot close it; a; b",
    hint: null,
    path: null,
  });
  assert.ok(!JSON.stringify(plain).includes("undefined"));
});

test("cli bind: refused when not root (getuid through Sys), before anything changes", async () => {
  const fake = withEdu();
  fake.addDevice({ bdf: OTHER, group: 6, driver: "virtio-pci" });
  fake.uid = 1000;
  const sys = withDrivers(fake);
  assert.throws(() => bind(sys, OTHER), (e) => e instanceof CliError && e.code === "ERR_VFIO_NOT_ROOT");
  const r = await run(["bind", OTHER, "--json"], sys);
  assert.equal(r.status, 1);
  assert.deepEqual(JSON.parse(r.out).error, {
    name: "CliError",
    code: "ERR_VFIO_NOT_ROOT",
    errno: null,
    message:
      `Cannot bind ${OTHER} to vfio-pci: sysfs driver bindings can only be changed by root; run it with sudo`,
    hint: "run it with sudo",
    path: null,
  });
  assert.equal(fake.device(OTHER).driver, "virtio-pci");
  assert.equal(fake.calls.some((c) => c.op === "mkdir" || c.op === "writeText"), false);
});

test("cli bind/unbind: the record is made with mkdir and removed with unlink, through Sys", () => {
  const fake = withEdu();
  fake.addDevice({ bdf: OTHER, group: 6, driver: "virtio-pci" });
  const sys = withDrivers(fake);
  const b = bind(sys, OTHER);
  assert.deepEqual([b.driver, b.previous, b.changed, b.savedIn], [
    "vfio-pci",
    "virtio-pci",
    true,
    statePath(OTHER),
  ]);
  assert.ok(fake.dirs.has("/run/vfio-ts"));
  assert.equal(fake.files.get(statePath(OTHER)), "virtio-pci\n");
  assert.equal(bind(sys, OTHER).changed, false, "binding again changes nothing");
  fake.dirs.clear();
  const u = unbind(sys, OTHER);
  assert.deepEqual([u.driver, u.previous, u.changed], ["virtio-pci", "vfio-pci", true]);
  assert.equal(fake.files.has(statePath(OTHER)), false, "the record is gone");
  // A second bind finds /run/vfio-ts already there: EEXIST is fine.
  fake.dirs.add("/run/vfio-ts");
  assert.equal(bind(sys, OTHER).changed, true);
});

test("cli bind: a probe that leaves the device elsewhere rolls back and removes the record", () => {
  const fake = withEdu();
  fake.addDevice({ bdf: OTHER, group: 6, driver: "virtio-pci" });
  const sys = withDrivers(fake);
  const stubborn = new Proxy(sys, {
    get: (t, k) =>
      k === "writeText"
        ? (path: string, text: string) => (path.endsWith("/driver_override") ? 0 : t.writeText(path, text))
        : Reflect.get(t, k),
  });
  assert.throws(
    () => bind(stubborn, OTHER),
    (e) => e instanceof CliError && e.code === "ERR_VFIO_BIND_FAILED" && /see dmesg/.test(e.message),
  );
  assert.equal(fake.files.has(statePath(OTHER)), false);
  assert.ok(fake.calls.some((c) => c.op === "unlink" && c.path === statePath(OTHER)));
});

/** A passwd file for `bind --user`: names resolve through Sys, as every file the CLI reads. */
const PASSWD =
  "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" +
  "alice:x:1000:1001::/home/alice:/bin/sh\n";

/** withDrivers, plus /etc/passwd and a chown that records each call with the device's driver then. */
function withOwners(fake: FakeSys, chowns: [string, number, number, string | undefined][]): Sys {
  fake.files.set("/etc/passwd", PASSWD);
  const sys = withDrivers(fake);
  const chown = (path: string, uid: number, gid: number) => {
    chowns.push([path, uid, gid, fake.device(path === "/dev/vfio/6" ? OTHER : EDU).driver]);
    return 0;
  };
  return new Proxy(sys, { get: (t, k) => (k === "chown" ? chown : Reflect.get(t, k)) });
}

test("cli bind --user: the group node, and the cdev when there is one, are chowned to the user after binding", async () => {
  const fake = withEdu();
  fake.addDevice({ bdf: OTHER, group: 6, driver: "virtio-pci" });
  const chowns: [string, number, number, string | undefined][] = [];
  const sys = withOwners(fake, chowns);
  const b = bind(sys, OTHER, { user: "alice" });
  assert.equal(b.changed, true);
  assert.deepEqual(b.user, { name: "alice", uid: 1000, gid: 1001, nodes: ["/dev/vfio/6"] });
  assert.deepEqual(
    chowns,
    [["/dev/vfio/6", 1000, 1001, "vfio-pci"]],
    "after the probe, to the primary group",
  );
  assert.equal(bind(sys, OTHER).user, null, "without --user nothing is chowned");
  assert.equal(chowns.length, 1);

  // Already bound, on a kernel with device cdevs: both nodes, and nothing else changes.
  fake.iommufd = true;
  fake.device(EDU).cdev = "vfio0";
  chowns.length = 0;
  const again = bind(sys, EDU, { user: "nobody" });
  assert.deepEqual([again.changed, again.user?.nodes], [false, ["/dev/vfio/4", "/dev/vfio/devices/vfio0"]]);
  assert.deepEqual(chowns.map(([p, u, g]) => [p, u, g]), [
    ["/dev/vfio/4", 65534, 65534],
    ["/dev/vfio/devices/vfio0", 65534, 65534],
  ]);

  // A number without a passwd entry is a user ID with the same group ID; --json carries the user.
  const r = await run(["bind", EDU, "--user", "65533", "--json"], sys);
  assert.equal(r.status, 0, r.out);
  assert.deepEqual(JSON.parse(r.out).user, {
    name: "65533",
    uid: 65533,
    gid: 65533,
    nodes: ["/dev/vfio/4", "/dev/vfio/devices/vfio0"],
  });
  assert.equal(JSON.parse((await run(["bind", EDU, "--json"], sys)).out).user, null);
  const text = await run(["bind", EDU, "--user", "nobody"], sys);
  assert.equal(text.status, 0, text.err);
  assert.match(
    text.out,
    /^\/dev\/vfio\/4 and \/dev\/vfio\/devices\/vfio0 now belong to nobody \(uid 65534, gid 65534\), until/m,
  );
  assert.match(text.out, /^iommufd also needs \/dev\/iommu, which stays root's .*VFIO_TS_BACKEND=legacy\)$/m);
});

test("cli bind --user: an unknown user, a bad name, or not being root is refused before anything changes", async () => {
  const fake = withEdu();
  fake.addDevice({ bdf: OTHER, group: 6, driver: "virtio-pci" });
  const chowns: [string, number, number, string | undefined][] = [];
  const sys = withOwners(fake, chowns);
  assert.throws(
    () => bind(sys, OTHER, { user: "mallory" }),
    (e) =>
      e instanceof CliError && e.code === "ERR_VFIO_UNKNOWN_USER" && e.exitCode === 2 &&
      e.path === "/etc/passwd" &&
      /^Cannot hand the device to user mallory: \/etc\/passwd has no such/.test(e.message),
  );
  const unknown = await run(["bind", OTHER, "--user", "mallory", "--json"], sys);
  assert.equal(unknown.status, 2);
  assert.equal(JSON.parse(unknown.out).error.code, "ERR_VFIO_UNKNOWN_USER");
  const bad = await run(["bind", OTHER, "--user", "../x"], () => {
    throw new Error("the backend must not load");
  });
  assert.equal(bad.status, 2);
  assert.match(
    bad.err,
    /^vfio bind: --user "\.\.\/x" is not a user name: give a login name or a numeric user ID$/,
  );
  const misplaced = await run(["unbind", EDU, "--user", "nobody"], sys);
  assert.equal(misplaced.status, 2);
  assert.match(misplaced.err, /option --user does not apply to unbind: --user is for bind$/);
  fake.uid = 1000;
  assert.throws(
    () => bind(sys, EDU, { user: "nobody" }),
    (e) =>
      e instanceof CliError && e.code === "ERR_VFIO_NOT_ROOT" &&
      e.message ===
        "Cannot give 0000:00:04.0 to user nobody: only root can change who owns its nodes; run it with sudo",
  );
  assert.equal(fake.device(OTHER).driver, "virtio-pci");
  assert.deepEqual(chowns, []);
  assert.equal(fake.calls.some((c) => c.op === "mkdir" || c.op === "writeText"), false);
});

test("cli unbind: a process holding the group is named (lib/proc.ts), and nothing changes", async () => {
  const fake = withEdu();
  const sys = withDrivers(fake, {
    7: "unreadable",
    42: { comm: "qemu-system-x86", fds: ["/dev/null", "/dev/vfio/4"] },
    43: { comm: "bash", fds: ["/dev/pts/0"] },
  });
  assert.throws(
    () => unbind(sys, EDU),
    (e) =>
      e instanceof CliError && e.code === "ERR_VFIO_DEVICE_BUSY" && e.path === "/dev/vfio/4" &&
      /^Cannot unbind 0000:00:04\.0 from vfio-pci: process 42 \(qemu-system-x86\) holds \/dev\/vfio\/4;/
        .test(e.message),
  );
  assert.equal(fake.device(EDU).driver, "vfio-pci");
  const r = await run(["unbind", EDU, "--json"], sys);
  assert.equal(r.status, 1);
  assert.equal(JSON.parse(r.out).error.code, "ERR_VFIO_DEVICE_BUSY");
});

test("fileHolders: each holder once, sorted by PID; unreadable entries skipped; never throws", () => {
  const sys = withDrivers(new FakeSys(), {
    100: { comm: "b", fds: ["/dev/vfio/4", "/dev/vfio/4"] },
    9: { comm: "a", fds: ["/dev/vfio/4"] },
    5: "unreadable",
    6: { comm: "c", fds: ["/dev/vfio/5"] },
    7: "throws",
  });
  assert.deepEqual(fileHolders(sys, "/dev/vfio/4"), [{ pid: 9, comm: "a" }, { pid: 100, comm: "b" }]);
  assert.deepEqual(fileHolders(sys, "/dev/vfio/9"), []);
  const broken = new Proxy(sys, {
    get: (t, k) =>
      k === "readDir"
        ? () => {
          throw new Error("no /proc");
        }
        : Reflect.get(t, k),
  });
  assert.deepEqual(fileHolders(broken, "/dev/vfio/4"), []);
  assert.deepEqual(fileHolders(new FakeSys(), "/dev/vfio/4"), [], "no /proc at all");
});

test("cli doctor: permissions come from opening the node, so root is never told to chmod", () => {
  const check = (sys: Sys) => doctor(sys, EDU).checks.find((c) => c.id === "permissions" && c.bdf === EDU);
  {
    const fake = withEdu();
    const sys = withDrivers(fake);
    assert.equal(check(sys)?.status, "ok");
    assert.equal(fake.openFds().length, 0, "doctor closes what it opened");
  }
  {
    // A group opens once: EBUSY names the holder; VFIO works, so it is a warning.
    const fake = withEdu();
    const sys = withDrivers(fake, { 42: { comm: "qemu", fds: ["/dev/vfio/4"] } });
    const fd = fake.open("/dev/vfio/4", 2);
    const c = check(sys);
    assert.equal(c?.status, "warn");
    assert.match(c?.message ?? "", /^\/dev\/vfio\/4 is in use by process 42 \(qemu\) \(EBUSY\)/);
    fake.close(fd);
  }
  {
    const fake = withEdu();
    fake.uid = 1000;
    using _ = fake.fail("open", "/dev/vfio/4", "EACCES");
    const c = check(withDrivers(fake));
    assert.deepEqual([c?.status, c?.message, c?.fix], [
      "fail",
      "no read/write access to /dev/vfio/4 (EACCES)",
      "sudo chown $USER /dev/vfio/4",
    ]);
  }
  {
    const fake = withEdu();
    using _ = fake.fail("open", "/dev/vfio/4", "EACCES");
    const c = check(withDrivers(fake));
    assert.equal(c?.status, "fail");
    assert.match(c?.message ?? "", /refused \(EACCES\) to root: not by its file mode/);
    assert.doesNotMatch(`${c?.fix}`, /chmod|chown/);
  }
});
