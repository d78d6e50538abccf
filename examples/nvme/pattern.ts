/**
 * The verification pattern: blocks that carry their own LBA and a seed, so that data read from the
 * wrong place, or a stale buffer, never passes for the right data.
 *
 * @module
 */
import { hex } from "./spec.ts";

/**
 * Fills whole blocks with the verification pattern: each block starts with its LBA (64 bits), the
 * seed and "VTSP", then pseudo-random words derived from both, so a block read from the wrong place
 * or a stale buffer never matches. The lab test writes the same pattern into the backing image.
 *
 * @param target Whole blocks, starting at a multiple of 4 bytes.
 * @param lba The LBA of the first block.
 * @param blockSize Bytes per block.
 * @param seed Any 32-bit number.
 */
export function fillPattern(target: Uint8Array, lba: number, blockSize: number, seed: number): void {
  const d = new DataView(target.buffer, target.byteOffset, target.byteLength);
  for (let b = 0; b * blockSize < target.byteLength; b++) {
    const at = b * blockSize;
    d.setBigUint64(at, BigInt(lba + b), true);
    d.setUint32(at + 8, seed >>> 0, true);
    d.setUint32(at + 12, 0x50535456, true); // "VTSP"
    let x = (Math.imul(lba + b, 0x9e3779b1) ^ Math.imul(seed, 0x85ebca6b) ^ 0x2545f491) | 1;
    for (let i = 16; i < blockSize; i += 4) {
      x ^= x << 13; // xorshift32
      x ^= x >>> 17;
      x ^= x << 5;
      d.setUint32(at + i, x >>> 0, true);
    }
  }
}

/**
 * Compares data with the pattern {@link fillPattern} writes.
 *
 * @param data Whole blocks.
 * @param lba The LBA of the first block.
 * @param size Bytes per block.
 * @param seed The seed the pattern was written with.
 * @returns undefined when it matches, otherwise where and how it differs.
 */
export function checkPattern(data: Uint8Array, lba: number, size: number, seed: number): string | undefined {
  const expected = new Uint8Array(data.length);
  fillPattern(expected, lba, size, seed);
  const i = data.findIndex((v, j) => v !== expected[j]);
  if (i < 0) return undefined;
  return `LBA ${lba + Math.floor(i / size)} byte ${i % size} reads ${hex(data[i]!)}, expected ${
    hex(expected[i]!)
  }`;
}
