import { test } from "node:test";
import assert from "node:assert/strict";
import { type ConfigIo, PciConfig } from "../../lib/pci.ts";
import {
  PCI_CAP_ID_EXP,
  PCI_CAP_ID_MSI,
  PCI_CAP_ID_MSIX,
  PCI_CAP_ID_PM,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_IO,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  PCI_EXT_CAP_ID_ARI,
  PCI_EXT_CAP_ID_DSN,
  PCI_EXT_CAP_ID_ERR,
  PCI_EXT_CAP_ID_SRIOV,
  PCI_STATUS_CAP_LIST,
} from "../../lib/uapi/pci.ts";

interface Access {
  op: "read" | "write";
  offset: number;
  width: number;
}

/** A config space over a byte array that records every access, and refuses any outside it. */
function fake(size = 4096) {
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  const log: Access[] = [];
  const inside = (offset: number, width: number) => {
    if (offset < 0 || offset + width > size) {
      throw new Error(`fake: access at ${offset} outside ${size} bytes`);
    }
  };
  const io: ConfigIo = {
    info: { size },
    read(offset, length) {
      inside(offset, length);
      log.push({ op: "read", offset, width: length });
      return bytes.slice(offset, offset + length);
    },
    write(offset, data) {
      inside(offset, data.length);
      log.push({ op: "write", offset, width: data.length });
      bytes.set(data, offset);
    },
  };
  return {
    bytes,
    log,
    config: new PciConfig(io),
    put8: (o: number, v: number) => view.setUint8(o, v),
    put16: (o: number, v: number) => view.setUint16(o, v, true),
    put32: (o: number, v: number) => view.setUint32(o, v, true),
    get16: (o: number) => view.getUint16(o, true),
  };
}

/** A QEMU NVMe controller (1b36:0010): MSI-X at 0x40 → PCIe at 0x80 → PM at 0x60, AER → DSN → ARI. */
function nvme(size = 4096) {
  const f = fake(size);
  f.put16(0x00, 0x1b36);
  f.put16(0x02, 0x0010);
  f.put16(0x04, 0x0507); // IO | MEMORY | MASTER | INTX_DISABLE
  f.put16(0x06, PCI_STATUS_CAP_LIST);
  f.put32(0x08, 0x01080202); // class 01:08:02 (NVM Express), revision 2
  f.put8(0x0e, 0x80); // type 0, multi-function
  f.put32(0x10, 0xfebd0004); // BAR0: 64-bit memory
  f.put32(0x14, 0x00000000);
  f.put16(0x2c, 0x1af4);
  f.put16(0x2e, 0x1100);
  f.put8(0x34, 0x43); // the low two bits are reserved and must be masked
  f.put8(0x3c, 11);
  f.put8(0x3d, 1);
  f.put16(0x40, 0x8011); // MSI-X, next 0x80
  f.put16(0x42, 0x8040); // enabled, 65 entries
  f.put32(0x44, 0x00002000); // table: BAR0 + 0x2000
  f.put32(0x48, 0x00003000); // PBA: BAR0 + 0x3000
  f.put16(0x80, 0x6010); // PCIe, next 0x60
  f.put16(0x60, 0x0001); // PM, end
  if (size > 256) {
    f.put32(0x100, (0x148 << 20) | (2 << 16) | PCI_EXT_CAP_ID_ERR);
    f.put32(0x148, (0x158 << 20) | (1 << 16) | PCI_EXT_CAP_ID_DSN);
    f.put32(0x158, (0 << 20) | (1 << 16) | PCI_EXT_CAP_ID_ARI);
  }
  f.log.length = 0;
  return f;
}

test("pci: decodes IDs, class code and header fields", () => {
  const { config } = nvme();
  assert.equal(config.vendorId, 0x1b36);
  assert.equal(config.deviceId, 0x0010);
  assert.equal(config.revision, 2);
  assert.equal(config.classCode, 0x010802);
  assert.equal(config.headerType, 0, "the multi-function bit is masked off");
  assert.equal(config.command, 0x0507);
  assert.equal(config.status, PCI_STATUS_CAP_LIST);
  assert.equal(config.interruptLine, 11);
  assert.equal(config.interruptPin, 1);
  assert.equal(config.subsystemVendorId, 0x1af4);
  assert.equal(config.subsystemId, 0x1100);
  assert.equal(config.size, 4096);
});

