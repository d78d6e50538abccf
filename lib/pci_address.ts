/**
 * PCI addresses (domain:bus:device.function), validated before any sysfs path is built from them.
 *
 * @module
 */
import { InvalidPciAddressError } from "./errors.ts";

/** A parsed PCI address. */
export interface PciAddress {
  /** The PCI domain (segment), 0–0xffff. */
  domain: number;
  /** The bus, 0–0xff. */
  bus: number;
  /** The device (slot), 0–0x1f. */
  device: number;
  /** The function, 0–7. */
  function: number;
}

const BDF = /^(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$/;

/**
 * Parses a PCI address such as `0000:00:04.0` or `00:04.0` (domain 0).
 *
 * @param text The address.
 * @returns Its parts.
 * @throws {InvalidPciAddressError} If it is not a PCI address; nothing else (no path, no `..`) gets
 *   through.
 *
 * @example
 * ```ts
 * import { parsePciAddress } from "vfio-ts";
 *
 * parsePciAddress("00:04.0"); // { domain: 0, bus: 0, device: 4, function: 0 }
 * ```
 */
export function parsePciAddress(text: string): PciAddress {
  const m = typeof text === "string" ? BDF.exec(text) : null;
  const device = m ? parseInt(m[3]!, 16) : NaN;
  if (!m || device > 0x1f) throw new InvalidPciAddressError(String(text));
  return {
    domain: parseInt(m[1] ?? "0", 16),
    bus: parseInt(m[2]!, 16),
    device,
    function: parseInt(m[4]!, 10),
  };
}

/**
 * Formats a PCI address the way sysfs names devices.
 *
 * @param a The address.
 * @returns E.g. `0000:00:04.0`.
 * @throws {RangeError} If a part is out of range.
 *
 * @example
 * ```ts
 * import { formatPciAddress } from "vfio-ts";
 *
 * formatPciAddress({ domain: 0, bus: 0, device: 4, function: 0 }); // "0000:00:04.0"
 * ```
 */
export function formatPciAddress(a: PciAddress): string {
  const ok = (n: number, max: number) => Number.isInteger(n) && n >= 0 && n <= max;
  if (!ok(a.domain, 0xffff) || !ok(a.bus, 0xff) || !ok(a.device, 0x1f) || !ok(a.function, 7)) {
    throw new RangeError(`Cannot format PCI address ${JSON.stringify(a)}: a part is out of range`);
  }
  const h = (n: number, w: number) => n.toString(16).padStart(w, "0");
  return `${h(a.domain, 4)}:${h(a.bus, 2)}:${h(a.device, 2)}.${a.function}`;
}

/**
 * Validates and normalizes a PCI address.
 *
 * @param text The address, with or without the domain.
 * @returns The canonical form, e.g. `0000:00:04.0`.
 * @throws {InvalidPciAddressError} If it is not a PCI address.
 */
export function canonicalPciAddress(text: string): string {
  return formatPciAddress(parsePciAddress(text));
}
