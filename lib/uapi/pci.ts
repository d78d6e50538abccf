/**
 * include/uapi/linux/pci_regs.h: the PCI configuration-space offsets, bits and capability IDs the
 * library uses, under the kernel's names. tests/conformance checks each one against the header.
 *
 * @module
 */

/** Size of conventional PCI configuration space, 256 bytes. */
export const PCI_CFG_SPACE_SIZE = 256;
/** Size of PCI Express extended configuration space, 4096 bytes. */
export const PCI_CFG_SPACE_EXP_SIZE = 4096;

/** Config offset of the 16-bit vendor ID. */
export const PCI_VENDOR_ID = 0x00;
/** Config offset of the 16-bit device ID. */
export const PCI_DEVICE_ID = 0x02;
/** Config offset of the 16-bit command register. */
export const PCI_COMMAND = 0x04;
/** Command bit: enable response in I/O space. */
export const PCI_COMMAND_IO = 0x1;
/** Command bit: enable response in memory space. */
export const PCI_COMMAND_MEMORY = 0x2;
/** Command bit: enable bus mastering (the device may DMA). */
export const PCI_COMMAND_MASTER = 0x4;
/** Command bit: INTx emulation disable. */
export const PCI_COMMAND_INTX_DISABLE = 0x400;
/** Config offset of the 16-bit status register. */
export const PCI_STATUS = 0x06;
/** Status bit: the device's INTx interrupt is asserted. */
export const PCI_STATUS_INTERRUPT = 0x08;
/** Status bit: the device has a capability list (at PCI_CAPABILITY_LIST). */
export const PCI_STATUS_CAP_LIST = 0x10;
/** Config offset of the 32-bit dword whose high 24 bits are the class code and low 8 the revision. */
export const PCI_CLASS_REVISION = 0x08;
/** Config offset of the 8-bit revision ID. */
export const PCI_REVISION_ID = 0x08;
/** Config offset of the 8-bit programming interface (reg. level). */
export const PCI_CLASS_PROG = 0x09;
/** Config offset of the 16-bit device class (base class and subclass). */
export const PCI_CLASS_DEVICE = 0x0a;
/** Config offset of the 8-bit header type. */
export const PCI_HEADER_TYPE = 0x0e;
/** Header type bits; bit 7 is the multi-function flag. */
export const PCI_HEADER_TYPE_MASK = 0x7f;
/** Header type 0: a normal (non-bridge) device. */
export const PCI_HEADER_TYPE_NORMAL = 0;
/** Config offset of BAR0; BAR n is at PCI_BASE_ADDRESS_0 + 4n. */
export const PCI_BASE_ADDRESS_0 = 0x10;
/** BAR bit 0: the space indicator; 0 = memory, 1 = I/O. */
export const PCI_BASE_ADDRESS_SPACE = 0x01;
/** BAR space indicator value: an I/O BAR. */
export const PCI_BASE_ADDRESS_SPACE_IO = 0x01;
/** BAR space indicator value: a memory BAR. */
export const PCI_BASE_ADDRESS_SPACE_MEMORY = 0x00;
/** Memory BAR bits 1-2: the type (32-bit, below 1M, 64-bit). */
export const PCI_BASE_ADDRESS_MEM_TYPE_MASK = 0x06;
/** Memory BAR type: a 64-bit BAR, using the next BAR for the high half. */
export const PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04;
/** Memory BAR bit: prefetchable. */
export const PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08;
/** Address bits of a memory BAR, as the 32-bit register value (C's `~0x0fUL` truncated). */
export const PCI_BASE_ADDRESS_MEM_MASK = ~0x0f >>> 0;
/** Address bits of an I/O BAR, as the 32-bit register value (C's `~0x03UL` truncated). */
export const PCI_BASE_ADDRESS_IO_MASK = ~0x03 >>> 0;
/** Config offset of the 16-bit subsystem vendor ID. */
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
/** Config offset of the 16-bit subsystem ID. */
export const PCI_SUBSYSTEM_ID = 0x2e;
/** Config offset of the expansion ROM base address. */
export const PCI_ROM_ADDRESS = 0x30;
/** Config offset of the 8-bit pointer to the first capability. */
export const PCI_CAPABILITY_LIST = 0x34;
/** Config offset of the 8-bit interrupt line. */
export const PCI_INTERRUPT_LINE = 0x3c;
/** Config offset of the 8-bit interrupt pin (1-4 = INTA-INTD, 0 = none). */
export const PCI_INTERRUPT_PIN = 0x3d;

