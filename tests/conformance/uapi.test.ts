/**
 * uapi conformance: every constant, ioctl number and struct layout in lib/uapi is checked against
 * the C headers it was copied from, by compiling a generated C program that prints each value.
 *
 * - The kernel tables (vfio.h, iommufd.h, pci_regs.h) must match two sets of uapi headers: the lab
 *   kernel's 6.12 (scripts/lab/headers.sh; VFIO_TS_KERNEL_HEADERS overrides the include dir) and
 *   7.3 (scripts/lab/headers.sh 7.3; VFIO_TS_KERNEL_HEADERS_7_3 overrides). A name or struct field
 *   newer than 6.12 is listed in SINCE with the version that added it: it is checked only against
 *   headers at least that new, a struct it grew is checked at its older size against older headers,
 *   and its JSDoc must say "Since Linux X.Y". Whatever the system's older linux-libc-dev also
 *   defines must match too.
 * - The libc tables must match the system's libc headers, and ERRNO_NAMES must match <errno.h>.
 * - An export the headers don't define fails, unless NOT_IN_HEADERS lists it with a reason.
 *
 * Flat top-level tests only: the test runner counts leaf cases, and Deno and Bun must agree.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

import * as ioctl from "../../lib/uapi/ioctl.ts";
import * as iommufd from "../../lib/uapi/iommufd.ts";
import * as libc from "../../lib/uapi/libc.ts";
import * as barrel from "../../lib/uapi/mod.ts";
import * as pci from "../../lib/uapi/pci.ts";
import * as struct from "../../lib/uapi/struct.ts";
import * as vfio from "../../lib/uapi/vfio.ts";
import { type FieldType, StructDef } from "../../lib/uapi/struct.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** Every module in lib/uapi, by file name; the coverage test fails if a file is missing here. */
const MODULES: Record<string, Record<string, unknown>> = {
  "ioctl.ts": ioctl,
  "iommufd.ts": iommufd,
  "libc.ts": libc,
  "pci.ts": pci,
  "struct.ts": struct,
  "vfio.ts": vfio,
};

/**
 * Modules that only re-export the ones above, each with the modules it re-exports. The coverage
 * test checks that a barrel adds nothing of its own, takes nothing from any other module, and
 * leaves out none of its modules' names. lib/uapi/mod.ts is the public `uapi` namespace: the kernel
 * tables and the struct classes, not libc.ts or ioctl.ts, which stay internal to the library.
 */
const BARRELS: Record<string, { module: Record<string, unknown>; from: string[] }> = {
  "mod.ts": { module: barrel, from: ["vfio.ts", "iommufd.ts", "pci.ts", "struct.ts"] },
};

/** Exports that are not C names, and the test that covers each instead. */
const HELPERS: Record<string, string> = {
  ERRNO_NAMES: "checked name by name by the errno test",
  ERRNO: "the inverse of ERRNO_NAMES; the errno test checks that it is",
  _IO: "a function; the ioctl.h test compares it with the kernel's _IO macro",
  StructDef: "the layout class itself; each instance is checked by a struct test",
  Struct: "the view class over a StructDef; holds no layout of its own",
};

/**
 * Exports the headers do not define, each with the reason lib/uapi has it anyway. Keep this short:
 * a name here is not checked at all. (VFIO_TYPE and IOMMUFD_TYPE need no entry: one-character
 * strings are checked as the C character constants they stand for.)
 */
const NOT_IN_HEADERS: Record<string, string> = {};

/**
 * Constants compared as `(unsigned int)NAME` rather than as C evaluates them, each with the reason.
 * lib/uapi keeps these as the 32-bit value the library reads and writes, where C's type is wider or
 * signed; JavaScript's bitwise operators work in 32 bits too.
 */
const AS_U32: Record<string, string> = {
  PCI_BASE_ADDRESS_MEM_MASK: "C writes (~0x0fUL), 64 bits on LP64; BARs are 32-bit registers",
  PCI_BASE_ADDRESS_IO_MASK: "C writes (~0x03UL), 64 bits on LP64; BARs are 32-bit registers",
  VFIO_REGION_TYPE_PCI_VENDOR_TYPE:
    "C writes (1 << 31), a negative int; it is ORed into the __u32 region type, which Struct.get reads unsigned",
};

