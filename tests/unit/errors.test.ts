/**
 * lib/errors.ts, lib/fd.ts and lib/limits.ts: errno names, messages that say the action and the
 * fix, owned fds that close once, and the memlock hint.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  check,
  DeviceNotBoundError,
  DeviceNotFoundError,
  errnoName,
  InvalidPciAddressError,
  UnsupportedError,
  VfioError,
  VfioUnavailableError,
} from "../../lib/errors.ts";
import { openFd } from "../../lib/fd.ts";
import { formatBytes, memlockHint, memlockLimit } from "../../lib/limits.ts";
import { ERRNO } from "../../lib/uapi/libc.ts";
import { VFIO_GET_API_VERSION } from "../../lib/uapi/vfio.ts";
import { FakeSys } from "./fake_sys.ts";

test("errors: the message names the action, path, operation, errno and fix", () => {
  const e = new VfioError({
    op: "VFIO_IOMMU_MAP_DMA",
    errno: 12,
    path: "/dev/vfio/vfio",
    action: "map DMA at iova 0x100000",
    hint: "raise RLIMIT_MEMLOCK",
  });
  assert.equal(
    e.message,
    "Cannot map DMA at iova 0x100000 on /dev/vfio/vfio (VFIO_IOMMU_MAP_DMA: ENOMEM): raise RLIMIT_MEMLOCK",
  );
  assert.equal(e.name, "VfioError");
  assert.deepEqual([e.op, e.errno, e.code, e.path, e.hint], [
    "VFIO_IOMMU_MAP_DMA",
    12,
    "ENOMEM",
    "/dev/vfio/vfio",
    "raise RLIMIT_MEMLOCK",
  ]);
  assert.ok(e instanceof Error);
});

test("errors: without an action or path the message still names the operation", () => {
  const e = new VfioError({ op: "eventfd", errno: 24 });
  assert.equal(e.message, "Cannot run eventfd (eventfd: EMFILE)");
  assert.equal(e.path, undefined);
  assert.equal(e.hint, undefined);
});

test("errors: errno names, and E<n> for numbers the table lacks", () => {
  assert.equal(errnoName(1), "EPERM");
  assert.equal(errnoName(16), "EBUSY");
  assert.equal(errnoName(4242), "E4242");
  assert.equal(new VfioError({ op: "x", errno: 4242 }).code, "E4242");
});

test("errors: ERRNO (lib/uapi/libc.ts) maps names to numbers and has no entry for unknown ones", () => {
  assert.equal(ERRNO.ENODEV, 19);
  assert.equal(ERRNO.EACCES, 13);
  assert.equal(ERRNO.ENOPE, undefined);
});

test("errors: without an errno the message has no (op: …) part, errno is undefined and code is ERR_VFIO", () => {
  const e = new VfioError({
    op: "pwrite",
    path: "/dev/vfio/4",
    action: "write 4 bytes",
    hint: "only 2 were",
  });
  assert.equal(e.message, "Cannot write 4 bytes on /dev/vfio/4: only 2 were");
  assert.equal(e.errno, undefined);
  assert.equal(e.code, "ERR_VFIO");
  const own = new VfioError({ op: "pwrite", code: "ERR_VFIO_SHORT_TRANSFER" });
  assert.deepEqual([own.errno, own.code, own.message], [
    undefined,
    "ERR_VFIO_SHORT_TRANSFER",
    "Cannot run pwrite",
  ]);
});

test("errors: each subclass is a VfioError with its own name and ERR_VFIO_ code, and keeps a real errno", () => {
  const unavailable = new VfioUnavailableError({
    op: "open",
    errno: 2,
    path: "/dev/vfio/vfio",
    action: "open /dev/vfio/vfio",
  });
  const notFound = new DeviceNotFoundError("0000:00:09.0", {
    op: "open",
    errno: 2,
    action: "find PCI device 0000:00:09.0",
  });
  const notBound = new DeviceNotBoundError("0000:00:04.0", "e1000e", {
    op: "open",
    action: "open VFIO group 4",
  });
  const invalid = new InvalidPciAddressError("../x");
  const unsupported = new UnsupportedError({ op: "VFIO_DEVICE_RESET", action: "reset 0000:00:04.0" });
  const all = [
    [unavailable, "VfioUnavailableError", "ERR_VFIO_UNAVAILABLE", 2],
    [notFound, "DeviceNotFoundError", "ERR_VFIO_DEVICE_NOT_FOUND", 2],
    [notBound, "DeviceNotBoundError", "ERR_VFIO_DEVICE_NOT_BOUND", undefined],
    [invalid, "InvalidPciAddressError", "ERR_VFIO_INVALID_PCI_ADDRESS", undefined],
    [unsupported, "UnsupportedError", "ERR_VFIO_UNSUPPORTED", undefined],
  ] as const;
  for (const [e, name, code, errno] of all) {
    assert.ok(e instanceof VfioError && e instanceof Error, name);
    assert.deepEqual([e.name, e.code, e.errno], [name, code, errno]);
  }
  assert.equal(unavailable.message, "Cannot open /dev/vfio/vfio (open: ENOENT)");
  assert.equal(notFound.bdf, "0000:00:09.0");
  assert.match(notFound.hint!, /no PCI device 0000:00:09.0: see lspci/);
  assert.deepEqual([notBound.bdf, notBound.driver], ["0000:00:04.0", "e1000e"]);
  assert.equal(
    notBound.message,
    "Cannot open VFIO group 4: 0000:00:04.0 is bound to e1000e, not vfio-pci: run `vfio bind 0000:00:04.0`",
  );
  assert.equal(new DeviceNotBoundError("0000:00:04.0", undefined, { op: "open" }).driver, undefined);
  assert.equal(invalid.input, "../x");
  assert.match(invalid.message, /^Cannot parse PCI address "..\/x": expected DDDD:BB:DD.F/);
  assert.doesNotMatch(unsupported.message, /\(/); // no errno, so no "(op: …)"
});

test("fd: openFd throws VfioUnavailableError, errno kept, when the unavailable hint names the failure", () => {
  const fake = new FakeSys();
  const unavailable = (code: string) => (code === "ENOENT" ? "no VFIO here" : undefined);
  assert.throws(() => openFd(fake, "/dev/nope", 0, () => "other", unavailable), (e: unknown) => {
    assert.ok(e instanceof VfioUnavailableError);
    assert.deepEqual([e.errno, e.code, e.hint], [2, "ERR_VFIO_UNAVAILABLE", "no VFIO here"]);
    assert.equal(e.message, "Cannot open /dev/nope (open: ENOENT): no VFIO here");
    return true;
  });
  using _ = fake.fail("open", "/dev/nope", "EACCES");
  assert.throws(() => openFd(fake, "/dev/nope", 0, () => "other", unavailable), (e: unknown) => {
    assert.ok(e instanceof VfioError && !(e instanceof VfioUnavailableError));
    assert.deepEqual([e.errno, e.code, e.hint], [13, "EACCES", "other"]);
    return true;
  });
});

test("errors: check() passes non-negative results through", () => {
  assert.equal(check(0, { op: "x" }), 0);
  assert.equal(check(7, { op: "x" }), 7);
});

test("errors: check() throws a VfioError and picks the hint from the errno name", () => {
  const seen: string[] = [];
  const hints = (code: string) => (seen.push(code), code === "EBUSY" ? "close the other user" : undefined);
  assert.throws(
    () => check(-16, { op: "open", path: "/dev/vfio/4", action: "open", hints }),
    (e: unknown) => {
      assert.ok(e instanceof VfioError);
      assert.equal(e.message, "Cannot open on /dev/vfio/4 (open: EBUSY): close the other user");
      return true;
    },
  );
  assert.deepEqual(seen, ["EBUSY"]);
  assert.throws(
    () => check(-2, { op: "open", hints }),
    (e: unknown) => e instanceof VfioError && e.hint === undefined,
  );
});

test("errors: an explicit hint wins over the hint function", () => {
  assert.throws(() => check(-1, { op: "x", hint: "fixed", hints: () => "picked" }), /: fixed$/);
});

test("fd: an owned fd closes exactly once and throws on use after close", () => {
  const fake = new FakeSys();
  const fd = openFd(fake, "/dev/vfio/vfio", 0);
  assert.equal(fd.closed, false);
  assert.equal(fd.ioctl(VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION", "get the version"), 0);
  fd.close();
  fd.close();
  assert.equal(fd.closed, true);
  assert.equal(fake.calls.filter((c) => c.op === "close").length, 1);
  assert.throws(() => fd.fd, /Cannot use \/dev\/vfio\/vfio: it is closed/);
  assert.throws(() => fd.ioctl(VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION", "x"), TypeError);
  assert.deepEqual(fake.leaks(), []);
});

test("fd: a failing close(2) reports the error but releases the fd", () => {
  const fake = new FakeSys();
  const fd = openFd(fake, "/dev/vfio/vfio", 0);
  using _ = fake.fail("close", "/dev/vfio/vfio", "EIO");
  assert.throws(() => fd.close(), /Cannot close on \/dev\/vfio\/vfio \(close: EIO\)/);
  assert.equal(fd.closed, true);
  fd.close(); // no second close(2)
  assert.equal(fake.calls.filter((c) => c.op === "close").length, 1);
  assert.deepEqual(fake.leaks(), []);
});

test("fd: openFd turns an open failure into a VfioError with the path and hint", () => {
  const fake = new FakeSys();
  assert.throws(() => openFd(fake, "/dev/nope", 0, () => "it is not there"), (e: unknown) => {
    assert.ok(e instanceof VfioError);
    assert.equal(e.message, "Cannot open /dev/nope (open: ENOENT): it is not there");
    return true;
  });
});

test("limits: formatBytes uses the largest exact unit", () => {
  assert.equal(formatBytes(8n << 20n), "8 MiB");
  assert.equal(formatBytes(64n << 10n), "64 KiB");
  assert.equal(formatBytes(3n << 30n), "3 GiB");
  assert.equal(formatBytes(1536n), "1536 bytes");
  assert.equal(formatBytes(512n), "512 bytes");
});

test("limits: memlockLimit reads RLIMIT_MEMLOCK, undefined when unlimited or unreadable", () => {
  const fake = new FakeSys();
  fake.memlock = 64n << 10n;
  assert.equal(memlockLimit(fake), 65536n);
  fake.memlock = undefined;
  assert.equal(memlockLimit(fake), undefined);
  fake.memlock = 1n << 20n;
  using _ = fake.fail("getrlimit", undefined, "EPERM");
  assert.equal(memlockLimit(fake), undefined);
});

test("limits: the memlock hint names the limit, the size and ulimit -l", () => {
  const fake = new FakeSys();
  fake.memlock = 8n << 20n;
  const hint = memlockHint(fake, 16 << 20);
  assert.match(hint, /pinning 16 MiB for DMA counts against RLIMIT_MEMLOCK, which is 8 MiB/);
  assert.match(hint, /ulimit -l/);
  fake.memlock = undefined;
  assert.match(memlockHint(fake, 4096), /which is unlimited/);
});
