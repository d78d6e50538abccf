// C baselines for bench/host.ts: what the same operations cost without the library or a JS runtime.
//   ioctl.enotty        ioctl(/dev/null, VFIO_GROUP_GET_STATUS) failing with ENOTTY
//   mmio.mmap.*32       bench_rd32/bench_wr32 (libbench_mmio.so) on an anonymous mapping
//   mmio.pread.*32      4-byte pread/pwrite on a file in /dev/shm (tmpfs, RAM-backed)
// usage: host_baseline [reps] [target_ms] [warmup_ms]
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"

uint32_t bench_rd32(volatile void *base, uint32_t off);
void bench_wr32(volatile void *base, uint32_t off, uint32_t v);

struct ctx {
  int fd;
  volatile void *base;
  struct vfio_group_status status;
};
static volatile uint64_t sink;

static void ioctl_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  uint64_t s = 0;
  for (uint64_t i = 0; i < n; i++) s += (uint64_t)ioctl(c->fd, VFIO_GROUP_GET_STATUS, &c->status);
  sink = s;
}
static void rd32_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  uint64_t s = 0;
  for (uint64_t i = 0; i < n; i++) s += bench_rd32(c->base, 4);
  sink = s;
}
static void wr32_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  for (uint64_t i = 0; i < n; i++) bench_wr32(c->base, 4, (uint32_t)i);
}
static void pread_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  uint32_t v;
  uint64_t s = 0;
  for (uint64_t i = 0; i < n; i++) {
    if (pread(c->fd, &v, 4, 4) != 4) die("pread");
    s += v;
  }
  sink = s;
}
static void pwrite_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  for (uint64_t i = 0; i < n; i++) {
    uint32_t v = (uint32_t)i;
    if (pwrite(c->fd, &v, 4, 4) != 4) die("pwrite");
  }
}

int main(int argc, char **argv) {
  struct bench_opts o = {
    .reps = argc > 1 ? atoi(argv[1]) : 7,
    .target_ms = argc > 2 ? atof(argv[2]) : 100,
    .warmup_ms = argc > 3 ? atof(argv[3]) : 200,
  };
  double v[64];
  if (o.reps < 1 || o.reps > 64) o.reps = 7;
  struct ctx c = {.status = {.argsz = sizeof c.status}};

  c.fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (c.fd < 0) die("open /dev/null");
  if (ioctl(c.fd, VFIO_GROUP_GET_STATUS, &c.status) != -1 || errno != ENOTTY) die("ioctl on /dev/null");
  time_ops(ioctl_loop, &c, o, v);
  emit("ioctl.enotty", "ns", v, o.reps, NULL);
  close(c.fd);

  void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (m == MAP_FAILED) die("mmap");
  c.base = m;
  time_ops(rd32_loop, &c, o, v);
  emit("mmio.mmap.read32", "ns", v, o.reps, NULL);
  time_ops(wr32_loop, &c, o, v);
  emit("mmio.mmap.write32", "ns", v, o.reps, NULL);
  munmap(m, 4096);

  char path[64];
  snprintf(path, sizeof path, "/dev/shm/vfio-ts-bench-c-%d", (int)getpid());
  c.fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (c.fd < 0) die(path);
  unlink(path);
  if (ftruncate(c.fd, 4096) != 0) die("ftruncate");
  time_ops(pread_loop, &c, o, v);
  emit("mmio.pread.read32", "ns", v, o.reps, NULL);
  time_ops(pwrite_loop, &c, o, v);
  emit("mmio.pread.write32", "ns", v, o.reps, NULL);
  close(c.fd);
  return 0;
}
