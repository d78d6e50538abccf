/**
 * SR-IOV against the fake kernel: sriov_numvfs and the VFs it makes, the PF's VF token
 * (setVfToken), and opening a VF with the token on both backends (legacy "BDF vf_token=UUID",
 * iommufd VFIO_DEVICE_BIND_FLAG_TOKEN), with the errors of a missing, wrong or unneeded token and
 * of a kernel without the bind flag.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { UnsupportedError } from "../../lib/errors.ts";
import { IommufdIoas } from "../../lib/iommufd.ts";
import { VfioContainer } from "../../lib/container.ts";
import { openPciDevice } from "../../lib/open.ts";
import { ERRNO } from "../../lib/uapi/libc.ts";
import { caught, EDU, FakeSys } from "./fake_sys.ts";

const PF = "0000:00:06.0", VF0 = "0000:00:06.2", VF1 = "0000:00:06.3";
const TOKEN = "bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3";
const OTHER = "00000000-0000-0000-0000-000000000001";
const numvfs = (bdf = PF) => `/sys/bus/pci/devices/${bdf}/sriov_numvfs`;
const e = (name: string) => -ERRNO[name]!;

/** A fake with an SR-IOV PF on vfio-pci (group 6, cdev vfio0), edu at 00:04.0, and 2 VFs enabled. */
function withVfs(o: { iommufd?: boolean; release?: string; vfs?: number } = {}): FakeSys {
  const fake = new FakeSys();
  fake.iommufd = o.iommufd ?? false;
  if (o.release) fake.release = o.release;
  fake.addDevice({ bdf: EDU, group: 4, cdev: "vfio9" });
  fake.addDevice({
    bdf: PF,
    group: 6,
    cdev: "vfio0",
    vendor: 0x8086,
    device: 0x10c9,
    sriov: { totalVfs: 7 },
  });
  if (o.vfs !== 0) assert.equal(fake.writeText(numvfs(), String(o.vfs ?? 2)), 1);
  return fake;
}

const backends = [
  { name: "legacy", open: (fake: FakeSys) => VfioContainer.open(fake) },
  { name: "iommufd", open: (fake: FakeSys) => IommufdIoas.open(fake) },
] as const;

// --- the fake's SR-IOV rules ------------------------------------------------------------------

test("fake: sriov_numvfs makes VFs in groups of their own, bound to vfio-pci, with links both ways", () => {
  const fake = withVfs({ iommufd: true });
  assert.equal(fake.readText(numvfs()), "2\n");
  assert.equal(fake.readText(`/sys/bus/pci/devices/${PF}/sriov_totalvfs`), "7\n");
  assert.equal(fake.readLink(`/sys/bus/pci/devices/${PF}/virtfn1`), `../${VF1}`);
  assert.equal(fake.readLink(`/sys/bus/pci/devices/${VF0}/physfn`), `../${PF}`);
  for (const [vf, group] of [[VF0, 7], [VF1, 8]] as const) {
    assert.equal(fake.readLink(`/sys/bus/pci/devices/${vf}/driver`), "../../../bus/pci/drivers/vfio-pci");
    assert.equal(
      fake.readLink(`/sys/bus/pci/devices/${vf}/iommu_group`),
      `../../../kernel/iommu_groups/${group}`,
    );
  }
  assert.deepEqual(fake.readDir("/dev/vfio/devices"), ["vfio0", "vfio10", "vfio11", "vfio9"]);
  assert.equal(fake.readText(`/sys/bus/pci/devices/${EDU}/sriov_totalvfs`), e("ENOENT"));
});

test("fake: sriov_numvfs refuses more than the total, a new count while VFs exist, and a PF without enable_sriov", () => {
  const fake = withVfs();
  assert.equal(fake.writeText(numvfs(), "8"), e("ERANGE"));
  assert.equal(fake.writeText(numvfs(), "3"), e("EBUSY"));
  assert.equal(fake.writeText(numvfs(), "2"), 1); // the same count: nothing to do
  assert.equal(fake.writeText(numvfs(), "0"), 1);
  assert.equal(fake.readText(numvfs()), "0\n");
  assert.equal(fake.readLink(`/sys/bus/pci/devices/${VF0}/physfn`), e("ENOENT"));
  fake.vfioPciEnableSriov = false;
  assert.equal(fake.writeText(numvfs(), "1"), e("ENOENT"));
});