test("pci: getters make one access of the register's width", () => {
  const { config, log } = nvme();
  void config.vendorId;
  void config.classCode;
  void config.interruptPin;
  assert.deepEqual(log, [
    { op: "read", offset: 0x00, width: 2 },
    { op: "read", offset: 0x08, width: 4 },
    { op: "read", offset: 0x3d, width: 1 },
  ]);
});

test("pci: reads are single little-endian accesses of exactly their width", () => {
  const { config, log, put32 } = fake();
  put32(0x40, 0xdeadbeef);
  assert.equal(config.read32(0x40), 0xdeadbeef, "unsigned, not -559038737");
  assert.equal(config.read16(0x42), 0xdead);
  assert.equal(config.read8(0x41), 0xbe);
  assert.deepEqual(log, [
    { op: "read", offset: 0x40, width: 4 },
    { op: "read", offset: 0x42, width: 2 },
    { op: "read", offset: 0x41, width: 1 },
  ]);
});

test("pci: writes are single little-endian accesses of exactly their width", () => {
  const { config, log, bytes } = fake();
  config.write32(0x40, 0x12345678);
  config.write16(0x46, 0xabcd);
  config.write8(0x45, 0x99);
  assert.deepEqual([...bytes.subarray(0x40, 0x48)], [0x78, 0x56, 0x34, 0x12, 0, 0x99, 0xcd, 0xab]);
  assert.deepEqual(log, [
    { op: "write", offset: 0x40, width: 4 },
    { op: "write", offset: 0x46, width: 2 },
    { op: "write", offset: 0x45, width: 1 },
  ]);
});

test("pci: unaligned accesses throw a RangeError before any access", () => {
  const { config, log } = fake();
  assert.throws(() => config.read32(0x102), {
    name: "RangeError",
    message: "Cannot read 32 bits at config offset 0x102: it is unaligned",
  });
  assert.throws(() => config.read16(0x41), RangeError);
  assert.throws(() => config.write32(0x42, 0), /Cannot write 32 bits at config offset 0x42: it is unaligned/);
  assert.throws(() => config.write16(0x3, 0), RangeError);
  assert.deepEqual(log, []);
});

test("pci: out-of-range accesses throw a RangeError before any access", () => {
  const small = fake(256);
  assert.throws(() => small.config.read32(0x100), {
    name: "RangeError",
    message: "Cannot read 32 bits at config offset 0x100: config space is 256 bytes",
  });
  assert.throws(() => small.config.read8(256), RangeError);
  assert.throws(() => small.config.write16(0x1fe, 0), RangeError);
  assert.throws(() => small.config.read8(-1), /config offset -1:/);
  assert.throws(() => small.config.read8(1.5), /config offset 1.5:/);
  assert.throws(() => small.config.read8(NaN), RangeError);
  assert.deepEqual(small.log, []);
  const big = fake(4096);
  assert.throws(() => big.config.read32(0x1000), RangeError);
  assert.throws(() => big.config.write8(0x1000, 0), RangeError);
  assert.deepEqual(big.log, []);
  assert.equal(big.config.read32(0xffc), 0, "the last dword is in range");
});

test("pci: writes reject values that do not fit, before any access", () => {
  const { config, log, bytes } = fake();
  assert.throws(() => config.write8(0x40, 0x100), {
    name: "RangeError",
    message: "Cannot write 256 as 8 bits at config offset 0x40: it does not fit",
  });
  assert.throws(() => config.write16(0x40, 0x10000), RangeError);
  assert.throws(() => config.write32(0x40, 2 ** 32), RangeError);
  assert.throws(() => config.write32(0x40, -(2 ** 31) - 1), RangeError);
  assert.throws(() => config.write16(0x40, 1.5), RangeError);
  assert.throws(() => config.write8(0x40, NaN), RangeError);
  assert.deepEqual(log, []);
  config.write32(0x40, ~0); // the signed spelling of 0xffffffff
  config.write16(0x44, -2);
  assert.deepEqual([...bytes.subarray(0x40, 0x46)], [0xff, 0xff, 0xff, 0xff, 0xfe, 0xff]);
});

test("pci: walks a QEMU NVMe capability list in order with kernel names", () => {
  const { config } = nvme();
  assert.deepEqual(config.capabilities(), [
    { id: PCI_CAP_ID_MSIX, offset: 0x40, name: "MSIX" },
    { id: PCI_CAP_ID_EXP, offset: 0x80, name: "EXP" },
    { id: PCI_CAP_ID_PM, offset: 0x60, name: "PM" },
  ]);
  assert.equal(config.findCapability(PCI_CAP_ID_EXP), 0x80);
  assert.equal(config.findCapability(PCI_CAP_ID_PM), 0x60);
  assert.equal(config.findCapability(PCI_CAP_ID_MSI), undefined);
});

