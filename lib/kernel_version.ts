/**
 * The running kernel's version, for errors that name the Linux version a feature needs.
 *
 * Features are detected by asking the kernel (a probe, or the ioctl's own refusal); the version is
 * read only to say which one it was when the refusal alone is ambiguous (EINVAL for an unknown flag).
 *
 * @module
 */
import type { Sys } from "./sys.ts";

/** Where the kernel reports its release, e.g. `7.3.4+bpo-amd64`. */
export const OSRELEASE_PATH = "/proc/sys/kernel/osrelease";

/**
 * The running kernel's release string.
 *
 * @param sys The syscall backend.
 * @returns E.g. `"7.3.4+bpo-amd64"`, or undefined when it cannot be read.
 */
export function kernelRelease(sys: Sys): string | undefined {
  const text = sys.readText(OSRELEASE_PATH);
  return typeof text === "string" ? text.trim() : undefined;
}

/**
 * Whether the running kernel is older than `major.minor`.
 *
 * @param sys The syscall backend.
 * @param version `"X.Y"`.
 * @returns True or false, or undefined when the release cannot be read or parsed.
 */
export function kernelOlderThan(sys: Sys, version: string): boolean | undefined {
  const m = /^(\d+)\.(\d+)/.exec(kernelRelease(sys) ?? "");
  if (!m) return undefined;
  const [want, wantMinor] = version.split(".").map(Number) as [number, number];
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major < want || (major === want && minor < wantMinor);
}

/**
 * The hint of an UnsupportedError for a feature of a newer kernel: what it needs, and what runs.
 *
 * @param sys The syscall backend.
 * @param feature What is missing, e.g. `"VFIO_DEVICE_FEATURE_DMA_BUF"`.
 * @param version The first Linux version that has it, `"X.Y"`.
 * @param more What else it needs (a config option), if anything.
 * @returns The hint.
 */
export function needsKernel(sys: Sys, feature: string, version: string, more = ""): string {
  const release = kernelRelease(sys);
  return `${feature} needs Linux ${version} or later${more ? ` ${more}` : ""}; this kernel is ${
    release ?? "of unknown version"
  }`;
}
