// The edu example driver (examples/edu.ts) against the real device, under each IOMMU backend: the
// demo end to end (factorial by MSI, DMA both ways, event loop free while waiting), timeouts, a
// wrong device, the no-IOMMU refusal, and the example run as a program on this runtime.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import process from "node:process";
import { demo, EDU as REG, Edu, EDU_DMA_LIMIT, EDU_IDENT } from "../../examples/edu.ts";
import { VfioError } from "../../lib/errors.ts";
import { PCI_COMMAND_MASTER } from "../../lib/uapi/pci.ts";
import { readdirSync } from "node:fs";
import { backends, EDU, HAS_IOMMU, NVME, openFds } from "./_fixture.ts";

/** Whether the kernel makes iommufd no-IOMMU cdevs (`noiommu-vfioN`), which the example then uses. */
const NOIOMMU_CDEV = (() => {
  try {
    return readdirSync("/dev/vfio/devices").some((n) => n.startsWith("noiommu-vfio"));
  } catch {
    return false;
  }
})();

const SLOW = { timeout: 120_000 };
const EXAMPLE = new URL("../../examples/edu.ts", import.meta.url).pathname;
const IS_DENO = "Deno" in globalThis;
const noIommuError = (e: unknown) => e instanceof VfioError && /no-IOMMU mode/.test(e.message);

for (const mode of HAS_IOMMU ? backends() : []) {
  test(
    `${mode.name}: edu example runs its demo: factorial by MSI, DMA both ways, loop ticking`,
    SLOW,
    async () => {
      using edu = await Edu.open(EDU, mode.options);
      assert.equal(edu.backend.kind, mode.name === "iommufd" ? "iommufd" : "type1v2");
      const lines: string[] = [];
      const r = await demo(edu, (line) => lines.push(line));
      assert.equal(r.ident, EDU_IDENT);
      assert.equal(r.factorial, 3628800);
      assert.equal(r.dmaBytes, 2048);
      assert.ok(r.interrupts >= 3, `${r.interrupts} interrupts: factorial and two DMA completions`);
      assert.ok(r.ticks > 0, "the timer ran while the driver awaited interrupts");
      assert.match(lines.join("\n"), /DMA verified/);
      assert.equal(edu.bar0.read32(REG.IRQ_STATUS), 0, "every interrupt was acknowledged");
      assert.equal(edu.dma.buffers.size, 0, "the demo's DMA buffers were freed");
    },
  );

  test(
    `${mode.name}: edu example DMA stays below the 28-bit mask and refuses transfers that overrun`,
    SLOW,
    async () => {
      using edu = await Edu.open(EDU, mode.options);
      using buf = edu.dma.alloc(8192);
      assert.ok(buf.iova + BigInt(buf.size) - 1n <= EDU_DMA_LIMIT, `iova 0x${buf.iova.toString(16)}`);
      await assert.rejects(edu.dmaToDevice(buf, 0, 4096), RangeError);
      await assert.rejects(edu.dmaFromDevice(4000, buf, 96), RangeError, "ends exactly at the buffer's end");
      await assert.rejects(edu.dmaToDevice(buf, -1, 16), RangeError);
      // Device offsets other than 0, and the last byte the device allows.
      buf.bytes.set([1, 2, 3, 4], 0);
      await edu.dmaToDevice(buf, 4091, 4);
      await edu.dmaFromDevice(4091, buf, 4);
      assert.deepEqual([...buf.bytes.subarray(0, 4)], [1, 2, 3, 4]);
      buf.bytes.fill(0, 0, 4);
      await edu.dmaFromDevice(4091, buf, 4);
      assert.deepEqual([...buf.bytes.subarray(0, 4)], [1, 2, 3, 4], "the device buffer kept the data");
    },
  );
}

test("edu example: factorials complete by MSI under every IOMMU mode", SLOW, async () => {
  using edu = await Edu.open(EDU);
  const expected = [1, 1, 2, 6, 24, 120, 720, 5040, 40320, 362880, 3628800, 39916800, 479001600];
  for (let n = 0; n <= 12; n++) assert.equal(await edu.factorial(n), expected[n], `${n}!`);
  assert.ok(edu.interrupts >= 13, `${edu.interrupts} interrupts`);
  assert.equal(edu.bar0.read32(REG.IRQ_STATUS), 0);
  await assert.rejects(edu.factorial(-1), RangeError);
  await assert.rejects(edu.factorial(1.5), RangeError);
});

test("edu example: a lost MSI times out with the reason, and the driver recovers", SLOW, async () => {
  using edu = await Edu.open(EDU);
  edu.timeoutMs = 500;
  edu.device.config.setCommand({ clear: PCI_COMMAND_MASTER }); // MSIs are DMA writes: they now go nowhere
  try {
    await assert.rejects(edu.factorial(5), /no MSI arrived: is bus mastering on\?/);
  } finally {
    edu.device.config.enableBusMaster();
  }
  assert.equal(edu.bar0.read32(REG.IRQ_STATUS), 0, "the raised bit was acknowledged");
  assert.equal(await edu.factorial(5), 120);
});

test("edu example: a device that is not edu is refused and nothing stays open", SLOW, async () => {
  const before = openFds();
  await assert.rejects(Edu.open(NVME), (e: unknown) => {
    assert.ok(e instanceof TypeError);
    assert.match(e.message, /Cannot drive 0000:00:05\.0: its ident register reads 0x[0-9a-f]+, not edu's/);
    return true;
  });
  assert.equal(openFds(), before);
});

if (!HAS_IOMMU) {
  test(
    "noiommu: edu example on the legacy container computes by MSI but its DMA fails with the no-IOMMU error",
    SLOW,
    async () => {
      using edu = await Edu.open(EDU, { backend: "legacy" });
      assert.equal(edu.backend.kind, "noiommu");
      const lines: string[] = [];
      await assert.rejects(demo(edu, (line) => lines.push(line)), noIommuError);
      assert.match(lines.join("\n"), /10! = 3628800/, "the factorial ran before DMA was refused");
    },
  );
}

test("edu example: runs as a program on this runtime", SLOW, () => {
  const argv = IS_DENO
    ? ["run", "--allow-ffi", EXAMPLE, EDU] // the minimal flags the README documents
    : [EXAMPLE, EDU];
  const r = spawnSync(process.execPath, argv, { encoding: "utf8", timeout: 100_000 });
  const output = `status ${r.status}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
  // DMA works with an IOMMU, and without one through iommufd's no-IOMMU cdev (Linux 7.3+), where the
  // example is given physical addresses; the legacy no-IOMMU container has no DMA at all.
  if (HAS_IOMMU || NOIOMMU_CDEV) {
    assert.equal(r.status, 0, output);
    assert.match(r.stdout, /ident 0x010000ed/, output);
    assert.match(r.stdout, /10! = 3628800, completion interrupt received/, output);
    assert.match(r.stdout, /DMA verified: the 2048 bytes came back unchanged/, output);
    assert.match(r.stdout, /the event loop ticked [1-9]\d* times/, output);
  } else {
    assert.equal(r.status, 1, output);
    assert.match(r.stderr, /^edu: Cannot .*no-IOMMU mode/m, output);
  }
});
