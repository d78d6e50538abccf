/**
 * Which processes hold a file open, found the way `fuser` finds them: through procfs.
 *
 * @module
 */
import type { Sys } from "./sys.ts";

/** A process holding a file open. */
export interface FileHolder {
  /** The process ID. */
  pid: number;
  /** Its command name (/proc/PID/comm, at most 15 characters), or `""` when it cannot be read. */
  comm: string;
}

/**
 * Finds the processes that have `path` open: every /proc/PID/fd/N whose link target is `path`. It
 * sees the processes whose fd directory the caller may read (all of them as root, its own user's
 * otherwise); everything unreadable, and processes that exit during the scan, are skipped
 * silently. It never throws: a diagnostic must not hide the error it is explaining.
 *
 * @param sys The syscall backend (its readDir, readLink and readText).
 * @param path The absolute path as the kernel names it in /proc/PID/fd, e.g. `/dev/vfio/4`.
 * @returns The holders, each process once, sorted by PID; the calling process is included when it
 *   holds the file itself.
 *
 * @example Who holds a VFIO group open
 * ```ts
 * import { fileHolders } from "./proc.ts";
 * import type { Sys } from "./sys.ts";
 *
 * function explainBusy(sys: Sys, node: string): string {
 *   const holders = fileHolders(sys, node);
 *   return holders.length === 0
 *     ? `${node} is busy`
 *     : `${node} is held by ${holders.map((h) => `process ${h.pid} (${h.comm})`).join(", ")}`;
 * }
 * ```
 */
export function fileHolders(sys: Sys, path: string): FileHolder[] {
  const found: FileHolder[] = [];
  let pids: number[];
  try {
    const entries = sys.readDir("/proc");
    if (typeof entries === "number") return found;
    pids = entries.filter((e) => /^\d+$/.test(e)).map(Number).sort((a, b) => a - b);
  } catch {
    return found;
  }
  for (const pid of pids) {
    try {
      const fds = sys.readDir(`/proc/${pid}/fd`);
      if (typeof fds === "number") continue;
      if (!fds.some((fd) => sys.readLink(`/proc/${pid}/fd/${fd}`) === path)) continue;
      const comm = sys.readText(`/proc/${pid}/comm`);
      found.push({ pid, comm: typeof comm === "string" ? comm.trim() : "" });
    } catch {
      // A backend that throws instead of returning -errno: skip the entry like any unreadable one.
    }
  }
  return found;
}

/**
 * Names the processes that hold a file open, for an EBUSY hint: `qemu (pid 812), vfio (pid 990)`.
 *
 * @param sys The syscall backend.
 * @param path The file, as /proc/PID/fd names it.
 * @param otherwise What to say when no holder is visible (another user's process, or this one).
 * @param options `exceptSelf`: leave the calling process out.
 * @returns The text.
 */
export function describeHolders(
  sys: Sys,
  path: string,
  otherwise: string,
  options: { exceptSelf?: boolean } = {},
): string {
  let holders = fileHolders(sys, path);
  if (options.exceptSelf) {
    // The caller holds the file itself (a cdev it opened, whose bind failed): name only the others.
    const self = sys.readLink("/proc/self");
    holders = holders.filter((h) => String(h.pid) !== self);
  }
  return holders.length ? holders.map((h) => `${h.comm || "?"} (pid ${h.pid})`).join(", ") : otherwise;
}
