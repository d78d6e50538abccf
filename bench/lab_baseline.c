// C baselines for bench/lab.ts, run inside the lab guest on the edu device. It sets VFIO up itself
// (container, group, TYPE1v2, device fd, BAR0 mmap, bus mastering, MSI eventfd) and measures:
//   ioctl.group_status   VFIO_GROUP_GET_STATUS on the group fd
//   mmio.mmap.*32        bench_rd32/bench_wr32 (libbench_mmio.so) on the mmap'd BAR0 (0x00 ident,
//                        0x04 liveness)
//   mmio.pread.*32       4-byte pread/pwrite on the device fd at BAR0's region offset
//   dma.map_unmap_4k     VFIO_IOMMU_MAP_DMA + VFIO_IOMMU_UNMAP_DMA of one 4 KiB page, pairs/s
//   irq.msi.p50 / .p99   write 0x60 (raise interrupt) -> MSI -> eventfd -> poll() returns, in us
// A group can be opened by one process at a time: run this before or after bench/lab.ts, never
// beside it.
// usage: lab_baseline BDF [reps] [target_ms] [warmup_ms] [irq_events_per_rep]
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/vfio.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"

uint32_t bench_rd32(volatile void *base, uint32_t off);
void bench_wr32(volatile void *base, uint32_t off, uint32_t v);

#define IOVA 0x100000ull

struct ctx {
  int container, group, device, efd;
  volatile void *bar;
  uint64_t bar_offset;
  struct vfio_group_status status;
  void *page;
};
static volatile uint64_t sink;

static void xioctl(int fd, unsigned long req, void *arg, const char *name) {
  if (ioctl(fd, req, arg) < 0) die(name);
}

static void status_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  uint64_t s = 0;
  for (uint64_t i = 0; i < n; i++) s += (uint64_t)ioctl(c->group, VFIO_GROUP_GET_STATUS, &c->status);
  sink = s;
}
static void rd32_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  uint64_t s = 0;
  for (uint64_t i = 0; i < n; i++) s += bench_rd32(c->bar, 0x00);
  sink = s;
}
static void wr32_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  for (uint64_t i = 0; i < n; i++) bench_wr32(c->bar, 0x04, (uint32_t)i);
}
static void pread_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  uint32_t v;
  uint64_t s = 0;
  for (uint64_t i = 0; i < n; i++) {
    if (pread(c->device, &v, 4, (off_t)c->bar_offset) != 4) die("pread BAR0");
    s += v;
  }
  sink = s;
}
static void pwrite_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  for (uint64_t i = 0; i < n; i++) {
    uint32_t v = (uint32_t)i;
    if (pwrite(c->device, &v, 4, (off_t)c->bar_offset + 4) != 4) die("pwrite BAR0");
  }
}
static void dma_loop(uint64_t n, void *p) {
  struct ctx *c = p;
  for (uint64_t i = 0; i < n; i++) {
    struct vfio_iommu_type1_dma_map map = {
      .argsz = sizeof map,
      .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
      .vaddr = (uintptr_t)c->page,
      .iova = IOVA,
      .size = 4096,
    };
    xioctl(c->container, VFIO_IOMMU_MAP_DMA, &map, "VFIO_IOMMU_MAP_DMA");
    struct vfio_iommu_type1_dma_unmap unmap = {.argsz = sizeof unmap, .iova = IOVA, .size = 4096};
    xioctl(c->container, VFIO_IOMMU_UNMAP_DMA, &unmap, "VFIO_IOMMU_UNMAP_DMA");
  }
}

// One interrupt round trip: raise, wait for the eventfd, read it; then acknowledge (not timed).
static double irq_once(struct ctx *c) {
  struct pollfd pfd = {.fd = c->efd, .events = POLLIN};
  uint64_t count;
  double t0 = now_ns();
  bench_wr32(c->bar, 0x60, 1);
  int r = poll(&pfd, 1, 1000);
  if (r != 1) {
    fprintf(stderr, "lab_baseline: no MSI within 1 s (poll returned %d)\n", r);
    exit(1);
  }
  if (read(c->efd, &count, 8) != 8) die("read eventfd");
  double dt = now_ns() - t0;
  bench_wr32(c->bar, 0x64, 1);
  return dt / 1000.0;
}

