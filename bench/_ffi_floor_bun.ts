/**
 * The bare FFI floor under Bun: ioctl(2) bound straight with bun:ffi, no library code, in the
 * signatures Bun offers. Used by bench/_ffi_floor.ts.
 *
 * @module
 */
import { dlopen, ptr, toArrayBuffer } from "bun:ffi";
import type { IoctlVariant } from "./_ffi_floor.ts";

const lib = dlopen("libc.so.6", {
  ioctl: { args: ["i32", "u32", "ptr"], returns: "i32" },
  __errno_location: { args: [], returns: "ptr" },
});
const s = lib.symbols;
// SAFETY: the calling thread's errno slot, valid for the thread's lifetime.
const errno = new Int32Array(toArrayBuffer(s.__errno_location()!, 0, 4));

/** The variants: how the struct is passed, and whether errno is read after a failure. */
export function variants(): IoctlVariant[] {
  return [
    {
      name: "buffer",
      note: 'bun:ffi ioctl, "ptr" argument given the Uint8Array, result only',
      make: (fd, req, arg) => () => s.ioctl(fd, req, arg),
    },
    {
      name: "buffer_errno",
      note:
        'bun:ffi ioctl, "ptr" argument given the Uint8Array, errno read on failure (what sys.ioctlPtr does)',
      make: (fd, req, arg) => () => {
        const r = s.ioctl(fd, req, arg);
        return r < 0 ? -errno[0]! : r;
      },
    },
    {
      name: "pointer",
      note: 'bun:ffi ioctl, "ptr" argument given a number made once with ptr(), result only',
      make: (fd, req, arg) => {
        // SAFETY: `arg` stays reachable in this closure for as long as the address is used.
        const p = ptr(arg);
        return () => s.ioctl(fd, req, p);
      },
    },
  ];
}
