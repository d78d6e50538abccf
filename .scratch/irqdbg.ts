import { NvmeController } from "../examples/nvme.ts";
import { openPciDevice } from "../lib/open.ts";
import { loadSys } from "../ffi/mod.ts";
const sys = await loadSys();
for (let round = 0; round < 3; round++) {
  using v = openPciDevice(sys, "0000:00:05.0");
  using nvme = NvmeController.init(v);
  using buf = v.dma.alloc(65536);
  const t = performance.now();
  for (let i = 0; i < 10; i++) nvme.read({ lba: i, blocks: 8, buffer: buf });
  console.log(sys.name, "round", round, "10 reads ms", (performance.now() - t).toFixed(1), JSON.stringify(nvme.stats));
}
