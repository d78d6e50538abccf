/**
 * Process limits that decide whether DMA mapping can succeed.
 *
 * @module
 */
import type { Sys } from "./sys.ts";
import { RLIM_INFINITY, rlimit, RLIMIT_MEMLOCK } from "./uapi/libc.ts";

/**
 * Reads RLIMIT_MEMLOCK.
 *
 * @param sys The syscall backend.
 * @returns The soft limit in bytes (undefined when unlimited or unreadable).
 */
export function memlockLimit(sys: Sys): bigint | undefined {
  const r = rlimit.alloc();
  if (sys.getrlimit(RLIMIT_MEMLOCK, r.bytes) < 0) return undefined;
  const cur = r.get("rlim_cur");
  return cur === RLIM_INFINITY ? undefined : cur;
}

/** Formats a byte count: `8 MiB`, `64 KiB`, `512 bytes`. */
export function formatBytes(n: bigint): string {
  for (const [unit, shift] of [["GiB", 30n], ["MiB", 20n], ["KiB", 10n]] as const) {
    if (n >= 1n << shift && n % (1n << shift) === 0n) return `${n >> shift} ${unit}`;
  }
  return `${n} bytes`;
}

/**
 * The fix for a DMA map that ran out of locked memory.
 *
 * @param sys The syscall backend.
 * @param size The size of the mapping that failed.
 * @returns A hint naming the current limit and how to raise it.
 */
export function memlockHint(sys: Sys, size: number): string {
  const limit = memlockLimit(sys);
  const now = limit === undefined ? "unlimited" : formatBytes(limit);
  return `pinning ${formatBytes(BigInt(size))} for DMA counts against RLIMIT_MEMLOCK, which is ${now}; ` +
    "raise it with `ulimit -l unlimited` (or LimitMEMLOCK= in a systemd unit), or run with CAP_IPC_LOCK";
}
