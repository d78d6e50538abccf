/**
 * A minimal ELF shared object, written byte by byte, that holds the register accessors
 * (`vfio_ts_rd8` … `vfio_ts_wr64`). The backends put it in a memfd and dlopen it through
 * /proc/self/fd/N: a call costs a few nanoseconds on both runtimes, each access is exactly one
 * load or store of its width (never merged, hoisted, dropped or locked), and no compiler is needed.
 *
 * Signatures: `rdN(base: pointer, offset: u32) -> uN` and `wrN(base: pointer, offset: u32, value)`;
 * `wr64` takes the value as two u32 halves (low, high) and stores them with one 64-bit move, because
 * a u64 parameter would take Deno's FFI off its fast path. The offset is a u32 for the same reason.
 *
 * Only x86-64 is encoded; elsewhere {@link accessorElf} returns undefined and the library uses
 * pread/pwrite on the region.
 *
 * @module
 */

/** The accessor symbols, in the order they are laid out. */
export const ACCESSOR_SYMBOLS = [
  "vfio_ts_rd8",
  "vfio_ts_rd16",
  "vfio_ts_rd32",
  "vfio_ts_rd64",
  "vfio_ts_wr8",
  "vfio_ts_wr16",
  "vfio_ts_wr32",
  "vfio_ts_wr64",
] as const;

// x86-64 SysV: rdi = base, esi = offset, edx = value (low), ecx = high. Every body starts with
// `mov %esi,%esi` so that the offset is zero-extended whatever the caller left in the upper half.
const X86_64_CODE: Record<(typeof ACCESSOR_SYMBOLS)[number], number[]> = {
  vfio_ts_rd8: [0x89, 0xf6, 0x0f, 0xb6, 0x04, 0x37, 0xc3], // movzbl (%rdi,%rsi),%eax; ret
  vfio_ts_rd16: [0x89, 0xf6, 0x0f, 0xb7, 0x04, 0x37, 0xc3], // movzwl (%rdi,%rsi),%eax; ret
  vfio_ts_rd32: [0x89, 0xf6, 0x8b, 0x04, 0x37, 0xc3], // mov (%rdi,%rsi),%eax; ret
  vfio_ts_rd64: [0x89, 0xf6, 0x48, 0x8b, 0x04, 0x37, 0xc3], // mov (%rdi,%rsi),%rax; ret
  vfio_ts_wr8: [0x89, 0xf6, 0x88, 0x14, 0x37, 0xc3], // mov %dl,(%rdi,%rsi); ret
  vfio_ts_wr16: [0x89, 0xf6, 0x66, 0x89, 0x14, 0x37, 0xc3], // mov %dx,(%rdi,%rsi); ret
  vfio_ts_wr32: [0x89, 0xf6, 0x89, 0x14, 0x37, 0xc3], // mov %edx,(%rdi,%rsi); ret
  vfio_ts_wr64: [
    0x89,
    0xf6, // mov %esi,%esi
    0x89,
    0xd2, // mov %edx,%edx        (zero-extend the low half)
    0x48,
    0xc1,
    0xe1,
    0x20, // shl $32,%rcx
    0x48,
    0x09,
    0xd1, // or %rdx,%rcx
    0x48,
    0x89,
    0x0c,
    0x37, // mov %rcx,(%rdi,%rsi)
    0xc3, // ret
  ],
};

const EM_X86_64 = 62;
const PAGE = 0x1000;

/**
 * Builds the accessor shared object for an architecture.
 *
 * @param arch The CPU architecture as `process.arch` names it.
 * @returns The ELF image, or undefined when the architecture has no encoding here.
 */
