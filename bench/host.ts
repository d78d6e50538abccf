/**
 * Host benchmarks (no VFIO needed), run under Deno and Bun by scripts/bench.mjs; the C side is
 * bench/host_baseline.c.
 *
 * - `ioctl.enotty`: `sys.ioctlPtr` on /dev/null, which fails with ENOTTY: the FFI round trip of one
 *   ioctl, errno read included.
 * - `mmio.mmap.read32` / `write32`: {@link Registers} over an anonymous mapping served by the
 *   backend's fast accessor (`sys.mmio`), as `device.registers(0)` builds it over a BAR.
 * - `mmio.pread.read32` / `write32`: the library's fallback path (`VfioRegion.registers({ path: "pread" })`)
 *   over a file in /dev/shm standing in for the device fd: the same pread/pwrite of 4 bytes, with
 *   tmpfs doing the access instead of a device.
 * - `ioctl.enotty.floor.*`: the same ioctl straight through the runtime's FFI (bench/_ffi_floor.ts),
 *   in each parameter style, with no library code: the floor for `sys.ioctlPtr`.
 * - `*.raw`: the same accesses straight through the `RawMmio` accessor, without `Registers` (its
 *   bounds checks and segment lookup), to show where the time goes.
 *
 * ```sh
 * deno run -A bench/host.ts [--reps 7] [--target-ms 100] [--warmup-ms 200]
 * bun bench/host.ts
 * ```
 *
 * @module
 */
import { loadSys } from "../ffi/mod.ts";
import { OwnedFd } from "../lib/fd.ts";
import { Registers } from "../lib/mmio.ts";
import { type RegionInfo, VfioRegion } from "../lib/region.ts";
import {
  MAP_ANONYMOUS,
  MAP_POPULATE,
  MAP_PRIVATE,
  O_CLOEXEC,
  O_RDWR,
  PROT_READ,
  PROT_WRITE,
} from "../lib/uapi/libc.ts";
import {
  VFIO_GROUP_GET_STATUS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from "../lib/uapi/vfio.ts";
import { rmSync, writeFileSync } from "node:fs";
import process from "node:process";
import { emitFloor, ioctlVariants } from "./_ffi_floor.ts";
import { emit, log, optionsFromArgs, sink, timeOps } from "./_harness.ts";

const o = optionsFromArgs({ reps: 7, targetMs: 100, warmupMs: 200 });
const sys = await loadSys();
const SIZE = 4096;
const REG = 4; // the register offset every access uses

// ioctl round trip.
{
  const fd = sys.open("/dev/null", O_RDWR | O_CLOEXEC);
  if (fd < 0) throw new Error(`Cannot open /dev/null (${fd})`);
  const status = new Uint8Array(8);
  new DataView(status.buffer).setUint32(0, 8, true); // argsz
  const r = sys.ioctlPtr(fd, VFIO_GROUP_GET_STATUS, status);
  if (r !== -25) throw new Error(`Cannot benchmark ioctl: /dev/null answered ${r}, expected -ENOTTY`);
  emit({
    bench: "ioctl.enotty",
    unit: "ns",
    samples: timeOps((n) => {
      let s = 0;
      for (let i = 0; i < n; i++) s += sys.ioctlPtr(fd, VFIO_GROUP_GET_STATUS, status);
      sink.value = s;
    }, o),
  });
  // The runtime's bare FFI call, with no library code: the floor sys.ioctlPtr is measured against.
  for (const v of await ioctlVariants()) {
    const call = v.make(fd, VFIO_GROUP_GET_STATUS, status);
    if (call() !== (v.name.endsWith("errno") ? -25 : -1)) {
      throw new Error(`Cannot benchmark ${v.name}: unexpected result`);
    }
    emitFloor("ioctl.enotty", v, call, o);
  }
  sys.close(fd);
}

// The fast path: Registers over RAM through the backend's accessor.
{
  const addr = sys.mmap(SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (addr < 0n) throw new Error(`Cannot mmap (${addr})`);
  const io = sys.mmio(addr, SIZE);
  if (!io) throw new Error(`Cannot benchmark the fast path: the ${sys.name} backend has no accessor here`);
  const unused = { ...io }; // never reached: the segment covers the whole mapping
  const regs = new Registers("host RAM", SIZE, "mmap", [{ start: 0, length: SIZE, io }], unused, () => {
    sys.munmap(addr, SIZE);
  });
  mmioBenches("mmio.mmap", regs);
  rawBenches("mmio.mmap", io);
  regs.close();
}

// The fallback: the library's own pread/pwrite path, over a tmpfs file instead of a device fd.
{
  const path = `/dev/shm/vfio-ts-bench-${runtimeName()}-${process.pid}`;
  writeFileSync(path, new Uint8Array(SIZE));
  const fd = sys.open(path, O_RDWR | O_CLOEXEC);
  rmSync(path);
  if (fd < 0) throw new Error(`Cannot open ${path} (${fd})`);
  const info: RegionInfo = {
    index: 0,
    flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP,
    size: SIZE,
    offset: 0,
    readable: true,
    writable: true,
    mmap: true,
    sparse: undefined,
    type: undefined,
    msixMappable: false,
    capabilities: [],
  };
  const owned = new OwnedFd(sys, fd, path);
  const region = new VfioRegion(sys, owned, info, "tmpfs stand-in");
  const regs = region.registers({ path: "pread" });
  if (regs.path !== "pread") {
    throw new Error(`Cannot benchmark the fallback: the registers took ${regs.path}`);
  }
  mmioBenches("mmio.pread", regs);
  rawBenches("mmio.pread", region.kernelIo);
  regs.close();
  owned.close();
}

function mmioBenches(prefix: string, regs: Registers): void {
  log(`${prefix} through Registers (${regs.path})`);
  emit({
    bench: `${prefix}.read32`,
    unit: "ns",
    samples: timeOps((n) => {
      let s = 0;
      for (let i = 0; i < n; i++) s += regs.read32(REG);
      sink.value = s;
    }, o),
  });
  emit({
    bench: `${prefix}.write32`,
    unit: "ns",
    samples: timeOps((n) => {
      for (let i = 0; i < n; i++) regs.write32(REG, i & 0xffff);
    }, o),
  });
}

function rawBenches(
  prefix: string,
  io: { read32(o: number): number; write32(o: number, v: number): void },
): void {
  emit({
    bench: `${prefix}.read32.raw`,
    unit: "ns",
    samples: timeOps((n) => {
      let s = 0;
      for (let i = 0; i < n; i++) s += io.read32(REG);
      sink.value = s;
    }, o),
  });
  emit({
    bench: `${prefix}.write32.raw`,
    unit: "ns",
    samples: timeOps((n) => {
      for (let i = 0; i < n; i++) io.write32(REG, i & 0xffff);
    }, o),
  });
}

function runtimeName(): string {
  return sys.name;
}
