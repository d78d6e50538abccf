// The example NVMe driver (examples/nvme.ts) against QEMU's NVMe controller in the lab: identify,
// data written into the backing image by the host read through the driver and the reverse, MSI-X and
// polling, PRP lists and split transfers, decoded error statuses, timeouts, the command line, and
// the no-IOMMU refusal; and the asynchronous driver: hundreds of concurrent reads and writes over
// two queues, a command that cannot complete (its doorbell withheld) timing out and being given back
// late, and closing with commands in flight.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, openSync, readSync, statSync, writeSync } from "node:fs";
import process from "node:process";
import {
  ADMIN,
  checkPattern,
  fillPattern,
  Nvme,
  NvmeController,
  NvmeError,
  NvmeTimeoutError,
} from "../../examples/nvme.ts";
import { VfioError } from "../../lib/errors.ts";
import { openPciDevice } from "../../lib/open.ts";
import { PCI_COMMAND_MASTER } from "../../lib/uapi/pci.ts";
import { backends, HAS_IOMMU, NVME, openFds, sleep, sys } from "./_fixture.ts";

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

/** Waits for a Promise, failing after `ms` (generous: TCG) without leaving a timer behind. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** "settled" once the Promise settled, "pending" if it has not after `ms`. */
async function stateAfter(p: Promise<unknown>, ms: number): Promise<"settled" | "pending"> {
  const settled = p.then(() => "settled" as const, () => "settled" as const);
  return await Promise.race([settled, sleep(ms).then(() => "pending" as const)]);
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
      for (const init of [NvmeController.init, Nvme.init]) {
        using v = openPciDevice(sys, NVME);
        assert.throws(() => init(v), (e: unknown) => {
          // The legacy no-IOMMU container maps no DMA at all (VfioError); iommufd's no-IOMMU mode
          // (Linux 7) gives physical addresses, one page per buffer, and the queues need more
          // (RangeError).
          const expected = v.backend.kind === "iommufd-noiommu" ? RangeError : VfioError;
          assert.ok(e instanceof expected, `${v.backend.kind}: got ${e}`);
          assert.match(e.message, /no-IOMMU mode/);
          return true;
        });
        assert.equal(v.device.config.command & PCI_COMMAND_MASTER, 0, "bus mastering was never enabled");
      }
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
    assert.equal(report.queues, 2);
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

  for (const poll of [false, true]) {
    const how = poll ? "polled" : "MSI-X";
    test(
      `${mode.name}: async, ${how}: 256 reads and writes at once over 2 queues of depth 32 match the image`,
      T,
      async () => {
        using v = openPciDevice(sys, NVME, mode.options);
        await using nvme = Nvme.init(v, { queues: 2, ioDepth: 33, poll });
        assert.equal(nvme.queueCount, 2);
        assert.equal(nvme.polling, poll);
        // One MSI-X vector (1) for every I/O queue: one wake-up reaps them all.
        const vector = poll ? 0 : 1;
        assert.deepEqual(nvme.queues.map((q) => [q.id, q.depth, q.vector]), [[1, 33, vector], [
          2,
          33,
          vector,
        ]]);
        const bs = nvme.namespace.blockSize, per = 8, n = 128; // 4 KiB a command
        const readAt = 50_000, writeAt = 60_000, readSeed = 0x5eed, writeSeed = poll ? 0x7e57 : 0x7e58;
        const image = new Uint8Array(n * per * bs);
        fillPattern(image, readAt, bs, readSeed);
        hostWrite(readAt * bs, image);
        // Reads out of order: into driver memory (resolved as copies) and into one DMA buffer at
        // offsets (views of it); writes from plain bytes (copied) into the other region.
        using target = v.dma.alloc(n * per * bs);
        const order = Array.from({ length: n }, (_, i) => (i * 37) % n);
        const reads = order.map((i) =>
          i % 2 ? nvme.read(readAt + i * per, per) : nvme.read(readAt + i * per, per, {
            buffer: target,
            offset: i * per * bs,
          })
        );
        const writes = order.map((i) => {
          const data = new Uint8Array(per * bs);
          fillPattern(data, writeAt + i * per, bs, writeSeed);
          return nvme.write(writeAt + i * per, data);
        });
        // 256 calls on 2 × 32 command IDs: each queue has 32 in the controller and 96 waiting.
        assert.deepEqual(nvme.queues.map((q) => [q.inFlight, q.waiting]), [[32, 96], [32, 96]]);
        const data = await within(Promise.all(reads), 60_000, "256 reads");
        await within(Promise.all(writes), 60_000, "the writes");
        await nvme.flush({ queue: 2 });
        data.forEach((d, k) => {
          const i = order[k]!;
          assert.equal(checkPattern(d, readAt + i * per, bs, readSeed), undefined, `read ${i}`);
        });
        assert.equal(checkPattern(target.bytes.subarray(0, per * bs), readAt, bs, readSeed), undefined);
        assert.equal(checkPattern(hostRead(writeAt * bs, n * per * bs), writeAt, bs, writeSeed), undefined);
        assert.deepEqual(nvme.queues.map((q) => [q.inFlight, q.waiting]), [[0, 0], [0, 0]]);
        const { commands, interrupts } = nvme.stats;
        assert.ok(commands >= 2 * n + 1, `${commands} commands`);
        if (poll) assert.equal(interrupts, 0);
        else assert.ok(interrupts > 0, "completions were signalled by MSI-X");

        // A large read (split at MDTS, PRP lists) and a failing one, at the same time.
        const end = nvme.namespace.blocks;
        const [big, bad] = await Promise.allSettled([
          nvme.read(readAt, n * per),
          nvme.read(end - 2, 4),
        ]);
        assert.equal(big.status, "fulfilled");
        assert.equal(checkPattern(big.value, readAt, bs, readSeed), undefined);
        assert.equal(bad.status, "rejected");
        assert.ok(bad.reason instanceof NvmeError, `got ${bad.reason}`);
        assert.equal(bad.reason.kind, "status");
        assert.equal(bad.reason.status?.name, "LBA Out of Range");
        await assert.rejects(nvme.read(0, 1, undefined, { queue: 3 }), RangeError);
      },
    );
  }

  test(
    `${mode.name}: async: a read whose doorbell is withheld times out, keeps its command ID and buffer until ` +
      `the controller completes it late, and the queues carry on`,
    T,
    async () => {
      using v = openPciDevice(sys, NVME, mode.options);
      await using nvme = Nvme.init(v, { queues: 2, ioDepth: 4 });
      const bs = nvme.namespace.blockSize, lba = 70_000, seed = 0xdead;
      const image = new Uint8Array(4 * 8 * bs);
      fillPattern(image, lba, bs, seed);
      hostWrite(lba * bs, image);
      using buf = v.dma.alloc(4 * 8 * bs);
      // Queue 2's doorbell is held: the controller never sees these four reads. Three take the
      // queue's command IDs, the fourth waits in the driver.
      nvme.pause(2);
      const start = performance.now();
      const stuck = [0, 1, 2, 3].map((i) =>
        nvme.read(lba + 8 * i, 8, { buffer: buf, offset: i * 8 * bs }, { queue: 2, timeoutMs: 300 })
      );
      assert.deepEqual(nvme.queues[1], { id: 2, depth: 4, vector: 1, inFlight: 3, waiting: 1, paused: true });
      // Queue 1 is unaffected meanwhile.
      assert.equal(checkPattern(await nvme.read(lba, 8, undefined, { queue: 1 }), lba, bs, seed), undefined);
      const errors = await Promise.all(
        stuck.map((p) => p.then(() => assert.fail("a withheld read completed"), (e) => e)),
      );
      assert.ok(performance.now() - start >= 290, "not before the timeout");
      for (const [i, e] of errors.entries()) {
        assert.ok(e instanceof NvmeTimeoutError, `got ${e}`);
        assert.ok(e instanceof NvmeError);
        assert.equal(e.kind, "timeout");
        assert.equal(e.command, `read 8 blocks at LBA ${lba + 8 * i} of namespace 1`);
        assert.equal(e.outstanding, i < 3 ? 1 : 0);
      }
      assert.match(
        errors[0].message,
        /^Cannot read 8 blocks at LBA 70000 of namespace 1: no completion on I\/O queue 2 within 300 ms \(MSI-X, CSTS 0x1\)$/,
      );
      assert.match(
        errors[3].message,
        /^Cannot read 8 blocks at LBA 70024 of namespace 1: not submitted within 300 ms: I\/O queue 2 had 3 commands in flight$/,
      );
      // The fourth never reached the controller: nothing to give back. The three others keep their
      // command IDs, and the buffer stays the controller's.
      await within(errors[3].released, 1000, "the unsubmitted read's release");
      assert.deepEqual([nvme.queues[1]!.inFlight, nvme.queues[1]!.waiting], [3, 0]);
      assert.equal(await stateAfter(errors[0].released, 300), "pending");
      assert.equal(buf.bytes.subarray(0, 3 * 8 * bs).findIndex((b) => b !== 0), -1, "nothing was read yet");
      // Let the controller see them: it completes them late, into the buffer, and only then are the
      // command IDs free again.
      nvme.resume(2);
      await within(Promise.all(errors.map((e) => e.released)), 30_000, "the late completions");
      assert.deepEqual([nvme.queues[1]!.inFlight, nvme.queues[1]!.waiting], [0, 0]);
      assert.equal(checkPattern(buf.bytes.subarray(0, 3 * 8 * bs), lba, bs, seed), undefined);
      const again = await nvme.read(lba + 24, 8, undefined, { queue: 2 });
      assert.equal(checkPattern(again, lba + 24, bs, seed), undefined);
    },
  );

  for (const poll of [false, true]) {
    const how = poll ? "polled" : "MSI-X";
    test(
      `${mode.name}: async, ${how}: closing with commands in flight settles every Promise and leaks no fd or DMA mapping`,
      T,
      async () => {
        const fds = openFds();
        {
          using v = openPciDevice(sys, NVME, mode.options);
          const buffers = v.dma.buffers.size, mappings = v.backend.mappings.size;
          const nvme = Nvme.init(v, { queues: 2, ioDepth: 33, poll });
          const bs = nvme.namespace.blockSize;
          // One timed-out read whose command the controller still holds when the driver closes.
          nvme.pause(2);
          const timedOut = await nvme.read(0, 8, undefined, { queue: 2, timeoutMs: 100 }).then(
            () => assert.fail("a withheld read completed"),
            (e) => e,
          );
          assert.ok(timedOut instanceof NvmeTimeoutError, `got ${timedOut}`);
          // Queue 2 (held): 31 more in its command IDs, 40 waiting, and a 1 MiB read into driver
          // memory. Queue 1: 64 reads that run, some done and some in flight when it closes.
          const held = Array.from({ length: 71 }, (_, i) => nvme.read(8 * i, 8, undefined, { queue: 2 }));
          const large = nvme.read(0, 2048, undefined, { queue: 2 });
          const running = Array.from({ length: 64 }, (_, i) => nvme.read(8 * i, 8, undefined, { queue: 1 }));
          assert.ok(v.dma.buffers.size > buffers);
          await sleep(5);
          nvme.close();
          assert.equal(nvme.closed, true);
          const results = await within(
            Promise.allSettled([...held, large, ...running]),
            10_000,
            "the Promises after close",
          );
          await within(timedOut.released, 1000, "the timed-out read's release");
          for (const r of results.slice(0, 72)) {
            assert.equal(r.status, "rejected");
            assert.ok(r.reason instanceof NvmeError, `got ${r.status === "rejected" ? r.reason : r}`);
            assert.equal(r.reason.kind, "closed");
            assert.match(
              r.reason.message,
              /^Cannot read \d+ blocks at LBA \d+ of namespace 1: the driver closed (before I\/O queue 2 took the command|with the command outstanding on I\/O queue 2)$/,
            );
          }
          for (const r of results.slice(72)) {
            if (r.status === "fulfilled") assert.equal(r.value.length, 8 * bs);
            else assert.ok(r.reason instanceof NvmeError && r.reason.kind === "closed", `got ${r.reason}`);
          }
          await nvme[Symbol.asyncDispose](); // and the reaper loops have returned
          assert.equal(v.dma.buffers.size, buffers, "every DMA buffer of the driver was freed");
          assert.equal(v.backend.mappings.size, mappings, "and unmapped");
          await assert.rejects(nvme.read(0, 1), TypeError);
        }
        assert.equal(openFds(), fds, "no fd left open");
        // The controller comes up again as usual.
        using v = openPciDevice(sys, NVME, mode.options);
        await using nvme = Nvme.init(v, { poll });
        assert.equal((await nvme.read(0, 8)).length, 8 * 512);
      },
    );
  }
}
