// The C side of the MMIO comparison: a register accessor that the compiler cannot inline, merge or
// drop. It is built as its own shared object (libbench_mmio.so) and called through the PLT, which is
// what the library's accessor costs in native terms: one call, one volatile load or store, ret.
#include <stdint.h>

__attribute__((noinline)) uint32_t bench_rd32(volatile void *base, uint32_t off) {
  return *(volatile uint32_t *)((volatile char *)base + off);
}

__attribute__((noinline)) void bench_wr32(volatile void *base, uint32_t off, uint32_t v) {
  *(volatile uint32_t *)((volatile char *)base + off) = v;
}