test("pci: capability entries are read as one 16-bit access each", () => {
  const { config, log } = nvme();
  config.capabilities();
  assert.deepEqual(log, [
    { op: "read", offset: 0x06, width: 2 },
    { op: "read", offset: 0x34, width: 1 },
    { op: "read", offset: 0x40, width: 2 },
    { op: "read", offset: 0x80, width: 2 },
    { op: "read", offset: 0x60, width: 2 },
  ]);
});

test("pci: names unknown capability IDs undefined", () => {
  const { config, put16 } = nvme();
  put16(0x60, 0x0042);
  assert.deepEqual(config.capabilities()[2], { id: 0x42, offset: 0x60, name: undefined });
});

test("pci: the capability list is empty when PCI_STATUS_CAP_LIST is clear", () => {
  const { config, log, put16 } = nvme();
  put16(0x06, 0);
  assert.deepEqual(config.capabilities(), []);
  assert.equal(config.findCapability(PCI_CAP_ID_MSIX), undefined);
  assert.ok(log.every((a) => a.offset === 0x06), "the pointer at 0x34 is not trusted");
});

test("pci: a cyclic capability list throws a RangeError naming the loop", () => {
  const { config, log, put16 } = nvme();
  put16(0x60, 0x4001); // PM → back to MSI-X
  assert.throws(() => config.capabilities(), {
    name: "RangeError",
    message: "Cannot walk the capability list: the pointer at 0x61 loops back to 0x40 after 3 capabilities",
  });
  assert.ok(log.length < 10, "the walk stops at the first repeat");
  assert.throws(() => config.findCapability(PCI_CAP_ID_MSI), /loops back/);
});

test("pci: a capability pointing at itself throws instead of spinning", () => {
  const { config, put16 } = nvme();
  put16(0x40, 0x4011);
  assert.throws(() => config.capabilities(), /the pointer at 0x41 loops back to 0x40 after 1 capabilities/);
});

test("pci: a capability pointer into the header or an ID of 0xff throws a RangeError", () => {
  const header = nvme();
  header.put16(0x80, 0x2010); // PCIe → 0x20, inside the header
  assert.throws(() => header.config.capabilities(), {
    name: "RangeError",
    message: "Cannot walk the capability list: the pointer at 0x81 is 0x20, inside the header",
  });
  const gone = nvme();
  gone.put16(0x60, 0xffff);
  assert.throws(() => gone.config.capabilities(), /ID 0xff at 0x60; the device may not be responding/);
});

test("pci: walks the extended capability list with versions and names", () => {
  const { config, log } = nvme();
  assert.deepEqual(config.extendedCapabilities(), [
    { id: PCI_EXT_CAP_ID_ERR, version: 2, offset: 0x100, name: "ERR" },
    { id: PCI_EXT_CAP_ID_DSN, version: 1, offset: 0x148, name: "DSN" },
    { id: PCI_EXT_CAP_ID_ARI, version: 1, offset: 0x158, name: "ARI" },
  ]);
  assert.deepEqual(log.map((a) => `${a.op}${a.width * 8}@${a.offset.toString(16)}`), [
    "read32@100",
    "read32@148",
    "read32@158",
  ]);
  assert.equal(config.findExtendedCapability(PCI_EXT_CAP_ID_DSN), 0x148);
  assert.equal(config.findExtendedCapability(PCI_EXT_CAP_ID_SRIOV), undefined);
});

test("pci: extended capabilities are empty for 256-byte config space without touching it", () => {
  const { config, log } = nvme(256);
  assert.deepEqual(config.extendedCapabilities(), []);
  assert.equal(config.findExtendedCapability(PCI_EXT_CAP_ID_ERR), undefined);
  assert.deepEqual(log, []);
  assert.equal(config.capabilities().length, 3, "the standard list still works");
});

test("pci: extended capabilities are empty for a 0 or 0xffffffff header at 0x100", () => {
  const f = nvme();
  f.put32(0x100, 0);
  assert.deepEqual(f.config.extendedCapabilities(), []);
  f.put32(0x100, 0xffffffff);
  assert.deepEqual(f.config.extendedCapabilities(), []);
  assert.equal(f.log.length, 2, "one header read each");
});

