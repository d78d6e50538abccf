/**
 * The `vfio` command: list PCI devices with their VFIO status, describe a vfio-pci device, bind and
 * unbind devices, set a PF's SR-IOV VFs, and diagnose the system.
 *
 * ```sh
 * deno run --allow-ffi cli/vfio.ts <command> …   # Deno needs no other permission
 * bun cli/vfio.ts <command> …                    # or, installed: vfio <command> … (cli/vfio)
 * ```
 *
 * Exit status: 0 on success; 1 when the command failed or `doctor` found a problem that blocks
 * use; 2 on bad usage (unknown command, option or option value, wrong argument count), including an
 * argument that is not a PCI address (rejected before any sysfs path is built from it). Errors are
 * one line on stderr: the library's message, with its fix; with `--json`, one JSON object on stdout
 * instead. `--json` output shapes are documented in cli/README.md.
 *
 * Everything goes through the library's `Sys` seam (libc over FFI), so Deno needs only --allow-ffi;
 * the version comes from package.json through a JSON import, which needs no read permission.
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import pkg from "../package.json" with { type: "json" };
import { loadSys } from "../ffi/mod.ts";
import { VfioError } from "../lib/errors.ts";
import { canonicalPciAddress } from "../lib/pci_address.ts";
import type { Sys } from "../lib/sys.ts";
import { bind, formatBind, formatUnbind, unbind, USER_NAME } from "./bind.ts";
import { doctor, formatDoctor } from "./doctor.ts";
import { CliError, errorJson, exitCodeOf, explainPermission, oneLine, usageError } from "./errors.ts";
import { formatInfo, info } from "./info.ts";
import { formatList, list } from "./list.ts";
import { formatSriov, sriov } from "./sriov.ts";

const USAGE = `usage: vfio <command> [options]

commands:
  list            PCI devices: IDs, class, IOMMU group, driver, VFIO status
  info BDF        a vfio-pci device: regions, IRQs, capabilities, BARs, MSI/MSI-X, IOMMU backend
  bind BDF        bind to vfio-pci (the previous driver is recorded in /run/vfio-ts/BDF.driver);
                  with --user NAME, then give the device's VFIO nodes to that user
  unbind BDF      unbind from vfio-pci and give the device back to its previous driver
  sriov BDF N     give an SR-IOV PF N virtual functions (0 removes them) and list them (root)
  doctor [BDF]    check IOMMU, interrupt remapping, groups, permissions and limits; exit 1 on problems

options:
  --json            machine-readable output, errors included (shapes: cli/README.md)
  --backend NAME    info: auto (default), legacy or iommufd
  --driver NAME     unbind: bind this driver afterwards instead of the recorded one
  --user NAME       bind: chown the group node (and device cdev) to NAME, for running as NAME
  -h, --help        this help
  -V, --version     the vfio-ts version

BDF is a PCI address such as 0000:00:04.0 or 00:04.0.
On Deno: deno run --allow-ffi cli/vfio.ts <command> (no other permission is needed).`;

type Command = "list" | "info" | "bind" | "unbind" | "sriov" | "doctor";

/** Each command's argument count and the options it takes besides --json. */
const COMMANDS: Record<Command, { min: number; max: number; options: readonly string[] }> = {
  list: { min: 0, max: 0, options: [] },
  info: { min: 1, max: 1, options: ["backend"] },
  bind: { min: 1, max: 1, options: ["user"] },
  unbind: { min: 1, max: 1, options: ["driver"] },
  sriov: { min: 2, max: 2, options: [] },
  doctor: { min: 0, max: 1, options: [] },
};
const BACKENDS = ["auto", "legacy", "iommufd"] as const;

/** What `vfio --version --json` prints. */
export interface VersionResult {
  /** The output format's version. */
  version: 1;
  /** The package name, from package.json. */
  name: string;
  /** The package version, from package.json. */
  packageVersion: string;
}

// node:util's parseArgs messages, made short; anything else keeps its own.
function usageMessage(e: unknown): string {
  const code = (e as { code?: unknown }).code;
  const message = oneLine(e);
  const option = /'(-[^' ]+)/.exec(message)?.[1];
  if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && option) return `unknown option ${option}`;
  if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" && option) {
    return /argument missing/.test(message)
      ? `option ${option} needs a value`
      : /does not take an argument/.test(message)
      ? `option ${option} takes no value`
      : message;
  }
  return message;
}

interface Parsed {
  command: Command;
  bdf: string | undefined;
  backend: (typeof BACKENDS)[number];
  driver: string | undefined;
  user: string | undefined;
  /** sriov: the VF count. */
  numVfs: number;
}

