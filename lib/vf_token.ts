/**
 * SR-IOV VF tokens: the UUID the user of a PF on vfio-pci shares with the users of its VFs
 * (VFIO_DEVICE_FEATURE_PCI_VF_TOKEN). Checked here, before any syscall, and turned into the two
 * forms the kernel takes: the 16 bytes of uuid_t, and the text of a `vf_token=` option.
 *
 * @module
 */
import type { Sys } from "./sys.ts";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Checks a VF token and returns its canonical (lower-case) text.
 *
 * @param uuid The token, e.g. `"bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3"`.
 * @param action What it is for, for the message: e.g. `"open 0000:00:06.2"`.
 * @returns The lower-case UUID.
 * @throws {TypeError} If `uuid` is not a string.
 * @throws {RangeError} If it is not a UUID in the 8-4-4-4-12 hex form.
 */
export function canonicalVfToken(uuid: unknown, action: string): string {
  if (typeof uuid !== "string") {
    throw new TypeError(`Cannot ${action}: the VF token must be a UUID string, got ${typeof uuid}`);
  }
  if (!UUID.test(uuid)) {
    throw new RangeError(
      `Cannot ${action}: the VF token ${JSON.stringify(uuid)} is not a UUID ` +
        "(expected 8-4-4-4-12 hex digits, e.g. bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3)",
    );
  }
  return uuid.toLowerCase();
}

/**
 * The 16 bytes of a VF token, in the kernel's uuid_t order (the order of the text's hex pairs, as
 * uuid_parse reads them).
 *
 * @param uuid A token checked by {@link canonicalVfToken}.
 * @returns The bytes.
 */
export function vfTokenBytes(uuid: string): Uint8Array {
  const hex = uuid.replaceAll("-", "");
  return Uint8Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(2 * i, 2 * i + 2), 16));
}

/**
 * The fix for EACCES when a device is opened: vfio-pci wants the VF token. Internal: both backends
 * use it.
 *
 * @param sys The syscall backend.
 * @param bdf The device.
 * @param token The token that was given, if any.
 * @returns The hint.
 */
export function vfTokenHint(sys: Sys, bdf: string, token: string | undefined): string {
  const pf = physfnOf(sys, bdf);
  const who = pf === undefined
    ? `${bdf} is an SR-IOV PF whose VFs are in use: pass the token they were opened with`
    : `${bdf} is a VF of ${pf}, which is bound to vfio-pci: pass the token its user set with setVfToken()`;
  return `${
    token === undefined ? "no VF token was given" : `the VF token ${token} is not the PF's`
  }; ${who}, ` +
    "as { vfToken } (open(bdf, { vfToken }) or backend.openDevice(bdf, { vfToken }))";
}

/**
 * The fix for EINVAL when a VF token was given to a device that takes none. Internal, as
 * {@link vfTokenHint}.
 *
 * @param sys The syscall backend.
 * @param bdf The device.
 * @returns The hint.
 */
export function vfTokenMisuseHint(sys: Sys, bdf: string): string {
  const pf = physfnOf(sys, bdf);
  if (pf !== undefined) {
    return `${bdf} is a VF of ${pf}, which is not bound to vfio-pci, so it takes no VF token: leave vfToken out`;
  }
  return `${bdf} is neither an SR-IOV VF nor a PF, so it takes no VF token: leave vfToken out`;
}

// The PF of a VF, from its physfn link; undefined for anything else.
function physfnOf(sys: Sys, bdf: string): string | undefined {
  const link = sys.readLink(`/sys/bus/pci/devices/${bdf}/physfn`);
  return typeof link === "string" ? link.slice(link.lastIndexOf("/") + 1) : undefined;
}