/** One value to compare: a C expression the compiled program prints, and what lib/uapi says. */
interface Check {
  /** What a failure names, e.g. `VFIO_DEVICE_GET_INFO` or `struct vfio_region_info.size: offset`. */
  label: string;
  /** A C expression; an integer, or a string when `ts` is one. */
  c: string;
  /** The TypeScript side's value. */
  ts: bigint | string;
  /** Renders a value for a failure message (both sides); numbers default to decimal and hex. */
  show?: (v: bigint | string) => string;
  /**
   * The sizeof of a struct that leads with argsz or size: the kernel extends those at the end and
   * takes any size from the original one up, so older headers may declare it smaller.
   */
  grows?: boolean;
}

/** The headers a group of checks is compiled against. */
interface Target {
  /** Headers to include, e.g. `linux/vfio.h`. */
  includes: string[];
  /** An include dir searched before the system's, or none for the system headers alone. */
  dir?: string;
}

/** What compiling and running a set of checks gave: a value for each, or gcc's complaint. */
interface Outcome {
  values: Map<Check, bigint | string>;
  undefinedIn: Map<Check, string>;
}

// ---------------------------------------------------------------------------------------------
// The headers

/** A kernel header set the tables are checked against. */
type HeaderVersion = "6.12" | "7.3";

const kernelDirs = new Map<HeaderVersion, { dir?: string; error?: string }>();

/**
 * The uapi include dir of a kernel version: its environment override, else scripts/lab/headers.sh
 * (cached). The dir's linux/version.h must name that version, so that a script that ignored the
 * version asked for cannot pass the other set off as this one.
 */
function kernelIncludeDir(version: HeaderVersion): string {
  let found = kernelDirs.get(version);
  if (!found) {
    found = resolveKernelIncludeDir(version);
    kernelDirs.set(version, found);
  }
  if (found.error !== undefined) throw new Error(found.error);
  return found.dir!;
}

function resolveKernelIncludeDir(version: HeaderVersion): { dir?: string; error?: string } {
  const variable = version === "6.12" ? "VFIO_TS_KERNEL_HEADERS" : "VFIO_TS_KERNEL_HEADERS_7_3";
  let dir = process.env[variable];
  if (!dir) {
    // stderr passes through: the first run unpacks the kernel source, and its progress should show.
    const args = [join(ROOT, "scripts/lab/headers.sh"), ...(version === "6.12" ? [] : [version])];
    const r = spawnSync("bash", args, { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });
    dir = r.stdout?.trim();
    if (r.status !== 0 || !dir) {
      return {
        error: `scripts/lab/headers.sh ${version === "6.12" ? "" : version} failed (status ${r.status}${
          r.error ? `, ${r.error}` : ""
        }); or set ${variable} to a ${version} uapi include dir`,
      };
    }
  }
  const versionH = join(dir, "linux/version.h");
  const text = existsSync(versionH) ? readFileSync(versionH, "utf8") : "";
  const major = /LINUX_VERSION_MAJOR (\d+)/.exec(text)?.[1];
  const minor = /LINUX_VERSION_PATCHLEVEL (\d+)/.exec(text)?.[1];
  if (`${major}.${minor}` !== version) {
    return {
      error: `${dir} holds the uapi headers of Linux ${major ?? "?"}.${minor ?? "?"} (linux/version.h), ` +
        `not ${version}; set ${variable} to a ${version} include dir`,
    };
  }
  return { dir };
}

/** The headers of a kernel version for `includes`, failing clearly if one is missing. */
function kernel(version: HeaderVersion, ...includes: string[]): Target {
  const dir = kernelIncludeDir(version);
  for (const h of includes) assert.ok(existsSync(join(dir, h)), `${h} is missing from ${dir}`);
  return { includes, dir };
}

/**
 * Names and struct fields (`struct.field`) newer than the 6.12 headers, with the Linux version that
 * added each. Each is checked only against headers at least that new, and its JSDoc (the struct's, for
 * a field) must say "Since Linux X.Y".
 */
