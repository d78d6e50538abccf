#!/usr/bin/env node
// The project's benchmark command (`npm run bench`), for a fresh machine with only Node, npm and apt.
//
// 1. installs what it needs when missing: the pinned runtimes (npm devDependencies deno and bun),
//    gcc, fio (apt-get install -y fio; the lab guest runs the host's binaries) and DPDK's testpmd
//    (Debian's dpdk-dev and its igb PMD, with udev pinned to the installed systemd; see ensureDpdk);
// 2. builds the C baselines (bench/*.c) into bench/build/, which git ignores;
// 3. host: runs bench/host_baseline (C), then bench/host.ts on Deno and on Bun, in interleaved rounds;
// 4. lab: boots one QEMU guest (scripts/lab/run.sh, the custom 7.3 kernel, emulated VT-d) and runs
//    bench/lab.sh inside it: the C baseline and both runtimes take turns on the edu device, then the
//    NVMe controller is driven by examples/nvme.ts on each runtime and by the kernel's nvme driver
//    under fio, then the two igb NICs by DPDK's testpmd and by bench/igb.ts on each runtime;
// 5. writes bench/results.json and prints a table of ratios against the C (or kernel, or DPDK) baseline;
//    rows of a partial run (--no-host, --no-lab, or a benchmark that failed) replace only the rows it
//    measured, the others stay from earlier runs, each with its date;
// 6. regenerates the README's results table from bench/results.json (scripts/bench_table.mjs --write).
//
// Timing never fails the command: goals are reported, not enforced. It exits non-zero only when a
// stage could not run (a build, a runtime crash, a lab boot).
//
// Usage: node scripts/bench.mjs [--no-host] [--no-lab] [--quick] [--rounds N] [--only=edu|irq|nvme|igb]
//   --quick: fewer and shorter repetitions, for checking that everything runs; --rounds: how many
//   times the C, Deno and Bun processes take turns (default 2; noise on a shared machine evens out);
//   --only: one lab group and nothing else (no host benchmarks; with --no-lab, nothing at all).
import { spawn, spawnSync } from "node:child_process";
import { cpus } from "node:os";
import {
  createWriteStream,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const build = join(root, "bench", "build");
const bin = join(root, "node_modules", ".bin");
const env = { ...process.env, PATH: `${bin}:${process.env.PATH}`, DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" };
const args = process.argv.slice(2);
const flag = (f) => args.includes(f);
const quick = flag("--quick");
const roundsAt = args.indexOf("--rounds");
const rounds = Math.max(1, Number(roundsAt >= 0 ? args[roundsAt + 1] : quick ? 1 : 2) || 1);
const only = args.find((a) => a.startsWith("--only="))?.slice("--only=".length);
if (only !== undefined && !["edu", "irq", "nvme", "igb"].includes(only)) {
  console.error(`bench: --only takes edu, irq, nvme or igb, not ${JSON.stringify(only)}`);
  process.exit(2);
}
const labGroup = (g) => only === undefined || only === g;
const started = Date.now();
const say = (s) => console.log(`bench: ${s}`);
const failures = [];

// --- Setup ---------------------------------------------------------------------------------------

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { cwd: root, env, stdio: "inherit", ...opts });
  if (r.error) throw r.error;
  return r;
}

function have(cmd) {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { env, stdio: "ignore" }).status === 0;
}

function aptInstall(...pkgs) {
  const root = process.getuid?.() === 0;
  const apt = (argv) =>
    run(root ? "apt-get" : "sudo", root ? argv : ["apt-get", ...argv], {
      env: { ...env, DEBIAN_FRONTEND: "noninteractive" },
    }).status === 0;
  say(`installing ${pkgs.filter((p) => !p.startsWith("-")).join(" ")} with apt-get`);
  if (apt(["install", "-y", "-q", ...pkgs])) return;
  if (apt(["update", "-q"]) && apt(["install", "-y", "-q", ...pkgs])) return;
  throw new Error(`Cannot install ${pkgs.join(" ")} with apt-get`);
}

function ensureTools(lab) {
  if (!existsSync(join(bin, "deno")) || !existsSync(join(bin, "bun"))) {
    say("installing the pinned runtimes (npm devDependencies deno and bun)");
    const lock = existsSync(join(root, "package-lock.json"));
    if (run("npm", [lock ? "ci" : "install", "--no-audit", "--no-fund"]).status !== 0) {
      throw new Error("Cannot install the npm devDependencies (npm ci failed)");
    }
  }
  if (!have("gcc")) aptInstall("gcc", "libc6-dev");
  if (lab && labGroup("nvme") && !have("fio")) aptInstall("fio");
  if (lab && labGroup("igb")) ensureDpdk();
}