test("pci: skips the ID-0 header vfio-pci leaves at 0x100 when it hides the first capability", () => {
  const { config, put32 } = nvme();
  put32(0x100, 0x148 << 20);
  assert.deepEqual(config.extendedCapabilities().map((c) => c.offset), [0x148, 0x158]);
});

test("pci: a cyclic extended capability list throws a RangeError naming the loop", () => {
  const { config, log, put32 } = nvme();
  put32(0x158, (0x100 << 20) | (1 << 16) | PCI_EXT_CAP_ID_ARI);
  assert.throws(() => config.extendedCapabilities(), {
    name: "RangeError",
    message:
      "Cannot walk the extended capability list: the next pointer at 0x158 loops back to 0x100 after 3 capabilities",
  });
  assert.equal(log.length, 3, "the walk stops at the first repeat");
  put32(0x148, (0x148 << 20) | (1 << 16) | PCI_EXT_CAP_ID_DSN);
  assert.throws(() => config.findExtendedCapability(PCI_EXT_CAP_ID_ARI), /at 0x148 loops back to 0x148/);
});

test("pci: an extended capability pointing below 0x100 throws a RangeError", () => {
  const { config, put32 } = nvme();
  put32(0x148, (0x40 << 20) | (1 << 16) | PCI_EXT_CAP_ID_DSN);
  assert.throws(() => config.extendedCapabilities(), {
    name: "RangeError",
    message: "Cannot walk the extended capability list: the next pointer at 0x148 is 0x40, below 0x100",
  });
});

test("pci: decodes 32-bit, I/O, 64-bit prefetchable and unimplemented BARs", () => {
  const { config, put32 } = nvme();
  put32(0x10, 0xfebf0000); // BAR0: 32-bit memory
  put32(0x14, 0x0000c041); // BAR1: I/O at 0xc040
  put32(0x18, 0xe000000c); // BAR2+3: 64-bit prefetchable at 0x38_e000_0000
  put32(0x1c, 0x00000038);
  put32(0x20, 0x00000000); // BAR4: unimplemented
  put32(0x24, 0xfe000000); // BAR5: the region reports size 0, so it is not listed
  assert.deepEqual(config.bars([0x1000, 0x40, 0x20000000, 0, 0, 0]), [
    { index: 0, space: "memory", is64: false, prefetchable: false, address: 0xfebf0000n, size: 0x1000 },
    { index: 1, space: "io", is64: false, prefetchable: false, address: 0xc040n, size: 0x40 },
    { index: 2, space: "memory", is64: true, prefetchable: true, address: 0x38e0000000n, size: 0x20000000 },
  ]);
});

test("pci: a 64-bit BAR consumes the next slot", () => {
  const { config } = nvme(); // BAR0 is 64-bit at 0xfebd0000
  const bars = config.bars([0x4000, 0x4000, 0, 0, 0, 0]);
  assert.deepEqual(bars, [
    { index: 0, space: "memory", is64: true, prefetchable: false, address: 0xfebd0000n, size: 0x4000 },
  ]);
});

test("pci: BAR decoding rejects bad sizes, bridge headers and a 64-bit BAR5", () => {
  const { config, put8, put32, log } = nvme();
  assert.throws(() => config.bars([0x4000]), {
    name: "RangeError",
    message: "Cannot decode BARs: expected 6 region sizes, got [16384]",
  });
  assert.throws(() => config.bars([0, 0, 0, 0, 0, -1]), RangeError);
  assert.throws(() => config.bars([0, 0, 0, 0, 0, 0.5]), RangeError);
  assert.deepEqual(log, []);
  put32(0x24, 0x00000004);
  assert.throws(
    () => config.bars([0x4000, 0, 0, 0, 0, 0x1000]),
    /Cannot decode BAR5: it is 64-bit but has no upper half/,
  );
  put8(0x0e, 0x01);
  assert.throws(() => config.bars([0, 0, 0, 0, 0, 0]), /header type 1 is not a normal \(type 0\) header/);
});

test("pci: decodes MSI", () => {
  const { config, put16 } = nvme();
  put16(0x60, 0x5001); // PM → MSI at 0x50
  put16(0x50, 0x0005);
  put16(0x52, 0x01a7); // maskable, 64-bit, 4 of 8 vectors enabled, enabled
  assert.deepEqual(config.msi(), {
    offset: 0x50,
    enabled: true,
    is64: true,
    maskable: true,
    vectors: 8,
    enabledVectors: 4,
  });
  put16(0x52, 0x000a); // 32 capable, disabled, 32-bit
  assert.deepEqual(config.msi(), {
    offset: 0x50,
    enabled: false,
    is64: false,
    maskable: false,
    vectors: 32,
    enabledVectors: 1,
  });
});

