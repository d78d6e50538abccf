// The example NVMe driver (examples/nvme.ts) against QEMU's NVMe controller in the lab: identify,
// data written into the backing image by the host read through the driver and the reverse, MSI-X and
// polling, PRP lists and split transfers, decoded error statuses, timeouts, the command line, and
// the no-IOMMU refusal.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, openSync, readSync, statSync, writeSync } from "node:fs";
import process from "node:process";
import { ADMIN, checkPattern, fillPattern, NvmeController, NvmeError } from "../../examples/nvme.ts";
import { VfioError } from "../../lib/errors.ts";
import { openPciDevice } from "../../lib/open.ts";
import { PCI_COMMAND_MASTER } from "../../lib/uapi/pci.ts";
import { backends, HAS_IOMMU, NVME, sys } from "./_fixture.ts";

/** What run.sh gives QEMU: `-device nvme,serial=vfiotslab0001`. */
const SERIAL = "vfiotslab0001";
const IMAGE = process.env.VFIO_TS_NVME_IMAGE ?? "";
const SCRIPT = new URL("../../examples/nvme.ts", import.meta.url).pathname;
const T = { timeout: 120_000 };

// The host's side of the disk: the backing image file, read and written directly.
function hostWrite(offset: number, data: Uint8Array): void {
  const fd = openSync(IMAGE, "r+");
  try {
    assert.equal(writeSync(fd, data, 0, data.length, offset), data.length);
  } finally {
    closeSync(fd);
  }
}

function hostRead(offset: number, length: number): Uint8Array {
  const data = new Uint8Array(length);
  const fd = openSync(IMAGE, "r");
  try {
    assert.equal(readSync(fd, data, 0, length, offset), length);
  } finally {
    closeSync(fd);
  }
  return data;
}

