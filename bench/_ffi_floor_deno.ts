/**
 * The bare FFI floor under Deno: ioctl(2) bound straight with Deno.dlopen, no library code, in the
 * signatures Deno offers. Used by bench/_ffi_floor.ts.
 *
 * @module
 */
import type { IoctlVariant } from "./_ffi_floor.ts";

const lib = Deno.dlopen("libc.so.6", {
  ioctl_buffer: { name: "ioctl", parameters: ["i32", "u32", "buffer"], result: "i32" },
  ioctl_pointer: { name: "ioctl", parameters: ["i32", "u32", "pointer"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
});
const s = lib.symbols;
// SAFETY: the calling thread's errno slot, valid for the thread's lifetime.
const errno = new Int32Array(Deno.UnsafePointerView.getArrayBuffer(s.__errno_location()!, 4));

/** The variants: how the struct is passed, and whether errno is read after a failure. */
export function variants(): IoctlVariant[] {
  return [
    {
      name: "buffer",
      note: 'Deno.dlopen ioctl, "buffer" parameter (a Uint8Array), result only',
      make: (fd, req, arg) => () => s.ioctl_buffer(fd, req, arg),
    },
    {
      name: "buffer_errno",
      note: 'Deno.dlopen ioctl, "buffer" parameter, errno read on failure (what sys.ioctlPtr does)',
      make: (fd, req, arg) => () => {
        const r = s.ioctl_buffer(fd, req, arg);
        return r < 0 ? -errno[0]! : r;
      },
    },
    {
      name: "pointer",
      note: 'Deno.dlopen ioctl, "pointer" parameter made once with UnsafePointer.of, result only',
      make: (fd, req, arg) => {
        // SAFETY: `arg` stays reachable in this closure for as long as the pointer is used.
        const p = Deno.UnsafePointer.of(arg);
        return () => s.ioctl_pointer(fd, req, p);
      },
    },
  ];
}
