/**
 * The `vfio` command: list PCI devices with their VFIO status, describe a vfio-pci device, bind and
 * unbind devices, and diagnose the system.
 *
 * ```sh
 * deno run -A cli/vfio.ts <command> …   # or: deno task vfio <command> …
 * bun cli/vfio.ts <command> …           # or, installed: vfio <command> … (cli/vfio, on Bun or Deno)
 * ```
 *
 * Exit status: 0 on success; 1 when the command failed or `doctor` found a problem that blocks
 * use; 2 on bad usage, including an argument that is not a PCI address (rejected before any sysfs
 * path is built from it). Errors are one line on stderr: the library's message, with its fix.
 * `--json` output shapes are documented in cli/README.md.
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { loadSys } from "../ffi/mod.ts";
import { canonicalPciAddress } from "../lib/pci_address.ts";
import { bind, CliError, formatBind, formatUnbind, unbind } from "./bind.ts";
import { doctor, formatDoctor } from "./doctor.ts";
import { formatInfo, info } from "./info.ts";
import { formatList, list } from "./list.ts";

const USAGE = `usage: vfio <command> [options]

commands:
  list            PCI devices: IDs, class, IOMMU group, driver, VFIO status
  info BDF        a vfio-pci device: regions, IRQs, capabilities, BARs, MSI/MSI-X, IOMMU backend
  bind BDF        bind to vfio-pci (the previous driver is recorded in /run/vfio-ts/BDF.driver)
  unbind BDF      unbind from vfio-pci and give the device back to its previous driver
  doctor [BDF]    check IOMMU, interrupt remapping, groups, permissions and limits; exit 1 on problems

options:
  --json            machine-readable output (shapes: cli/README.md)
  --backend NAME    info: auto (default), legacy or iommufd
  --driver NAME     unbind: bind this driver afterwards instead of the recorded one
  -h, --help        this help

BDF is a PCI address such as 0000:00:04.0 or 00:04.0.`;

const COMMANDS: Record<string, { min: number; max: number }> = {
  list: { min: 0, max: 0 },
  info: { min: 1, max: 1 },
  bind: { min: 1, max: 1 },
  unbind: { min: 1, max: 1 },
  doctor: { min: 0, max: 1 },
};

// One line: the message, and the messages of aggregated errors.
function oneLine(e: unknown): string {
  const message = e instanceof AggregateError
    ? [e.message, ...e.errors.map((x) => (x instanceof Error ? x.message : String(x)))].join("; ")
    : e instanceof Error
    ? e.message
    : String(e);
  return message.replace(/\s*\n\s*/g, " ");
}

/**
 * Runs the CLI.
 *
 * @param argv The arguments after the program name.
 * @param out Where output lines go.
 * @param err Where error lines go.
 * @returns The exit status.
 */
export async function main(
  argv: string[],
  out: (line: string) => void = console.log,
  err: (line: string) => void = console.error,
): Promise<number> {
  let values: { json?: boolean; backend?: string; driver?: string; help?: boolean };
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        json: { type: "boolean" },
        backend: { type: "string" },
        driver: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    err(`vfio: ${oneLine(e)}`);
    err("run `vfio --help` for usage");
    return 2;
  }
  const [command, ...args] = positionals;
  if (values.help) {
    out(USAGE);
    return 0;
  }
  const spec = command === undefined ? undefined : COMMANDS[command];
  if (command === undefined || spec === undefined || args.length < spec.min || args.length > spec.max) {
    err(
      command === undefined || spec === undefined
        ? `vfio: ${command === undefined ? "no command given" : `unknown command ${JSON.stringify(command)}`}`
        : `vfio ${command}: expected ${
          spec.min === spec.max ? spec.min : `${spec.min} to ${spec.max}`
        } argument(s)`,
    );
    err(USAGE);
    return 2;
  }
  if (values.backend !== undefined && !["auto", "legacy", "iommufd"].includes(values.backend)) {
    err(`vfio: Cannot use backend ${JSON.stringify(values.backend)}: expected auto, legacy or iommufd`);
    return 2;
  }
  // The address is checked here, before anything touches sysfs.
  let bdf: string | undefined;
  try {
    bdf = args[0] === undefined ? undefined : canonicalPciAddress(args[0]);
  } catch (e) {
    err(`vfio ${command}: ${oneLine(e)}`);
    return 2;
  }

  try {
    const sys = await loadSys();
    const print = <T>(result: T, format: (r: T) => string[]) => {
      if (values.json) out(JSON.stringify(result, null, 2));
      else for (const line of format(result)) out(line);
    };
    switch (command) {
      case "list":
        print(list(sys), formatList);
        return 0;
      case "info":
        print(info(sys, bdf!, (values.backend ?? "auto") as "auto" | "legacy" | "iommufd"), formatInfo);
        return 0;
      case "bind":
        print(bind(sys, bdf!), formatBind);
        return 0;
      case "unbind":
        print(unbind(sys, bdf!, values.driver), formatUnbind);
        return 0;
      default: {
        const result = doctor(sys, bdf);
        print(result, formatDoctor);
        return result.ok ? 0 : 1;
      }
    }
  } catch (e) {
    err(`vfio ${command}: ${oneLine(e)}`);
    return e instanceof CliError ? e.exitCode : 1;
  }
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
