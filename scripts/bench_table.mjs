#!/usr/bin/env node
// Renders the README's benchmark results from bench/results.json, so that the table is never copied
// by hand. Plain Node ESM, no dependencies.
//
// Usage: node scripts/bench_table.mjs [--write | --check] [--results FILE] [--readme FILE]
//   (no flag)  prints the generated Markdown
//   --write    replaces what lies between the marker comments in README.md
//   --check    exits 1, printing a diff, when README.md's marked block differs from what --write writes
// Exits 2 when a file or the markers are missing, or results.json cannot be read.
//
// Output: a caption built from the rows' machine (and date, when the rows carry one), a table of the
// rows with a goal, then a second table of the diagnostic rows (goal "diagnostic" in results.json),
// which isolate one layer of a goal row and are not judged. Missing values print as "–"; a goal row
// whose runtime failed (an "error" and no ratio, e.g. its benchmark crashed) says "error" where "met"
// would stand. The output is already in the shape `deno fmt` gives Markdown (padded table columns,
// prose wrapped at the deno.json lineWidth), so `deno fmt --check` and `--check` agree.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const START = "<!-- bench-table:start -->";
const END = "<!-- bench-table:end -->";
// deno fmt wraps prose at deno.json's fmt.lineWidth (80 when unset); the caption is wrapped the same way.
const LINE_WIDTH = (() => {
  try {
    const w = JSON.parse(readFileSync(join(root, "deno.json"), "utf8")).fmt?.lineWidth;
    return Number.isInteger(w) && w > 0 ? w : 80;
  } catch {
    return 110;
  }
})();
const DASH = "–";
const RUNTIMES = [["deno", "Deno"], ["bun", "Bun"]];
const UNITS = { us: "µs" };

function fail(msg) {
  console.error(`bench_table: ${msg}`);
  process.exit(2);
}

function parseArgs(argv) {
  const o = { mode: "print", results: join(root, "bench", "results.json"), readme: join(root, "README.md") };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--write" || a === "--check") {
      if (o.mode !== "print") fail("use only one of --write and --check");
      o.mode = a.slice(2);
    } else if (a === "--results" || a === "--readme") {
      if (argv[i + 1] === undefined) fail(`${a} needs a file`);
      o[a.slice(2)] = argv[++i];
    } else {
      fail(
        `unknown argument ${a}\nusage: node scripts/bench_table.mjs [--write | --check] [--results FILE] ` +
          "[--readme FILE]",
      );
    }
  }
  return o;
}

// --- Formatting ----------------------------------------------------------------------------------

const isNum = (x) => typeof x === "number" && Number.isFinite(x);

function thousands(x) {
  const s = String(Math.round(Math.abs(x))).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return x < 0 ? `-${s}` : s;
}

// 3 significant digits below 1000 (4.92, 99.9, 256), whole numbers with separators above (48,720).
function num(x) {
  if (!isNum(x)) return DASH;
  if (Math.abs(Number(x.toPrecision(3))) >= 1000) return thousands(x);
  return x.toPrecision(3);
}

const ratioText = (r) => (isNum(r) ? `${r.toFixed(2)}×` : DASH);

// Goals are stored as text: "ratio ≤ 1.2", "ratio ≥ 0.83 (1/1.2)", or "value ≤ 0.5" for a goal on
// the measured value itself (allocation per wake-up); anything else (e.g. "diagnostic") is not a
// goal. The fraction in parentheses, when present, is the exact bound.
function parseGoal(text) {
  if (typeof text !== "string") return undefined;
  const m =
    /^\s*(?:(ratio|value)\s*)?(≤|≥|<=|>=)\s*([0-9]*\.?[0-9]+)(?:\s*\(\s*([0-9.]+)\s*\/\s*([0-9.]+)\s*\))?/
      .exec(text);
  if (!m) return undefined;
  const x = m[4] !== undefined ? Number(m[4]) / Number(m[5]) : Number(m[3]);
  if (!Number.isFinite(x)) return undefined;
  return {
    on: m[1] ?? "ratio",
    le: m[2] === "≤" || m[2] === "<=",
    x,
    label: text.replace(/^\s*ratio\s*/, "").trim(),
  };
}

