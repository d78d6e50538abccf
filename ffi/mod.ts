/**
 * Chooses the `Sys` backend for the runtime the code is running on.
 *
 * @module
 */
import type { Sys } from "../lib/sys.ts";

/**
 * Loads the libc backend for the current runtime: ffi/deno.ts under Deno, ffi/bun.ts under Bun.
 *
 * @returns The backend.
 * @throws {Error} On any other runtime.
 */
export async function loadSys(): Promise<Sys> {
  const g = globalThis as { Deno?: unknown; Bun?: unknown };
  if (g.Bun !== undefined) return (await import("./bun.ts")).bunSys;
  if (g.Deno !== undefined) return (await import("./deno.ts")).denoSys;
  throw new Error("Cannot load a VFIO backend: vfio-ts runs on Deno (--allow-ffi) or Bun");
}
