/**
 * ffi/accessor_elf.ts: the hand-written ELF with the register accessors. The structural tests run
 * everywhere; on x86-64 the runtime's real backend dlopens it and every width is checked against
 * an anonymous mapping, which proves the ELF and its machine code on this runtime.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import { ACCESSOR_SYMBOLS, accessorElf, loadAccessors } from "../../ffi/accessor_elf.ts";
import { loadSys } from "../../ffi/mod.ts";
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from "../../lib/uapi/libc.ts";

const X64 = process.arch === "x64";

test("accessor_elf: only x86-64 has an encoding", () => {
  assert.equal(accessorElf("arm64"), undefined);
  assert.equal(accessorElf("riscv64"), undefined);
  assert.ok(accessorElf("x64") instanceof Uint8Array);
});

test("accessor_elf: the image is a 64-bit little-endian x86-64 shared object", () => {
  const elf = accessorElf("x64")!;
  const v = new DataView(elf.buffer);
  assert.deepEqual([...elf.subarray(0, 7)], [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  assert.equal(v.getUint16(16, true), 3); // ET_DYN
  assert.equal(v.getUint16(18, true), 62); // EM_X86_64
  assert.equal(v.getBigUint64(32, true), 64n); // program headers right after the ELF header
  assert.equal(v.getUint16(56, true), 4);
  const types = Array.from({ length: 4 }, (_, i) => v.getUint32(64 + 56 * i, true));
  assert.deepEqual(types, [1, 1, 2, 0x6474e551]); // PT_LOAD ×2, PT_DYNAMIC, PT_GNU_STACK
  const flags = Array.from({ length: 4 }, (_, i) => v.getUint32(64 + 56 * i + 4, true));
  assert.equal(flags[0], 5); // text: R+X, never writable
  assert.equal(flags[3]! & 1, 0); // the stack is not executable
});

test("accessor_elf: every accessor is a global function symbol with its code inside the text", () => {
  const elf = accessorElf("x64")!;
  const v = new DataView(elf.buffer);
  const symOff = 64 + 56 * 4;
  const strOff = symOff + 24 * (ACCESSOR_SYMBOLS.length + 1);
  const textEnd = Number(v.getBigUint64(64 + 32, true));
  const names = ACCESSOR_SYMBOLS.map((_, i) => {
    const o = symOff + 24 * (i + 1);
    const name = elf.subarray(strOff + v.getUint32(o, true));
    const value = Number(v.getBigUint64(o + 8, true));
    const size = Number(v.getBigUint64(o + 16, true));
    assert.equal(elf[o + 4], 0x12, "STB_GLOBAL | STT_FUNC");
    assert.ok(value >= strOff && value + size <= textEnd);
    assert.equal(elf[value + size - 1], 0xc3, "ends with ret");
    return new TextDecoder().decode(name.subarray(0, name.indexOf(0)));
  });
  assert.deepEqual(names, [...ACCESSOR_SYMBOLS]);
});

test(
  "accessor_elf: the real backend's accessors load and store every width exactly",
  { skip: !X64 },
  async () => {
    const sys = await loadSys();
    const len = sys.pageSize;
    const address = sys.mmap(len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert.ok(address > 0n, `mmap failed: ${address}`);
    let memory: ArrayBuffer | undefined;
    try {
      const io = sys.mmio(address, len);
      assert.ok(io, "the backend has no fast accessor on x86-64");
      memory = sys.memory(address, len);
      const v = new DataView(memory);
      io.write8(0x101, 0xa5);
      io.write16(0x202, 0xbeef);
      io.write32(0x304, 0xdeadbeef);
      io.write64(0x408, 0xfedcba9876543210n);
      io.write64(len - 8, 0xffffffffffffffffn);
      assert.equal(v.getUint8(0x101), 0xa5);
      assert.equal(v.getUint8(0x100) | v.getUint8(0x102), 0, "an 8-bit store touches one byte");
      assert.equal(v.getUint16(0x202, true), 0xbeef);
      assert.equal(v.getUint16(0x200, true), 0, "a 16-bit store touches two bytes");
      assert.equal(v.getUint32(0x304, true), 0xdeadbeef);
      assert.equal(v.getUint32(0x300, true), 0);
      assert.equal(v.getBigUint64(0x408, true), 0xfedcba9876543210n);
      assert.equal(v.getUint32(0x410, true), 0, "a 64-bit store touches eight bytes");
      assert.equal(v.getBigUint64(len - 8, true), 0xffffffffffffffffn);
      v.setBigUint64(0x508, 0x8070605040302010n, true);
      assert.equal(io.read8(0x50f), 0x80);
      assert.equal(io.read16(0x50e), 0x8070);
      assert.equal(io.read32(0x50c), 0x80706050);
      assert.equal(io.read64(0x508), 0x8070605040302010n);
      assert.equal(io.read8(0x101), 0xa5);
      assert.equal(io.read32(0x304), 0xdeadbeef); // unsigned, not -559038737
      assert.equal(io.read64(len - 8), 0xffffffffffffffffn);
    } finally {
      memory?.transfer(0);
      assert.equal(sys.munmap(address, len), 0);
    }
  },
);

function fakeLoader(dlopen: (path: string) => string, arch = "x64") {
  const closed: number[] = [];
  return {
    closed,
    loader: {
      arch,
      memfdCreate: () => 7,
      write: (_fd: number, data: Uint8Array) => data.length,
      close: (fd: number) => void closed.push(fd),
      dlopen,
    },
  };
}

function captureWarnings(fn: () => void): string[] {
  const warnings: string[] = [];
  const original = console.warn;
  console.warn = (...args: unknown[]) => void warnings.push(args.join(" "));
  try {
    fn();
  } finally {
    console.warn = original;
  }
  return warnings;
}

test("loadAccessors: a failed dlopen is reported with its reason and a warning, and the memfd is closed", () => {
  const { closed, loader } = fakeLoader(() => {
    throw new Error("noexec /proc");
  });
  let result: ReturnType<typeof loadAccessors<string>> | undefined;
  const warnings = captureWarnings(() => (result = loadAccessors(loader)));
  assert.equal(result?.library, undefined);
  assert.match(result?.reason ?? "", /dlopen failed: noexec \/proc/);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /falls back to pread\/pwrite/);
  assert.deepEqual(closed, [7]);
});

test("loadAccessors: the library is loaded from /proc/self/fd/N without a warning", () => {
  const { closed, loader } = fakeLoader((path) => `lib at ${path}`);
  let result: ReturnType<typeof loadAccessors<string>> | undefined;
  const warnings = captureWarnings(() => (result = loadAccessors(loader)));
  assert.equal(result?.library, "lib at /proc/self/fd/7");
  assert.equal(result?.reason, undefined);
  assert.deepEqual(warnings, []);
  assert.deepEqual(closed, [7]);
});

test("loadAccessors: an architecture without an encoding gives a reason and no warning", () => {
  const { loader } = fakeLoader(() => "unused", "arm64");
  let result: ReturnType<typeof loadAccessors<string>> | undefined;
  const warnings = captureWarnings(() => (result = loadAccessors(loader)));
  assert.equal(result?.library, undefined);
  assert.match(result?.reason ?? "", /no native accessor for arm64/);
  assert.deepEqual(warnings, []);
});