// Judges the ratio, or the value itself for a "value" goal.
function metText(goal, ratio, value) {
  const v = goal?.on === "value" ? value : ratio;
  if (!goal || !isNum(v)) return DASH;
  return (goal.le ? v <= goal.x : v >= goal.x) ? "met" : "missed";
}

// A Markdown table cell: one line, pipes escaped.
const cell = (s) => String(s).replace(/\s+/g, " ").trim().replace(/\|/g, "\\|") || DASH;

// The table as deno fmt lays it out: every column padded to its widest cell, "---" at least.
function table(head, body) {
  const widths = head.map((h, i) => Math.max(3, h.length, ...body.map((r) => r[i].length)));
  const line = (cells) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
  return [line(head), `| ${widths.map((w) => "-".repeat(w)).join(" | ")} |`, ...body.map(line)].join("\n");
}

// Greedy word wrap, as deno fmt wraps a paragraph.
function wrap(text, width = LINE_WIDTH) {
  const lines = [];
  let cur = "";
  for (const w of text.split(/\s+/).filter(Boolean)) {
    if (cur && cur.length + 1 + w.length > width) {
      lines.push(cur);
      cur = w;
    } else cur = cur ? `${cur} ${w}` : w;
  }
  if (cur) lines.push(cur);
  return lines.join("\n");
}

// --- Rendering -----------------------------------------------------------------------------------

// One entry per (where, benchmark), in results.json's order, with the row of each runtime.
function group(results) {
  const map = new Map();
  for (const r of results) {
    if (!r || typeof r !== "object" || (!r.benchmark && !r.description)) continue;
    const key = `${r.where ?? ""}|${r.benchmark ?? r.description ?? ""}`;
    let g = map.get(key);
    if (!g) map.set(key, g = { where: r.where, benchmark: r.benchmark, rows: {} });
    if (typeof r.runtime === "string") g.rows[r.runtime] ??= r;
  }
  for (const g of map.values()) {
    const any = Object.values(g.rows);
    const first = (f) => any.map(f).find((v) => v !== undefined && v !== null && v !== "");
    g.description = first((r) => (typeof r.description === "string" ? r.description.trim() : undefined)) ??
      g.benchmark ?? DASH;
    g.unit = first((r) => r.unit);
    g.goalText = first((r) => r.goal);
    g.goal = parseGoal(g.goalText);
    const bases = [...new Set(any.map((r) => r.baseline_value).filter(isNum))];
    g.baseline = bases.length ? bases.map(num).join(" / ") : DASH;
  }
  return [...map.values()];
}

function values(g) {
  const rt = RUNTIMES.map(([k]) => g.rows[k]);
  const ratio = (r) =>
    isNum(r?.ratio)
      ? r.ratio
      : isNum(r?.value) && isNum(r?.baseline_value) && r.baseline_value
      ? r.value / r.baseline_value
      : undefined;
  return {
    value: rt.map((r) => num(r?.value)),
    raw: rt.map((r) => r?.value),
    ratio: rt.map((r) => ratio(r)),
    failed: rt.map((r) => typeof r?.error === "string" && !isNum(ratio(r))),
  };
}

function caption(results) {
  const byWhere = new Map();
  for (const r of results) {
    if (!r || typeof r !== "object" || !r.where) continue;
    const e = byWhere.get(r.where) ?? { machines: new Set(), dates: new Set(), undated: 0 };
    if (typeof r.machine === "string" && r.machine.trim()) e.machines.add(r.machine.trim());
    if (typeof r.date === "string" && r.date.trim()) e.dates.add(r.date.trim().slice(0, 10));
    else e.undated++;
    byWhere.set(r.where, e);
  }
  const parts = [...byWhere].map(([where, e]) => {
    const machine = e.machines.size ? [...e.machines].join(" / ") : "machine not recorded";
    const dates = [...e.dates].sort();
    const when = dates.length === 0
      ? ""
      : dates.length === 1
      ? `, ${dates[0]}`
      : `, ${dates[0]} to ${dates[dates.length - 1]}`;
    const undated = dates.length && e.undated ? ` (${e.undated} rows from an earlier, undated run)` : "";
    return `${where}: ${machine}${when}${undated}`;
  });
  return wrap(
    `Medians from \`bench/results.json\`, written into this README by \`scripts/bench_table.mjs\`; ratio: ` +
      `runtime median / baseline median${parts.length ? "; " : ""}` +
      `${parts.join("; ")}.`,
  );
}

