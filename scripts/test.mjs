#!/usr/bin/env node
// The project's test command (`npm test`), for a fresh machine with only Node, npm and apt.
//
// 1. installs the pinned runtimes (npm devDependencies deno and bun) when they are missing;
// 2. static: deno fmt --check, deno lint, deno check (both backends; ffi/bun.ts against bun-types),
//    deno check --doc (every JSDoc example) and --doc-only (the Markdown examples), deno doc --lint, the
//    file lists of the npm tarball and of the JSR package, and the README's benchmark table;
// 3. unit and conformance tests (tests/unit, tests/conformance) on Deno and on Bun;
// 4. consumer: vfio-ts used as a dependency, in throwaway projects outside the repository: the npm
//    tarball installed with `bun add` and run on Bun (and its `vfio` bin), and the unpacked tarball
//    imported through a Deno import map and run under `deno run --allow-ffi`;
// 5. the lab: boots QEMU guests with real VFIO (scripts/lab) and runs tests/lab inside them on both
//    runtimes, under every kernel and IOMMU mode the lab offers;
// 6. prints one line, `N passed, N failed`, that sums every suite.
//
// Usage: node scripts/test.mjs [--no-lab] [--only=SUITE,...]   (suites: static, unit, consumer, lab)
// Unknown arguments and suite names exit 2. Each suite writes JUnit XML under .test-results/, which is
// what the counts are read from.
import { spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, relative, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const results = join(root, ".test-results");
const bin = join(root, "node_modules", ".bin");
const env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, DENO_NO_UPDATE_CHECK: "1" };

const SUITES = ["static", "unit", "consumer", "lab"];
const USAGE =
  "usage: node scripts/test.mjs [--no-lab] [--only=SUITE,...]  (suites: static, unit, consumer, lab)";

function usageError(message) {
  console.error(`test: ${message}\n${USAGE}`);
  process.exit(2);
}

/** The suites to run, in order; exits 2 on an unknown argument or suite name. */
export function parseSuites(argv) {
  let only;
  let noLab = false;
  for (const a of argv) {
    if (a === "--no-lab") noLab = true;
    else if (a === "-h" || a === "--help") {
      console.log(USAGE);
      process.exit(0);
    } else if (a.startsWith("--only=")) {
      const names = a.slice("--only=".length).split(",").map((n) => n.trim()).filter((n) => n !== "");
      if (names.length === 0) usageError(`${a} names no suite`);
      const unknown = names.filter((n) => !SUITES.includes(n));
      if (unknown.length > 0) {
        usageError(
          `unknown suite${unknown.length > 1 ? "s" : ""} ${unknown.map((n) => `'${n}'`).join(", ")} in ${a}`,
        );
      }
      only = [...(only ?? []), ...names];
    } else usageError(`unknown argument '${a}'`);
  }
  const suites = SUITES.filter((s) => (!only || only.includes(s)) && !(s === "lab" && noLab));
  if (suites.length === 0) usageError(`${argv.join(" ")} selects no suite`);
  return suites;
}

const totals = { passed: 0, failed: 0, skipped: 0 };
const lines = [];

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { cwd: root, env, stdio: "inherit", ...opts });
  if (r.error) throw r.error;
  return r.status ?? 128 + 1;
}

// Runs a command with its output captured, then copies that output to the log (stdout only with
// echo: true, the default; a JSON answer is read, not logged).
function capture(cmd, argv, { echo = true, ...opts } = {}) {
  const r = spawnSync(cmd, argv, {
    cwd: root,
    env,
    encoding: "utf8",
    maxBuffer: 64 << 20,
    timeout: 300_000,
    ...opts,
  });
  if (r.error && r.error.code !== "ETIMEDOUT") throw r.error;
  if (r.stdout && echo) process.stdout.write(r.stdout);
  if (r.stderr) process.stderr.write(r.stderr);
  const status = r.status ?? 128 + 1;
  const timedOut = r.error?.code === "ETIMEDOUT" || (r.status === null && r.signal === "SIGTERM");
  return { status, stdout: r.stdout ?? "", stderr: r.stderr ?? "", timedOut };
}

// The end of a command's output, for a failure message.
function tail(r, n = 8) {
  const text = `${r.stdout}\n${r.stderr}`.trim().split("\n").slice(-n).join("\n");
  return `${r.timedOut ? "timed out" : `exit ${r.status}`}${text ? `:\n${text}` : ""}`;
}