test("pci: MSI with a reserved vector count encoding throws a RangeError", () => {
  const { config, put16 } = nvme();
  put16(0x60, 0x5001);
  put16(0x50, 0x0005);
  put16(0x52, 0x000c); // Multiple Message Capable 6: reserved
  assert.throws(() => config.msi(), {
    name: "RangeError",
    message: "Cannot decode the MSI capability at 0x50: flags 0xc use a reserved count",
  });
});

test("pci: decodes MSI-X", () => {
  const { config, put16, put32 } = nvme();
  assert.deepEqual(config.msix(), {
    offset: 0x40,
    enabled: true,
    functionMask: false,
    tableSize: 65,
    tableBir: 0,
    tableOffset: 0x2000,
    pbaBir: 0,
    pbaOffset: 0x3000,
  });
  put16(0x42, 0x47ff); // masked, disabled, 2048 entries
  put32(0x44, 0x80000004); // BAR4 + 0x80000000: the offset is unsigned
  put32(0x48, 0x00010005);
  assert.deepEqual(config.msix(), {
    offset: 0x40,
    enabled: false,
    functionMask: true,
    tableSize: 2048,
    tableBir: 4,
    tableOffset: 0x80000000,
    pbaBir: 5,
    pbaOffset: 0x10000,
  });
});

test("pci: MSI-X with a BIR that names no BAR throws a RangeError", () => {
  const { config, put32 } = nvme();
  put32(0x48, 0x00003006);
  assert.throws(() => config.msix(), {
    name: "RangeError",
    message: "Cannot decode the MSI-X capability at 0x40: table BIR 0 or PBA BIR 6 is not a BAR",
  });
});

test("pci: msi and msix are undefined when the device lacks them", () => {
  const { config, put16 } = nvme();
  assert.equal(config.msi(), undefined);
  put16(0x06, 0);
  assert.equal(config.msix(), undefined);
});

test("pci: enableBusMaster sets PCI_COMMAND_MASTER in one 16-bit read-modify-write", () => {
  const { config, log, put16, get16 } = nvme();
  put16(0x04, PCI_COMMAND_INTX_DISABLE | PCI_COMMAND_MEMORY);
  put16(0x06, 0xf810); // RW1C error bits set: a 16-bit command write must not touch them
  assert.equal(config.enableBusMaster(), PCI_COMMAND_INTX_DISABLE | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
  assert.equal(get16(0x04), 0x0406);
  assert.equal(get16(0x06), 0xf810);
  assert.deepEqual(log, [
    { op: "read", offset: 0x04, width: 2 },
    { op: "write", offset: 0x04, width: 2 },
  ]);
});

test("pci: enableMemory and enableBusMaster set bits 1|2 without clearing others", () => {
  const { config, put16, get16 } = nvme();
  put16(0x04, PCI_COMMAND_INTX_DISABLE | PCI_COMMAND_IO);
  config.enableMemory();
  assert.equal(config.enableBusMaster(), 0x0407);
  assert.equal(get16(0x04) & 0b110, 0b110);
  assert.equal(get16(0x04) & ~0b110, PCI_COMMAND_INTX_DISABLE | PCI_COMMAND_IO);
  put16(0x04, 0);
  assert.equal(config.enableIo(), PCI_COMMAND_IO);
});

test("pci: setCommand clears and sets bits, and rejects values wider than 16 bits", () => {
  const { config, log, get16 } = nvme(); // command 0x0507
  assert.equal(
    config.setCommand({ set: PCI_COMMAND_INTX_DISABLE, clear: PCI_COMMAND_IO | PCI_COMMAND_MASTER }),
    0x0502,
  );
  assert.equal(get16(0x04), 0x0502);
  assert.equal(config.setCommand({ clear: PCI_COMMAND_INTX_DISABLE }), 0x0102);
  assert.equal(
    config.setCommand({ set: PCI_COMMAND_IO, clear: PCI_COMMAND_IO }),
    0x0103,
    "set wins over clear",
  );
  log.length = 0;
  assert.throws(() => config.setCommand({ set: 0x10000 }), {
    name: "RangeError",
    message: "Cannot update the command register with 65536: expected 0..0xffff",
  });
  assert.throws(() => config.setCommand({ clear: -1 }), RangeError);
  assert.deepEqual(log, []);
});
