/**
 * The libc and Linux constants and structs behind the `Sys` seam: open flags, mmap, eventfd, poll
 * and the errno names. Values are the x86-64/arm64 Linux ones; tests/conformance checks them
 * against the system headers.
 *
 * @module
 */
import { StructDef } from "./struct.ts";

export const O_RDONLY = 0o0;
export const O_WRONLY = 0o1;
export const O_RDWR = 0o2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

export const PROT_NONE = 0x0;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_LOCKED = 0x2000;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;
export const MAP_HUGE_SHIFT = 26;

export const EFD_CLOEXEC = O_CLOEXEC;
export const EFD_NONBLOCK = O_NONBLOCK;
export const EFD_SEMAPHORE = 1;

export const POLLIN = 0x001;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;
export const pollfd = new StructDef("pollfd", 8, {
  fd: ["s32", 0],
  events: ["s16", 4], // short in <poll.h>
  revents: ["s16", 6],
});

/** RLIMIT_MEMLOCK for getrlimit(2). */
export const RLIMIT_MEMLOCK = 8;
export const rlimit = new StructDef("rlimit", 16, { rlim_cur: ["u64", 0], rlim_max: ["u64", 8] });
export const RLIM_INFINITY = 0xffffffffffffffffn;

/** errno names by number, as <errno.h> defines them on Linux (asm-generic). */
export const ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  7: "E2BIG",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  25: "ENOTTY",
  28: "ENOSPC",
  30: "EROFS",
  34: "ERANGE",
  38: "ENOSYS",
  61: "ENODATA",
  75: "EOVERFLOW",
  95: "EOPNOTSUPP",
  110: "ETIMEDOUT",
};

/** The inverse of {@link ERRNO_NAMES}: errno numbers by name. */
export const ERRNO: Readonly<Record<string, number>> = Object.fromEntries(
  Object.entries(ERRNO_NAMES).map(([n, name]) => [name, Number(n)]),
);