function record(suite, passed, failed, skipped = 0) {
  totals.passed += passed;
  totals.failed += failed;
  totals.skipped += skipped;
  const line = `${suite}: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`;
  lines.push(line);
  console.log(`\n== ${line}\n`);
}

// Counts leaf test cases in a JUnit file written by `deno test --junit-path` or `bun test
// --reporter=junit`. The suites use flat top-level tests, so both runtimes report the same cases.
export function junitCounts(xml) {
  const cases = xml.match(/<testcase\b[\s\S]*?(?:\/>|<\/testcase>)/g) ?? [];
  let failed = 0, skipped = 0;
  for (const c of cases) {
    if (/<(failure|error)\b/.test(c)) failed++;
    else if (/<skipped\b/.test(c)) skipped++;
  }
  return { passed: cases.length - failed - skipped, failed, skipped };
}

// Records a JUnit file; a runner that exited non-zero without reporting a failure (a crash, a
// load error) counts as one failure, so nothing is lost silently.
export function recordJunit(suite, file, status) {
  if (!existsSync(file)) return record(suite, 0, 1);
  const c = junitCounts(readFileSync(file, "utf8"));
  if (status !== 0 && c.failed === 0) c.failed = 1;
  if (c.passed + c.failed === 0) c.failed = 1; // a suite that ran nothing is a failure
  record(suite, c.passed, c.failed, c.skipped);
}

function ensureRuntimes() {
  if (existsSync(join(bin, "deno")) && existsSync(join(bin, "bun"))) return;
  console.log("test: installing the pinned runtimes (npm devDependencies deno and bun)");
  const lock = existsSync(join(root, "package-lock.json"));
  if (run("npm", [lock ? "ci" : "install", "--no-audit", "--no-fund"]) !== 0) {
    throw new Error("Cannot install the npm devDependencies (npm ci failed)");
  }
}

// Runs named checks, each counted as one test case, and writes them as a JUnit file. A check
// returns nothing (or true) when it passed, and a message (or false) when it failed; a check that
// throws failed with the exception's message.
function runCases(suite, file, checks) {
  const cases = [];
  for (const [name, fn] of checks) {
    console.log(`test: ${name}`);
    let failure;
    try {
      const r = fn();
      if (r === false) failure = "failed";
      else if (typeof r === "string") failure = r;
    } catch (e) {
      failure = e instanceof Error ? e.message : String(e);
    }
    if (failure !== undefined) console.log(`test: FAILED: ${name}: ${failure}`);
    cases.push({ name, failure });
  }
  const esc = (t) =>
    String(t).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  const failed = cases.filter((c) => c.failure !== undefined).length;
  const xml = [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<testsuites><testsuite name="${esc(suite)}" tests="${cases.length}" failures="${failed}">`,
    ...cases.map((c) =>
      c.failure === undefined
        ? `<testcase name="${esc(c.name)}" classname="${esc(suite)}"/>`
        : `<testcase name="${esc(c.name)}" classname="${esc(suite)}"><failure message="${
          esc(c.failure.split("\n")[0])
        }">${esc(c.failure)}</failure></testcase>`
    ),
    `</testsuite></testsuites>`,
    "",
  ].join("\n");
  writeFileSync(file, xml);
  recordJunit(suite, file, 0);
}

const status0 = (status, what) => (status === 0 ? undefined : `${what} exited ${status}`);

// `deno check` with ffi/bun.ts checked against bun-types. deno.json itself names no bun-types:
// `deno doc` loads every compilerOptions.types entry into its graph (and ignores --config), and
// resolving bun-types and @types/node there prints ~90 "Failed resolving types" warnings. So the
// check runs with a copy of deno.json that adds them, written next to it (its relative paths and
// node_modules then resolve the same) and removed afterwards.
function withBunTypes(fn) {
  const config = JSON.parse(readFileSync(join(root, "deno.json"), "utf8"));
  config.compilerOptions = { ...config.compilerOptions, types: ["npm:bun-types"] };
  const file = join(root, `.deno-check-${process.pid}.json`);
  writeFileSync(file, JSON.stringify(config, null, 2));
  try {
    return fn(relative(root, file));
  } finally {
    rmSync(file, { force: true });
  }
}

function walk(dir) {
  return readdirSync(join(root, dir), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(root, join(e.parentPath ?? e.path, e.name)).split(sep).join("/"));
}