test("fake: disabling VFs while one is open would block in the kernel, so the fake throws", () => {
  const fake = withVfs();
  using c = VfioContainer.open(fake);
  assert.equal(caught(() => c.openDevice(VF0, { vfToken: TOKEN })).code, "EACCES"); // the PF's is random
  c.openDevice(PF).setVfToken(TOKEN);
  const vf = c.openDevice(VF1, { vfToken: TOKEN });
  assert.throws(() => fake.writeText(numvfs(), "0"), /would block until 0000:00:06.3 is closed/);
  vf.close();
  assert.equal(fake.writeText(numvfs(), "0"), 1);
});

// --- setVfToken -------------------------------------------------------------------------------

test("setVfToken: a token that is not a UUID string is refused before any ioctl", () => {
  const fake = withVfs();
  using c = VfioContainer.open(fake);
  const pf = c.openDevice(PF);
  const before = fake.ioctls().length;
  assert.throws(() => pf.setVfToken(42 as unknown as string), TypeError);
  assert.throws(() => pf.setVfToken("bd8d9d2b5a5f4f5aa211f591514ba1f3"), RangeError);
  assert.throws(() => pf.setVfToken(`${TOKEN} `), /is not a UUID/);
  assert.equal(fake.ioctls().length, before);
});

test("setVfToken: sets the PF's token as the 16 bytes of uuid_t (SET | PCI_VF_TOKEN)", () => {
  const fake = withVfs();
  using c = VfioContainer.open(fake);
  c.openDevice(PF).setVfToken(TOKEN.toUpperCase());
  const hex = [...fake.device(PF).sriov!.token].map((b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(hex, TOKEN.replaceAll("-", ""));
});

test("setVfToken: a device that is not an SR-IOV PF is UnsupportedError keeping the kernel's ENOTTY", () => {
  const fake = withVfs();
  using c = VfioContainer.open(fake);
  const err = caught(() => c.openDevice(EDU).setVfToken(TOKEN));
  assert.ok(err instanceof UnsupportedError);
  assert.equal(err.errno, ERRNO.ENOTTY);
  assert.match(err.hint!, /not an SR-IOV physical function/);
});

// --- opening a VF with the token, on both backends --------------------------------------------

for (const b of backends) {
  test(`vfToken (${b.name}): a VF without the token is EACCES, with a hint naming vfToken and the PF`, () => {
    const fake = withVfs({ iommufd: true });
    using backend = b.open(fake);
    backend.openDevice(PF).setVfToken(TOKEN);
    const err = caught(() => backend.openDevice(VF0));
    assert.equal(err.code, "EACCES");
    assert.match(
      err.hint!,
      /no VF token was given; 0000:00:06\.2 is a VF of 0000:00:06\.0, which is bound to vfio-pci/,
    );
    assert.match(err.hint!, /\{ vfToken \}/);
    backend.close();
    assert.deepEqual(fake.leaks(), []);
  });

  test(`vfToken (${b.name}): a wrong token is EACCES; the PF's opens the VF, whose config space reads`, () => {
    const fake = withVfs({ iommufd: true });
    using backend = b.open(fake);
    backend.openDevice(PF).setVfToken(TOKEN);
    const err = caught(() => backend.openDevice(VF0, { vfToken: OTHER }));
    assert.equal(err.code, "EACCES");
    assert.match(err.hint!, /the VF token 00000000-0000-0000-0000-000000000001 is not the PF's/);
    const vf = backend.openDevice(VF0, { vfToken: TOKEN });
    assert.equal(vf.config.read16(2), 0x10ca);
    assert.equal(fake.device(PF).sriov!.users, 1);
    vf.close();
    assert.equal(fake.device(PF).sriov!.users, 0);
    backend.close();
    assert.deepEqual(fake.leaks(), []);
  });

  test(`vfToken (${b.name}): a token for a device that is neither PF nor VF is EINVAL, with the hint`, () => {
    const fake = withVfs({ iommufd: true });
    using backend = b.open(fake);
    const err = caught(() => backend.openDevice(EDU, { vfToken: TOKEN }));
    assert.equal(err.code, "EINVAL");
    assert.match(err.hint!, /neither an SR-IOV VF nor a PF, so it takes no VF token/);
  });

  test(`vfToken (${b.name}): a PF whose VFs are open needs their token`, () => {
    const fake = withVfs({ iommufd: true });
    {
      using backend = b.open(fake);
      backend.openDevice(PF).setVfToken(TOKEN);
    }
    using backend = b.open(fake);
    backend.openDevice(VF0, { vfToken: TOKEN });
    using other = b.open(fake);
    const err = caught(() => other.openDevice(PF));
    assert.equal(err.code, "EACCES");
    assert.match(err.hint!, /an SR-IOV PF whose VFs are in use/);
    other.openDevice(PF, { vfToken: TOKEN }).close();
  });

  test(`vfToken (${b.name}): a malformed token is refused before the device is opened`, () => {
    const fake = withVfs({ iommufd: true });
    using backend = b.open(fake);
    const opens = fake.calls.filter((c) => c.op === "open").length;
    assert.throws(() => backend.openDevice(VF0, { vfToken: "nope" }), RangeError);
    assert.equal(fake.calls.filter((c) => c.op === "open").length, opens);
  });
}

test('vfToken (legacy): the token goes to VFIO_GROUP_GET_DEVICE_FD as "BDF vf_token=UUID"', () => {
  const fake = withVfs();
  const seen: string[] = [];
  const ioctl = fake.ioctlPtr.bind(fake);
  fake.ioctlPtr = (fd, request, arg) => {
    if (fake.openFds().find((f) => f.fd === fd)?.kind === "group" && arg.length > 12) {
      seen.push(new TextDecoder().decode(arg.subarray(0, arg.indexOf(0))));
    }
    return ioctl(fd, request, arg);
  };
  using c = VfioContainer.open(fake);
  c.openDevice(PF).setVfToken(TOKEN);
  c.openDevice(VF0, { vfToken: TOKEN.toUpperCase() });
  assert.deepEqual(seen, [PF, `${VF0} vf_token=${TOKEN}`]);
});

test("vfToken (iommufd): the bind passes the token by pointer, from a page that is unmapped after", () => {
  const fake = withVfs({ iommufd: true });
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(PF).setVfToken(TOKEN);
  const maps = fake.mappings().length;
  ioas.openDevice(VF0, { vfToken: TOKEN });
  assert.equal(fake.mappings().length, maps);
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("vfToken (iommufd): a kernel before 6.17 refuses the bind flag: UnsupportedError naming 6.17 and the kernel", () => {
  const fake = withVfs({ iommufd: true, release: "6.16.3" });
  using ioas = IommufdIoas.open(fake);
  ioas.openDevice(PF).setVfToken(TOKEN);
  const err = caught(() => ioas.openDevice(VF0, { vfToken: TOKEN }));
  assert.ok(err instanceof UnsupportedError);
  assert.equal(err.errno, ERRNO.EINVAL);
  assert.match(err.hint!, /VFIO_DEVICE_BIND_FLAG_TOKEN needs Linux 6\.17 or later; this kernel is 6\.16\.3/);
  assert.match(err.hint!, /legacy backend/);
  // Those kernels check no token on the cdev at all: the VF opens without one.
  ioas.openDevice(VF0).close();
  ioas.close();
  assert.deepEqual(fake.leaks(), []);
});

test("open: vfToken reaches the backend on both, and a malformed one fails before anything opens", () => {
  for (const backend of ["legacy", "iommufd"] as const) {
    const fake = withVfs({ iommufd: true });
    {
      using pf = openPciDevice(fake, PF, { backend });
      pf.device.setVfToken(TOKEN);
      using vf = openPciDevice(fake, VF0, { backend, vfToken: TOKEN });
      assert.equal(vf.device.info().pci, true);
    }
    assert.deepEqual(fake.leaks(), []);
    const opens = fake.calls.filter((c) => c.op === "open").length;
    assert.throws(() => openPciDevice(fake, VF0, { backend, vfToken: "x" }), RangeError);
    assert.equal(fake.calls.filter((c) => c.op === "open").length, opens);
  }
});
