/**
 * How the `vfio` command reports errors: {@link CliError} for conditions the CLI detects itself, one
 * text line for humans, and one JSON object (`--json`) with the fields of the library's
 * {@link VfioError}.
 *
 * @module
 */
import { VfioError } from "../lib/errors.ts";

/** What a {@link CliError} carries besides its message. */
export interface CliErrorInit {
  /** A stable `"ERR_VFIO_…"` code. */
  code: string;
  /** The process's exit status: 1 for a failure (the default), 2 for bad usage. */
  exitCode?: number | undefined;
  /** How to fix it, when the CLI knows; the message ends with it too. */
  hint?: string | undefined;
  /** The file involved, if any. */
  path?: string | undefined;
}

/** A condition the CLI itself detects (bad usage, not root, a device in use): no errno. */
export class CliError extends Error {
  /** A stable `"ERR_VFIO_…"` code, e.g. `"ERR_VFIO_USAGE"`. */
  readonly code: string;
  /** The process's exit status: 1 for a failure, 2 for bad usage. */
  readonly exitCode: number;
  /** The fix, if the CLI knows one. */
  readonly hint: string | undefined;
  /** The file involved, if any. */
  readonly path: string | undefined;

  /**
   * Builds the error.
   *
   * @param message The message: "Cannot …: what to do".
   * @param init The code, exit status, hint and path.
   */
  constructor(message: string, init: CliErrorInit) {
    super(message);
    this.name = "CliError";
    this.code = init.code;
    this.exitCode = init.exitCode ?? 1;
    this.hint = init.hint;
    this.path = init.path;
  }
}

/** Builds a bad-usage error (exit status 2, code `ERR_VFIO_USAGE`). */
export function usageError(message: string, hint = "run `vfio --help` for usage"): CliError {
  return new CliError(`${message}: ${hint}`, { code: "ERR_VFIO_USAGE", exitCode: 2, hint });
}

/** What `--json` prints on stdout when a command fails. Absent values are null. */
export interface ErrorResult {
  /** The output format's version. */
  version: 1;
  /** The error. */
  error: {
    /** The error class: `VfioError`, one of its subclasses, `CliError`, or a JavaScript error's name. */
    name: string;
    /** The errno name (`"EBUSY"`) or an `"ERR_VFIO_…"` code; null for an unexpected error. */
    code: string | null;
    /** The errno the kernel returned; null when no syscall failed. */
    errno: number | null;
    /** The message, one line, with the fix. */
    message: string;
    /** The fix alone; null when none is known. */
    hint: string | null;
    /** The file involved; null when none. */
    path: string | null;
  };
}

/**
 * Whether an error is Deno refusing a permission (not the kernel refusing a file), and if so the
 * flag Deno asked for.
 *
 * @param e The error.
 * @returns The flag, e.g. `"--allow-ffi"`, or undefined when `e` is not a Deno permission error.
 */
export function denoPermissionFlag(e: unknown): string | undefined {
  if (!(e instanceof Error)) return undefined;
  const errors = (globalThis as { Deno?: { errors?: Record<string, unknown> } }).Deno?.errors;
  const NotCapable = errors?.NotCapable;
  const refused = e.name === "NotCapable" ||
    (typeof NotCapable === "function" && e instanceof NotCapable) ||
    // Deno 1 called it PermissionDenied, a name it now gives the OS's EACCES: the flag tells them apart.
    (e.name === "PermissionDenied" && /run again with the --allow-/.test(e.message));
  if (!refused) return undefined;
  return /--allow-[a-z-]+/.exec(e.message)?.[0] ?? "--allow-ffi";
}

/**
 * Turns a Deno permission refusal into a {@link CliError} that says which flag to pass, so that it
 * is never mistaken for (or reported as) a file permission problem. Other errors pass unchanged.
 *
 * @param e The error.
 * @returns A CliError with code `ERR_VFIO_DENO_PERMISSION`, or `e`.
 */
export function explainPermission(e: unknown): unknown {
  const flag = denoPermissionFlag(e);
  if (flag === undefined) return e;
  const hint = flag === "--allow-ffi"
    ? "run it with `deno run --allow-ffi cli/vfio.ts …` (the CLI needs no other permission)"
    : `the CLI should need only --allow-ffi, so this is a bug; meanwhile run it with ${flag} as well`;
  return new CliError(`Cannot run: Deno refused a permission (${oneLine(e)}): ${hint}`, {
    code: "ERR_VFIO_DENO_PERMISSION",
    hint,
  });
}

/**
 * An error's message on one line, with the messages of an AggregateError's errors.
 *
 * @param e The error.
 * @returns The line.
 */
export function oneLine(e: unknown): string {
  const message = e instanceof AggregateError
    ? [e.message, ...e.errors.map((x) => (x instanceof Error ? x.message : String(x)))].join("; ")
    : e instanceof Error
    ? e.message
    : String(e);
  return message.replace(/\s*\n\s*/g, " ");
}

/**
 * The exit status for an error: a CliError's own, 2 for an argument that is not a PCI address, else 1.
 *
 * @param e The error.
 * @returns 1 or 2.
 */
export function exitCodeOf(e: unknown): number {
  if (e instanceof CliError) return e.exitCode;
  if (e instanceof VfioError && e.code === "ERR_VFIO_INVALID_PCI_ADDRESS") return 2;
  return 1;
}

/**
 * The JSON form of an error, for `--json`: the {@link VfioError} fields, null where absent.
 *
 * @param e The error.
 * @returns The object `--json` prints.
 */
export function errorJson(e: unknown): ErrorResult {
  const err = e instanceof Error ? e : new Error(String(e));
  const known = err instanceof VfioError || err instanceof CliError;
  const code = known ? err.code : (err as { code?: unknown }).code;
  return {
    version: 1,
    error: {
      name: err.name,
      code: typeof code === "string" ? code : null,
      errno: err instanceof VfioError ? err.errno ?? null : null,
      message: oneLine(err),
      hint: known ? err.hint ?? null : null,
      path: known ? err.path ?? null : null,
    },
  };
}