// DPDK's testpmd, the C peer of the igb rows: dpdk-dev holds dpdk-testpmd; the igb PMD and the ring
// mempool are plugins, which --no-install-recommends would leave out unless named. dpdk-dev pulls in
// rdma-core, which depends on udev: apt would take the newest udev and upgrade systemd to match it, so
// udev is pinned to the installed systemd's version. When that cannot be satisfied the igb rows report
// the missing baseline; the rest of the benchmark runs.
const DPDK_PACKAGES = ["dpdk", "dpdk-dev", "librte-net-e1000-23", "librte-mempool-ring23"];
function ensureDpdk() {
  if (spawnSync("dpkg", ["-s", ...DPDK_PACKAGES], { stdio: "ignore" }).status === 0) return;
  const systemd = spawnSync("dpkg-query", ["-W", "-f=${Version}", "systemd"], { encoding: "utf8" });
  const pin = systemd.status === 0 && systemd.stdout ? [`udev=${systemd.stdout.trim()}`] : [];
  try {
    aptInstall("--no-install-recommends", ...DPDK_PACKAGES, ...pin);
  } catch (e) {
    failures.push(`${e.message} (${pin.join(" ") || "no systemd"}): the igb rows have no DPDK baseline`);
  }
}

function buildC() {
  mkdirSync(build, { recursive: true });
  const cc = (argv) => {
    const r = run("gcc", ["-O2", "-Wall", "-Wextra", ...argv]);
    if (r.status !== 0) throw new Error(`Cannot build the C baselines: gcc ${argv.join(" ")} failed`);
  };
  cc(["-fPIC", "-shared", "-o", join(build, "libbench_mmio.so"), "bench/mmio_accessor.c"]);
  for (const name of ["host_baseline", "lab_baseline"]) {
    cc(["-o", join(build, name), `bench/${name}.c`, `-L${build}`, "-lbench_mmio", "-Wl,-rpath,$ORIGIN"]);
  }
}

// --- Running -------------------------------------------------------------------------------------

// Runs one measuring process and returns its JSON lines; progress goes to the terminal.
function measure(where, label, cmd, argv) {
  say(`${where}: ${label}`);
  const r = spawnSync(cmd, argv, { cwd: root, env, stdio: ["ignore", "pipe", "inherit"], encoding: "utf8" });
  if (r.error || r.status !== 0) failures.push(`${where} ${label} exited with ${r.error ?? r.status}`);
  return parseLines(r.stdout ?? "", where);
}

function parseLines(text, where) {
  return text.split("\n").filter((l) => l.startsWith("{")).map((l) => ({ where, ...JSON.parse(l) }));
}

function hostBenches() {
  const o = quick ? { reps: 3, target: 30, warm: 50 } : { reps: 7, target: 100, warm: 300 };
  const js = ["--reps", o.reps, "--target-ms", o.target, "--warmup-ms", o.warm].map(String);
  const lines = [];
  for (let r = 1; r <= rounds; r++) {
    lines.push(
      ...measure(
        "host",
        `round ${r}/${rounds}: C`,
        join(build, "host_baseline"),
        [o.reps, o.target, 50].map(String),
      ),
      ...measure("host", `round ${r}/${rounds}: deno`, "deno", ["run", "-A", "bench/host.ts", ...js]),
      ...measure("host", `round ${r}/${rounds}: bun`, "bun", ["bench/host.ts", ...js]),
    );
  }
  return lines;
}

