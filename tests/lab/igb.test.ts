// The igb example driver (examples/igb.ts) against QEMU's 82576 ports, under each IOMMU backend the
// kernel offers: reset and link up, frames of 60-1514 bytes from IGB0 to IGB1 (one QEMU hub) checked
// byte for byte and against both NICs' counters, with an MSI-X vector per queue pair or polled, MAC
// loopback, the selftest-style memcpy through the NIC's DMA, zero-copy forwarding between the ports
// in one IOMMU address space, a clean close (port quiesced, no fd, no mapping), the driver after
// SR-IOV VFs came and went, typed errors for bad input, and the example run as a program.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import process from "node:process";
import { BIT, buildFrame, exchange, frameSizes, Igb, MAX_FRAME, MIN_FRAME, REG } from "../../examples/igb.ts";
import { main as vfio } from "../../cli/vfio.ts";
import { DmaPool } from "../../lib/dma.ts";
import { InvalidPciAddressError, VfioError } from "../../lib/errors.ts";
import { openIommu } from "../../lib/open.ts";
import { VFIO_PCI_MSIX_IRQ_INDEX } from "../../lib/uapi/vfio.ts";
import { backends, EDU, HAS_IOMMU, IGB0, IGB0_MAC, IGB1, IGB1_MAC, openFds, sys } from "./_fixture.ts";

const SLOW = { timeout: 120_000 };
const EXAMPLE = new URL("../../examples/igb.ts", import.meta.url).pathname;
const IS_DENO = "Deno" in globalThis;
const PCI = "/sys/bus/pci/devices";

const skip = !existsSync(`${PCI}/${IGB0}`) || !existsSync(`${PCI}/${IGB1}`)
  ? `this guest has no igb ports at ${IGB0} and ${IGB1}`
  : false;
const T = { ...SLOW, skip };

/** Whether the kernel makes iommufd no-IOMMU cdevs (`noiommu-vfioN`): DMA by physical address. */
const NOIOMMU_CDEV = (() => {
  try {
    return readdirSync("/dev/vfio/devices").some((n) => n.startsWith("noiommu-vfio"));
  } catch {
    return false;
  }
})();

/** Where the driver can do DMA: each backend with an IOMMU, or iommufd's no-IOMMU cdev without one. */
const modes = HAS_IOMMU
  ? backends().map((m) => ({ ...m, kind: m.name === "legacy" ? "type1v2" : "iommufd" }))
  : NOIOMMU_CDEV
  ? [{ name: "iommufd-noiommu", options: { backend: "iommufd" as const }, kind: "iommufd-noiommu" }]
  : [];

const pattern = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);

