/**
 * The file half of the `Sys` seam (sysfs, procfs, /dev), shared by both backends: node:fs runs
 * unchanged on Deno and Bun. Failures become -errno, as the rest of the seam reports them.
 *
 * @module
 */
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { ERRNO } from "../lib/uapi/libc.ts";
import type { Sys } from "../lib/sys.ts";

function negErrno(e: unknown): number {
  const code = (e as { code?: string }).code;
  const n = code === undefined ? undefined : ERRNO[code];
  if (n === undefined) throw e;
  return -n;
}

/** The file methods of {@link Sys}, over node:fs. */
export const nodeFs: Pick<Sys, "readText" | "writeText" | "readLink" | "readDir"> = {
  readText(path) {
    try {
      return readFileSync(path, "utf8");
    } catch (e) {
      return negErrno(e);
    }
  },
  writeText(path, text) {
    try {
      writeFileSync(path, text);
      return 0;
    } catch (e) {
      return negErrno(e);
    }
  },
  readLink(path) {
    try {
      return readlinkSync(path);
    } catch (e) {
      return negErrno(e);
    }
  },
  readDir(path) {
    try {
      return readdirSync(path).sort();
    } catch (e) {
      return negErrno(e);
    }
  },
};
