/**
 * The library's errors: one hierarchy under {@link VfioError}, for conditions a caller is meant to
 * catch.
 *
 * - A syscall the kernel refused is a plain {@link VfioError}: `errno` is what the kernel returned
 *   and `code` its name (`"EBUSY"`).
 * - A condition the library itself detects has its own subclass and a `code` of the form
 *   `"ERR_VFIO_…"`; `errno` is set only when a syscall really failed on the way (e.g. the ENOENT of
 *   opening /dev/vfio/vfio on a machine without VFIO). The library never invents an errno.
 *
 * Misuse (a bad index, an offset out of range, use after close) is a TypeError or RangeError, as in
 * Deno std.
 *
 * @module
 */
import { ERRNO_NAMES } from "./uapi/libc.ts";

/** What a {@link VfioError} is built from. */
export interface VfioErrorInit {
  /** The operation, e.g. `"VFIO_IOMMU_MAP_DMA"` or `"open"`. */
  op: string;
  /** The positive errno the kernel returned; omitted when no syscall failed. */
  errno?: number | undefined;
  /** The library's own code, for a condition no errno describes (subclasses set it). */
  code?: string | undefined;
  /** The file the operation was on, when there is one. */
  path?: string | undefined;
  /** What the operation was for, e.g. `"map DMA at iova 0x100000"`. */
  action?: string | undefined;
  /** How to fix it, when the library knows. */
  hint?: string | undefined;
}

/**
 * A VFIO operation that failed. The message reads as a sentence with the fix:
 * "Cannot set IOMMU type 3 on /dev/vfio/vfio (VFIO_SET_IOMMU: EPERM): …".
 *
 * @example Catching a busy group
 * ```ts
 * import { open, VfioError } from "@vfio-ts/vfio";
 *
 * try {
 *   using device = await open("0000:00:04.0");
 * } catch (e) {
 *   if (e instanceof VfioError && e.code === "EBUSY") console.error(e.hint);
 *   else throw e;
 * }
 * ```
 */
export class VfioError extends Error {
  /** The operation that failed, e.g. `"VFIO_GROUP_GET_STATUS"` or `"open"`. */
  readonly op: string;
  /** The errno the kernel returned, or undefined when the library refused on its own. */
  readonly errno: number | undefined;
  /** The errno's name (`"EBUSY"`), or the library's code (`"ERR_VFIO_DEVICE_NOT_FOUND"`). */
  readonly code: string;
  /** The file involved, if any. */
  readonly path: string | undefined;
  /** The fix, if the library knows one. */
  readonly hint: string | undefined;

  /**
   * Builds the error and its message from the failed operation.
   *
   * @param init The operation, errno or code, path, action and hint.
   */
  constructor(init: VfioErrorInit) {
    const code = init.code ?? (init.errno === undefined ? "ERR_VFIO" : errnoName(init.errno));
    const what = init.action ?? `run ${init.op}`;
    const where = init.path && !what.includes(init.path) ? ` on ${init.path}` : "";
    const why = init.errno === undefined ? "" : ` (${init.op}: ${errnoName(init.errno)})`;
    super(`Cannot ${what}${where}${why}${init.hint ? `: ${init.hint}` : ""}`);
    this.name = "VfioError";
    this.op = init.op;
    this.errno = init.errno;
    this.code = code;
    this.path = init.path;
    this.hint = init.hint;
  }
}

/**
 * The machine has no usable VFIO: /dev/vfio/vfio (legacy) or /dev/iommu (iommufd) is missing, or
 * the kernel speaks another VFIO API version. `code` is `"ERR_VFIO_UNAVAILABLE"`.
 */
export class VfioUnavailableError extends VfioError {
  /**
   * Builds the error from the failed lookup.
   *
   * @param init What failed; `code` is set by the class.
   */
  constructor(init: Omit<VfioErrorInit, "code">) {
    super({ ...init, code: "ERR_VFIO_UNAVAILABLE" });
    this.name = "VfioUnavailableError";
  }
}

/** No PCI device has this address. `code` is `"ERR_VFIO_DEVICE_NOT_FOUND"`. */
export class DeviceNotFoundError extends VfioError {
  /** The device's canonical PCI address. */
  readonly bdf: string;

