// A program that uses vfio-ts as a dependency, the way its users do: `import ... from "vfio-ts"`.
// scripts/test.mjs (suite "consumer") copies it into a throwaway Bun project that installed the npm
// tarball and into a Deno project whose import map points at the unpacked tarball, and runs it there.
// In this repository, deno.json maps "vfio-ts" to ./mod.ts, so `deno check` covers it too.
//
// It opens a PCI address that no machine has and prints, as one JSON line, what the library threw:
// with or without VFIO, that must be the library's own error (DeviceNotFoundError, or
// VfioUnavailableError), never a crash in module loading, FFI setup or a missing export.
import { open, VfioError } from "vfio-ts";

/** An address no machine has (bus 0x7f, device 0x1f, function 7). */
const ABSENT_BDF = "0000:7f:1f.7";

try {
  using _vfio = await open(ABSENT_BDF);
  console.log(JSON.stringify({ opened: true }));
} catch (e) {
  const err = e as { constructor?: { name?: unknown }; code?: unknown; message?: unknown };
  console.log(JSON.stringify({
    class: err.constructor?.name,
    code: err.code,
    vfioError: e instanceof VfioError,
    message: String(err.message),
  }));
}
