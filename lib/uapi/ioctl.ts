/**
 * The ioctl request encoding of include/uapi/asm-generic/ioctl.h (x86, arm64 and riscv share it).
 *
 * VFIO and iommufd encode no size or direction: every request is `_IO(type, nr)`.
 *
 * @module
 */

/**
 * `_IO(type, nr)`: an ioctl request number with no size and no direction bits.
 *
 * @param type The ioctl type character, e.g. `";"` for VFIO.
 * @param nr The command number.
 * @returns The request number.
 */
export function _IO(type: string, nr: number): number {
  return (type.charCodeAt(0) << 8) | nr;
}
