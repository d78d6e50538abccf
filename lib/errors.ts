/**
 * The library's one error class for failed syscalls, carrying the errno and the fix.
 *
 * Misuse (a bad index, an offset out of range, use after close) is a TypeError or RangeError;
 * {@link VfioError} is for conditions the caller is meant to catch: the kernel said no.
 *
 * @module
 */
import { ERRNO, ERRNO_NAMES } from "./uapi/libc.ts";

/** What a {@link VfioError} is built from. */
export interface VfioErrorInit {
  /** The operation, e.g. `"VFIO_IOMMU_MAP_DMA"` or `"open"`. */
  op: string;
  /** The positive errno value. */
  errno: number;
  /** The file the operation was on, when there is one. */
  path?: string | undefined;
  /** What the operation was for, e.g. `"map DMA at iova 0x100000"`. */
  action?: string | undefined;
  /** How to fix it, when the library knows. */
  hint?: string | undefined;
}

/**
 * A syscall or ioctl that failed. The message names the action, the errno, the path and the fix:
 * "Cannot set IOMMU type 3 on /dev/vfio/vfio (VFIO_SET_IOMMU: EPERM): …".
 *
 * @example Catching a busy group
 * ```ts ignore
 * import { VfioError } from "./errors.ts";
 * try {
 *   // ... open a group
 * } catch (e) {
 *   if (e instanceof VfioError && e.code === "EBUSY") console.log(e.hint);
 * }
 * ```
 */
export class VfioError extends Error {
  /** The operation that failed. */
  readonly op: string;
  /** The positive errno value. */
  readonly errno: number;
  /** The errno's name, e.g. `"EBUSY"`, or `"E<n>"` for an unnamed one. */
  readonly code: string;
  /** The file involved, if any. */
  readonly path: string | undefined;
  /** The fix, if the library knows one. */
  readonly hint: string | undefined;

  /**
   * Builds the error and its message from the failed operation.
   *
   * @param init The operation, errno, path, action and hint.
   */
  constructor(init: VfioErrorInit) {
    const code = errnoName(init.errno);
    const where = init.path ? ` on ${init.path}` : "";
    const what = init.action ?? `run ${init.op}`;
    super(
      `Cannot ${what}${where} (${init.op}: ${code})${init.hint ? `: ${init.hint}` : ""}`,
    );
    this.name = "VfioError";
    this.op = init.op;
    this.errno = init.errno;
    this.code = code;
    this.path = init.path;
    this.hint = init.hint;
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
 * Looks an errno up by name.
 *
 * @param name An errno name such as `"EBUSY"`.
 * @returns Its number.
 * @throws {RangeError} If the name is unknown.
 */
export function errno(name: string): number {
  const n = ERRNO[name];
  if (n === undefined) throw new RangeError(`Cannot find errno ${name}`);
  return n;
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
  init: Omit<VfioErrorInit, "errno"> & { hints?: ((code: string) => string | undefined) | undefined },
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