// Boots the lab once; the console goes to bench/build/lab-console.log, progress lines to the terminal.
async function labBenches() {
  const out = join(build, "lab");
  rmSync(out, { recursive: true, force: true });
  const o = quick
    ? { BENCH_ROUNDS: 1, BENCH_REPS: 2, BENCH_TARGET_MS: 50, BENCH_WARMUP_MS: 1500, BENCH_IO_MS: 500 }
    : { BENCH_ROUNDS: rounds, BENCH_REPS: 5, BENCH_TARGET_MS: 100, BENCH_WARMUP_MS: 3000, BENCH_IO_MS: 1000 };
  const vars = Object.entries({
    ...o,
    BENCH_C_WARMUP_MS: 300,
    BENCH_IRQ_EVENTS: quick ? 200 : 500,
    BENCH_IGB_SECONDS: quick ? 2 : 3,
    // NVMe: about 30 points per runtime (bench/lab_nvme.ts) and 5 fio depths, each this many
    // repetitions of BENCH_IO_MS: the group takes about 3 minutes of guest time.
    BENCH_NVME_REPS: quick ? 2 : 3,
    ...(only ? { BENCH_ONLY: only } : {}),
  }).map(([k, v]) => `${k}=${v}`).join(" ");
  const cmd = `${vars} bash bench/lab.sh bench/build/lab`;
  const log = join(build, "lab-console.log");
  say(`lab: booting the guest (console: ${log})`);
  const status = await new Promise((resolve) => {
    const child = spawn(
      "bash",
      [
        "scripts/lab/run.sh",
        "--kernel",
        "custom7",
        "--iommu",
        "intel",
        "--name",
        "bench",
        "--timeout",
        "2400",
        "--",
        cmd,
      ],
      { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] },
    );
    const file = createWriteStream(log);
    let pending = "";
    const onData = (chunk) => {
      file.write(chunk);
      pending += chunk.toString();
      const parts = pending.split(/\r?\n/);
      pending = parts.pop() ?? "";
      for (const l of parts) if (/^(bench-lab|bench\(|lab: )/.test(l)) console.log(`  ${l}`);
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("close", (code) => {
      file.end();
      resolve(code);
    });
  });
  if (status !== 0) failures.push(`the lab run exited with status ${status} (console: ${log})`);
  const results = join(out, "results.jsonl");
  const lines = existsSync(results) ? parseLines(readFileSync(results, "utf8"), "lab") : [];
  // fio: one report per run; IOPS of the read job.
  const fio = new Map();
  for (const f of existsSync(out) ? readdirSync(out).sort() : []) {
    const m = /^fio-qd(\d+)-\d+\.json$/.exec(f);
    if (!m) continue;
    try {
      const text = readFileSync(join(out, f), "utf8");
      const report = JSON.parse(text.slice(text.indexOf("{")));
      const iops = report.jobs[0].read.iops;
      fio.set(m[1], [...(fio.get(m[1]) ?? []), iops]);
    } catch (e) {
      failures.push(`cannot read ${f}: ${e.message}`);
    }
  }
  for (const [qd, samples] of fio) {
    lines.push({
      where: "lab",
      bench: `nvme.randread4k.qd${qd}`,
      side: "kernel",
      unit: "IOPS",
      samples,
      note: "kernel nvme driver, fio io_uring direct=1, 1 job",
    });
  }
  const machine = existsSync(join(out, "machine")) ? readFileSync(join(out, "machine"), "utf8").trim() : "";
  return { lines, machine };
}

// --- Results -------------------------------------------------------------------------------------

const GOALS = [
  // [id pattern, goal, what the baseline is]
  [/^ioctl\.[a-z_]+$/, { op: "<=", x: 1.2 }, "C ioctl(2)"],
  [
    /^ioctl\.[a-z_]+\.over_floor$/,
    { op: "<=", x: 1.05 },
    "the runtime's bare FFI ioctl, errno read (same runtime)",
  ],
  [/^mmio\.mmap\.(read|write)32$/, { op: "<=", x: 3 }, "C call into a non-inlined volatile accessor (.so)"],
  [/^mmio\.pread\.(read|write)32$/, { op: "<=", x: 3 }, "C pread/pwrite of 4 bytes"],
  // "at most 1.2x C's cost", said of a rate: at least 1/1.2 of C's pairs per second.
  [
    /^dma\.map_unmap_4k$/,
    { op: ">=", x: 1 / 1.2, label: "0.83 (1/1.2)" },
    "C VFIO_IOMMU_MAP_DMA + UNMAP_DMA",
  ],
  [/^irq\.msi\.(wait|next)\.p50$/, { op: "<=", x: 2 }, "C poll() loop"],
  [/^irq\.msi\.(wait|next)\.p99$/, { op: "<=", x: 3 }, "C poll() loop"],
  // Heap allocation per wake-up (bench/_alloc.ts), judged on the value: none (0.5 leaves room for
  // the counters' noise); next()'s row is already net of the caller's own await.
  [/^irq\.msi\.(wait|next)\.alloc_(bytes|cells)$/, { op: "<=", x: 0.5, on: "value" }, "none: 0 per wake-up"],
  // The asynchronous driver against the kernel's nvme driver under fio at the same queue depth.
  [/^nvme\.randread4k\.irq\.qd1\.q[12]$/, { op: ">=", x: 1.7 }, "kernel nvme driver, fio io_uring, same QD"],
  [/^nvme\.randread4k\.irq\.qd32\.q[12]$/, { op: ">=", x: 4.1 }, "kernel nvme driver, fio io_uring, same QD"],
  [/^nvme\.randread4k\.poll\.qd32$/, { op: ">=", x: 6.3 }, "kernel nvme driver, fio io_uring, same QD"],
  [/^igb\.(txonly|fwd)64$/, { op: ">=", x: 0.5 }, "DPDK testpmd, net_e1000_igb PMD"],
];
const DESCRIPTIONS = {
  "ioctl.enotty": "ioctl round trip, /dev/null ENOTTY (sys.ioctlPtr)",
  "ioctl.group_status": "ioctl round trip, VFIO_GROUP_GET_STATUS (sys.ioctlPtr)",
  "mmio.mmap.read32": "MMIO read32, Registers fast path (mmap)",
  "mmio.mmap.read32.raw": "  read32, RawMmio accessor alone",
  "mmio.mmap.write32": "MMIO write32, Registers fast path (mmap)",
  "mmio.mmap.write32.raw": "  write32, RawMmio accessor alone",
  "mmio.pread.read32": "MMIO read32, Registers fallback (pread)",
  "mmio.pread.read32.raw": "  read32, region.kernelIo alone",
  "mmio.pread.write32": "MMIO write32, Registers fallback (pwrite)",
  "mmio.pread.write32.raw": "  write32, region.kernelIo alone",
  "dma.map_unmap_4k": "DMA mapDma + unmapDma, 4 KiB",
  "dma.map_unmap_4k.cached_info": "  same, IOMMU info read once (proposed fix)",
  "dma.map_unmap_4k.raw": "  the two ioctls alone, prebuilt structs",
  "dma.map_unmap_4k.live_1": "  with 1 other mapping live",
  "dma.map_unmap_4k.live_1000": "  with 1,000 other mappings live",
  "dma.map_unmap_4k.live_10000": "  with 10,000 other mappings live",
  "dma.map_unmap_4k.live_60000": "  with 60,000 other mappings live",
  "irq.msi.wait.p50": "edu MSI -> eventfd -> irq.wait(), p50",
  "irq.msi.wait.p99": "edu MSI -> eventfd -> irq.wait(), p99",
  "irq.msi.next.p50": "edu MSI -> eventfd -> await irq.next(), p50",
  "irq.msi.next.p99": "edu MSI -> eventfd -> await irq.next(), p99",
  "irq.msi.wait0_next.p50": "  irq.wait(0, 0) || await irq.next(), p50",
  "irq.msi.wait0_next.p99": "  irq.wait(0, 0) || await irq.next(), p99",
  "irq.msi.raw.p50": "  raw accessor + poll + read, prebuilt, p50",
  "irq.msi.raw.p99": "  raw accessor + poll + read, prebuilt, p99",
  "irq.msi.next_hop.p50": "  irq.next() called before the MSI: the read off the thread, p50",
  "irq.msi.next_hop.p99": "  irq.next() called before the MSI: the read off the thread, p99",
  "irq.msi.wait.alloc_bytes": "irq.wait() heap allocation per wake-up (V8 bytes)",
  "irq.msi.wait.alloc_cells": "irq.wait() heap allocation per wake-up (JSC cells)",
  "irq.msi.next.alloc_bytes": "irq.next() heap allocation per wake-up, beyond the caller's await (V8 bytes)",
  "irq.msi.next.alloc_cells": "irq.next() heap allocation per wake-up, beyond the caller's await (JSC cells)",
  "irq.msi.await.alloc_bytes": "  the caller's await of a settled promise alone, V8 bytes",
  "irq.msi.await.alloc_cells": "  the caller's await of a settled promise alone, JSC cells",
  "irq.msi.next_hop.alloc_bytes": "  await irq.next() called before the MSI (read off the thread), V8 bytes",
  "irq.msi.next_hop.alloc_cells": "  await irq.next() called before the MSI (read off the thread), JSC cells",
  ...nvmeDescriptions(),
  "igb.txonly64": "igb 64-byte transmit, one port (examples/igb.ts)",
  "igb.fwd64": "igb 64-byte io forwarding, two hub-joined ports, total (examples/igb.ts)",
};
// The NVMe rows (bench/lab_nvme.ts), goal rows first: the asynchronous driver (Nvme) at queue depths
// 1 to 64 with MSI-X on one and two queues, and polled; the blocking driver; the lean queue pair of
// bench/nvme_queue.ts with no driver in between.
function nvmeDescriptions() {
  const d = {};
  const queues = (q) => `${q} queue${q > 1 ? "s" : ""}`;
  for (const qd of [1, 32]) {
    for (const q of [1, 2]) {
      d[`nvme.randread4k.irq.qd${qd}.q${q}`] = `NVMe 4 KiB randread QD${qd}, Nvme, MSI-X, ${queues(q)}`;
    }
  }
  d["nvme.randread4k.poll.qd32"] = "NVMe 4 KiB randread QD32, Nvme, polled";
  for (const qd of [4, 16, 64]) {
    for (const q of [1, 2]) d[`nvme.randread4k.irq.qd${qd}.q${q}`] = `  QD${qd}, Nvme, MSI-X, ${queues(q)}`;
  }
  for (const qd of [1, 4, 16, 64]) d[`nvme.randread4k.poll.qd${qd}`] = `  QD${qd}, Nvme, polled`;
  d["nvme.randread4k.blocking.qd1"] = "NVMe 4 KiB randread QD1, NvmeController.read (blocking), MSI-X";
  const lean = { spin: "polled", wait: "MSI-X, irq.wait() (no thread hop)", next: "MSI-X, await irq.next()" };
  for (const [how, what] of Object.entries(lean)) {
    for (const qd of [1, 32]) {
      d[`nvme.randread4k.lean.${how}.qd${qd}`] =
        `NVMe 4 KiB randread QD${qd}, lean queue pair (no driver), ${what}`;
    }
  }
  return d;
}
// Rows whose baseline is the same runtime's floor row rather than C: the library's cost over the
// runtime's own FFI call (bench/_ffi_floor.ts).
const OVER_FLOOR = {
  "ioctl.enotty": "ioctl.enotty.floor.buffer_errno",
  "ioctl.group_status": "ioctl.group_status.floor.buffer_errno",
};
Object.assign(DESCRIPTIONS, {
  "ioctl.enotty.over_floor": "ioctl, /dev/null: sys.ioctlPtr over the bare FFI call",
  "ioctl.group_status.over_floor": "ioctl, GROUP_GET_STATUS: sys.ioctlPtr over the bare FFI call",
  "ioctl.enotty.floor.buffer": "  bare FFI ioctl, buffer argument, no errno read",
  "ioctl.enotty.floor.buffer_errno": "  bare FFI ioctl, buffer argument, errno read",
  "ioctl.enotty.floor.pointer": "  bare FFI ioctl, pointer made once, no errno read",
  "ioctl.group_status.floor.buffer": "  bare FFI ioctl, buffer argument, no errno read",
  "ioctl.group_status.floor.buffer_errno": "  bare FFI ioctl, buffer argument, errno read",
  "ioctl.group_status.floor.pointer": "  bare FFI ioctl, pointer made once, no errno read",
});
const RATE_UNITS = new Set(["pairs/s", "IOPS", "pps"]);
const today = new Date().toISOString().slice(0, 10);
// Heap allocation per wake-up (bench/lab.ts irqAllocation): bytes under Deno, cells under Bun.
const ALLOC_ROW = /\.alloc_(bytes|cells)$/;
// Baselines that are not C, by the side their JSON lines carry.
const BASELINE_SIDES = { kernel: "kernel", dpdk: "DPDK" };

const median = (v) => {
  const s = [...v].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const round = (x) => (x === undefined || !Number.isFinite(x) ? x : Number(x.toPrecision(4)));

function cpuModel() {
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"));
    return `${m?.[1]?.trim() ?? "unknown CPU"}, ${cpus().length} cores`;
  } catch {
    return "unknown CPU";
  }
}

// Merges the rounds: one entry per (where, bench, side) with every sample.
function merge(lines) {
  const map = new Map();
  for (const l of lines) {
    const key = `${l.where}|${l.bench}|${l.side}`;
    const e = map.get(key);
    if (l.error) {
      if (!e) map.set(key, { ...l, samples: [] });
      else e.error = l.error;
      continue;
    }
    if (!e) map.set(key, { ...l, samples: [...l.samples] });
    else e.samples.push(...l.samples);
  }
  return map;
}

function rows(lines, machines) {
  const all = merge(lines);
  // The library over its runtime's floor: the same samples, against the same runtime's floor row.
  for (const e of [...all.values()]) {
    const floor = OVER_FLOOR[e.bench] && all.get(`${e.where}|${OVER_FLOOR[e.bench]}|${e.side}`);
    if (!floor || (e.side !== "deno" && e.side !== "bun")) continue;
    const bench = `${e.bench}.over_floor`;
    all.set(`${e.where}|${bench}|${e.side}`, { ...e, bench, baseline: floor.bench, baselineSide: e.side });
  }
  const out = [];
  for (const e of all.values()) {
    if (e.side !== "deno" && e.side !== "bun") continue;
    const baseId = e.baseline ?? e.bench.replace(/\.raw$/, "");
    // Allocation rows have no C side: they are judged on their value.
    const alloc = ALLOC_ROW.test(e.bench);
    const base = alloc
      ? undefined
      : e.baselineSide
      ? all.get(`${e.where}|${baseId}|${e.baselineSide}`)
      : all.get(`${e.where}|${baseId}|c`) ?? all.get(`${e.where}|${baseId}|kernel`) ??
        all.get(`${e.where}|${baseId}|dpdk`);
    const rate = RATE_UNITS.has(e.unit);
    const best = (v) => (v.length ? (rate ? Math.max(...v) : Math.min(...v)) : undefined);
    const value = e.samples.length ? median(e.samples) : undefined;
    const baseValue = base?.samples.length ? median(base.samples) : undefined;
    const goalEntry = GOALS.find(([re]) => re.test(e.bench));
    const ratio = value !== undefined && baseValue ? value / baseValue : undefined;
    const ratioBest = e.samples.length && base?.samples.length
      ? best(e.samples) / best(base.samples)
      : undefined;
    const goal = goalEntry?.[1];
    const judged = goal?.on === "value" ? value : ratio;
    out.push({
      benchmark: e.bench,
      runtime: e.side,
      value: round(value),
      unit: e.unit ?? base?.unit,
      baseline_value: round(baseValue),
      ratio: round(ratio),
      where: e.where,
      machine: machines[e.where],
      date: today,
      description: DESCRIPTIONS[e.bench] ?? e.bench,
      baseline: (alloc ? "none" : `${BASELINE_SIDES[base?.side] ?? e.baselineSide ?? "C"} ${baseId}`) +
        (goalEntry ? `: ${goalEntry[2]}` : ""),
      best: round(best(e.samples)),
      baseline_best: round(base ? best(base.samples) : undefined),
      ratio_best: round(ratioBest),
      goal: goal
        ? `${goal.on ?? "ratio"} ${goal.op === "<=" ? "≤" : "≥"} ${goal.label ?? goal.x}`
        : "diagnostic",
      met: goal && judged !== undefined
        ? (goal.op === "<=" ? judged <= goal.x : judged >= goal.x)
        : undefined,
      samples: e.samples.map(round),
      baseline_samples: base?.samples.map(round) ?? [],
      ...(e.note ? { note: e.note } : {}),
      ...(e.error ? { error: e.error } : {}),
      ...(!base && !alloc ? { error: e.error ?? `no ${baseId} baseline was measured` } : {}),
      ...(base?.error && !base.samples.length
        ? { error: e.error ?? `${base.side} baseline: ${base.error}` }
        : {}),
    });
  }
  return sortRows(out);
}

function sortRows(results) {
  const order = Object.keys(DESCRIPTIONS);
  const pos = (r) =>
    (r.where === "host" ? 0 : 1000) + (order.indexOf(r.benchmark) + 1 || 999) * 2 +
    (r.runtime === "bun" ? 1 : 0);
  return results.sort((a, b) => pos(a) - pos(b));
}

// The rows of this run over those already in bench/results.json, by (where, benchmark, runtime): a
// --no-host run keeps the host rows, and a benchmark that measured nothing this time keeps its last
// measurement. Each row carries the date it was measured.
function mergeResults(file, fresh) {
  let old = [];
  if (existsSync(file)) {
    try {
      old = JSON.parse(readFileSync(file, "utf8"));
      if (!Array.isArray(old)) throw new Error("not an array");
    } catch (e) {
      say(`ignoring the earlier bench/results.json (${e.message})`);
      old = [];
    }
  }
  const key = (r) => `${r.where}|${r.benchmark}|${r.runtime}`;
  const map = new Map(old.filter((r) => r && typeof r === "object").map((r) => [key(r), r]));
  let kept = 0;
  for (const r of fresh) {
    const prev = map.get(key(r));
    if (r.value === undefined && prev?.value !== undefined) {
      say(`${r.where} ${r.benchmark} (${r.runtime}) measured nothing; keeping the earlier row`);
      continue;
    }
    map.set(key(r), r);
  }
  const measured = new Set(fresh.map(key));
  for (const k of map.keys()) if (!measured.has(k)) kept++;
  if (kept) say(`kept ${kept} rows from earlier runs in bench/results.json`);
  return sortRows([...map.values()]);
}

function fmt(x) {
  if (x === undefined || x === null || !Number.isFinite(x)) return "-";
  if (x >= 100000) return x.toExponential(2);
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

function table(results, machines) {
  const head = [
    "where",
    "benchmark",
    "rt",
    "unit",
    "min/max",
    "median",
    "base min/max",
    "base median",
    "ratio",
    "best",
    "goal",
    "",
  ];
  const body = results.map((r) => [
    r.where,
    r.description,
    r.runtime,
    r.unit ?? "",
    fmt(r.best),
    fmt(r.value),
    fmt(r.baseline_best),
    fmt(r.baseline_value),
    r.ratio === undefined ? "-" : `${fmt(r.ratio)}x`,
    r.ratio_best === undefined ? "-" : `${fmt(r.ratio_best)}x`,
    r.goal === "diagnostic" ? "" : r.goal.replace("ratio ", ""),
    r.error ? "ERROR" : r.met === undefined ? "" : r.met ? "ok" : "MISSED",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells) =>
    cells.map((c, i) => (i >= 4 && i <= 9 ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join("  ");
  console.log("");
  for (const [w, m] of Object.entries(machines)) if (m) console.log(`${w}: ${m}`);
  console.log("min/max: best repetition (min for times, max for rates); ratio: median / baseline median;");
  console.log(
    "best: best / baseline best. Rates (pairs/s, IOPS, pps): higher is better, so their goals are >=.\n",
  );
  console.log(line(head).trimEnd());
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const b of body) console.log(line(b).trimEnd());
  const errors = results.filter((r) => r.error);
  if (errors.length) {
    console.log("\nErrors:");
    for (const r of errors) console.log(`  ${r.where} ${r.benchmark} (${r.runtime}): ${r.error}`);
  }
}

// --- Main ----------------------------------------------------------------------------------------

async function main() {
  const wantHost = !flag("--no-host") && only === undefined, wantLab = !flag("--no-lab");
  ensureTools(wantLab);
  buildC();
  const lines = [];
  const machines = { host: cpuModel() };
  if (wantHost) lines.push(...hostBenches());
  if (wantLab) {
    const lab = await labBenches();
    lines.push(...lab.lines);
    machines.lab = `${lab.machine || "QEMU TCG guest (-cpu max, 1 vCPU)"} on ${machines.host}`;
  }
  const fresh = rows(lines, machines);
  const file = join(root, "bench", "results.json");
  const results = mergeResults(file, fresh);
  writeFileSync(file, JSON.stringify(results, null, 2) + "\n");
  // deno fmt --check runs over the repo in `npm test`: keep the file in its format.
  spawnSync("deno", ["fmt", "-q", file], { cwd: root, env, stdio: "ignore" });
  table(fresh, machines);
  const secs = Math.round((Date.now() - started) / 1000);
  console.log(
    `\nbench: wrote ${results.length} rows (${fresh.length} measured now) to bench/results.json in ` +
      `${Math.floor(secs / 60)}m${secs % 60}s`,
  );
  // The README's table is generated from results.json, never copied by hand (npm test checks it).
  const gen = spawnSync(process.execPath, [join(root, "scripts", "bench_table.mjs"), "--write"], {
    cwd: root,
    env,
    stdio: "inherit",
  });
  if (gen.error || gen.status !== 0) {
    failures.push(`scripts/bench_table.mjs --write exited with ${gen.error ?? gen.status}`);
  }
  if (failures.length) {
    console.log("bench: some stages did not complete:");
    for (const f of failures) console.log(`  ${f}`);
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(`bench: ${e.message}`);
  process.exit(1);
});
