/**
 * Child processes for the reliability and privilege lab tests: the runtime under test running
 * tests/lab/_child.ts, the examples or the CLI, as root or as another user with a chosen
 * RLIMIT_MEMLOCK; the pinned-memory counters of /proc/PID/status; and handing a device's VFIO nodes
 * to a user for the length of a test.
 *
 * Another user cannot read a repository inside a 0700 home (CI clones into one), nor the runtime
 * binary in its node_modules: children run from a world-readable copy under /tmp, made once per
 * test process (as tests/lab/cli.test.ts does) and removed when it exits.
 *
 * @module
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
} from "node:fs";
import { basename } from "node:path";
import process from "node:process";
import { HAS_IOMMU } from "./_fixture.ts";

const REPO = new URL("../../", import.meta.url).pathname;
const IS_DENO = "Deno" in globalThis;
/** The runtime's arguments before a script: on Deno, --allow-ffi alone, as the README promises. */
export const RUN: string[] = IS_DENO ? ["run", "--allow-ffi"] : [];

/** nobody, whose passwd entry every Debian system has. */
export const NOBODY = 65534;
/** A user with no passwd entry and no access to anything VFIO. */
export const STRANGER = 65533;
/** Why a test that switches users cannot run, or false when it can. */
export const NO_SETPRIV: string | false = existsSync("/usr/bin/setpriv") && existsSync("/usr/bin/prlimit")
  ? false
  : "needs setpriv and prlimit (util-linux)";

/** Who a child runs as: root (the default), or a user and group with an RLIMIT_MEMLOCK. */
export interface AsUser {
  uid: number;
  gid: number;
  /** RLIMIT_MEMLOCK, soft and hard, in bytes (default: inherited). */
  memlock?: number;
}

interface Copy {
  dir: string;
  home: string;
  runtime: string;
}
let copy: Copy | undefined;

/** The world-readable copy of the code children run, and of this runtime's binary. */
function worldReadableCopy(): Copy {
  if (copy) return copy;
  const dir = mkdtempSync("/tmp/vfio-lab-children-");
  process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  for (const d of ["cli", "lib", "ffi", "examples"]) {
    cpSync(`${REPO}${d}`, `${dir}/${d}`, { recursive: true });
  }
  for (const f of ["mod.ts", "package.json"]) copyFileSync(`${REPO}${f}`, `${dir}/${f}`);
  mkdirSync(`${dir}/tests/lab`, { recursive: true });
  copyFileSync(`${REPO}tests/lab/_child.ts`, `${dir}/tests/lab/_child.ts`);
  const runtime = `${dir}/${basename(process.execPath)}`;
  copyFileSync(process.execPath, runtime);
  const home = `${dir}/home`;
  mkdirSync(home);
  const chmod = spawnSync("chmod", ["-R", "a+rX", dir], { encoding: "utf8" });
  if (chmod.status !== 0) throw new Error(`chmod -R a+rX ${dir}: ${chmod.stderr}`);
  chmodSync(runtime, 0o755);
  chmodSync(home, 0o777); // the runtimes' caches
  copy = { dir, home, runtime };
  return copy;
}

/** The command line and environment to run `script` (relative to the repo) on this runtime. */
function command(script: string, args: string[], as: AsUser | undefined, env: Record<string, string>) {
  const c = worldReadableCopy();
  let argv = [c.runtime, ...RUN, `${c.dir}/${script}`, ...args];
  if (as) {
    const ids = [`--reuid=${as.uid}`, `--regid=${as.gid}`, "--clear-groups"];
    argv = ["setpriv", ...ids, ...argv];
    // prlimit and setpriv exec what follows: the child's pid is the runtime's.
    if (as.memlock !== undefined) argv = ["prlimit", `--memlock=${as.memlock}:${as.memlock}`, ...argv];
  }
  const base: Record<string, string | undefined> = { ...process.env };
  delete base.VFIO_TS_BACKEND;
  return {
    file: argv[0]!,
    args: argv.slice(1),
    options: {
      cwd: c.dir,
      env: { ...base, HOME: c.home, DENO_DIR: `${c.home}/deno`, XDG_CACHE_HOME: c.home, ...env },
    },
  };
}

/** What a finished child did. */
export interface Finished {
  status: number | null;
  stdout: string;
  stderr: string;
  /** Everything, for assertion messages. */
  output: string;
  /** The JSON after `tag ` on stdout (`result`, `ready`), or undefined. */
  // deno-lint-ignore no-explicit-any
  line(tag: string): any;
}

// deno-lint-ignore no-explicit-any
function tagged(stdout: string, tag: string): any {
  const line = stdout.split("\n").find((l) => l.startsWith(`${tag} `));
  return line === undefined ? undefined : JSON.parse(line.slice(tag.length + 1));
}

/**
 * Runs a script to completion on this runtime.
 *
 * @param script Relative to the repo, e.g. `examples/edu.ts`.
 * @param args Its arguments.
 * @param options Who runs it, and extra environment (VFIO_TS_BACKEND).
 */