static int group_of(const char *bdf) {
  char link[256], target[256];
  snprintf(link, sizeof link, "/sys/bus/pci/devices/%s/iommu_group", bdf);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n < 0) die(link);
  target[n] = 0;
  return atoi(basename(target));
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: lab_baseline BDF [reps] [target_ms] [warmup_ms] [irq_events]\n");
    return 2;
  }
  const char *bdf = argv[1];
  struct bench_opts o = {
    .reps = argc > 2 ? atoi(argv[2]) : 5,
    .target_ms = argc > 3 ? atof(argv[3]) : 100,
    .warmup_ms = argc > 4 ? atof(argv[4]) : 100,
  };
  int events = argc > 5 ? atoi(argv[5]) : 500;
  if (o.reps < 1 || o.reps > 64) o.reps = 5;
  double v[64];
  struct ctx c = {.status = {.argsz = sizeof c.status}};

  // Container, group, IOMMU, device.
  c.container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
  if (c.container < 0) die("open /dev/vfio/vfio");
  if (ioctl(c.container, VFIO_GET_API_VERSION) != VFIO_API_VERSION) die("VFIO_GET_API_VERSION");
  char path[64];
  snprintf(path, sizeof path, "/dev/vfio/%d", group_of(bdf));
  c.group = open(path, O_RDWR | O_CLOEXEC);
  if (c.group < 0) die(path);
  xioctl(c.group, VFIO_GROUP_GET_STATUS, &c.status, "VFIO_GROUP_GET_STATUS");
  if (!(c.status.flags & VFIO_GROUP_FLAGS_VIABLE)) die("group not viable");
  xioctl(c.group, VFIO_GROUP_SET_CONTAINER, &c.container, "VFIO_GROUP_SET_CONTAINER");
  if (ioctl(c.container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) die("VFIO_SET_IOMMU");
  c.device = ioctl(c.group, VFIO_GROUP_GET_DEVICE_FD, bdf);
  if (c.device < 0) die("VFIO_GROUP_GET_DEVICE_FD");

  // BAR0 mapped, config space for bus mastering (MSI is a DMA write).
  struct vfio_region_info bar = {.argsz = sizeof bar, .index = VFIO_PCI_BAR0_REGION_INDEX};
  xioctl(c.device, VFIO_DEVICE_GET_REGION_INFO, &bar, "VFIO_DEVICE_GET_REGION_INFO BAR0");
  c.bar_offset = bar.offset;
  void *m = mmap(NULL, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, c.device, (off_t)bar.offset);
  if (m == MAP_FAILED) die("mmap BAR0");
  c.bar = m;
  if (bench_rd32(c.bar, 0) != 0x010000ed) {
    fprintf(stderr, "lab_baseline: %s is not an edu device\n", bdf);
    return 1;
  }
  struct vfio_region_info cfg = {.argsz = sizeof cfg, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  xioctl(c.device, VFIO_DEVICE_GET_REGION_INFO, &cfg, "VFIO_DEVICE_GET_REGION_INFO config");
  uint16_t cmd;
  if (pread(c.device, &cmd, 2, (off_t)cfg.offset + 4) != 2) die("pread PCI_COMMAND");
  cmd |= 0x6; // memory space, bus master
  if (pwrite(c.device, &cmd, 2, (off_t)cfg.offset + 4) != 2) die("pwrite PCI_COMMAND");

  time_ops(status_loop, &c, o, v);
  emit("ioctl.group_status", "ns", v, o.reps, NULL);
  time_ops(rd32_loop, &c, o, v);
  emit("mmio.mmap.read32", "ns", v, o.reps, NULL);
  time_ops(wr32_loop, &c, o, v);
  emit("mmio.mmap.write32", "ns", v, o.reps, NULL);
  time_ops(pread_loop, &c, o, v);
  emit("mmio.pread.read32", "ns", v, o.reps, NULL);
  time_ops(pwrite_loop, &c, o, v);
  emit("mmio.pread.write32", "ns", v, o.reps, NULL);

  // DMA map + unmap pairs.
  c.page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (c.page == MAP_FAILED) die("mmap page");
  time_ops(dma_loop, &c, o, v);
  for (int i = 0; i < o.reps; i++) v[i] = 1e9 / v[i];
  emit("dma.map_unmap_4k", "pairs/s", v, o.reps, NULL);

  // MSI through an eventfd.
  c.efd = eventfd(0, EFD_CLOEXEC);
  if (c.efd < 0) die("eventfd");
  char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
  struct vfio_irq_set *set = (struct vfio_irq_set *)buf;
  *set = (struct vfio_irq_set){
    .argsz = sizeof buf,
    .flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
    .index = VFIO_PCI_MSI_IRQ_INDEX,
    .start = 0,
    .count = 1,
  };
  memcpy(set->data, &c.efd, sizeof(int));
  xioctl(c.device, VFIO_DEVICE_SET_IRQS, set, "VFIO_DEVICE_SET_IRQS");
  double end = now_ns() + o.warmup_ms * 1e6;
  while (now_ns() < end) irq_once(&c);
  double *lat = malloc(sizeof(double) * (size_t)events);
  double p50[64], p99[64];
  for (int r = 0; r < o.reps; r++) {
    for (int i = 0; i < events; i++) lat[i] = irq_once(&c);
    p50[r] = percentile(lat, events, 50);
    p99[r] = percentile(lat, events, 99);
  }
  emit("irq.msi.p50", "us", p50, o.reps, NULL);
  emit("irq.msi.p99", "us", p99, o.reps, NULL);
  *set = (struct vfio_irq_set){
    .argsz = sizeof *set,
    .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
    .index = VFIO_PCI_MSI_IRQ_INDEX,
  };
  xioctl(c.device, VFIO_DEVICE_SET_IRQS, set, "VFIO_DEVICE_SET_IRQS disable");
  return 0;
}