  /**
   * Builds the error for an address with no device.
   *
   * @param bdf The canonical address that was looked up.
   * @param init The lookup that failed; `code` and `hint` are set by the class.
   */
  constructor(bdf: string, init: Omit<VfioErrorInit, "code" | "hint">) {
    super({
      ...init,
      code: "ERR_VFIO_DEVICE_NOT_FOUND",
      hint: `no PCI device ${bdf}: see lspci or \`vfio list\``,
    });
    this.name = "DeviceNotFoundError";
    this.bdf = bdf;
  }
}

/**
 * The device exists but is bound to another driver (or none), not vfio-pci.
 * `code` is `"ERR_VFIO_DEVICE_NOT_BOUND"`.
 */
export class DeviceNotBoundError extends VfioError {
  /** The device's canonical PCI address. */
  readonly bdf: string;
  /** The driver it is bound to, or undefined when it has none. */
  readonly driver: string | undefined;

  /**
   * Builds the error, naming the device's current driver and the fix.
   *
   * @param bdf The device.
   * @param driver Its current driver.
   * @param init The operation that needed vfio-pci; `code` and `hint` are set by the class.
   */
  constructor(bdf: string, driver: string | undefined, init: Omit<VfioErrorInit, "code" | "hint">) {
    super({
      ...init,
      code: "ERR_VFIO_DEVICE_NOT_BOUND",
      hint: `${bdf} is bound to ${driver ?? "no driver"}, not vfio-pci: run \`vfio bind ${bdf}\``,
    });
    this.name = "DeviceNotBoundError";
    this.bdf = bdf;
    this.driver = driver;
  }
}

/** The text is not a PCI address. `code` is `"ERR_VFIO_INVALID_PCI_ADDRESS"`. */
export class InvalidPciAddressError extends VfioError {
  /** The text that was given. */
  readonly input: string;

  /**
   * Builds the error for a text that is not a PCI address.
   *
   * @param input The text that failed to parse.
   */
  constructor(input: string) {
    super({
      op: "parse",
      code: "ERR_VFIO_INVALID_PCI_ADDRESS",
      action: `parse PCI address ${JSON.stringify(input)}`,
      hint: "expected DDDD:BB:DD.F in hex, e.g. 0000:00:04.0",
    });
    this.name = "InvalidPciAddressError";
    this.input = input;
  }
}

/**
 * The kernel or the device does not support what was asked: a reset on a device with no reset
 * method, DMA mapping in no-IOMMU mode, a feature of a newer kernel.
 * `code` is `"ERR_VFIO_UNSUPPORTED"`.
 */
export class UnsupportedError extends VfioError {
  /**
   * Builds the error for a request the kernel or device cannot serve.
   *
   * @param init What was asked; `code` is set by the class.
   */
  constructor(init: Omit<VfioErrorInit, "code">) {
    super({ ...init, code: "ERR_VFIO_UNSUPPORTED" });
    this.name = "UnsupportedError";
  }
}

/**
 * Names an errno value.
 *
 * @param errno A positive errno value.
 * @returns Its name, e.g. `"ENOMEM"`, or `"E<n>"` when the table has none.
 */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `E${errno}`;
}

/**
 * Checks a {@link Sys} result: returns it when non-negative, otherwise throws a {@link VfioError}.
 *
 * @param ret The syscall's return value (negative errno on failure).
 * @param init Everything but the errno, plus an optional function that picks a hint from it.
 * @returns `ret`, when it is not an error.
 * @throws {VfioError} When `ret` is negative.
 */
export function check(
  ret: number,
  init: Omit<VfioErrorInit, "errno" | "code"> & {
    hints?: ((code: string) => string | undefined) | undefined;
  },
): number {
  if (ret >= 0) return ret;
  const code = errnoName(-ret);
  throw new VfioError({ ...init, errno: -ret, hint: init.hint ?? init.hints?.(code) });
}

/**
 * Runs every teardown step even when one fails, then reports the failures: the single error, or
 * an AggregateError. Teardown that stopped at the first error would leave the rest open (a BAR
 * mapped, a group busy in the kernel).
 *
 * @param what What is being torn down, for the AggregateError's message.
 * @param steps The steps, in order.
 * @throws {Error} The one failure, or an AggregateError of several.
 */
export function runAll(what: string, steps: Iterable<() => void>): void {
  const errors: unknown[] = [];
  for (const step of steps) {
    try {
      step();
    } catch (e) {
      errors.push(e);
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new AggregateError(errors, `Cannot close ${what} cleanly`);
}