for (const mode of modes) {
  const o = mode.options;

  test(
    `igb (${mode.name}): reset and link up; MAC from the EEPROM, rings and MSI-X programmed`,
    T,
    async () => {
      await using igb = await Igb.open(IGB0, { ...o, ringSize: 64, queues: 2 });
      assert.equal(igb.dma.backend.kind, mode.kind);
      assert.equal(igb.mac, IGB0_MAC);
      assert.ok(igb.linkUp, "STATUS.LU");
      assert.ok(
        igb.timings.link > 0 && igb.timings.link < igb.timeoutMs,
        `link up in ${igb.timings.link} ms`,
      );
      const r = igb.registers;
      for (const q of [0, 1]) {
        assert.equal(r.read32(REG.RDLEN(q)), 64 * 16, `RDLEN(${q})`);
        assert.equal(r.read32(REG.TDLEN(q)), 64 * 16, `TDLEN(${q})`);
        assert.equal(r.read32(REG.RDT(q)), 63, "every receive slot but one belongs to the NIC");
        assert.ok(r.read32(REG.RXDCTL(q)) & r.read32(REG.TXDCTL(q)) & BIT.XDCTL_ENABLE);
        assert.equal(r.read32(REG.IVAR(q)), (q | 0x80) | ((q | 0x80) << 8), "queue pair q raises vector q");
      }
      assert.ok(r.read32(REG.RCTL) & BIT.RCTL_EN);
      assert.ok(r.read32(REG.TCTL) & BIT.TCTL_EN);
      assert.equal(r.read32(REG.EIMS), 0b11, "vectors 0 and 1 unmasked");
      assert.equal(r.read32(REG.EIAC), 0b11, "and auto-cleared");
      assert.deepEqual(Object.values(igb.counters()), new Array(10).fill(0), "counters start at zero");
    },
  );

  test(
    `igb (${mode.name}): 100 frames of 60-1514 bytes from IGB0 to IGB1 arrive byte-exact on their queue, ` +
      "counters match, each queue pair's MSI-X vector fires",
    T,
    async () => {
      await using a = await Igb.open(IGB0, { ...o, queues: 2 });
      await using b = await Igb.open(IGB1, { ...o, queues: 2 });
      assert.equal(b.mac, IGB1_MAC);
      const sizes = frameSizes(100);
      assert.ok(sizes.includes(MIN_FRAME) && sizes.includes(MAX_FRAME));
      const r = await exchange(a, b, { count: 100 });
      assert.equal(r.frames, 100);
      assert.equal(r.bytes, sizes.reduce((x, y) => x + y, 0));
      assert.deepEqual(
        r.perQueue,
        [50, 50],
        "RSS put each frame on the queue its source address was chosen for",
      );
      assert.equal(r.sender.gptc, 100);
      assert.equal(r.sender.gotc, r.bytes + 4 * 100, "GOTC counts each frame's FCS");
      assert.equal(r.receiver.gprc, 100);
      assert.equal(r.receiver.gorc, r.bytes + 4 * 100);
      assert.equal(r.receiver.ruc + r.receiver.roc + r.receiver.bprc + r.receiver.mprc, 0);
      for (const q of [0, 1]) {
        assert.ok(r.senderInterrupts[q]! > 0, `transmit completions raised IGB0's vector ${q}`);
        assert.ok(r.receiverInterrupts[q]! > 0, `receptions raised IGB1's vector ${q}`);
      }
      assert.equal(b.counters().gptc, 0, "IGB1 sent nothing");
      assert.equal(a.counters().gprc, 0, "and IGB0 received nothing: the hub does not echo");
    },
  );

  test(`igb (${mode.name}): the same exchange polled: no interrupts enabled`, T, async () => {
    await using a = await Igb.open(IGB0, { ...o, queues: 2, poll: true });
    await using b = await Igb.open(IGB1, { ...o, queues: 2, poll: true });
    assert.ok(a.polling);
    assert.equal(b.registers.read32(REG.EIMS), 0, "every vector masked");
    const r = await exchange(a, b, { count: 100 });
    assert.deepEqual(r.perQueue, [50, 50]);
    assert.equal(r.receiver.gprc, 100);
    assert.deepEqual([...r.senderInterrupts, ...r.receiverInterrupts], [0, 0, 0, 0]);
    // MSI-X was never enabled: the index is free for someone else.
    a.device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX).close();
  });

  test(
    `igb (${mode.name}): MAC loopback (RCTL.LBM): IGB0 receives its own frames, none reach IGB1`,
    T,
    async () => {
      await using peer = await Igb.open(IGB1, o);
      await using a = await Igb.open(IGB0, { ...o, loopback: true });
      assert.ok(a.loopback);
      const r = await exchange(a, a, { count: 32 });
      assert.equal(r.sender.gptc, 32);
      assert.equal(r.receiver.gprc, 32);
      assert.equal(r.receiver.gorc, r.bytes + 4 * 32);
      assert.ok(r.receiverInterrupts[0]! > 0);
      assert.equal(peer.counters().gprc, 0, "nothing went on the wire");
    },
  );

  test(
    `igb (${mode.name}): memcpy through the NIC's DMA (transmit from src, receive into dst), byte-exact, ` +
      "completion interrupt awaited; the port works normally afterwards",
    T,
    async () => {
      await using a = await Igb.open(IGB0, o);
      await using b = await Igb.open(IGB1, o);
      using src = a.dma.alloc(4096), dst = b.dma.alloc(4096);
      src.bytes.set(pattern(4096, 7));
      const r = await a.memcpy(src, dst, 4096, { receiver: b });
      assert.equal(r.frames, 4, "chunks of 1024, as the selftest");
      assert.ok(r.interrupts >= 1, `${r.interrupts} completion interrupts`);
      assert.deepEqual(dst.bytes, src.bytes);
      // An uneven length and chunk size, into memory holding something else.
      src.bytes.set(pattern(4096, 99));
      dst.bytes.fill(0xee);
      const r2 = await a.memcpy(src, dst, 1001, { receiver: b, chunkSize: 300 });
      assert.equal(r2.frames, 4);
      assert.deepEqual(dst.bytes.subarray(0, 1001), src.bytes.subarray(0, 1001));
      assert.ok(dst.bytes.subarray(1001).every((x) => x === 0xee), "nothing written past the length");
      const x = await exchange(a, b, { count: 16 });
      assert.equal(x.receiver.gprc, 16, "the receive ring was given its own buffers back");
    },
  );

  test(`igb (${mode.name}): memcpy through one port with MAC loopback, polled`, T, async () => {
    await using a = await Igb.open(IGB0, { ...o, loopback: true, poll: true });
    using src = a.dma.alloc(4096), dst = a.dma.alloc(4096);
    src.bytes.set(pattern(4096, 3));
    const r = await a.memcpy(src, dst, 4096);
    assert.equal(r.frames, 4);
    assert.equal(r.interrupts, 0);
    assert.deepEqual(dst.bytes, src.bytes);
    assert.equal(a.counters().gprc, 4);
  });

  test(
    `igb (${mode.name}): zero-copy forwarding between the ports in one IOMMU address space`,
    T,
    async () => {
      using backend = openIommu(sys, o);
      // Devices first: the legacy container learns its IOVA ranges when the first group joins.
      const devices = [backend.openDevice(IGB0), backend.openDevice(IGB1)] as const;
      using dma = new DmaPool(sys, backend);
      {
        const options = { poll: true, promiscuous: true, ringSize: 64 };
        await using a = await Igb.attach(devices[0], dma, options);
        await using b = await Igb.attach(devices[1], dma, options);
        const qa = a.queues[0]!, qb = b.queues[0]!;
        // --tx-first: 8 frames out of each port, then each port's arrivals go out of the other.
        const spec = (from: Igb, to: Igb, seq: number) => ({
          dst: to.mac,
          src: from.mac,
          size: 60 + 90 * seq,
          seq,
        });
        for (const [q, from, to, base] of [[qa, a, b, 0], [qb, b, a, 8]] as const) {
          for (let k = 0; k < 8; k++) {
            buildFrame(q.txFrame(k), spec(from, to, base + k));
            q.txPrepare(k, 60 + 90 * (base + k));
          }
          q.txFlush(8);
        }
        let forwarded = 0;
        while (forwarded < 400) forwarded += qa.forwardTo(qb, 32) + qb.forwardTo(qa, 32);
        const sent = a.counters().gptc + b.counters().gptc;
        assert.equal(sent, 16 + forwarded, "GPTC of both ports: the first bursts and every forwarded frame");
        // The 16 frames are waiting in the receive rings, each still exactly as first built.
        const seen: number[] = [];
        for (const q of [qa, qb]) {
          const n = q.rxReady();
          for (let k = 0; k < n; k++) {
            const frame = q.rxFrame(k).subarray(0, q.rxLength(k));
            const seq = new DataView(frame.buffer, frame.byteOffset + 42, 4).getUint32(0);
            const [from, to] = seq < 8 ? [a, b] : [b, a];
            assert.deepEqual(
              frame,
              buildFrame(new Uint8Array(MAX_FRAME), spec(from, to, seq)),
              `frame ${seq}`,
            );
            seen.push(seq);
          }
          q.rxRelease(n);
        }
        assert.deepEqual(seen.sort((x, y) => x - y), Array.from({ length: 16 }, (_, i) => i));
      }
      assert.equal(dma.buffers.size, 0, "both ports freed their rings and frames");
      assert.equal(backend.mappings.size, 0);
    },
  );

  test(`igb (${mode.name}): close quiesces the port and leaves no fd, buffer or mapping`, T, async () => {
    const before = openFds();
    {
      using backend = openIommu(sys, o);
      const device = backend.openDevice(IGB0);
      using dma = new DmaPool(sys, backend);
      // The test keeps the device open (the owner does nothing) to look at it after the driver.
      const igb = await Igb.attach(device, dma, { queues: 2 }, { close() {} });
      assert.equal(
        igb.send([buildFrame(new Uint8Array(100), { dst: IGB1_MAC, src: igb.mac, size: 100, seq: 1 })]),
        1,
      );
      igb.close();
      igb.close(); // idempotent
      assert.ok(igb.closed);
      assert.throws(() => igb.send([]), TypeError);
      using bar = device.registers(0);
      assert.equal(bar.read32(REG.RCTL) & BIT.RCTL_EN, 0, "receive off");
      assert.equal(bar.read32(REG.TCTL) & BIT.TCTL_EN, 0, "transmit off");
      assert.equal(bar.read32(REG.EIMS), 0, "interrupts masked");
      assert.equal(bar.read32(REG.RDLEN(0)) + bar.read32(REG.TDLEN(0)), 0, "rings forgotten (CTRL.RST)");
      assert.equal(dma.buffers.size, 0);
      assert.equal(backend.mappings.size, 0);
      device.enableIrq(VFIO_PCI_MSIX_IRQ_INDEX, { count: 2 }).close(); // the driver disabled MSI-X
    }
    {
      await using a = await Igb.open(IGB0, { ...o, queues: 2 });
      await using b = await Igb.open(IGB1, { ...o, queues: 2 });
      await exchange(a, b, { count: 20 });
    }
    assert.equal(openFds(), before);
  });

  if (!HAS_IOMMU) {
    test(`igb (${mode.name}): a ring must fit one page without an IOMMU`, T, async () => {
      const before = openFds();
      await assert.rejects(
        Igb.open(IGB0, { ...o, ringSize: 512 }),
        (e: unknown) => e instanceof RangeError && /at most 256 descriptors/.test(e.message),
      );
      assert.equal(openFds(), before);
    });
  }
}