function render(results) {
  if (!Array.isArray(results)) throw new Error("bench/results.json is not an array of rows");
  const groups = group(results);
  const goals = groups.filter((g) => g.goal || (g.goalText && g.goalText !== "diagnostic"));
  // The NVMe driver's rows without a goal of their own are in the NVMe matrix instead.
  const diags = groups.filter((g) => !goals.includes(g) && !NVME_MATRIX_ROW.test(g.benchmark ?? ""));
  const main = goals.map((g) => {
    const v = values(g);
    return [
      g.where ?? DASH,
      g.description,
      UNITS[g.unit] ?? g.unit ?? DASH,
      ...v.value,
      g.baseline,
      ...v.ratio.map(ratioText),
      g.goal?.label ?? g.goalText,
      ...v.ratio.map((r, i) => (v.failed[i] ? "error" : metText(g.goal, r, v.raw[i]))),
    ].map(cell);
  });
  // A diagnostic row's description is written to follow its goal row ("same, IOMMU info read once"):
  // name that row first when the ids show it (mmio.mmap.read32.raw under mmio.mmap.read32).
  const parent = (g) =>
    goals.filter((p) => p.where === g.where && p.benchmark && g.benchmark?.startsWith(`${p.benchmark}.`))
      .sort((a, b) => b.benchmark.length - a.benchmark.length)[0];
  const diag = diags.map((g) => {
    const v = values(g);
    const p = parent(g);
    return [
      g.where ?? DASH,
      p ? `${p.description} — ${g.description}` : g.description,
      UNITS[g.unit] ?? g.unit ?? DASH,
      ...v.value,
      g.baseline,
      ...v.ratio.map(ratioText),
    ].map(cell);
  });
  const head = ["Where", "Benchmark", "Unit", "Deno", "Bun", "Baseline", "Deno ratio", "Bun ratio"];
  const out = [caption(results)];
  out.push(goals.length ? table([...head, "Goal", "Deno met", "Bun met"], main) : "No rows with a goal.");
  if (diags.length) {
    out.push(
      wrap(
        "Diagnostic rows (no goal of their own; each isolates one layer of a goal row and is measured " +
          "against the same baseline):",
      ),
      table(head, diag),
    );
  }
  const matrix = nvmeMatrix(results);
  if (matrix) {
    out.push(
      wrap(
        "NVMe 4 KiB random reads by queue depth, the asynchronous driver (examples/nvme.ts): IOPS, and in " +
          "parentheses the ratio to the kernel's nvme driver under fio (io_uring, one job) at the same " +
          "depth in the same boot:",
      ),
      matrix,
    );
  }
  return out.join("\n\n");
}

// --- The NVMe matrix -----------------------------------------------------------------------------

// nvme.randread4k.irq.qdN.qQ (MSI-X, Q queues) and nvme.randread4k.poll.qdN (polled, one queue).
const NVME_MATRIX_ROW = /^nvme\.randread4k\.(irq|poll)\.qd(\d+)(?:\.q(\d+))?$/;

