/**
 * The libc and Linux constants and structs behind the `Sys` seam: open flags, mmap, eventfd, poll
 * and the errno names. Values are the x86-64/arm64 Linux ones; tests/conformance checks them
 * against the system headers.
 *
 * @module
 */
import { type S16, type S32, StructDef, type U64 } from "./struct.ts";

/** open(2) flag: open for reading only. */
export const O_RDONLY = 0o0;
/** open(2) flag: open for writing only. */
export const O_WRONLY = 0o1;
/** open(2) flag: open for reading and writing. */
export const O_RDWR = 0o2;
/** open(2): create the file if it does not exist. */
export const O_CREAT = 0o100;
/** open(2): truncate an existing regular file to length 0. */
export const O_TRUNC = 0o1000;
/** open(2) flag: non-blocking I/O. */
export const O_NONBLOCK = 0o4000;
/** open(2) flag: close the fd on execve(2). */
export const O_CLOEXEC = 0o2000000;

/** mmap(2) protection: pages may not be accessed. */
export const PROT_NONE = 0x0;
/** mmap(2) protection: pages may be read. */
export const PROT_READ = 0x1;
/** mmap(2) protection: pages may be written. */
export const PROT_WRITE = 0x2;
/** mmap(2) flag: share the mapping; writes reach the file or device. */
export const MAP_SHARED = 0x01;
/** mmap(2) flag: a private copy-on-write mapping. */
export const MAP_PRIVATE = 0x02;
/** mmap(2) flag: the mapping is not backed by a file; zero-filled. */
export const MAP_ANONYMOUS = 0x20;
/** mmap(2) flag: lock the pages in memory, as mlock(2). */
export const MAP_LOCKED = 0x2000;
/** mmap(2) flag: prefault the page tables. */
export const MAP_POPULATE = 0x8000;
/** mmap(2) flag: allocate the mapping from huge pages. */
export const MAP_HUGETLB = 0x40000;
/** mmap(2): with MAP_HUGETLB, log2 of the huge page size goes in the flag bits from this shift. */
export const MAP_HUGE_SHIFT = 26;

/** eventfd(2) flag: close the fd on execve(2); equal to O_CLOEXEC. */
export const EFD_CLOEXEC: typeof O_CLOEXEC = O_CLOEXEC;
/** eventfd(2) flag: non-blocking reads and writes; equal to O_NONBLOCK. */
export const EFD_NONBLOCK: typeof O_NONBLOCK = O_NONBLOCK;
/** eventfd(2) flag: each read decrements the counter by one. */
export const EFD_SEMAPHORE = 1;

/** poll(2) event: there is data to read. */
export const POLLIN = 0x001;
/** poll(2) revent: an error condition. */
export const POLLERR = 0x008;
/** poll(2) revent: hang up. */
export const POLLHUP = 0x010;
/** poll(2) revent: the fd is not open. */
export const POLLNVAL = 0x020;
/** struct pollfd: one fd and the events requested and returned (poll(2)). */
export const pollfd: StructDef<{ fd: S32; events: S16; revents: S16 }> = new StructDef("pollfd", 8, {
  fd: ["s32", 0],
  events: ["s16", 4], // short in <poll.h>
  revents: ["s16", 6],
});

/** RLIMIT_MEMLOCK for getrlimit(2). */
export const RLIMIT_MEMLOCK = 8;
/** struct rlimit: the soft and hard limits of a resource (getrlimit(2), setrlimit(2)). */
export const rlimit: StructDef<{ rlim_cur: U64; rlim_max: U64 }> = new StructDef("rlimit", 16, {
  rlim_cur: ["u64", 0],
  rlim_max: ["u64", 8],
});
/** rlim_t value meaning no limit. */
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
  77: "EBADFD",
  90: "EMSGSIZE",
  95: "EOPNOTSUPP",
  98: "EADDRINUSE",
  110: "ETIMEDOUT",
};

/** The inverse of {@link ERRNO_NAMES}: errno numbers by name. */
export const ERRNO: Readonly<Record<string, number>> = Object.fromEntries(
  Object.entries(ERRNO_NAMES).map(([n, name]) => [name, Number(n)]),
);