export function runScript(
  script: string,
  args: string[],
  options: { as?: AsUser; env?: Record<string, string> } = {},
): Finished {
  const c = command(script, args, options.as, options.env ?? {});
  const r = spawnSync(c.file, c.args, { ...c.options, encoding: "utf8", timeout: 120_000 });
  const who = options.as ? `uid ${options.as.uid}` : "root";
  const output = `${script} ${
    args.join(" ")
  } as ${who}: status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
  return {
    status: r.status,
    stdout: r.stdout,
    stderr: r.stderr,
    output,
    line: (tag) => tagged(r.stdout, tag),
  };
}

/** A child that runs until killed. */
export interface Running {
  readonly pid: number;
  /** The JSON of its `ready` line, once printed; rejects if it exits or stalls first. */
  // deno-lint-ignore no-explicit-any
  readonly ready: Promise<any>;
  /** Kills it with SIGKILL and resolves with how it ended, once it is reaped. */
  kill(): Promise<{ code: number | null; signal: string | null }>;
  /** Its output so far, for assertion messages. */
  output(): string;
}

/**
 * Starts tests/lab/_child.ts on this runtime.
 *
 * @param args Its mode and arguments.
 * @param options Who runs it, and extra environment (VFIO_TS_BACKEND).
 */
export function startChild(
  args: string[],
  options: { as?: AsUser; env?: Record<string, string> } = {},
): Running {
  const c = command("tests/lab/_child.ts", args, options.as, options.env ?? {});
  const child: ChildProcess = spawn(c.file, c.args, { ...c.options, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "", stderr = "";
  child.stdout!.setEncoding("utf8");
  child.stderr!.setEncoding("utf8");
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    child.on("exit", (code, signal) => resolve({ code, signal }));
  });
  const output = () => `_child.ts ${args.join(" ")}\nstdout:\n${stdout}\nstderr:\n${stderr}`;
  // deno-lint-ignore no-explicit-any
  const ready = new Promise<any>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "ready" within 90 s\n${output()}`)), 90_000);
    child.stdout!.on("data", (chunk: string) => {
      stdout += chunk;
      const r = tagged(stdout, "ready");
      if (r !== undefined) {
        clearTimeout(timer);
        resolve(r);
      }
    });
    child.stderr!.on("data", (chunk: string) => (stderr += chunk));
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`the child exited (${signal ?? code}) before it was ready\n${output()}`));
    });
  });
  ready.catch(() => {}); // a rejection nobody awaits (after a kill) is not an error
  return {
    pid: child.pid!,
    ready,
    kill: () => {
      child.kill("SIGKILL");
      return exited;
    },
    output,
  };
}

/** A process's pinned-memory counters in KiB: VmLck (mm->locked_vm) and VmPin (mm->pinned_vm). */
export function pinned(pid: number | "self" = "self"): { vmLck: number; vmPin: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const field = (name: string) => Number(new RegExp(`^${name}:\\s*(\\d+) kB`, "m").exec(status)?.[1]);
  return { vmLck: field("VmLck"), vmPin: field("VmPin") };
}

/**
 * Which counter a backend's DMA pins are charged to, as measured in the lab (6.12): type1 adds
 * them to the mm's locked_vm (VmLck), also for root; iommufd adds them to the mm's pinned_vm (VmPin)
 * and, for a user without CAP_IPC_LOCK, to the user's locked_vm, which /proc does not show.
 */
export const CHARGED: Record<"legacy" | "iommufd", "vmLck" | "vmPin"> = { legacy: "vmLck", iommufd: "vmPin" };

/** The VFIO nodes of a device on vfio-pci: its group node, then its cdev when the kernel made one. */
export function deviceNodes(bdf: string): string[] {
  const group = basename(readlinkSync(`/sys/bus/pci/devices/${bdf}/iommu_group`));
  const nodes = [HAS_IOMMU ? `/dev/vfio/${group}` : `/dev/vfio/noiommu-${group}`];
  try {
    const cdev = readdirSync(`/sys/bus/pci/devices/${bdf}/vfio-dev`).find((e) => /^vfio\d+$/.test(e));
    if (cdev && existsSync(`/dev/vfio/devices/${cdev}`)) nodes.push(`/dev/vfio/devices/${cdev}`);
  } catch {
    // no cdevs on this kernel
  }
  return nodes;
}

/** Records the owner, group and mode of files, and returns what puts them back. */
export function saveOwners(paths: string[]): () => void {
  const saved = paths.map((p) => ({ p, ...statSync(p) }));
  return () => {
    for (const s of saved) {
      chownSync(s.p, s.uid, s.gid);
      chmodSync(s.p, s.mode & 0o7777);
    }
  };
}

/** Hands files to a user and group for a test (see {@link saveOwners} to put them back). */
export function chownAll(paths: string[], uid: number, gid: number): void {
  for (const p of paths) chownSync(p, uid, gid);
}
