/**
 * The FFI floor for the ioctl benchmarks: ioctl(2) called straight through the runtime's FFI, with no
 * library code, in each parameter style the runtime offers. `sys.ioctlPtr` is compared with these in
 * the same run, so the library's own cost (over the runtime's) shows as the ratio to `buffer_errno`,
 * which does exactly what the backend does.
 *
 * @module
 */

import { type BenchOptions, emit, sink, timeOps } from "./_harness.ts";

/** One way to call ioctl(2) through the runtime's FFI. */
export interface IoctlVariant {
  /** The row suffix, e.g. `buffer`. */
  name: string;
  /** What the variant does, for the report. */
  note: string;
  /** Binds the call once (pointers are made here, outside the timed loop). */
  make(fd: number, request: number, arg: Uint8Array): () => number;
}

/**
 * The variants of the runtime this runs on.
 *
 * @returns Deno's or Bun's variants.
 */
export async function ioctlVariants(): Promise<IoctlVariant[]> {
  const bun = (globalThis as { Bun?: unknown }).Bun !== undefined;
  return bun
    ? (await import("./_ffi_floor_bun.ts")).variants()
    : (await import("./_ffi_floor_deno.ts")).variants();
}

/**
 * Times one variant, bound to an ioctl, and prints its row `<bench>.floor.<variant>`.
 *
 * @param bench The library row it is the floor of, e.g. `ioctl.enotty`.
 * @param v The variant.
 * @param call The bound call (from `v.make`), already checked to answer as expected.
 * @param o How long and how often.
 */
export function emitFloor(bench: string, v: IoctlVariant, call: () => number, o: BenchOptions): void {
  emit({
    bench: `${bench}.floor.${v.name}`,
    baseline: bench,
    unit: "ns",
    note: v.note,
    samples: timeOps((n) => {
      let s = 0;
      for (let i = 0; i < n; i++) s += call();
      sink.value = s;
    }, o),
  });
}
