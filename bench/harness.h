// Timing helpers shared by the C baselines; bench/_harness.ts is the same algorithm in TypeScript,
// so both sides of every ratio are measured alike.
//
// A benchmark is a batch function that runs its operation n times. The harness runs batches for at
// least `warmup_ms` (JIT tiers settle on the JS side: seconds under TCG), sizes them so one takes
// about `target_ms`, then times `reps` batches and reports each as nanoseconds per operation. Results go to stdout as one JSON line per benchmark:
//   {"bench":"mmio.mmap.read32","side":"c","unit":"ns","samples":[...]}
#ifndef VFIO_TS_BENCH_HARNESS_H
#define VFIO_TS_BENCH_HARNESS_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bench_opts {
  double target_ms;
  double warmup_ms;
  int reps;
};

static inline double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

typedef void (*batch_fn)(uint64_t n, void *ctx);

// Fills out[0..reps) with nanoseconds per operation, one value per timed batch. Batches grow (x2)
// during the warm-up until one takes target_ms / 8; n is then scaled from the last warm batch so a
// timed batch takes about target_ms.
static void time_ops(batch_fn fn, void *ctx, struct bench_opts o, double *out) {
  double target = o.target_ms * 1e6, end = now_ns() + o.warmup_ms * 1e6, dt;
  uint64_t n = 1;
  for (;;) {
    double t0 = now_ns();
    fn(n, ctx);
    dt = now_ns() - t0;
    if (now_ns() >= end && dt >= target / 8) break;
    if (dt < target / 8 && n < (1ull << 40)) n *= 2;
  }
  double scaled = (double)n * target / (dt > 1 ? dt : 1);
  n = scaled < 1 ? 1 : (uint64_t)scaled;
  for (int r = 0; r < o.reps; r++) {
    double t0 = now_ns();
    fn(n, ctx);
    out[r] = (now_ns() - t0) / (double)n;
  }
}

// One JSON line; `extra` is either NULL or more members, e.g. "\"note\":\"x\"".
static void emit(const char *bench, const char *unit, const double *v, int n, const char *extra) {
  printf("{\"bench\":\"%s\",\"side\":\"c\",\"unit\":\"%s\",\"samples\":[", bench, unit);
  for (int i = 0; i < n; i++) printf("%s%.6g", i ? "," : "", v[i]);
  printf("]%s%s}\n", extra ? "," : "", extra ? extra : "");
  fflush(stdout);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

// The p-th percentile (0..100) of v[0..n), nearest rank; sorts v.
__attribute__((unused)) static double percentile(double *v, int n, double p) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  int i = (int)((p / 100.0) * n + 0.999999) - 1;
  if (i < 0) i = 0;
  if (i >= n) i = n - 1;
  return v[i];
}

__attribute__((unused)) static void die(const char *what) {
  perror(what);
  exit(1);
}
#endif