// One line per mode and runtime with a cell per queue depth, then the kernel's line; undefined
// when results.json has no such rows.
function nvmeMatrix(results) {
  const lines = new Map(); // "irq|1" → { deno: Map(qd → row), bun: ... }
  const depths = new Set();
  const kernel = new Map(); // qd → Set of baseline medians
  for (const r of results) {
    const m = r && typeof r.benchmark === "string" ? NVME_MATRIX_ROW.exec(r.benchmark) : null;
    if (!m || !RUNTIMES.some(([k]) => k === r.runtime)) continue;
    const qd = Number(m[2]), key = `${m[1]}|${m[3] ?? "1"}`;
    depths.add(qd);
    if (!lines.has(key)) lines.set(key, {});
    const byRuntime = lines.get(key);
    (byRuntime[r.runtime] ??= new Map()).set(qd, r);
    if (isNum(r.baseline_value)) (kernel.get(qd) ?? kernel.set(qd, new Set()).get(qd)).add(r.baseline_value);
  }
  if (lines.size === 0) return undefined;
  const qds = [...depths].sort((a, b) => a - b);
  const order = (k) => (k.startsWith("irq") ? 0 : 1000) + Number(k.split("|")[1]);
  const body = [];
  for (const key of [...lines.keys()].sort((a, b) => order(a) - order(b))) {
    const [mode, q] = key.split("|");
    const label = mode === "irq"
      ? `MSI-X, ${q} queue${q === "1" ? "" : "s"}`
      : `polled, ${q} queue${q === "1" ? "" : "s"}`;
    for (const [rt, name] of RUNTIMES) {
      const rows = lines.get(key)[rt];
      if (!rows) continue;
      body.push([
        label,
        name,
        ...qds.map((qd) => {
          const r = rows.get(qd);
          if (!r || !isNum(r.value)) return DASH;
          const ratio = isNum(r.ratio)
            ? r.ratio
            : isNum(r.baseline_value) && r.baseline_value
            ? r.value / r.baseline_value
            : undefined;
          return `${num(r.value)} (${ratioText(ratio)})`;
        }),
      ].map(cell));
    }
  }
  body.push(
    [
      "kernel nvme driver",
      "fio",
      ...qds.map((qd) => kernel.has(qd) ? [...kernel.get(qd)].map(num).join(" / ") : DASH),
    ]
      .map(cell),
  );
  return table(["Mode", "Runtime", ...qds.map((qd) => `QD${qd}`)], body);
}

// --- README --------------------------------------------------------------------------------------

// A path as the user would type it: relative to the working directory when under it.
function show(file) {
  const r = relative(process.cwd(), file);
  return r && !r.startsWith("..") ? r : file;
}

function readJson(file) {
  if (!existsSync(file)) fail(`${show(file)} does not exist`);
  try {
    return JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    fail(`cannot read ${file}: ${e.message}`);
  }
}

function split(text, file) {
  const s = text.indexOf(START), e = text.indexOf(END);
  if (s < 0 || e < 0) {
    fail(`${file} lacks the marker comments ${START} and ${END} around the benchmark table`);
  }
  if (e < s || text.indexOf(START, s + 1) >= 0 || text.indexOf(END, e + 1) >= 0) {
    fail(`${file}: expected exactly one ${START} followed by one ${END}`);
  }
  return {
    before: text.slice(0, s + START.length),
    inner: text.slice(s + START.length, e),
    after: text.slice(e),
  };
}

// One hunk around the lines that differ, in unified-diff style.
function diff(oldText, newText, file) {
  const a = oldText.split("\n"), b = newText.split("\n");
  let p = 0;
  while (p < a.length && p < b.length && a[p] === b[p]) p++;
  let s = 0;
  while (s < a.length - p && s < b.length - p && a[a.length - 1 - s] === b[b.length - 1 - s]) s++;
  const max = 40;
  const out = [`--- ${file} (between the bench-table markers)`, "+++ generated from bench/results.json"];
  out.push(`@@ block line ${p + 1} @@`);
  const old = a.slice(p, a.length - s), neu = b.slice(p, b.length - s);
  for (const l of old.slice(0, max)) out.push(`-${l}`);
  if (old.length > max) out.push(`  ... ${old.length - max} more removed lines`);
  for (const l of neu.slice(0, max)) out.push(`+${l}`);
  if (neu.length > max) out.push(`  ... ${neu.length - max} more added lines`);
  return out.join("\n");
}

function main() {
  const o = parseArgs(process.argv.slice(2));
  const results = readJson(o.results);
  let body;
  try {
    body = render(results);
  } catch (e) {
    fail(`${o.results}: ${e.message}`);
  }
  if (o.mode === "print") {
    console.log(body);
    return;
  }
  const name = show(o.readme);
  if (!existsSync(o.readme)) fail(`${name} does not exist`);
  const text = readFileSync(o.readme, "utf8");
  const { before, inner, after } = split(text, name);
  const want = `\n\n${body}\n\n`;
  if (o.mode === "write") {
    if (inner !== want) writeFileSync(o.readme, before + want + after);
    console.log(`bench_table: ${name} ${inner === want ? "already up to date" : "updated"}`);
    return;
  }
  if (inner === want) return;
  console.error(
    `bench_table: ${name}'s benchmark table differs from bench/results.json; ` +
      "run node scripts/bench_table.mjs --write",
  );
  console.error(diff(inner, want, name));
  process.exit(1);
}

main();