export function accessorElf(arch: string): Uint8Array | undefined {
  if (arch !== "x64") return undefined;
  const names = ACCESSOR_SYMBOLS;
  const nsyms = names.length + 1; // index 0 is the null symbol

  const PHNUM = 4;
  const symOff = 64 + 56 * PHNUM;
  const strOff = symOff + 24 * nsyms;
  const strtab = [0];
  const nameOff: number[] = [];
  for (const n of names) {
    nameOff.push(strtab.length);
    for (const c of n) strtab.push(c.charCodeAt(0));
    strtab.push(0);
  }
  const hashOff = align(strOff + strtab.length, 8);
  const hashSize = 4 * (2 + 1 + nsyms);
  let codeOff = align(hashOff + hashSize, 16);
  const codeAt: number[] = [];
  for (const n of names) {
    codeAt.push(codeOff);
    codeOff = align(codeOff + X86_64_CODE[n].length, 16);
  }
  const textEnd = codeOff;
  if (textEnd > PAGE) throw new RangeError("Cannot build the accessor ELF: text exceeds one page");
  const dynOff = PAGE;
  const dyn: [number, number][] = [
    [4, hashOff], // DT_HASH
    [5, strOff], // DT_STRTAB
    [6, symOff], // DT_SYMTAB
    [10, strtab.length], // DT_STRSZ
    [11, 24], // DT_SYMENT
    [0, 0], // DT_NULL
  ];
  const size = dynOff + 16 * dyn.length;
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  const u16 = (o: number, x: number) => v.setUint16(o, x, true);
  const u32 = (o: number, x: number) => v.setUint32(o, x, true);
  const u64 = (o: number, x: number) => v.setBigUint64(o, BigInt(x), true);

  // Elf64_Ehdr
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], 0); // ELFCLASS64, little-endian, EV_CURRENT, SYSV
  u16(16, 3); // ET_DYN
  u16(18, EM_X86_64);
  u32(20, 1); // e_version
  u64(32, 64); // e_phoff
  u16(52, 64); // e_ehsize
  u16(54, 56); // e_phentsize
  u16(56, PHNUM);
  u16(58, 64); // e_shentsize (no section headers)

  // Elf64_Phdr: type, flags, offset, vaddr, paddr, filesz, memsz, align
  const phdr = (i: number, type: number, flags: number, off: number, len: number, al: number) => {
    const o = 64 + 56 * i;
    u32(o, type);
    u32(o + 4, flags);
    u64(o + 8, off);
    u64(o + 16, off);
    u64(o + 24, off);
    u64(o + 32, len);
    u64(o + 40, len);
    u64(o + 48, al);
  };
  const R = 4, W = 2, X = 1;
  phdr(0, 1, R | X, 0, textEnd, PAGE); // PT_LOAD: headers, tables and code
  phdr(1, 1, R | W, dynOff, size - dynOff, PAGE); // PT_LOAD: the dynamic section
  phdr(2, 2, R | W, dynOff, size - dynOff, 8); // PT_DYNAMIC
  phdr(3, 0x6474e551, R | W, 0, 0, 16); // PT_GNU_STACK: the stack stays non-executable

  // Elf64_Sym: name, info, other, shndx, value, size. shndx is any defined section (not
  // SHN_UNDEF, and not SHN_ABS, which glibc would not relocate).
  names.forEach((n, i) => {
    const o = symOff + 24 * (i + 1);
    u32(o, nameOff[i]!);
    b[o + 4] = 0x12; // STB_GLOBAL | STT_FUNC
    u16(o + 6, 1);
    u64(o + 8, codeAt[i]!);
    u64(o + 16, X86_64_CODE[n].length);
  });
  b.set(strtab, strOff);

  // SysV hash with one bucket: every lookup walks the chain nsyms-1 → … → 1 → 0.
  u32(hashOff, 1);
  u32(hashOff + 4, nsyms);
  u32(hashOff + 8, nsyms - 1);
  for (let i = 1; i < nsyms; i++) u32(hashOff + 12 + 4 * i, i - 1);

  names.forEach((n, i) => b.set(X86_64_CODE[n], codeAt[i]!));
  dyn.forEach(([tag, val], i) => {
    u64(dynOff + 16 * i, tag);
    u64(dynOff + 16 * i + 8, val);
  });
  return b;
}

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** What a backend provides to load the accessor object: its own libc calls and dlopen. */
export interface AccessorLoader<T> {
  /** The CPU architecture as `process.arch` names it. */
  arch: string;
  /** memfd_create(2) with MFD_CLOEXEC. @returns The fd, or -errno. */
  memfdCreate(name: string): number;
  /** write(2) of the whole image. @returns Bytes written, or -errno. */
  write(fd: number, data: Uint8Array): number;
  /** close(2). */
  close(fd: number): void;
  /** The runtime's dlopen of `path`, binding the {@link ACCESSOR_SYMBOLS}; throws on failure. */
  dlopen(path: string): T;
}

/** The outcome of {@link loadAccessors}: the library, or why there is none. */
export type AccessorLoad<T> = { library: T; reason: undefined } | { library: undefined; reason: string };

/**
 * Writes the accessor object into a memfd and dlopens it through /proc/self/fd, the one mechanism
 * both backends share. A failure on an architecture that has an encoding is unexpected and makes
 * every register access ~150× slower (pread/pwrite), so it is reported once on stderr, and the
 * reason stays available to `Sys.mmioUnavailable()` for `vfio doctor`.
 *
 * @param loader The backend's calls.
 * @returns The library, or the reason it could not be loaded.
 */
export function loadAccessors<T>(loader: AccessorLoader<T>): AccessorLoad<T> {
  const elf = accessorElf(loader.arch);
  if (!elf) {
    return {
      library: undefined,
      reason: `no native accessor for ${loader.arch}: registers use pread/pwrite`,
    };
  }
  const failed = (reason: string): AccessorLoad<T> => {
    console.warn(
      `vfio-ts: Cannot load the fast register accessor (${reason}); register access falls back to ` +
        "pread/pwrite, which is about 150x slower. `vfio doctor` reports it too",
    );
    return { library: undefined, reason };
  };
  const fd = loader.memfdCreate("vfio-ts-mmio");
  if (fd < 0) return failed(`memfd_create failed with errno ${-fd}`);
  try {
    const n = loader.write(fd, elf);
    if (n !== elf.length) return failed(`writing it to the memfd returned ${n} of ${elf.length} bytes`);
    return { library: loader.dlopen(`/proc/self/fd/${fd}`), reason: undefined };
  } catch (e) {
    return failed(`dlopen failed: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    loader.close(fd);
  }
}