/** Runs the command line on the runtime under test, with space-separated arguments. */
function cli(args: string): { status: number | null; stdout: string; stderr: string } {
  const argv = [...(sys.name === "deno" ? ["run", "--allow-ffi", SCRIPT] : [SCRIPT]), ...args.split(" ")];
  const r = spawnSync(process.execPath, argv, { encoding: "utf8", timeout: 100_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

if (!HAS_IOMMU) {
  test(
    "noiommu: the driver fails with the library's no-IOMMU error before touching the controller",
    T,
    () => {
      using v = openPciDevice(sys, NVME);
      assert.throws(() => NvmeController.init(v), (e: unknown) => {
        assert.ok(e instanceof VfioError, `got ${e}`);
        assert.match(e.message, /no-IOMMU mode/);
        return true;
      });
      assert.equal(v.device.config.command & PCI_COMMAND_MASTER, 0, "bus mastering was never enabled");
    },
  );

  test("noiommu: the command line reports the no-IOMMU error and exits 1", T, () => {
    const r = cli(`--json ${NVME}`);
    assert.equal(r.status, 1, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.equal(report.ok, false);
    assert.match(report.error.message, /no-IOMMU mode/);
  });
}

for (const mode of HAS_IOMMU ? backends() : []) {
  test(`${mode.name}: identify names QEMU's controller and the namespace covers the image`, T, () => {
    using v = openPciDevice(sys, NVME, mode.options);
    using nvme = NvmeController.init(v);
    assert.equal(nvme.controller.model, "QEMU NVMe Ctrl");
    assert.equal(nvme.controller.serial, SERIAL);
    assert.equal(nvme.controller.vendorId, 0x1b36);
    assert.match(nvme.controller.version, /^\d+\.\d+\.\d+$/);
    assert.equal(nvme.namespace.nsid, 1);
    assert.equal(nvme.namespace.blockSize, 512);
    assert.equal(nvme.namespace.blocks, statSync(IMAGE).size / nvme.namespace.blockSize);
    assert.equal(nvme.polling, false);
  });

  test(`${mode.name}: blocks the host wrote into the image are read by the driver, with MSI-X`, T, () => {
    using v = openPciDevice(sys, NVME, mode.options);
    using nvme = NvmeController.init(v);
    const bs = nvme.namespace.blockSize, lba = 4000, blocks = 2100, seed = 0x1234;
    const data = new Uint8Array(blocks * bs);
    fillPattern(data, lba, bs, seed);
    hostWrite(lba * bs, data);
    using buf = v.dma.alloc(blocks * bs + 4096);
    // One block (PRP1 only), two pages (PRP1 + PRP2), five pages (a PRP list), a transfer above
    // MDTS (split into commands), and a buffer offset inside a page (PRP1 with an offset).
    for (const [blocks, offset] of [[1, 0], [16, 0], [40, 0], [2100, 0], [40, 0x604], [9, 4092]] as const) {
      buf.bytes.fill(0);
      nvme.read({ lba, blocks, buffer: buf, offset });
      const got = buf.bytes.subarray(offset, offset + blocks * bs);
      assert.equal(
        checkPattern(got, lba, bs, seed),
        undefined,
        `${blocks} blocks at buffer offset ${offset}`,
      );
      assert.equal(buf.bytes[offset + blocks * bs], 0, "nothing past the transfer was written");
    }
    assert.ok(nvme.stats.interrupts > 0, "completions were signalled by MSI-X");
  });

  test(`${mode.name}: blocks the driver wrote are in the image the host reads, with polling`, T, () => {
    using v = openPciDevice(sys, NVME, mode.options);
    // Four entries, three outstanding: 2 MiB in 512 KiB commands waits for free slots, and the
    // small writes after it wrap the queues so the phase bit flips several times.
    using nvme = NvmeController.init(v, { poll: true, ioDepth: 4 });
    assert.equal(nvme.polling, true);
    const bs = nvme.namespace.blockSize, lba = 20000, blocks = 4096, seed = 0xbeef;
    using buf = v.dma.alloc(blocks * bs);
    fillPattern(buf.bytes, lba, bs, seed);
    nvme.write({ lba, blocks, buffer: buf });
    for (let i = 0; i < 24; i++) nvme.write({ lba: lba + 7 * i, blocks: 3, buffer: buf, offset: 7 * i * bs });
    nvme.flush();
    assert.equal(checkPattern(hostRead(lba * bs, blocks * bs), lba, bs, seed), undefined);
    assert.equal(nvme.stats.interrupts, 0);
    assert.ok(nvme.stats.commands >= 4 + 24 + 1);
  });

  test(`${mode.name}: reading past the namespace fails with a decoded LBA Out of Range status`, T, () => {
    using v = openPciDevice(sys, NVME, mode.options);
    using nvme = NvmeController.init(v);
    using buf = v.dma.alloc(8192);
    const end = nvme.namespace.blocks;
    assert.throws(() => nvme.read({ lba: end - 2, blocks: 4, buffer: buf }), (e: unknown) => {
      assert.ok(e instanceof NvmeError, `got ${e}`);
      assert.equal(e.kind, "status");
      assert.deepEqual(e.status, { sct: 0, sc: 0x80, dnr: true, name: "LBA Out of Range" });
      assert.equal(e.command, `read 4 blocks at LBA ${end - 2} of namespace 1`);
      assert.match(
        e.message,
        /^Cannot read 4 blocks at LBA \d+ of namespace 1: LBA Out of Range \(NVMe status: SCT 0x0/,
      );
      return true;
    });
    nvme.read({ lba: end - 2, blocks: 2, buffer: buf }); // the queue still works
  });

  test(`${mode.name}: a command that never completes times out with a message naming it`, T, () => {
    using v = openPciDevice(sys, NVME, mode.options);
    using nvme = NvmeController.init(v);
    nvme.timeoutMs = 300;
    const start = performance.now();
    // An Asynchronous Event Request completes only when the controller has something to report.
    assert.throws(
      () => nvme.admin("wait for an asynchronous event", { opcode: ADMIN.ASYNC_EVENT_REQUEST }),
      (e) => {
        assert.ok(e instanceof NvmeError, `got ${e}`);
        assert.equal(e.kind, "timeout");
        assert.match(
          e.message,
          /^Cannot wait for an asynchronous event: no completion on the admin queue within 300 ms \(MSI-X, CSTS 0x1\)$/,
        );
        return true;
      },
    );
    assert.ok(performance.now() - start >= 290);
    nvme.timeoutMs = 10_000;
    using buf = v.dma.alloc(4096);
    nvme.read({ lba: 0, blocks: 1, buffer: buf }); // and the controller carries on
  });

  test(`${mode.name}: the command line verifies its own writes and the host's, and prints JSON`, T, () => {
    const bs = 512, lba = 30000, blocks = 300, seed = 77;
    const data = new Uint8Array(blocks * bs);
    fillPattern(data, lba, bs, seed);
    hostWrite(lba * bs, data);
    const r = cli(
      `--json --verify --lba 40000 --blocks 1500 --seed 5 --backend ${mode.name} --expect ${lba}:${blocks}:${seed} ${NVME}`,
    );
    assert.equal(r.status, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.equal(report.ok, true);
    assert.equal(report.controller.model, "QEMU NVMe Ctrl");
    assert.equal(report.controller.serial, SERIAL);
    assert.equal(report.mode, "msix");
    assert.deepEqual(report.verify && [report.verify.lba, report.verify.blocks], [40000, 1500]);
    assert.deepEqual(report.expect, [{ lba, blocks, seed }]);
    assert.equal(
      checkPattern(hostRead(40000 * bs, 1500 * bs), 40000, bs, 5),
      undefined,
      "the host sees the writes",
    );
    const bad = cli(`--json --poll --expect ${lba}:${blocks}:${seed + 1} ${NVME}`);
    assert.equal(bad.status, 1);
    assert.match(
      JSON.parse(bad.stdout).error.message,
      /^Cannot confirm the pattern with seed 78 at LBA 30000: LBA 30000 byte 8/,
    );
  });
}