const SINCE: Record<string, string> = {
  IOMMUFD_CMD_IOAS_MAP_FILE: "6.13",
  IOMMU_IOAS_MAP_FILE: "6.13",
  iommu_ioas_map_file: "6.13",
  IOMMUFD_CMD_IOAS_CHANGE_PROCESS: "6.13",
  IOMMU_IOAS_CHANGE_PROCESS: "6.13",
  iommu_ioas_change_process: "6.13",
  VFIO_DEVICE_ATTACH_PASID: "6.15",
  "vfio_device_attach_iommufd_pt.pasid": "6.15",
  VFIO_DEVICE_DETACH_PASID: "6.15",
  "vfio_device_detach_iommufd_pt.pasid": "6.15",
  VFIO_DEVICE_BIND_FLAG_TOKEN: "6.17",
  "vfio_device_bind_iommufd.token_uuid_ptr": "6.17",
  VFIO_DEVICE_FEATURE_DMA_BUF: "6.19",
  vfio_region_dma_range: "6.19",
  vfio_device_feature_dma_buf: "6.19",
  IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA: "7.3",
  IOMMU_IOAS_NOIOMMU_GET_PA: "7.3",
  iommu_ioas_noiommu_get_pa: "7.3",
};

/**
 * Names that newer headers keep under another name, each with that name: checked under it against
 * every header set newer than 6.12 (the uapi tables only grow, so the old name stays).
 */
const RENAMED: Record<string, string> = {
  VFIO_TYPE1_NESTING_IOMMU: "__VFIO_RESERVED_TYPE1_NESTING_IOMMU",
};

/** Compares "X.Y" versions. */
function versionAtMost(a: string, b: string): boolean {
  const [am, an] = a.split(".").map(Number) as [number, number];
  const [bm, bn] = b.split(".").map(Number) as [number, number];
  return am < bm || (am === bm && an <= bn);
}

/** Whether headers of `version` define `name` (a name, or `struct.field`). */
const inHeaders = (name: string, version: string) => versionAtMost(SINCE[name] ?? "0.0", version);

// ---------------------------------------------------------------------------------------------
// Compiling and running the checks

/** The C program: one single-line function per check, so a gcc error's line names its check. */
function cProgram(checks: Check[], includes: string[]): { source: string; checkAt: Map<number, Check> } {
  const lines = [
    "#define _GNU_SOURCE",
    "#include <stddef.h>",
    "#include <stdio.h>",
    "#include <string.h>",
    // Guarded so that a header the system lacks (iommufd.h in 6.1) leaves its names undefined
    // rather than stopping the whole compile.
    ...includes.flatMap((h) => [`#if __has_include(<${h}>)`, `#include <${h}>`, "#endif"]),
    // Prints a value in its own signedness, so (1 << 31) and -1 come out as C sees them.
    '#define INT(i, e) do { if ((e) < 0) printf("%d\\t%lld\\n", i, (long long)(e)); \\',
    '  else printf("%d\\t%llu\\n", i, (unsigned long long)(e)); } while (0)',
    '#define STR(i, e) printf("%d\\t%s\\n", i, (const char *)(e))',
  ];
  const checkAt = new Map<number, Check>();
  checks.forEach((check, i) => {
    const print = typeof check.ts === "string" ? "STR" : "INT";
    lines.push(`static void c${i}(void) { ${print}(${i}, ${check.c}); }`);
    checkAt.set(lines.length, check);
  });
  lines.push(`int main(void) { ${checks.map((_, i) => `c${i}();`).join(" ")} return 0; }`, "");
  return { source: lines.join("\n"), checkAt };
}

/** gcc's errors in the generated file, by line. */
function gccErrors(stderr: string): Map<number, string> {
  const errors = new Map<number, string>();
  for (const m of stderr.matchAll(/^uapi\.c:(\d+):\d+: (?:fatal )?error: (.*)$/gm)) {
    const line = Number(m[1]);
    if (!errors.has(line)) errors.set(line, m[2]!);
  }
  return errors;
}

/**
 * Compiles and runs the checks. A check gcc rejects (its name or member is not in the headers) is
 * set aside with gcc's message and the rest are compiled again; any other failure throws.
 */