if (!HAS_IOMMU) {
  test(
    "igb: the legacy no-IOMMU container has no DMA: the driver says so and closes the device",
    T,
    async () => {
      const before = openFds();
      await assert.rejects(
        Igb.open(IGB0, { backend: "legacy" }),
        (e: unknown) => e instanceof VfioError && /no-IOMMU mode/.test(e.message),
      );
      assert.equal(openFds(), before);
    },
  );
}

test(
  "igb: bad options, a bad address and a device that is not an 82576 get a typed error, opening nothing",
  T,
  async () => {
    const before = openFds();
    await assert.rejects(Igb.open("0000:00:0a"), InvalidPciAddressError);
    for (
      const [options, message] of [
        [{ ringSize: 100 }, /multiple of 8/],
        [{ ringSize: 0 }, /ringSize 0/],
        [{ ringSize: 8192 }, /ringSize 8192/],
        [{ queues: 0 }, /queues 0/],
        [{ queues: 9 }, /queues 9/],
        [{ queues: 1.5 }, /queues 1.5/],
        [{ timeoutMs: -1 }, /timeoutMs -1/],
        [{ backend: "fast" as "auto" }, /backend fast/],
      ] as const
    ) {
      await assert.rejects(
        Igb.open(IGB0, options),
        (e: unknown) => e instanceof RangeError && message.test(e.message),
      );
    }
    assert.equal(openFds(), before, "nothing was opened");
    await assert.rejects(
      Igb.open(EDU),
      (e: unknown) => e instanceof TypeError && /not an 82576 PF/.test(e.message),
    );
    assert.equal(openFds(), before, "the device that is not an 82576 was closed again");
  },
);

