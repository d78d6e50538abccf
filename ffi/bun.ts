/**
 * The Bun backend of the `Sys` seam: libc through bun:ffi.
 *
 * errno is read through an Int32Array over `__errno_location()`, fetched once, straight after each
 * call that failed.
 *
 * @module
 */
import { dlopen, FFIType, type Pointer, toArrayBuffer } from "bun:ffi";
import { read as fsRead } from "node:fs";
import type { RawMmio, Sys } from "../lib/sys.ts";
import { ERRNO } from "../lib/uapi/libc.ts";
import { type AccessorLoad, loadAccessors } from "./accessor_elf.ts";
import { nodeFs } from "./fs.ts";

const libc = dlopen("libc.so.6", {
  open: { args: ["ptr", "i32", "u32"], returns: "i32" },
  close: { args: ["i32"], returns: "i32" },
  ioctl: { args: ["i32", "u32", "ptr"], returns: "i32" },
  pread: { args: ["i32", "ptr", "usize", "i64"], returns: "i64" },
  pwrite: { args: ["i32", "ptr", "usize", "i64"], returns: "i64" },
  // i64_fast: a number when it fits (always, for read: Linux moves at most 0x7ffff000 bytes per
  // call), where i64 would make a new bigint per call; the eventfd wait must allocate nothing.
  read: { args: ["i32", "ptr", "usize"], returns: FFIType.i64_fast },
  write: { args: ["i32", "ptr", "usize"], returns: "i64" },
  mmap: { args: ["ptr", "usize", "i32", "i32", "i32", "i64"], returns: "ptr" },
  munmap: { args: ["ptr", "usize"], returns: "i32" },
  eventfd: { args: ["u32", "i32"], returns: "i32" },
  poll: { args: ["ptr", "u64", "i32"], returns: "i32" },
  getrlimit: { args: ["i32", "ptr"], returns: "i32" },
  getpagesize: { args: [], returns: "i32" },
  memfd_create: { args: ["ptr", "u32"], returns: "i32" },
  getuid: { args: [], returns: "u32" },
  mkdir: { args: ["ptr", "u32"], returns: "i32" },
  unlink: { args: ["ptr"], returns: "i32" },
  chown: { args: ["ptr", "u32", "u32"], returns: "i32" },
  __errno_location: { args: [], returns: "ptr" },
});
const sym = libc.symbols;

// SAFETY: __errno_location() returns the calling thread's errno slot, valid for the thread's
// lifetime; all calls below that read it run on this same thread.
const errnoCell = new Int32Array(toArrayBuffer(sym.__errno_location()!, 0, 4));

const cstr = (s: string) => new TextEncoder().encode(s + "\0");
const fail = () => -errnoCell[0]!;
const ret = (r: number | bigint) => (Number(r) < 0 ? fail() : Number(r));
const MAP_FAILED = 0xffffffffffffffffn;
// bun:ffi returns pointers as numbers; null stands for NULL.
const toPtr = (address: bigint) => Number(address) as Pointer;

interface Accessors {
  vfio_ts_rd8(base: Pointer, off: number): number;
  vfio_ts_rd16(base: Pointer, off: number): number;
  vfio_ts_rd32(base: Pointer, off: number): number;
  vfio_ts_rd64(base: Pointer, off: number): bigint;
  vfio_ts_wr8(base: Pointer, off: number, v: number): void;
  vfio_ts_wr16(base: Pointer, off: number, v: number): void;
  vfio_ts_wr32(base: Pointer, off: number, v: number): void;
  vfio_ts_wr64(base: Pointer, off: number, lo: number, hi: number): void;
}

let accessors: AccessorLoad<Accessors> | undefined;
function loadAccessorLibrary(): AccessorLoad<Accessors> {
  accessors ??= loadAccessors({
    arch: process.arch,
    memfdCreate: (name) => ret(sym.memfd_create(cstr(name), 1 /* MFD_CLOEXEC */)),
    write: (fd, data) => ret(sym.write(fd, data, data.length)),
    close: (fd) => void sym.close(fd),
    dlopen: (path) =>
      dlopen(path, {
        vfio_ts_rd8: { args: ["ptr", "u32"], returns: "u8" },
        vfio_ts_rd16: { args: ["ptr", "u32"], returns: "u16" },
        vfio_ts_rd32: { args: ["ptr", "u32"], returns: "u32" },
        vfio_ts_rd64: { args: ["ptr", "u32"], returns: "u64" },
        vfio_ts_wr8: { args: ["ptr", "u32", "u8"], returns: "void" },
        vfio_ts_wr16: { args: ["ptr", "u32", "u16"], returns: "void" },
        vfio_ts_wr32: { args: ["ptr", "u32", "u32"], returns: "void" },
        vfio_ts_wr64: { args: ["ptr", "u32", "u32", "u32"], returns: "void" },
      }).symbols as unknown as Accessors,
  });
  return accessors;
}

