/**
 * An owned file descriptor: closed exactly once, and unusable after that.
 *
 * @module
 */
import type { Sys } from "./sys.ts";
import { check, errnoName, VfioUnavailableError } from "./errors.ts";

/** A file descriptor that one object owns. Closing is idempotent; use after close throws. */
export class OwnedFd {
  #fd: number;

  /**
   * Takes ownership of `fd`.
   *
   * @param sys The syscall backend that will close it.
   * @param fd The open file descriptor.
   * @param path What it refers to, for error messages.
   */
  constructor(readonly sys: Sys, fd: number, readonly path: string) {
    this.#fd = fd;
  }

  /**
   * The descriptor number.
   *
   * @throws {TypeError} If it was closed.
   */
  get fd(): number {
    if (this.#fd < 0) throw new TypeError(`Cannot use ${this.path}: it is closed`);
    return this.#fd;
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#fd < 0;
  }

  /**
   * Closes the descriptor; later calls do nothing.
   *
   * @throws {VfioError} If close(2) fails (the descriptor is released regardless).
   */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    check(this.sys.close(fd), { op: "close", path: this.path, action: "close" });
  }

  /**
   * Runs an ioctl whose argument is a struct buffer.
   *
   * @param request The ioctl number.
   * @param arg The struct's bytes, read and written by the kernel.
   * @param name The ioctl's name for errors, e.g. `"VFIO_DEVICE_GET_INFO"`.
   * @param action What it does, for errors: "get device info"; a function when building the text
   *   costs something on a hot path (it runs only on failure).
   * @param hints Picks a fix from the errno name.
   * @returns The ioctl's non-negative result.
   * @throws {VfioError} If the ioctl fails.
   */
  ioctl(
    request: number,
    arg: Uint8Array | number,
    name: string,
    action: string | (() => string),
    hints?: (code: string) => string | undefined,
  ): number {
    const fd = this.fd;
    const r = typeof arg === "number"
      ? this.sys.ioctlInt(fd, request, arg)
      : this.sys.ioctlPtr(fd, request, arg);
    if (r >= 0) return r;
    return check(r, {
      op: name,
      path: this.path,
      action: typeof action === "string" ? action : action(),
      hints,
    });
  }
}

/**
 * Opens a file and wraps it as an {@link OwnedFd}.
 *
 * @param sys The syscall backend.
 * @param path The file to open.
 * @param flags open(2) flags.
 * @param hints Picks a fix from the errno name.
 * @param unavailable For a node whose absence means the kernel lacks the feature: picks, from the
 *   errno name, the hint of a {@link VfioUnavailableError} to throw instead of a plain VfioError.
 * @returns The owned descriptor.
 * @throws {VfioUnavailableError} When `unavailable` names the failure.
 * @throws {VfioError} If open(2) fails otherwise.
 */
export function openFd(
  sys: Sys,
  path: string,
  flags: number,
  hints?: (code: string) => string | undefined,
  unavailable?: (code: string) => string | undefined,
): OwnedFd {
  const fd = sys.open(path, flags);
  if (fd < 0 && unavailable) {
    const hint = unavailable(errnoName(-fd));
    if (hint !== undefined) {
      throw new VfioUnavailableError({ op: "open", errno: -fd, path, action: `open ${path}`, hint });
    }
  }
  check(fd, { op: "open", path, action: `open ${path}`, hints });
  return new OwnedFd(sys, fd, path);
}