test(
  "igb: frames and copies out of range get a typed error before anything is sent",
  {
    ...SLOW,
    skip: skip || (modes.length === 0 && "no backend here can do DMA for the ports (legacy no-IOMMU)"),
  },
  async () => {
    await using a = await Igb.open(IGB0, { ...modes[0]!.options, loopback: true });
    await using b = await Igb.open(IGB1, modes[0]!.options);
    for (const frame of [new Uint8Array(MAX_FRAME + 1), new Uint8Array(MIN_FRAME - 1)]) {
      assert.throws(() => a.send([new Uint8Array(100), frame]), RangeError, `${frame.length} bytes`);
    }
    assert.throws(() => a.send([new Uint8Array(100)], { queue: 1 }), RangeError);
    assert.equal(a.counters().gptc, 0, "nothing was sent");
    using src = a.dma.alloc(4096), dst = a.dma.alloc(4096), elsewhere = b.dma.alloc(4096);
    await assert.rejects(a.memcpy(src, dst, 4096, { chunkSize: 2000 }), RangeError);
    await assert.rejects(a.memcpy(src, dst, MIN_FRAME - 1), RangeError);
    await assert.rejects(a.memcpy(src, dst, 8192), RangeError);
    await assert.rejects(a.memcpy(src, elsewhere, 4096), TypeError, "dst is not in the receiver's pool");
    await assert.rejects(b.memcpy(elsewhere, dst, 4096), /without MAC loopback/);
    assert.throws(() => a.queues[0]!.forwardTo(b.queues[0]!, 1), /different IOMMU address spaces/);
    assert.equal(a.counters().gptc, 0, "still nothing sent");
  },
);