function compileAndRun(checks: Check[], target: Target): Outcome {
  const tmp = mkdtempSync(join(tmpdir(), "vfio-ts-uapi-"));
  try {
    const undefinedIn = new Map<Check, string>();
    let live = checks;
    for (;;) {
      const { source, checkAt } = cProgram(live, target.includes);
      writeFileSync(join(tmp, "uapi.c"), source);
      // -ftrack-macro-expansion=0 puts an error inside a macro at the line that used it.
      const args = ["-std=gnu11", "-w", "-ftrack-macro-expansion=0", "-o", "uapi", "uapi.c"];
      if (target.dir) args.unshift("-I", target.dir);
      const cc = spawnSync("gcc", args, { cwd: tmp, encoding: "utf8", env: { ...process.env, LC_ALL: "C" } });
      if (cc.error) throw new Error(`cannot run gcc: ${cc.error.message}`);
      if (cc.status === 0) return { values: runProgram(join(tmp, "uapi"), live), undefinedIn };

      const rejected = [...gccErrors(cc.stderr)].filter(([line]) => checkAt.has(line));
      if (rejected.length === 0) throw new Error(`gcc failed outside the generated checks:\n${cc.stderr}`);
      for (const [line, error] of rejected) undefinedIn.set(checkAt.get(line)!, error);
      live = live.filter((c) => !undefinedIn.has(c));
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** Runs the compiled program and reads back one value per check. */
function runProgram(path: string, checks: Check[]): Map<Check, bigint | string> {
  const run = spawnSync(path, [], { encoding: "utf8" });
  if (run.status !== 0) throw new Error(`the generated program failed (status ${run.status}): ${run.stderr}`);
  const values = new Map<Check, bigint | string>();
  for (const line of run.stdout.split("\n")) {
    if (!line) continue;
    const [i, value] = line.split("\t") as [string, string];
    const check = checks[Number(i)]!;
    values.set(check, typeof check.ts === "string" ? value : BigInt(value));
  }
  return values;
}

// ---------------------------------------------------------------------------------------------
// Comparing

function showNumber(v: bigint | string): string {
  if (typeof v === "string") return JSON.stringify(v);
  return v >= -9n && v <= 9n ? `${v}` : `${v} (${v < 0n ? "-" : ""}0x${(v < 0n ? -v : v).toString(16)})`;
}

/**
 * The lines of a failure report: each mismatch, and if `strict` each name the headers lack. Not
 * strict is for older headers: names may be missing, and extensible structs may be smaller.
 */
function problems(checks: Check[], outcome: Outcome, strict: boolean): string[] {
  const out: string[] = [];
  for (const check of checks) {
    const show = check.show ?? showNumber;
    const gcc = outcome.undefinedIn.get(check);
    if (gcc !== undefined) {
      if (strict) out.push(`${check.label}: not defined by the headers (gcc: ${gcc})`);
      continue;
    }
    const c = outcome.values.get(check);
    if (!strict && check.grows && typeof c === "bigint" && c < (check.ts as bigint)) continue;
    if (c !== check.ts) {
      out.push(`${check.label}: TS ${show(check.ts)}, C ${c === undefined ? "nothing" : show(c)}`);
    }
  }
  return out;
}

/** Fails listing every problem, one per line, if there are any. */
function failOn(lines: string[], title: string): void {
  if (lines.length) assert.fail(`${lines.length} ${title}:\n  ${lines.join("\n  ")}`);
}

/** Compiles the checks against the target and fails naming every mismatch. */
function assertConforms(checks: Check[], target: Target): void {
  assert.ok(checks.length > 0, "nothing to check: the group is empty");
  const found = problems(checks, compileAndRun(checks, target), true);
  const where = target.dir ? `${target.includes.join(", ")} in ${target.dir}` : target.includes.join(", ");
  failOn(found, `of ${checks.length} checks differ from ${where}`);
}

// ---------------------------------------------------------------------------------------------
// What to check

/** A field type as signed bit width: u32 is 32, s32 is -32; the C side computes the same. */
function typeBits(type: FieldType): bigint {
  const bits = BigInt(type.slice(1));
  return type.startsWith("s") ? -bits : bits;
}

function showType(v: bigint | string): string {
  if (typeof v === "string") return v;
  return `${v < 0n ? "s" : "u"}${v < 0n ? -v : v}`;
}

const WIDTH_OF: Record<FieldType, number> = { u8: 1, u16: 2, s16: 2, u32: 4, s32: 4, u64: 8 };

/**
 * sizeof the struct, and each field's offset and type (width and signedness), as headers of
 * `version` declare it: fields they do not have yet are left out, and sizeof is then the older
 * size (the end of the last older field, rounded up to their largest alignment).
 */
function structChecks(def: StructDef, version = "99.0"): Check[] {
  const t = `struct ${def.name}`;
  const lead = Object.entries(def.fields).find(([, [, offset]]) => offset === 0)?.[0];
  const grows = lead === "argsz" || lead === "size";
  const fields = Object.entries(def.fields).filter(([field]) => inHeaders(`${def.name}.${field}`, version));
  const older = fields.length < Object.keys(def.fields).length;
  const align = Math.max(...fields.map(([, [type]]) => WIDTH_OF[type]));
  const end = Math.max(...fields.map(([, [type, offset]]) => offset + WIDTH_OF[type]));
  const size = older ? Math.ceil(end / align) * align : def.size;
  const checks: Check[] = [{ label: `sizeof(${t})`, c: `sizeof(${t})`, ts: BigInt(size), grows }];
  for (const [field, [type, offset]] of fields) {
    const member = `((${t} *)0)->${field}`;
    checks.push({ label: `${t}.${field}: offset`, c: `offsetof(${t}, ${field})`, ts: BigInt(offset) });
    checks.push({
      label: `${t}.${field}: type`,
      c: `(long long)sizeof(${member}) * 8 * ((__typeof__(${member}))-1 < 0 ? -1 : 1)`,
      ts: typeBits(type),
      show: showType,
    });
  }
  return checks;
}

/** How the test treats one export. */
type Export =
  | { kind: "constant"; check: Check }
  | { kind: "struct"; def: StructDef }
  | { kind: "skip"; why: string }
  | { kind: "unchecked"; why: string };

/** Classifies an export: a C constant or struct to check, a listed helper, or something unchecked. */
function classify(name: string, value: unknown): Export {
  if (name in HELPERS) return { kind: "skip", why: HELPERS[name]! };
  if (name in NOT_IN_HEADERS) return { kind: "skip", why: NOT_IN_HEADERS[name]! };
  if (value instanceof StructDef) return { kind: "struct", def: value };
  const c = name in AS_U32 ? `(unsigned int)(${name})` : name;
  if (typeof value === "bigint") return { kind: "constant", check: { label: name, c, ts: value } };
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) return { kind: "unchecked", why: `${value} is not an integer` };
    return { kind: "constant", check: { label: name, c, ts: BigInt(value) } };
  }
  // A one-character string stands for a C character constant, like VFIO_TYPE (';').
  if (typeof value === "string" && value.length === 1) {
    return { kind: "constant", check: { label: `${name} ("${value}")`, c, ts: BigInt(value.charCodeAt(0)) } };
  }
  return {
    kind: "unchecked",
    why: `not a number, bigint, one-character string or StructDef (got ${typeof value})`,
  };
}

function exportsOf(module: Record<string, unknown>): [string, Export][] {
  return Object.entries(module).map(([name, value]) => [name, classify(name, value)]);
}

/** The constants of a module that headers of `version` define (all of them by default). */
function constantChecks(module: Record<string, unknown>, version = "99.0"): Check[] {
  return exportsOf(module).flatMap(([name, e]) => {
    if (e.kind !== "constant" || !inHeaders(name, version)) return [];
    const renamed = RENAMED[name];
    if (renamed === undefined || versionAtMost(version, "6.12")) return [e.check];
    return [{ ...e.check, label: `${e.check.label} (as ${renamed})`, c: e.check.c.replace(name, renamed) }];
  });
}

/** The struct layouts of a module, as headers of `version` declare them (the newest by default). */
function layoutChecks(module: Record<string, unknown>, version = "99.0"): Check[] {
  return exportsOf(module).flatMap(([name, e]) =>
    e.kind === "struct" && inHeaders(name, version) ? structChecks(e.def, version) : []
  );
}

/** _IO for a spread of types and numbers, including every VFIO and iommufd type and the top nr. */
function ioChecks(): Check[] {
  const samples: [string, number][] = [[";", 0], [";", 100], [";", 0x87], [";", 0xff], ["V", 1], ["T", 0x13]];
  return samples.map(([type, nr]) => ({
    label: `_IO('${type}', ${nr})`,
    c: `_IO('${type}', ${nr})`,
    ts: BigInt(ioctl._IO(type, nr)),
  }));
}

/** Each ERRNO_NAMES entry both ways: the name's value, and glibc's name for the number. */
function errnoChecks(): Check[] {
  return Object.entries(libc.ERRNO_NAMES).flatMap(([n, name]) => [
    { label: `ERRNO_NAMES[${n}] = ${name}: ${name}`, c: name, ts: BigInt(n) },
    { label: `ERRNO_NAMES[${n}] = ${name}: strerrorname_np(${n})`, c: `strerrorname_np(${n})`, ts: name },
  ]);
}

const LIBC_HEADERS = ["fcntl.h", "sys/mman.h", "sys/eventfd.h", "poll.h", "sys/resource.h"];

// ---------------------------------------------------------------------------------------------
// The tests

test("vfio.h (6.12): struct layouts match", () => {
  assertConforms(layoutChecks(vfio, "6.12"), kernel("6.12", "linux/vfio.h"));
});

test("vfio.h (6.12): ioctl numbers and constants match", () => {
  assertConforms(constantChecks(vfio, "6.12"), kernel("6.12", "linux/vfio.h"));
});

test("iommufd.h (6.12): struct layouts match", () => {
  assertConforms(layoutChecks(iommufd, "6.12"), kernel("6.12", "linux/iommufd.h"));
});

test("iommufd.h (6.12): ioctl numbers and constants match", () => {
  assertConforms(constantChecks(iommufd, "6.12"), kernel("6.12", "linux/iommufd.h"));
});

test("pci_regs.h (6.12): constants match", () => {
  assertConforms(constantChecks(pci, "6.12"), kernel("6.12", "linux/pci_regs.h"));
});

test("vfio.h (7.3): struct layouts match", () => {
  assertConforms(layoutChecks(vfio, "7.3"), kernel("7.3", "linux/vfio.h"));
});

test("vfio.h (7.3): ioctl numbers and constants match", () => {
  assertConforms(constantChecks(vfio, "7.3"), kernel("7.3", "linux/vfio.h"));
});

test("iommufd.h (7.3): struct layouts match", () => {
  assertConforms(layoutChecks(iommufd, "7.3"), kernel("7.3", "linux/iommufd.h"));
});

test("iommufd.h (7.3): ioctl numbers and constants match", () => {
  assertConforms(constantChecks(iommufd, "7.3"), kernel("7.3", "linux/iommufd.h"));
});

test("pci_regs.h (7.3): constants match", () => {
  assertConforms(constantChecks(pci, "7.3"), kernel("7.3", "linux/pci_regs.h"));
});

test("ioctl.h: _IO encodes requests as the kernel's _IO does", () => {
  assertConforms(ioChecks(), kernel("6.12", "linux/ioctl.h"));
});

test("libc: struct pollfd and struct rlimit match", () => {
  assertConforms(layoutChecks(libc), { includes: LIBC_HEADERS });
});

test("libc: fcntl, mman, eventfd, poll and resource constants match", () => {
  assertConforms(constantChecks(libc), { includes: LIBC_HEADERS });
});

test("errno names match <errno.h>", () => {
  // ERRNO is derived from ERRNO_NAMES; a repeated name would silently drop a number from it.
  const names = Object.values(libc.ERRNO_NAMES);
  assert.equal(new Set(names).size, names.length, `ERRNO_NAMES repeats a name: ${names.join(", ")}`);
  for (const [n, name] of Object.entries(libc.ERRNO_NAMES)) assert.equal(libc.ERRNO[name], Number(n), name);
  assertConforms(errnoChecks(), { includes: ["errno.h", "string.h"] });
});

test("system headers (linux-libc-dev) agree wherever they define a name", () => {
  // The distro's headers are older than 6.12 (no iommufd.h before 6.2, no BIND_IOMMUFD), so a name
  // they lack is fine; a name they define with another value or layout is not.
  const groups: [string, Check[]][] = [
    ["linux/vfio.h", [...layoutChecks(vfio), ...constantChecks(vfio)]],
    ["linux/iommufd.h", [...layoutChecks(iommufd), ...constantChecks(iommufd)]],
    ["linux/pci_regs.h", constantChecks(pci)],
  ];
  const found: string[] = [];
  let compared = 0;
  for (const [header, checks] of groups) {
    const outcome = compileAndRun(checks, { includes: [header] });
    compared += outcome.values.size;
    found.push(...problems(checks, outcome, false).map((p) => `${header}: ${p}`));
  }
  assert.ok(
    compared > 0,
    "the system headers defined none of the names: are linux-libc-dev headers installed?",
  );
  failOn(found, "checks differ from the system headers");
});

test("every lib/uapi export is checked", () => {
  const files = readdirSync(join(ROOT, "lib/uapi")).filter((f) => f.endsWith(".ts"));
  const uncovered = files.filter((f) => !(f in MODULES) && !(f in BARRELS))
    .map((f) => `lib/uapi/${f}: not imported by this test`);
  for (const [file, module] of Object.entries(MODULES)) {
    for (const [name, e] of exportsOf(module)) {
      if (e.kind === "unchecked") uncovered.push(`lib/uapi/${file}: ${name}: ${e.why}`);
      // The struct tests name the C struct; an export under another name would hide which it is.
      if (e.kind === "struct" && e.def.name !== name) {
        uncovered.push(`lib/uapi/${file}: ${name}: declares struct ${e.def.name}; export it under that name`);
      }
    }
  }
  for (const [file, { module, from }] of Object.entries(BARRELS)) {
    for (const [name, value] of Object.entries(module)) {
      if (from.some((f) => name in MODULES[f]! && MODULES[f]![name] === value)) continue;
      const other = Object.keys(MODULES).find((f) => name in MODULES[f]! && MODULES[f]![name] === value);
      uncovered.push(
        other
          ? `lib/uapi/${file}: ${name}: re-exported from lib/uapi/${other}, which it must not expose`
          : `lib/uapi/${file}: ${name}: not a re-export of a checked module`,
      );
    }
    for (const f of from) {
      for (const name of Object.keys(MODULES[f]!)) {
        if (!(name in module)) {
          uncovered.push(`lib/uapi/${file}: ${name}: exported by lib/uapi/${f} but not re-exported`);
        }
      }
    }
  }
  // A listed exception that no longer exists is stale; drop it so the lists stay honest.
  const all = new Set(Object.values(MODULES).flatMap((m) => Object.keys(m)));
  const lists = [HELPERS, NOT_IN_HEADERS, AS_U32, RENAMED].flatMap((l) => Object.keys(l));
  for (const name of lists) {
    if (!all.has(name)) uncovered.push(`${name}: listed as an exception but not exported by lib/uapi`);
  }
  failOn(uncovered, "exports are not checked");
});

test("names newer than 6.12 say since when, and only they do", () => {
  const problems: string[] = [];
  const all = new Map(Object.entries({ ...vfio, ...iommufd, ...pci }));
  const sources = ["vfio.ts", "iommufd.ts", "pci.ts"].map((f) =>
    readFileSync(join(ROOT, "lib/uapi", f), "utf8")
  )
    .join("\n");
  // The JSDoc right before `export const NAME`.
  const docOf = (name: string) =>
    new RegExp(`/\\*\\*((?:(?!\\*/)[\\s\\S])*)\\*/\\s*export const ${name}\\b`).exec(sources)?.[1];
  for (const [entry, version] of Object.entries(SINCE)) {
    const [name, field] = entry.split(".") as [string, string | undefined];
    const value = all.get(name);
    if (value === undefined) {
      problems.push(`${entry}: listed in SINCE but not exported by lib/uapi`);
      continue;
    }
    if (field !== undefined && !(value instanceof StructDef && field in value.fields)) {
      problems.push(`${entry}: ${name} has no field ${field}`);
    }
    const doc = docOf(name)?.replace(/\s*\*\s*/g, " ") ?? "";
    if (!new RegExp(`since Linux ${version.replace(".", "\\.")}\\b`, "i").test(doc)) {
      problems.push(`${entry}: its JSDoc must say "Since Linux ${version}"`);
    }
  }
  for (const name of all.keys()) {
    const doc = docOf(name)?.replace(/\s*\*\s*/g, " ") ?? "";
    for (const m of doc.matchAll(/since Linux (\d+\.\d+)/gi)) {
      const listed = Object.entries(SINCE).filter(([e]) => e === name || e.startsWith(`${name}.`));
      if (!versionAtMost(m[1]!, "6.12") && !listed.some(([, v]) => v === m[1])) {
        problems.push(`${name}: its JSDoc says since Linux ${m[1]}, which SINCE does not list for it`);
      }
    }
  }
  failOn(problems, "version notes are inconsistent");
});