/** Checks the command line; everything wrong with it is a usage error (status 2). */
function parse(values: Record<string, string | boolean | undefined>, positionals: string[]): Parsed {
  const [command, ...args] = positionals;
  const commands = `the commands are ${Object.keys(COMMANDS).join(", ")}: see \`vfio --help\``;
  if (command === undefined) throw usageError("no command given", commands);
  if (!Object.hasOwn(COMMANDS, command)) {
    throw usageError(`unknown command ${JSON.stringify(command)}`, commands);
  }
  const spec = COMMANDS[command as Command];
  if (args.length < spec.min || args.length > spec.max) {
    throw usageError(
      `expected ${spec.min === spec.max ? spec.min : `${spec.min} or ${spec.max}`} ` +
        `argument${spec.max === 1 ? "" : "s"}, got ${args.length}`,
    );
  }
  const owners: Record<string, string> = { backend: "info", driver: "unbind", user: "bind" };
  for (const option of Object.keys(owners)) {
    if (values[option] !== undefined && !spec.options.includes(option)) {
      throw usageError(
        `option --${option} does not apply to ${command}`,
        `--${option} is for ${owners[option]}`,
      );
    }
  }
  const user = values.user as string | undefined;
  if (user !== undefined && !USER_NAME.test(user)) {
    throw usageError(
      `--user ${JSON.stringify(user)} is not a user name`,
      "give a login name or a numeric user ID",
    );
  }
  const backend = (values.backend ?? "auto") as string;
  if (!(BACKENDS as readonly string[]).includes(backend)) {
    throw usageError(
      `unknown backend ${JSON.stringify(backend)}`,
      `--backend takes ${BACKENDS.slice(0, -1).join(", ")} or ${BACKENDS.at(-1)}`,
    );
  }
  // sriov's count: what sriov_numvfs takes (a u16).
  const countArg = command === "sriov" ? args[1]! : "0";
  if (!/^\d{1,5}$/.test(countArg) || Number(countArg) > 0xffff) {
    throw usageError(
      `the VF count ${JSON.stringify(countArg)} is not a number`,
      "give a whole number of VFs, 0 to remove them all",
    );
  }
  // The address is checked here, before anything touches sysfs.
  let bdf: string | undefined;
  try {
    bdf = args[0] === undefined ? undefined : canonicalPciAddress(args[0]);
  } catch (e) {
    if (e instanceof VfioError) throw e; // InvalidPciAddressError: status 2 (exitCodeOf)
    throw new CliError(oneLine(e), {
      code: "ERR_VFIO_INVALID_PCI_ADDRESS",
      exitCode: 2,
      hint: "expected DDDD:BB:DD.F in hex, e.g. 0000:00:04.0",
    });
  }
  return {
    command: command as Command,
    bdf,
    backend: backend as Parsed["backend"],
    driver: values.driver as string | undefined,
    user,
    numVfs: Number(countArg),
  };
}

/**
 * Runs the CLI.
 *
 * @param argv The arguments after the program name.
 * @param out Where output lines go (stdout), JSON errors included.
 * @param err Where error lines go (stderr).
 * @param load Loads the syscall backend (a fake in tests).
 * @returns The exit status.
 */
export async function main(
  argv: string[],
  out: (line: string) => void = console.log,
  err: (line: string) => void = console.error,
  load: () => Promise<Sys> = loadSys,
): Promise<number> {
  // Known before parsing, so that a usage error is JSON too; nothing after `--` is an option.
  const end = argv.indexOf("--");
  const json = (end < 0 ? argv : argv.slice(0, end)).some((a) => /^--json(=|$)/.test(a));
  let command: string | undefined;
  const fail = (e: unknown): number => {
    const error = explainPermission(e);
    if (json) out(JSON.stringify(errorJson(error), null, 2));
    else err(`vfio${command === undefined ? "" : ` ${command}`}: ${oneLine(error)}`);
    return exitCodeOf(error);
  };

  let values: Record<string, string | boolean | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: true,
      options: {
        json: { type: "boolean" },
        backend: { type: "string" },
        driver: { type: "string" },
        user: { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
    }));
  } catch (e) {
    return fail(e instanceof CliError ? e : usageError(usageMessage(e)));
  }
  if (values.help) {
    out(USAGE);
    return 0;
  }
  if (values.version) {
    const v: VersionResult = { version: 1, name: pkg.name, packageVersion: pkg.version };
    out(json ? JSON.stringify(v, null, 2) : `${v.name} ${v.packageVersion}`);
    return 0;
  }
  command = positionals[0];
  let p: Parsed;
  try {
    p = parse(values, positionals);
  } catch (e) {
    if (command !== undefined && !Object.hasOwn(COMMANDS, command)) command = undefined;
    return fail(e);
  }

  try {
    const sys = await load();
    const print = <T>(result: T, format: (r: T) => string[]) => {
      if (json) out(JSON.stringify(result, null, 2));
      else for (const line of format(result)) out(line);
    };
    switch (p.command) {
      case "list":
        print(list(sys), formatList);
        return 0;
      case "info":
        print(info(sys, p.bdf!, p.backend), formatInfo);
        return 0;
      case "bind":
        print(bind(sys, p.bdf!, p.user === undefined ? {} : { user: p.user }), formatBind);
        return 0;
      case "unbind":
        print(unbind(sys, p.bdf!, p.driver), formatUnbind);
        return 0;
      case "sriov":
        print(sriov(sys, p.bdf!, p.numVfs), formatSriov);
        return 0;
      case "doctor": {
        const result = doctor(sys, p.bdf);
        print(result, formatDoctor);
        return result.ok ? 0 : 1;
      }
    }
  } catch (e) {
    return fail(e);
  }
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