const pfDir = `${PCI}/${IGB0}`;
const sriovSkip = skip ||
  (!existsSync(`${pfDir}/sriov_totalvfs`)
    ? "this kernel has no SR-IOV (CONFIG_PCI_IOV)"
    : readFileSync("/sys/module/vfio_pci/parameters/enable_sriov", "utf8").trim() !== "Y"
    ? "vfio-pci's enable_sriov is off"
    : modes.length === 0
    ? "no backend with DMA in this guest"
    : false);

test("igb: the driver runs on IGB0 after SR-IOV VFs were made on it and removed", {
  ...SLOW,
  skip: sriovSkip,
}, async () => {
  const sriov = async (n: number) => {
    const out: string[] = [];
    assert.equal(
      await vfio(["sriov", IGB0, String(n)], (l) => out.push(l), (l) => out.push(l)),
      0,
      out.join("\n"),
    );
  };
  await sriov(2);
  try {
    assert.equal(readFileSync(`${pfDir}/sriov_numvfs`, "utf8").trim(), "2");
  } finally {
    await sriov(0);
  }
  await using a = await Igb.open(IGB0, { ...modes[0]!.options, queues: 2 });
  await using b = await Igb.open(IGB1, { ...modes[0]!.options, queues: 2 });
  const r = await exchange(a, b, { count: 40 });
  assert.equal(r.receiver.gprc, 40);
});

test("igb example: runs as a program on this runtime (exchange, memcpy, usage errors)", T, () => {
  const run = (...args: string[]) => {
    const argv = IS_DENO ? ["run", "--allow-ffi", EXAMPLE, ...args] : [EXAMPLE, ...args];
    const r = spawnSync(process.execPath, argv, { encoding: "utf8", timeout: 100_000 });
    return { ...r, output: `status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}` };
  };
  let r = run("--ring", "100");
  assert.equal(r.status, 2, r.output);
  assert.match(r.stderr, /multiple of 8[\s\S]*usage: igb\.ts/, r.output);
  r = run("0000:00:0a");
  assert.equal(r.status, 2, r.output);
  r = run("--count", "32");
  if (modes.length === 0) {
    assert.equal(r.status, 1, r.output);
    assert.match(r.stderr, /^igb: Cannot .*no-IOMMU mode/m, r.output);
    return;
  }
  assert.equal(r.status, 0, r.output);
  assert.match(r.stdout, /MAC 52:54:00:12:34:0a, link up in [\d.]+ ms, 2 queue pairs/, r.output);
  assert.match(r.stdout, /sent 32 frames .* all arrived byte for byte, per queue 16\/16/, r.output);
  assert.match(r.stdout, /0000:00:0a\.0 GPTC 32 GOTC \d+; 0000:00:0c\.0 GPRC 32 GORC \d+/, r.output);
  assert.match(r.stdout, /MSI-X: 0000:00:0a\.0 vectors [1-9]\d*\/[1-9]\d* \(transmit\)/, r.output);
  r = run("--memcpy", "4096", "--poll", "--json");
  assert.equal(r.status, 0, r.output);
  const report = JSON.parse(r.stdout);
  assert.equal(report.ok, true);
  assert.deepEqual([report.mode, report.interrupts, report.memcpy.bytes, report.memcpy.frames], [
    "memcpy",
    "poll",
    4096,
    4,
  ]);
});