// What both packages must hold, exactly: the library, the CLI and the documents.
function shippedFiles(manifests) {
  return new Set([
    "mod.ts",
    "README.md",
    "LICENSE",
    ...manifests,
    ...walk("lib"),
    ...walk("ffi"),
    ...readdirSync(join(root, "cli")).filter((f) => f.endsWith(".ts")).map((f) => `cli/${f}`),
    "cli/vfio",
    "cli/README.md",
  ]);
}

function compareFiles(actual, expected) {
  const unexpected = [...actual].filter((f) => !expected.has(f)).sort();
  const missing = [...expected].filter((f) => !actual.has(f)).sort();
  if (unexpected.length === 0 && missing.length === 0) {
    console.log(`test: ${actual.size} files, as expected`);
    return undefined;
  }
  return [
    unexpected.length > 0 ? `unexpected: ${unexpected.join(", ")}` : "",
    missing.length > 0 ? `missing: ${missing.join(", ")}` : "",
  ].filter(Boolean).join("; ");
}

function npmPackFiles() {
  const r = capture("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { echo: false });
  if (r.status !== 0) return `npm pack --dry-run ${tail(r)}`;
  const [pack] = JSON.parse(r.stdout);
  return compareFiles(new Set(pack.files.map((f) => f.path)), shippedFiles(["package.json"]));
}

// `deno publish --dry-run` needs no network; it lists the files as `   file:///… (1.2KB)`. The type
// check is the deno check above; the dry run still checks the config and slow types.
function jsrPublishFiles() {
  const r = capture("deno", ["publish", "--dry-run", "--allow-dirty", "--no-check"], {
    env: { ...env, NO_COLOR: "1" },
  });
  if (r.status !== 0) return `deno publish --dry-run ${tail(r)}`;
  const base = realpathSync(root);
  const files = new Set();
  for (const line of `${r.stdout}\n${r.stderr}`.split("\n")) {
    const m = /^\s*(file:\/\/\S+) \([\d.]+\s*[KMGT]?i?B\)\s*$/.exec(line);
    if (m) files.add(relative(base, fileURLToPath(m[1])).split(sep).join("/"));
  }
  if (files.size === 0) return "deno publish --dry-run listed no files";
  return compareFiles(files, shippedFiles(["deno.json", "package.json"]));
}

// deno doc --lint, which must also print no warnings: "Failed resolving types" warnings (from type
// packages in deno.json's compilerOptions.types, see withBunTypes) would bury its findings.
function docLint() {
  const r = capture("deno", ["doc", "--lint", "mod.ts"], { env: { ...env, NO_COLOR: "1" } });
  if (r.status !== 0) return `deno doc --lint mod.ts exited ${r.status}`;
  const warnings = `${r.stdout}\n${r.stderr}`.split("\n").filter((l) => /^\s*Warning\b/.test(l));
  if (warnings.length > 0) {
    return `deno doc --lint printed ${warnings.length} warnings, first: ${warnings[0].trim()}`;
  }
}

function benchTable() {
  if (!existsSync(join(root, "scripts", "bench_table.mjs"))) return "scripts/bench_table.mjs is missing";
  return status0(run("node", ["scripts/bench_table.mjs", "--check"]), "node scripts/bench_table.mjs --check");
}

function staticChecks() {
  const deno = (...argv) => status0(run("deno", argv), `deno ${argv.join(" ")}`);
  runCases("static checks", join(results, "static.xml"), [
    ["deno fmt --check", () => deno("fmt", "--check")],
    ["deno lint", () => deno("lint")],
    [
      "deno check (ffi/bun.ts against bun-types)",
      () =>
        withBunTypes((cfg) =>
          deno(
            "check",
            "--config",
            cfg,
            "mod.ts",
            "ffi/",
            "lib/",
            "cli/",
            "examples/",
            "tests/",
            "scripts/",
            "bench/",
          )
        ),
    ],
    [
      "deno check --doc mod.ts lib/ ffi/ cli/",
      () => withBunTypes((cfg) => deno("check", "--config", cfg, "--doc", "mod.ts", "lib/", "ffi/", "cli/")),
    ],
    [
      "deno check --doc-only README.md cli/README.md",
      () => deno("check", "--doc-only", "README.md", "cli/README.md"),
    ],
    ["deno doc --lint mod.ts", docLint],
    ["npm pack: the tarball's files", npmPackFiles],
    ["deno publish --dry-run: the JSR package's files", jsrPublishFiles],
    ["README benchmark table (scripts/bench_table.mjs --check)", benchTable],
  ]);
}

const UNIT_DIRS = ["tests/unit", "tests/conformance"];

function unitTests() {
  const dirs = UNIT_DIRS.filter((d) => existsSync(join(root, d)));
  const deno = join(results, "unit-deno.xml");
  const s1 = run("deno", ["test", "-A", "--reporter=dot", `--junit-path=${deno}`, ...dirs]);
  recordJunit("unit tests (deno)", deno, s1);
  const bunXml = join(results, "unit-bun.xml");
  const files = dirs.flatMap((d) =>
    readdirSync(join(root, d), { recursive: true })
      .filter((f) => String(f).endsWith(".test.ts"))
      .map((f) => `./${d}/${f}`)
  );
  const s2 = run("bun", ["test", "--reporter=junit", `--reporter-outfile=${bunXml}`, ...files]);
  recordJunit("unit tests (bun)", bunXml, s2);
}

// What tests/consumer/main.ts must print: the library's own error for an address no machine has.
const CONSUMER_ERRORS = {
  DeviceNotFoundError: "ERR_VFIO_DEVICE_NOT_FOUND",
  VfioUnavailableError: "ERR_VFIO_UNAVAILABLE",
};

function expectLibraryError(r) {
  if (r.status !== 0) return `main.ts ${tail(r)}`;
  const last = r.stdout.trim().split("\n").at(-1) ?? "";
  let out;
  try {
    out = JSON.parse(last);
  } catch {
    return `main.ts printed no JSON line: ${tail(r)}`;
  }
  const want = CONSUMER_ERRORS[out.class];
  if (want === undefined || out.code !== want || out.vfioError !== true) {
    return `expected ${Object.keys(CONSUMER_ERRORS).join(" or ")} (a VfioError with its code), got ${last}`;
  }
  console.log(`test: got ${out.class} (${out.code}), as expected`);
}

function expectVersion(r, version) {
  if (r.status !== 0) return `vfio --version ${tail(r)}`;
  const escaped = version.replace(/[.+]/g, "\\$&");
  if (!new RegExp(`(^|[\\s@v])${escaped}(\\s|$)`).test(r.stdout.trim())) {
    return `vfio --version printed ${
      JSON.stringify(r.stdout.trim())
    }, not the package.json version ${version}`;
  }
}

// vfio-ts as a dependency, the way users get it: the npm tarball installed into a Bun project, and
// the same files imported by a Deno project through an import map (Deno runs no TypeScript from
// node_modules, so Deno users import the files, from JSR or a URL, not the npm package). Everything
// happens in a throwaway directory outside the repository, without network: the tarball has no
// dependencies. Each step is one test case; a step whose input is missing fails as not run.
function consumerTests() {
  const tmp = mkdtempSync(join(tmpdir(), "vfio-ts-consumer-"));
  console.log(`test: consumer projects in ${tmp}`);
  const version = JSON.parse(readFileSync(join(root, "package.json"), "utf8")).version;
  const cenv = { ...env, NO_COLOR: "1", BUN_INSTALL_CACHE_DIR: join(tmp, "bun-cache") };
  const sh = (cmd, argv, cwd, extra = {}, echo = true) =>
    capture(cmd, argv, { cwd, env: { ...cenv, ...extra }, echo });
  const main = join(root, "tests", "consumer", "main.ts");
  const bunApp = join(tmp, "bun-app");
  const denoApp = join(tmp, "deno-app");
  const state = {};
  const needs = (key, what) => {
    if (state[key] === undefined) throw new Error(`not run: ${what} failed`);
    return state[key];
  };

  runCases("consumer", join(results, "consumer.xml"), [
    ["npm pack", () => {
      const r = sh("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", tmp], root, {}, false);
      if (r.status !== 0) return `npm pack ${tail(r)}`;
      const tarball = join(tmp, JSON.parse(r.stdout)[0].filename);
      if (!existsSync(tarball)) return `npm pack wrote no ${tarball}`;
      state.tarball = tarball;
    }],
    ["Bun project: bun add <tarball>", () => {
      const tarball = needs("tarball", "npm pack");
      mkdirSync(bunApp);
      writeFileSync(
        join(bunApp, "package.json"),
        JSON.stringify({ name: "vfio-ts-consumer-bun", private: true, type: "module" }, null, 2),
      );
      copyFileSync(main, join(bunApp, "main.ts"));
      const r = sh("bun", ["add", tarball], bunApp);
      if (r.status !== 0) return `bun add ${tail(r)}`;
      for (const f of ["node_modules/vfio-ts/mod.ts", "node_modules/.bin/vfio"]) {
        if (!existsSync(join(bunApp, f))) return `bun add left no ${f}`;
      }
      state.bunApp = bunApp;
    }],
    ["Bun project: deno check main.ts (types from node_modules/vfio-ts)", () => {
      const dir = needs("bunApp", "bun add");
      return status0(sh("deno", ["check", "main.ts"], dir).status, "deno check main.ts");
    }],
    ["Bun project: bun main.ts throws the library's own error", () => {
      return expectLibraryError(sh("bun", ["main.ts"], needs("bunApp", "bun add")));
    }],
    ["Bun project: node_modules/.bin/vfio --version (on Bun)", () => {
      const dir = needs("bunApp", "bun add");
      return expectVersion(sh(join(dir, "node_modules", ".bin", "vfio"), ["--version"], dir), version);
    }],
    ["Bun project: node_modules/.bin/vfio --version (on Deno: no bun on PATH)", () => {
      const dir = needs("bunApp", "bun add");
      const denoOnly = join(tmp, "deno-only");
      mkdirSync(denoOnly);
      symlinkSync(realpathSync(join(bin, "deno")), join(denoOnly, "deno"));
      const rest = (process.env.PATH ?? "/usr/bin:/bin").split(delimiter)
        .filter((d) => d !== "" && !existsSync(join(d, "bun")));
      const PATH = [denoOnly, ...rest].join(delimiter);
      return expectVersion(
        sh(join(dir, "node_modules", ".bin", "vfio"), ["--version"], dir, { PATH }),
        version,
      );
    }],
    ["Deno project: deno check main.ts (import map to the unpacked tarball)", () => {
      const tarball = needs("tarball", "npm pack");
      const unpacked = join(tmp, "unpacked");
      mkdirSync(unpacked);
      const t = sh("tar", ["-xzf", tarball, "-C", unpacked], tmp);
      if (t.status !== 0) return `tar -xzf ${tail(t)}`;
      mkdirSync(denoApp);
      const mod = pathToFileURL(join(unpacked, "package", "mod.ts")).href;
      writeFileSync(join(denoApp, "deno.json"), JSON.stringify({ imports: { "vfio-ts": mod } }, null, 2));
      copyFileSync(main, join(denoApp, "main.ts"));
      state.denoApp = denoApp;
      return status0(sh("deno", ["check", "main.ts"], denoApp).status, "deno check main.ts");
    }],
    ["Deno project: deno run --allow-ffi main.ts throws the library's own error", () => {
      return expectLibraryError(
        sh("deno", ["run", "--allow-ffi", "main.ts"], needs("denoApp", "the project setup")),
      );
    }],
  ]);
  const failed = readFileSync(join(results, "consumer.xml"), "utf8").includes("<failure");
  if (failed) console.log(`test: consumer projects kept for inspection in ${tmp}`);
  else rmSync(tmp, { recursive: true, force: true });
}

function labTests() {
  // scripts/lab/suite.sh boots each lab configuration and writes one JUnit file per
  // configuration and runtime into the directory it is given; it exits non-zero on a boot failure.
  const dir = join(results, "lab");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const status = run("bash", [join(root, "scripts/lab/suite.sh"), dir]);
  const files = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(".xml")).sort() : [];
  for (const f of files) recordJunit(`lab ${f.replace(/\.xml$/, "")}`, join(dir, f), 0);
  if (status !== 0) record("lab harness", 0, 1);
}

const suites = parseSuites(process.argv.slice(2));
rmSync(results, { recursive: true, force: true });
mkdirSync(results, { recursive: true });
ensureRuntimes();
if (suites.includes("static")) staticChecks();
if (suites.includes("unit")) unitTests();
if (suites.includes("consumer")) consumerTests();
if (suites.includes("lab")) labTests();

console.log("\nSummary:");
for (const l of lines) console.log(`  ${l}`);
console.log(
  `${totals.passed} passed, ${totals.failed} failed${totals.skipped ? `, ${totals.skipped} skipped` : ""}`,
);
process.exit(totals.failed === 0 && totals.passed > 0 ? 0 : 1);
