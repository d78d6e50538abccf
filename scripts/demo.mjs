#!/usr/bin/env node
// `npm run demo`, the README's main job on a fresh machine: installs the pinned runtimes when they
// are missing, boots the QEMU lab (installing QEMU and fetching the guest kernel on first use, with
// progress lines), and runs the `vfio` CLI and the example drivers against the emulated edu, NVMe
// and igb devices, printing a short transcript.
//
// Usage: node scripts/demo.mjs [--kernel stock|stock7|custom|custom7]   (default custom7: Linux 7.3
// with iommufd, built once and cached; see scripts/lab/run.sh)
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = join(root, "node_modules", ".bin");
// VFIO_LAB_QUIET: the guest's console goes to the lab's log file; progress lines still show.
const env = {
  ...process.env,
  PATH: `${bin}:${process.env.PATH}`,
  DENO_NO_UPDATE_CHECK: "1",
  VFIO_LAB_QUIET: "1",
};
const { values } = parseArgs({ options: { kernel: { type: "string", default: "custom7" } } });

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { cwd: root, env, stdio: "inherit", ...opts });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

if (!existsSync(join(bin, "deno")) || !existsSync(join(bin, "bun"))) {
  console.log("demo: installing the pinned runtimes (npm devDependencies deno and bun)");
  if (
    run("npm", [existsSync(join(root, "package-lock.json")) ? "ci" : "install", "--no-audit", "--no-fund"])
  ) {
    process.exit(1);
  }
}

const outDir = join(root, ".test-results");
mkdirSync(outDir, { recursive: true });
const transcript = join(outDir, "demo.txt");
console.log(
  `demo: booting the lab (${values.kernel} kernel, emulated intel-iommu, edu, NVMe and igb on vfio-pci)`,
);
const status = run("bash", [
  join(root, "scripts/lab/run.sh"),
  "--kernel",
  values.kernel,
  "--iommu",
  "intel",
  "--name",
  "demo",
  "--",
  `bash scripts/lab/demo.sh ${JSON.stringify(transcript)}`,
], { stdio: ["ignore", "inherit", "inherit"] });
if (existsSync(transcript)) process.stdout.write(readFileSync(transcript, "utf8"));
console.log(
  status === 0 ? "\ndemo: done" : `\ndemo: failed (status ${status}); the lab's console log is named above`,
);
process.exit(status);