/** Offset in a capability of its 8-bit capability ID. */
export const PCI_CAP_LIST_ID = 0;
/** Offset in a capability of the 8-bit pointer to the next one. */
export const PCI_CAP_LIST_NEXT = 1;
/** Capability ID: power management. */
export const PCI_CAP_ID_PM = 0x01;
/** Capability ID: Message Signalled Interrupts. */
export const PCI_CAP_ID_MSI = 0x05;
/** Capability ID: vendor-specific. */
export const PCI_CAP_ID_VNDR = 0x09;
/** Capability ID: PCI Express. */
export const PCI_CAP_ID_EXP = 0x10;
/** Capability ID: MSI-X. */
export const PCI_CAP_ID_MSIX = 0x11;

/** Offset in the MSI capability of its 16-bit message control register. */
export const PCI_MSI_FLAGS = 0x02;
/** MSI control bit: MSI feature enabled. */
export const PCI_MSI_FLAGS_ENABLE = 0x0001;
/** MSI control bits: the maximum queue size available (log2 of the vectors). */
export const PCI_MSI_FLAGS_QMASK = 0x000e;
/** MSI control bit: 64-bit addresses allowed. */
export const PCI_MSI_FLAGS_64BIT = 0x0080;
/** Offset in the MSI-X capability of its 16-bit message control register. */
export const PCI_MSIX_FLAGS = 0x02;
/** MSI-X control bits: table size minus one. */
export const PCI_MSIX_FLAGS_QSIZE = 0x07ff;
/** MSI-X control bit: MSI-X enable. */
export const PCI_MSIX_FLAGS_ENABLE = 0x8000;
/** Offset in the MSI-X capability of the table offset and BIR dword. */
export const PCI_MSIX_TABLE = 0x04;
/** MSI-X table dword bits: the BAR indicator register. */
export const PCI_MSIX_TABLE_BIR = 0x00000007;
/** Offset in the MSI-X capability of the pending bit array offset and BIR dword. */
export const PCI_MSIX_PBA = 0x08;

/** Offset in the PCI Express capability of its 16-bit capabilities register. */
export const PCI_EXP_FLAGS = 0x02;
/** Offset in the PCI Express capability of the 32-bit device capabilities register. */
export const PCI_EXP_DEVCAP = 0x04;
/** Device capabilities bit: Function Level Reset supported. */
export const PCI_EXP_DEVCAP_FLR = 0x10000000;

/** Extended capability ID: Advanced Error Reporting. */
export const PCI_EXT_CAP_ID_ERR = 0x01;
/** Extended capability ID: Virtual Channel. */
export const PCI_EXT_CAP_ID_VC = 0x02;
/** Extended capability ID: Device Serial Number. */
export const PCI_EXT_CAP_ID_DSN = 0x03;
/** Extended capability ID: Alternate Routing ID. */
export const PCI_EXT_CAP_ID_ARI = 0x0e;
/** Extended capability ID: Single Root I/O Virtualization. */
export const PCI_EXT_CAP_ID_SRIOV = 0x10;
/** Extended capability ID: Process Address Space ID. */
export const PCI_EXT_CAP_ID_PASID = 0x1b;

/** Number of standard BARs in a type 0 header. */
export const PCI_STD_NUM_BARS = 6;
/** MSI control bits: the message queue size configured (log2 of the vectors enabled). */
export const PCI_MSI_FLAGS_QSIZE = 0x0070;
/** MSI control bit: per-vector masking capable. */
export const PCI_MSI_FLAGS_MASKBIT = 0x0100;
/** MSI-X control bit: mask all vectors. */
export const PCI_MSIX_FLAGS_MASKALL = 0x4000;
/** MSI-X table dword bits: the table's offset in its BAR. */
export const PCI_MSIX_TABLE_OFFSET = 0xfffffff8;
/** MSI-X PBA dword bits: the BAR indicator register. */
export const PCI_MSIX_PBA_BIR = 0x00000007;
/** MSI-X PBA dword bits: the pending bit array's offset in its BAR. */
export const PCI_MSIX_PBA_OFFSET = 0xfffffff8;
