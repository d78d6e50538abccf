/**
 * The Deno backend of the `Sys` seam: libc through Deno.dlopen.
 *
 * errno is read through an Int32Array over `__errno_location()`, fetched once, straight after each
 * call that failed. No symbol whose errno matters is `nonblocking` (that would run it on another
 * thread, with another errno).
 *
 * @module
 */
import type { RawMmio, Sys } from "../lib/sys.ts";
import { O_CLOEXEC, O_CREAT, O_RDONLY, O_TRUNC, O_WRONLY } from "../lib/uapi/libc.ts";
import { type ACCESSOR_SYMBOLS, type AccessorLoad, loadAccessors } from "./accessor_elf.ts";

const libc = Deno.dlopen("libc.so.6", {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl_ptr: { name: "ioctl", parameters: ["i32", "u32", "buffer"], result: "i32" },
  ioctl_int: { name: "ioctl", parameters: ["i32", "u32", "u64"], result: "i32" },
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  // read(2) returns an ssize_t, but Linux moves at most 0x7ffff000 bytes in one call, so the result
  // always fits an i32, which Deno returns as a number: an isize would come back as a new bigint on
  // every call, and the eventfd wait must allocate nothing.
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  // Runs on a helper thread so that an eventfd wait does not block the event loop. Its errno is
  // that thread's and is not read; a failure reports EIO.
  read_async: { name: "read", parameters: ["i32", "buffer", "usize"], result: "i32", nonblocking: true },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  getpagesize: { parameters: [], result: "i32" },
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  dlerror: { parameters: [], result: "pointer" },
  readlink: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  opendir: { parameters: ["buffer"], result: "pointer" },
  readdir: { parameters: ["pointer"], result: "pointer" },
  closedir: { parameters: ["pointer"], result: "i32" },
  getenv: { parameters: ["buffer"], result: "pointer" },
  getuid: { parameters: [], result: "u32" },
  mkdir: { parameters: ["buffer", "u32"], result: "i32" },
  unlink: { parameters: ["buffer"], result: "i32" },
  chown: { parameters: ["buffer", "u32", "u32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
});
const sym = libc.symbols;

// SAFETY: __errno_location() returns the calling thread's errno slot, valid for the thread's
// lifetime; all calls below that read it run on this same thread.
const errnoCell = new Int32Array(Deno.UnsafePointerView.getArrayBuffer(sym.__errno_location()!, 4));

const cstr = (s: string) => new TextEncoder().encode(s + "\0");
const fail = () => -errnoCell[0]!;
const ret = (r: number | bigint) => (Number(r) < 0 ? fail() : Number(r));
const MAP_FAILED = 0xffffffffffffffffn;
// Small counts and lengths as bigints made once, for 64-bit parameters on the eventfd wait, which
// must allocate nothing: BigInt() makes a new one per call. A Number is accepted there too, but
// Deno converts it more slowly than a bigint (measured: +100 to +190 ns per call on the host, a few
// µs per wake-up under the lab's TCG).
const SMALL_BIGINTS = Array.from({ length: 65 }, (_, i) => BigInt(i));
const small = (n: number) => SMALL_BIGINTS[n] ?? BigInt(n);
// A call made on a helper thread: its errno is that thread's, so a failure is reported as EIO.
const eioOnFailure = (r: number) => (r < 0 ? -5 /* EIO */ : r);

type Accessors = Deno.DynamicLibrary<{
  vfio_ts_rd8: { parameters: ["pointer", "u32"]; result: "u8" };
  vfio_ts_rd16: { parameters: ["pointer", "u32"]; result: "u16" };
  vfio_ts_rd32: { parameters: ["pointer", "u32"]; result: "u32" };
  vfio_ts_rd64: { parameters: ["pointer", "u32"]; result: "u64" };
  vfio_ts_wr8: { parameters: ["pointer", "u32", "u8"]; result: "void" };
  vfio_ts_wr16: { parameters: ["pointer", "u32", "u16"]; result: "void" };
  vfio_ts_wr32: { parameters: ["pointer", "u32", "u32"]; result: "void" };
  vfio_ts_wr64: { parameters: ["pointer", "u32", "u32", "u32"]; result: "void" };
}>;

let accessors: AccessorLoad<Accessors> | undefined;
function loadAccessorLibrary(): AccessorLoad<Accessors> {
  accessors ??= loadAccessors({
    arch: Deno.build.arch === "x86_64" ? "x64" : Deno.build.arch,
    memfdCreate: (name) => ret(sym.memfd_create(cstr(name), 1 /* MFD_CLOEXEC */)),
    write: (fd, data) => ret(sym.write(fd, data, BigInt(data.length))),
    close: (fd) => void sym.close(fd),
    dlopen: (path) =>
      Deno.dlopen(
        path,
        {
          vfio_ts_rd8: { parameters: ["pointer", "u32"], result: "u8" },
          vfio_ts_rd16: { parameters: ["pointer", "u32"], result: "u16" },
          vfio_ts_rd32: { parameters: ["pointer", "u32"], result: "u32" },
          vfio_ts_rd64: { parameters: ["pointer", "u32"], result: "u64" },
          vfio_ts_wr8: { parameters: ["pointer", "u32", "u8"], result: "void" },
          vfio_ts_wr16: { parameters: ["pointer", "u32", "u16"], result: "void" },
          vfio_ts_wr32: { parameters: ["pointer", "u32", "u32"], result: "void" },
          vfio_ts_wr64: { parameters: ["pointer", "u32", "u32", "u32"], result: "void" },
        } satisfies Record<(typeof ACCESSOR_SYMBOLS)[number], Deno.ForeignFunction>,
      ),
  });
  return accessors;
}

/** The Deno implementation of {@link Sys}. */
export const denoSys: Sys = {
  name: "deno",
  pageSize: sym.getpagesize(),
  open: (path, flags) => ret(sym.open(cstr(path), flags, 0)),
  close: (fd) => ret(sym.close(fd)),
  ioctlPtr: (fd, request, arg) => ret(sym.ioctl_ptr(fd, request, arg)),
  ioctlInt: (fd, request, arg) => ret(sym.ioctl_int(fd, request, BigInt(arg))),
  pread: (fd, buf, offset) => ret(sym.pread(fd, buf, BigInt(buf.length), BigInt(offset))),
  pwrite: (fd, buf, offset) => ret(sym.pwrite(fd, buf, BigInt(buf.length), BigInt(offset))),
  read: (fd, buf) => ret(sym.read(fd, buf, small(buf.length))),
  readAsync: (fd, buf) => sym.read_async(fd, buf, small(buf.length)).then(eioOnFailure),
  write: (fd, buf) => ret(sym.write(fd, buf, BigInt(buf.length))),
  mmap: (length, prot, flags, fd, offset) => {
    const p = sym.mmap(null, BigInt(length), prot, flags, fd, BigInt(offset));
    const addr = BigInt(Deno.UnsafePointer.value(p));
    return addr === MAP_FAILED ? BigInt(fail()) : addr;
  },
  munmap: (address, length) => ret(sym.munmap(Deno.UnsafePointer.create(address), BigInt(length))),
  memory: (address, length) =>
    // SAFETY: the caller owns a live mapping of at least `length` bytes at `address` and detaches
    // this buffer before unmapping it (lib/dma.ts, lib/region.ts).
    Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(address)!, length),
  mmioUnavailable: () => loadAccessorLibrary().reason,
  mmio: (address, _length) => {
    const a = loadAccessorLibrary().library;
    if (!a) return undefined;
    // SAFETY: `address` is the start of a live mapping; lib/region.ts bounds-checks every offset
    // against its length before calling, and drops this accessor before unmapping.
    const base = Deno.UnsafePointer.create(address);
    const s = a.symbols;
    return {
      read8: (o) => s.vfio_ts_rd8(base, o),
      read16: (o) => s.vfio_ts_rd16(base, o),
      read32: (o) => s.vfio_ts_rd32(base, o),
      read64: (o) => BigInt(s.vfio_ts_rd64(base, o)),
      write8: (o, v) => s.vfio_ts_wr8(base, o, v),
      write16: (o, v) => s.vfio_ts_wr16(base, o, v),
      write32: (o, v) => s.vfio_ts_wr32(base, o, v),
      write64: (o, v) => s.vfio_ts_wr64(base, o, Number(v & 0xffffffffn), Number(v >> 32n)),
    } satisfies RawMmio;
  },
  eventfd: (initval, flags) => ret(sym.eventfd(initval, flags)),
  poll: (fds, nfds, timeoutMs) => ret(sym.poll(fds, small(nfds), timeoutMs)),
  getrlimit: (resource, out) => ret(sym.getrlimit(resource, out)),
  getuid: () => sym.getuid(),
  // Files and the environment go through libc too: Deno refuses its own file APIs on /sys, /proc
  // and /dev without --allow-all, while --allow-ffi (which this backend needs anyway) covers libc.
  getenv: (name) => {
    const p = sym.getenv(cstr(name));
    return p === null ? undefined : Deno.UnsafePointerView.getCString(p);
  },
  readText: (path) => {
    const fd = sym.open(cstr(path), O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return fail();
    try {
      const chunks: Uint8Array[] = [];
      for (;;) {
        const chunk = new Uint8Array(65536);
        const n = Number(sym.read(fd, chunk, BigInt(chunk.length)));
        if (n < 0) return fail();
        if (n === 0) break;
        chunks.push(chunk.subarray(0, n));
      }
      return decoder.decode(concat(chunks));
    } finally {
      sym.close(fd);
    }
  },
  writeText: (path, text) => {
    // As `echo > file` opens: sysfs attributes accept it, and a regular file is created.
    const fd = sym.open(cstr(path), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644);
    if (fd < 0) return fail();
    try {
      // One write: a sysfs attribute takes its value in a single call.
      const data = new TextEncoder().encode(text);
      const n = Number(sym.write(fd, data, BigInt(data.length)));
      return n < 0 ? fail() : 0;
    } finally {
      sym.close(fd);
    }
  },
  readLink: (path) => {
    const buf = new Uint8Array(4096);
    const n = Number(sym.readlink(cstr(path), buf, BigInt(buf.length)));
    return n < 0 ? fail() : decoder.decode(buf.subarray(0, n));
  },
  readDir: (path) => {
    const dir = sym.opendir(cstr(path));
    if (dir === null) return fail();
    try {
      const names: string[] = [];
      for (;;) {
        errnoCell[0] = 0;
        const entry = sym.readdir(dir);
        if (entry === null) {
          if (errnoCell[0] !== 0) return fail();
          break;
        }
        // SAFETY: readdir returned a struct dirent that stays valid until the next readdir or
        // closedir; d_name is its NUL-terminated name at offset 19 on 64-bit glibc.
        const name = Deno.UnsafePointerView.getCString(entry, DIRENT_NAME_OFFSET);
        if (name !== "." && name !== "..") names.push(name);
      }
      return names.sort();
    } finally {
      sym.closedir(dir);
    }
  },
  mkdir: (path, mode) => ret(sym.mkdir(cstr(path), mode)),
  unlink: (path) => ret(sym.unlink(cstr(path))),
  chown: (path, uid, gid) => ret(sym.chown(cstr(path), uid, gid)),
};

/** offsetof(struct dirent, d_name) on 64-bit glibc: ino (8), off (8), reclen (2), type (1). */
const DIRENT_NAME_OFFSET = 19;
const decoder = new TextDecoder();

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}
