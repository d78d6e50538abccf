/**
 * Text output helpers for the `vfio` commands: hex numbers, sizes, flag names and aligned tables.
 *
 * @module
 */
import { formatBytes } from "../lib/limits.ts";

/**
 * Formats a number as hex.
 *
 * @param n The value.
 * @param width Minimum digits.
 * @returns E.g. `0x0040`.
 */
export function hex(n: number | bigint, width = 0): string {
  return `0x${n.toString(16).padStart(width, "0")}`;
}

/**
 * Formats a size in bytes: `1 MiB`, `4 KiB`, `256 bytes`.
 *
 * @param n Bytes.
 * @returns The size.
 */
export function size(n: number | bigint): string {
  return formatBytes(BigInt(n));
}

/**
 * Names the set bits of a flags word.
 *
 * @param flags The value.
 * @param names Bit value → name.
 * @returns The names of the set bits, then `0x…` for any unnamed rest.
 */
export function flagNames(flags: number, names: Readonly<Record<number, string>>): string[] {
  const out: string[] = [];
  let rest = flags;
  for (const [bit, name] of Object.entries(names)) {
    if (flags & Number(bit)) {
      out.push(name);
      rest &= ~Number(bit);
    }
  }
  if (rest) out.push(hex(rest >>> 0));
  return out;
}

/**
 * Lays out rows as columns separated by two spaces; the last column is not padded.
 *
 * @param rows The header row first, then the data.
 * @returns The lines.
 */
export function table(rows: readonly (readonly string[])[]): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) =>
    row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")
  );
}
