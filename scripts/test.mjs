#!/usr/bin/env node
// The project's test command (`npm test`), for a fresh machine with only Node, npm and apt.
//
// 1. installs the pinned runtimes (npm devDependencies deno and bun) when they are missing;
// 2. static checks: deno fmt --check, deno lint, deno check (both backends), deno doc --lint;
// 3. unit and conformance tests (tests/unit, tests/conformance) on Deno and on Bun;
// 4. the lab: boots QEMU guests with real VFIO (scripts/lab) and runs tests/lab inside them on both
//    runtimes, under every kernel and IOMMU mode the lab offers;
// 5. prints one line, `N passed, N failed`, that sums every suite.
//
// Usage: node scripts/test.mjs [--no-lab] [--only=static,unit,lab]
// Each suite writes JUnit XML under .test-results/, which is what the counts are read from.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const results = join(root, ".test-results");
const bin = join(root, "node_modules", ".bin");
const env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, DENO_NO_UPDATE_CHECK: "1" };
const args = process.argv.slice(2);
const only = args.find((a) => a.startsWith("--only="))?.slice(7).split(",");
const want = (s) => (!only || only.includes(s)) && !(s === "lab" && args.includes("--no-lab"));

const totals = { passed: 0, failed: 0, skipped: 0 };
const lines = [];

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { cwd: root, env, stdio: "inherit", ...opts });
  if (r.error) throw r.error;
  return r.status ?? 128 + 1;
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

function staticChecks() {
  const checks = [
    ["deno fmt --check", ["fmt", "--check"]],
    ["deno lint", ["lint"]],
    ["deno check", ["check", "mod.ts", "ffi/", "lib/", "cli/", "examples/", "tests/", "scripts/"]],
    ["deno doc --lint mod.ts", ["doc", "--lint", "mod.ts"]],
  ];
  let passed = 0, failed = 0;
  for (const [name, argv] of checks) {
    console.log(`test: ${name}`);
    if (run("deno", argv) === 0) passed++;
    else {
      failed++;
      console.log(`test: FAILED: ${name}`);
    }
  }
  record("static checks", passed, failed);
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

rmSync(results, { recursive: true, force: true });
mkdirSync(results, { recursive: true });
ensureRuntimes();
if (want("static")) staticChecks();
if (want("unit")) unitTests();
if (want("lab")) labTests();

console.log("\nSummary:");
for (const l of lines) console.log(`  ${l}`);
console.log(
  `${totals.passed} passed, ${totals.failed} failed${totals.skipped ? `, ${totals.skipped} skipped` : ""}`,
);
process.exit(totals.failed === 0 && totals.passed > 0 ? 0 : 1);
