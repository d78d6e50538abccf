/**
 * Timing helpers for the benchmarks, the same algorithm as bench/harness.h so that both sides of a
 * ratio are measured alike: a batch function runs its operation n times; batches run for at least
 * `warmupMs` (JIT tiers settle: milliseconds on the host, seconds under TCG) and grow until one
 * takes about `targetMs`; then `reps` batches are timed, each reported as nanoseconds per operation. Results are JSON lines on stdout, read by scripts/bench.mjs.
 *
 * Runtime-agnostic: runs under Deno and Bun.
 *
 * @module
 */
import process from "node:process";

/** How long and how often to measure. */
export interface BenchOptions {
  /** Wall time of one timed batch, in ms. */
  targetMs: number;
  /** Minimum warm-up before the timed batches (JIT tiers, caches), in ms. */
  warmupMs: number;
  /** Timed batches. */
  reps: number;
}

/** One benchmark's measurements, as a JSON line. */
export interface Sample {
  /** The benchmark's id, the same on the C side, e.g. `mmio.mmap.read32`. */
  bench: string;
  /** `deno`, `bun`, `c` or `kernel`. */
  side: string;
  /** Unit of the samples: `ns`, `us`, `pairs/s`, `IOPS`. */
  unit: string;
  /** One value per repetition. */
  samples: number[];
  /** The C (or kernel) benchmark this one is compared with, when its id differs. */
  baseline?: string;
  /** Anything else worth keeping (e.g. which path the registers took). */
  note?: string;
}

/** The runtime running this file. */
export const runtime: string = (globalThis as { Bun?: unknown }).Bun !== undefined ? "bun" : "deno";

/** Reads `--reps N --target-ms N --warmup-ms N` from the command line. */
export function optionsFromArgs(defaults: BenchOptions): BenchOptions {
  const o = { ...defaults };
  const a = process.argv;
  for (let i = 0; i < a.length - 1; i++) {
    const v = Number(a[i + 1]);
    if (a[i] === "--reps" && v > 0) o.reps = v;
    if (a[i] === "--target-ms" && v > 0) o.targetMs = v;
    if (a[i] === "--warmup-ms" && v >= 0) o.warmupMs = v;
  }
  return o;
}

/** The value after `--name` on the command line, if any. */
export function argValue(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/**
 * Times a batch function.
 *
 * @param batch Runs the operation `n` times.
 * @param o How long and how often.
 * @returns Nanoseconds per operation, one value per timed batch.
 */
export function timeOps(batch: (n: number) => void, o: BenchOptions): number[] {
  const target = o.targetMs * 1e6, end = performance.now() + o.warmupMs;
  let n = 1, dt: number;
  for (;;) {
    const t0 = performance.now();
    batch(n);
    dt = (performance.now() - t0) * 1e6;
    if (performance.now() >= end && dt >= target / 8) break;
    if (dt < target / 8 && n < 2 ** 40) n *= 2;
  }
  n = Math.max(1, Math.floor((n * target) / Math.max(dt, 1)));
  const out: number[] = [];
  for (let r = 0; r < o.reps; r++) {
    const t0 = performance.now();
    batch(n);
    out.push(((performance.now() - t0) * 1e6) / n);
  }
  return out;
}

/**
 * The p-th percentile (0..100) by nearest rank.
 *
 * @param values The values (not modified).
 * @param p The percentile.
 * @returns The value.
 */
export function percentile(values: readonly number[], p: number): number {
  const v = [...values].sort((a, b) => a - b);
  const i = Math.min(v.length - 1, Math.max(0, Math.ceil((p / 100) * v.length) - 1));
  return v[i]!;
}

/**
 * Prints one result line.
 *
 * @param s The measurements; `side` defaults to this runtime.
 */
export function emit(s: Omit<Sample, "side"> & { side?: string }): void {
  const line: Sample = { side: runtime, ...s, samples: s.samples.map((x) => Number(x.toPrecision(6))) };
  process.stdout.write(JSON.stringify(line) + "\n");
}

/** Progress on stderr. */
export function log(line: string): void {
  process.stderr.write(`bench(${runtime}): ${line}\n`);
}

/** A value the JIT must treat as used. */
export const sink = { value: 0 };
