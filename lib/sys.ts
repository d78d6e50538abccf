/**
 * The one seam between the library and the operating system. Every syscall the library makes goes
 * through a {@link Sys}: ffi/deno.ts and ffi/bun.ts implement it over libc, and the unit tests
 * implement it with a fake that records calls. Nothing in lib/ reaches around it.
 *
 * Conventions, as in the kernel: a call that fails returns the negated errno (`-EBUSY`), read by
 * the backend straight after the call; success returns a non-negative value. `mmap` returns a
 * bigint address, or a negative bigint errno.
 *
 * @module
 */

/**
 * Width-exact register access over one mapping, provided by a backend's fast path. Offsets are
 * bytes from the mapping's start and are already bounds-checked by the caller; each method is one
 * real call into native code doing exactly one load or store of that width, which the JIT can
 * neither merge, hoist nor drop.
 */
export interface RawMmio {
  /** Loads 8 bits at `offset`. */
  read8(offset: number): number;
  /** Loads 16 bits at `offset`. */
  read16(offset: number): number;
  /** Loads 32 bits at `offset`. */
  read32(offset: number): number;
  /** Loads 64 bits at `offset` in one access. */
  read64(offset: number): bigint;
  /** Stores 8 bits at `offset`. */
  write8(offset: number, value: number): void;
  /** Stores 16 bits at `offset`. */
  write16(offset: number, value: number): void;
  /** Stores 32 bits at `offset`. */
  write32(offset: number, value: number): void;
  /** Stores 64 bits at `offset` in one access. */
  write64(offset: number, value: bigint): void;
}

/** The syscalls the library uses, as one injectable object. */
export interface Sys {
  /** Which backend this is, e.g. `"deno"`, `"bun"` or `"fake"`. */
  readonly name: string;
  /** The system page size in bytes. */
  readonly pageSize: number;

  /** open(2). @returns The fd, or -errno. */
  open(path: string, flags: number): number;
  /** close(2). @returns 0, or -errno. */
  close(fd: number): number;
  /** ioctl(2) whose argument is a pointer to `arg` (a struct buffer). @returns The result, or -errno. */
  ioctlPtr(fd: number, request: number, arg: Uint8Array): number;
  /** ioctl(2) whose argument is an integer. @returns The result, or -errno. */
  ioctlInt(fd: number, request: number, arg: number): number;
  /** pread(2) into all of `buf`. @returns Bytes read, or -errno. */
  pread(fd: number, buf: Uint8Array, offset: number): number;
  /** pwrite(2) of all of `buf`. @returns Bytes written, or -errno. */
  pwrite(fd: number, buf: Uint8Array, offset: number): number;
  /** read(2). @returns Bytes read, or -errno. */
  read(fd: number, buf: Uint8Array): number;
  /**
   * read(2) that runs off the JavaScript thread, so that waiting on an eventfd leaves the event
   * loop free. @returns Bytes read, or -errno.
   */
  readAsync(fd: number, buf: Uint8Array): Promise<number>;
  /** write(2). @returns Bytes written, or -errno. */
  write(fd: number, buf: Uint8Array): number;
  /** mmap(2) with a NULL hint. @returns The address, or -errno as a negative bigint. */
  mmap(length: number, prot: number, flags: number, fd: number, offset: number): bigint;
  /** munmap(2). @returns 0, or -errno. */
  munmap(address: bigint, length: number): number;
  /**
   * An ArrayBuffer over `length` bytes of mapped memory at `address`. The caller must keep the
   * mapping alive while the buffer is reachable and detach it (`buffer.transfer(0)`) before
   * unmapping.
   */
  memory(address: bigint, length: number): ArrayBuffer;
  /**
   * The fast register accessor over a mapping, or undefined when this backend or architecture has
   * none (the caller then falls back to pread/pwrite on the region).
   */
  mmio(address: bigint, length: number): RawMmio | undefined;
  /**
   * Why {@link mmio} has no fast accessor (an architecture without one, or a load that failed), or
   * undefined when it has one. `vfio doctor` reports it.
   */
  mmioUnavailable(): string | undefined;
  /** eventfd(2). @returns The fd, or -errno. */
  eventfd(initval: number, flags: number): number;
  /** poll(2) over an array of `struct pollfd`. @returns Ready count, or -errno. */
  poll(fds: Uint8Array, nfds: number, timeoutMs: number): number;
  /** getrlimit(2) into a `struct rlimit`. @returns 0, or -errno. */
  getrlimit(resource: number, out: Uint8Array): number;
  /** getuid(2): the real user ID. It cannot fail. */
  getuid(): number;

  /** An environment variable, or undefined when unset or not permitted. */
  getenv(name: string): string | undefined;

  /** Reads a whole text file (sysfs, procfs). @returns The text, or -errno. */
  readText(path: string): string | number;
  /** Writes a text file, creating or truncating it as `echo > path` does (sysfs attributes, records). @returns 0, or -errno. */
  writeText(path: string, text: string): number;
  /** readlink(2). @returns The link target, or -errno. */
  readLink(path: string): string | number;
  /** Lists a directory's entries, sorted. @returns The names, or -errno. */
  readDir(path: string): string[] | number;
  /** mkdir(2) of one directory (no parents). @returns 0, or -errno (-EEXIST when it exists). */
  mkdir(path: string, mode: number): number;
  /** unlink(2). @returns 0, or -errno. */
  unlink(path: string): number;
  /** chown(2): a file's owner and group (`vfio bind --user` hands device nodes over). @returns 0, or -errno. */
  chown(path: string, uid: number, gid: number): number;
}