/** The Bun implementation of {@link Sys}. */
export const bunSys: Sys = {
  name: "bun",
  pageSize: sym.getpagesize(),
  open: (path, flags) => ret(sym.open(cstr(path), flags, 0)),
  close: (fd) => ret(sym.close(fd)),
  ioctlPtr: (fd, request, arg) => ret(sym.ioctl(fd, request, arg)),
  // An integer argument travels in the pointer-sized register as a plain number.
  ioctlInt: (fd, request, arg) => ret(sym.ioctl(fd, request, arg as unknown as Pointer)),
  pread: (fd, buf, offset) => ret(sym.pread(fd, buf, buf.length, offset)),
  pwrite: (fd, buf, offset) => ret(sym.pwrite(fd, buf, buf.length, offset)),
  read: (fd, buf) => ret(sym.read(fd, buf, buf.length)),
  // Bun's node:fs reads raw fds on its thread pool, so a blocked eventfd read leaves the loop free.
  readAsync: (fd, buf) =>
    new Promise((resolve) => {
      fsRead(fd, buf, 0, buf.length, null, (err, n) => {
        if (!err) return resolve(n);
        resolve(-(ERRNO[(err as NodeJS.ErrnoException).code ?? ""] ?? 5));
      });
    }),
  write: (fd, buf) => ret(sym.write(fd, buf, buf.length)),
  mmap: (length, prot, flags, fd, offset) => {
    const p = sym.mmap(null, length, prot, flags, fd, offset);
    const addr = BigInt.asUintN(64, BigInt(p ?? 0));
    return addr === MAP_FAILED ? BigInt(fail()) : addr;
  },
  munmap: (address, length) => ret(sym.munmap(toPtr(address), length)),
  memory: (address, length) =>
    // SAFETY: the caller owns a live mapping of at least `length` bytes at `address` and detaches
    // this buffer before unmapping it (lib/dma.ts, lib/region.ts).
    toArrayBuffer(toPtr(address), 0, length),
  mmioUnavailable: () => loadAccessorLibrary().reason,
  mmio: (address, _length) => {
    const a = loadAccessorLibrary().library;
    if (!a) return undefined;
    // SAFETY: `address` is the start of a live mapping; lib/region.ts bounds-checks every offset
    // against its length before calling, and drops this accessor before unmapping.
    const base = toPtr(address);
    return {
      read8: (o) => a.vfio_ts_rd8(base, o),
      read16: (o) => a.vfio_ts_rd16(base, o),
      read32: (o) => a.vfio_ts_rd32(base, o),
      read64: (o) => BigInt.asUintN(64, BigInt(a.vfio_ts_rd64(base, o))),
      write8: (o, v) => a.vfio_ts_wr8(base, o, v),
      write16: (o, v) => a.vfio_ts_wr16(base, o, v),
      write32: (o, v) => a.vfio_ts_wr32(base, o, v),
      write64: (o, v) => a.vfio_ts_wr64(base, o, Number(v & 0xffffffffn), Number(v >> 32n)),
    } satisfies RawMmio;
  },
  eventfd: (initval, flags) => ret(sym.eventfd(initval, flags)),
  poll: (fds, nfds, timeoutMs) => ret(sym.poll(fds, nfds, timeoutMs)),
  getrlimit: (resource, out) => ret(sym.getrlimit(resource, out)),
  getuid: () => sym.getuid(),
  getenv: (name) => process.env[name],
  ...nodeFs,
  mkdir: (path, mode) => ret(sym.mkdir(cstr(path), mode)),
  unlink: (path) => ret(sym.unlink(cstr(path))),
  chown: (path, uid, gid) => ret(sym.chown(cstr(path), uid, gid)),
};
