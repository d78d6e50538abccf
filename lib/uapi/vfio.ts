/**
 * include/uapi/linux/vfio.h: every VFIO constant, ioctl number and struct layout the library uses,
 * under the kernel's names. Taken from Linux 6.12 and, for what is newer (each says "since Linux
 * X.Y"), from Linux 7.3; tests/conformance checks each one against the headers that define it.
 *
 * @module
 */
import { _IO } from "./ioctl.ts";
import { type S32, StructDef, type U16, type U32, type U64, type U8 } from "./struct.ts";

/** The VFIO API version VFIO_GET_API_VERSION reports; 0 since the API was merged. */
export const VFIO_API_VERSION = 0;

// Extensions and IOMMU types (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU).
/** Extension and IOMMU type: the x86-style type1 IOMMU backend (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU). */
export const VFIO_TYPE1_IOMMU = 1;
/** Extension and IOMMU type: the POWER sPAPR TCE IOMMU backend. */
export const VFIO_SPAPR_TCE_IOMMU = 2;
/** Extension and IOMMU type: type1 v2, whose unmaps must cover whole mappings (no bisecting). */
export const VFIO_TYPE1v2_IOMMU = 3;
/** Extension: the IOMMU enforces DMA cache coherence (strips PCIe NoSnoop); may change with groups. */
export const VFIO_DMA_CC_IOMMU = 4;
/** Extension: POWER EEH (Enhanced Error Handling) is supported. */
export const VFIO_EEH = 5;
/**
 * Extension and IOMMU type: two-stage (nesting) type1 IOMMU; implies v2. The kernel dropped it (newer
 * headers keep the number as __VFIO_RESERVED_TYPE1_NESTING_IOMMU, and no kernel accepts it now).
 */
export const VFIO_TYPE1_NESTING_IOMMU = 6;
/** Extension and IOMMU type: the sPAPR TCE v2 IOMMU backend. */
export const VFIO_SPAPR_TCE_v2_IOMMU = 7;
/** Extension and IOMMU type: no-IOMMU mode; no DMA isolation, taints the kernel, no IOMMU ioctls. */
export const VFIO_NOIOMMU_IOMMU = 8;
/** Extension: the type1 backend supports VFIO_DMA_UNMAP_FLAG_ALL. */
export const VFIO_UNMAP_ALL = 9;
/** Extension: the type1 backend supports VFIO_DMA_MAP_FLAG_VADDR and VFIO_DMA_UNMAP_FLAG_VADDR. */
export const VFIO_UPDATE_VADDR = 10;

/** The ioctl type character of every VFIO request, `';'`. */
export const VFIO_TYPE = ";";
/** The first VFIO ioctl command number; each request is `_IO(VFIO_TYPE, VFIO_BASE + n)`. */
export const VFIO_BASE = 100;

/** VFIO_GET_API_VERSION (container fd): returns VFIO_API_VERSION. */
export const VFIO_GET_API_VERSION: number = _IO(VFIO_TYPE, VFIO_BASE + 0);
/** VFIO_CHECK_EXTENSION (container fd): returns >0 if the extension or IOMMU type is supported, else 0. */
export const VFIO_CHECK_EXTENSION: number = _IO(VFIO_TYPE, VFIO_BASE + 1);
/** VFIO_SET_IOMMU (container fd): selects the IOMMU type; needs a group set to the container first. */
export const VFIO_SET_IOMMU: number = _IO(VFIO_TYPE, VFIO_BASE + 2);
/** VFIO_GROUP_GET_STATUS: reads struct vfio_group_status (viable, container set). */
export const VFIO_GROUP_GET_STATUS: number = _IO(VFIO_TYPE, VFIO_BASE + 3);
/** VFIO_GROUP_SET_CONTAINER: attaches the group to the container whose fd the `int *` argument points at. */
export const VFIO_GROUP_SET_CONTAINER: number = _IO(VFIO_TYPE, VFIO_BASE + 4);
/** VFIO_GROUP_UNSET_CONTAINER: removes the group from its container. */
export const VFIO_GROUP_UNSET_CONTAINER: number = _IO(VFIO_TYPE, VFIO_BASE + 5);
/** VFIO_GROUP_GET_DEVICE_FD: returns a new device fd for the device named by the string argument. */
export const VFIO_GROUP_GET_DEVICE_FD: number = _IO(VFIO_TYPE, VFIO_BASE + 6);
/** VFIO_DEVICE_GET_INFO: reads struct vfio_device_info (flags, region and IRQ counts, capabilities). */
export const VFIO_DEVICE_GET_INFO: number = _IO(VFIO_TYPE, VFIO_BASE + 7);
/** VFIO_DEVICE_GET_REGION_INFO: reads struct vfio_region_info for the region at `index`. */
export const VFIO_DEVICE_GET_REGION_INFO: number = _IO(VFIO_TYPE, VFIO_BASE + 8);
/** VFIO_DEVICE_GET_IRQ_INFO: reads struct vfio_irq_info for the IRQ index at `index`. */
export const VFIO_DEVICE_GET_IRQ_INFO: number = _IO(VFIO_TYPE, VFIO_BASE + 9);
/** VFIO_DEVICE_SET_IRQS: masks, unmasks or triggers IRQs, or sets eventfds for them (struct vfio_irq_set). */
export const VFIO_DEVICE_SET_IRQS: number = _IO(VFIO_TYPE, VFIO_BASE + 10);
/** VFIO_DEVICE_RESET: resets the device (when VFIO_DEVICE_FLAGS_RESET is set). */
export const VFIO_DEVICE_RESET: number = _IO(VFIO_TYPE, VFIO_BASE + 11);
/** VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: the devices a hot reset affects (struct vfio_pci_hot_reset_info). */
export const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: number = _IO(VFIO_TYPE, VFIO_BASE + 12);
/** VFIO_DEVICE_PCI_HOT_RESET: bus or slot reset of devices the caller owns (struct vfio_pci_hot_reset). */
export const VFIO_DEVICE_PCI_HOT_RESET: number = _IO(VFIO_TYPE, VFIO_BASE + 13);
/** VFIO_DEVICE_FEATURE: gets, sets or probes a device feature (struct vfio_device_feature). */
export const VFIO_DEVICE_FEATURE: number = _IO(VFIO_TYPE, VFIO_BASE + 17);
/** VFIO_DEVICE_BIND_IOMMUFD (cdev fd): binds the device to an iommufd (struct vfio_device_bind_iommufd). */
export const VFIO_DEVICE_BIND_IOMMUFD: number = _IO(VFIO_TYPE, VFIO_BASE + 18);
/** VFIO_DEVICE_ATTACH_IOMMUFD_PT (cdev fd): attaches the device to an IOAS or hw_pagetable. */
export const VFIO_DEVICE_ATTACH_IOMMUFD_PT: number = _IO(VFIO_TYPE, VFIO_BASE + 19);
/** VFIO_DEVICE_DETACH_IOMMUFD_PT (cdev fd): detaches the device from its address space, blocking DMA. */
export const VFIO_DEVICE_DETACH_IOMMUFD_PT: number = _IO(VFIO_TYPE, VFIO_BASE + 20);
/** VFIO_IOMMU_GET_INFO (container fd): reads struct vfio_iommu_type1_info (page sizes, capabilities). */
export const VFIO_IOMMU_GET_INFO: number = _IO(VFIO_TYPE, VFIO_BASE + 12);
/** VFIO_IOMMU_MAP_DMA (container fd): maps process memory at an IOVA (struct vfio_iommu_type1_dma_map). */
export const VFIO_IOMMU_MAP_DMA: number = _IO(VFIO_TYPE, VFIO_BASE + 13);
/** VFIO_IOMMU_UNMAP_DMA (container fd): unmaps an IOVA range (struct vfio_iommu_type1_dma_unmap). */
export const VFIO_IOMMU_UNMAP_DMA: number = _IO(VFIO_TYPE, VFIO_BASE + 14);

/** struct vfio_info_cap_header: id, version and next offset; starts every capability in an info buffer. */
export const vfio_info_cap_header: StructDef<{ id: U16; version: U16; next: U32 }> = new StructDef(
  "vfio_info_cap_header",
  8,
  {
    id: ["u16", 0],
    version: ["u16", 2],
    next: ["u32", 4],
  },
);

/** vfio_group_status flag: every device in the group is bound to a VFIO driver, so the group is usable. */
export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
/** vfio_group_status flag: the group is attached to a container. */
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;
/** struct vfio_group_status: a group's argsz and flags (VFIO_GROUP_GET_STATUS). */
export const vfio_group_status: StructDef<{ argsz: U32; flags: U32 }> = new StructDef(
  "vfio_group_status",
  8,
  {
    argsz: ["u32", 0],
    flags: ["u32", 4],
  },
);

/** vfio_device_info flag: the device supports VFIO_DEVICE_RESET. */
export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
/** vfio_device_info flag: a vfio-pci device. */
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
/** vfio_device_info flag: a vfio-platform device. */
export const VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2;
/** vfio_device_info flag: a vfio-amba device. */
export const VFIO_DEVICE_FLAGS_AMBA = 1 << 3;
/** vfio_device_info flag: a vfio-ccw device. */
export const VFIO_DEVICE_FLAGS_CCW = 1 << 4;
/** vfio_device_info flag: a vfio-ap device. */
export const VFIO_DEVICE_FLAGS_AP = 1 << 5;
/** vfio_device_info flag: a vfio-fsl-mc device. */
export const VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6;
/** vfio_device_info flag: the info has a capability chain at cap_offset. */
export const VFIO_DEVICE_FLAGS_CAPS = 1 << 7;
/** vfio_device_info flag: a vfio-cdx device. */
export const VFIO_DEVICE_FLAGS_CDX = 1 << 8;
/** struct vfio_device_info: flags, region and IRQ counts, capability offset (VFIO_DEVICE_GET_INFO). */
export const vfio_device_info: StructDef<
  { argsz: U32; flags: U32; num_regions: U32; num_irqs: U32; cap_offset: U32; pad: U32 }
> = new StructDef("vfio_device_info", 24, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  num_regions: ["u32", 8],
  num_irqs: ["u32", 12],
  cap_offset: ["u32", 16],
  pad: ["u32", 20],
});

/** vfio_region_info flag: the region supports read. */
export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
/** vfio_region_info flag: the region supports write. */
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
/** vfio_region_info flag: the region supports mmap. */
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
/** vfio_region_info flag: the info has a capability chain at cap_offset. */
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;
/** struct vfio_region_info: a region's flags, size and offset in the device fd (GET_REGION_INFO). */
export const vfio_region_info: StructDef<
  { argsz: U32; flags: U32; index: U32; cap_offset: U32; size: U64; offset: U64 }
> = new StructDef("vfio_region_info", 32, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  index: ["u32", 8],
  cap_offset: ["u32", 12],
  size: ["u64", 16],
  offset: ["u64", 24],
});

/** Region capability id: sparse mmap, the areas within a region that can be mmapped. */
export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
/** struct vfio_region_sparse_mmap_area: one mmappable area's offset and size within its region. */
export const vfio_region_sparse_mmap_area: StructDef<{ offset: U64; size: U64 }> = new StructDef(
  "vfio_region_sparse_mmap_area",
  16,
  {
    offset: ["u64", 0],
    size: ["u64", 8],
  },
);
/** struct vfio_region_info_cap_sparse_mmap: the sparse mmap capability; nr_areas areas follow it. */
export const vfio_region_info_cap_sparse_mmap: StructDef<{ nr_areas: U32; reserved: U32 }> = new StructDef(
  "vfio_region_info_cap_sparse_mmap",
  16,
  {
    nr_areas: ["u32", 8],
    reserved: ["u32", 12],
  },
);

/** Region capability id: the device-specific region type and subtype. */
export const VFIO_REGION_INFO_CAP_TYPE = 2;
/** struct vfio_region_info_cap_type: a device-specific region's type and subtype. */
export const vfio_region_info_cap_type: StructDef<{ type: U32; subtype: U32 }> = new StructDef(
  "vfio_region_info_cap_type",
  16,
  {
    type: ["u32", 8],
    subtype: ["u32", 12],
  },
);
/** Region type bit: PCI vendor-specific, vendor ID in the low 16 bits (C's `1 << 31` as an unsigned u32). */
export const VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 1 << 31 >>> 0;
/** Region type: graphics (vGPU) regions. */
export const VFIO_REGION_TYPE_GFX = 1;
/** Region type: s390 channel I/O (vfio-ccw) regions. */
export const VFIO_REGION_TYPE_CCW = 2;
/** Region type: the deprecated v1 migration region. */
export const VFIO_REGION_TYPE_MIGRATION_DEPRECATED = 3;
/** Region capability id: the BAR holding the MSI-X table can be mmapped, table page included. */
export const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3;

// PCI region and IRQ indexes (the enums in vfio.h).
/** vfio-pci region index of BAR0; BAR n is index n. */
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
/** vfio-pci region index of BAR5, the last BAR. */
export const VFIO_PCI_BAR5_REGION_INDEX = 5;
/** vfio-pci region index of the expansion ROM. */
export const VFIO_PCI_ROM_REGION_INDEX = 6;
/** vfio-pci region index of PCI configuration space. */
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
/** vfio-pci region index of the legacy VGA ranges (MMIO 0xa0000-0xbffff, I/O 0x3b0-0x3df). */
export const VFIO_PCI_VGA_REGION_INDEX = 8;
/** The number of fixed vfio-pci region indexes; device-specific regions follow. */
export const VFIO_PCI_NUM_REGIONS = 9;
/** vfio-pci IRQ index of legacy INTx. */
export const VFIO_PCI_INTX_IRQ_INDEX = 0;
/** vfio-pci IRQ index of MSI. */
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
/** vfio-pci IRQ index of MSI-X. */
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
/** vfio-pci IRQ index of AER error signaling. */
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
/** vfio-pci IRQ index of the device request (release the device) notification. */
export const VFIO_PCI_REQ_IRQ_INDEX = 4;
/** The number of vfio-pci IRQ indexes. */
export const VFIO_PCI_NUM_IRQS = 5;

/** vfio_irq_info flag: the IRQ can signal an eventfd. */
export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
/** vfio_irq_info flag: the IRQ can be masked and unmasked through VFIO_DEVICE_SET_IRQS. */
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
/** vfio_irq_info flag: the IRQ is masked automatically when it fires (level-triggered, e.g. INTx). */
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
/** vfio_irq_info flag: the set of enabled vectors cannot grow without disabling them all first. */
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;
/** struct vfio_irq_info: one IRQ index's flags and vector count (VFIO_DEVICE_GET_IRQ_INFO). */
export const vfio_irq_info: StructDef<{ argsz: U32; flags: U32; index: U32; count: U32 }> = new StructDef(
  "vfio_irq_info",
  16,
  {
    argsz: ["u32", 0],
    flags: ["u32", 4],
    index: ["u32", 8],
    count: ["u32", 12],
  },
);

/** vfio_irq_set data type: no data follows. */
export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
/** vfio_irq_set data type: one u8 bool per vector follows. */
export const VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
/** vfio_irq_set data type: one s32 eventfd per vector follows (-1 tears one down). */
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
/** vfio_irq_set action: mask the vectors. */
export const VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
/** vfio_irq_set action: unmask the vectors. */
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
/** vfio_irq_set action: trigger the vectors, or set their trigger eventfds. */
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;
/** struct vfio_irq_set: flags, IRQ index and vector range for VFIO_DEVICE_SET_IRQS; data follows. */
export const vfio_irq_set: StructDef<{ argsz: U32; flags: U32; index: U32; start: U32; count: U32 }> =
  new StructDef("vfio_irq_set", 20, {
    argsz: ["u32", 0],
    flags: ["u32", 4],
    index: ["u32", 8],
    start: ["u32", 12],
    count: ["u32", 16],
  });

/** vfio_pci_hot_reset_info flag: devices are reported by devid (cdev), not group_id. */
export const VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0;
/** vfio_pci_hot_reset_info flag: the user owns every affected device (only with FLAG_DEV_ID). */
export const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1;
/** devid value: the affected device has no devid but is owned through the caller's IOMMU group. */
export const VFIO_PCI_DEVID_OWNED = 0;
/** devid value: the affected device is not owned by the caller, so the reset is refused. */
export const VFIO_PCI_DEVID_NOT_OWNED: number = -1;
/** struct vfio_pci_dependent_device: one affected device, by group_id or devid (a union) and PCI address. */
export const vfio_pci_dependent_device: StructDef<
  { group_id: U32; devid: U32; segment: U16; bus: U8; devfn: U8 }
> = new StructDef("vfio_pci_dependent_device", 8, {
  group_id: ["u32", 0],
  devid: ["u32", 0],
  segment: ["u16", 4],
  bus: ["u8", 6],
  devfn: ["u8", 7],
});
/** struct vfio_pci_hot_reset_info: flags and count; the affected devices follow (GET_PCI_HOT_RESET_INFO). */
export const vfio_pci_hot_reset_info: StructDef<{ argsz: U32; flags: U32; count: U32 }> = new StructDef(
  "vfio_pci_hot_reset_info",
  12,
  {
    argsz: ["u32", 0],
    flags: ["u32", 4],
    count: ["u32", 8],
  },
);
/** struct vfio_pci_hot_reset: flags and count; that many s32 group fds follow (VFIO_DEVICE_PCI_HOT_RESET). */
export const vfio_pci_hot_reset: StructDef<{ argsz: U32; flags: U32; count: U32 }> = new StructDef(
  "vfio_pci_hot_reset",
  12,
  {
    argsz: ["u32", 0],
    flags: ["u32", 4],
    count: ["u32", 8],
  },
);

/** vfio_device_feature flags: the 16-bit feature index. */
export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
/** vfio_device_feature flag: get the feature into data[]. */
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
/** vfio_device_feature flag: set the feature from data[]. */
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
/** vfio_device_feature flag: probe for support of the feature with the GET/SET flags given. */
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;
/**
 * Device feature (SET only): the VF token, a 16-byte UUID shared between the user of an SR-IOV PF on
 * vfio-pci and the users of its VFs, who must present it to open a VF.
 */
export const VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0;
/** Device feature: report the migration flags the device supports. */
export const VFIO_DEVICE_FEATURE_MIGRATION = 1;
/** Device feature: get or set the migration state (struct vfio_device_feature_mig_state). */
export const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
/** Device feature: put the device into a low power state (runtime PM). */
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3;
/** Device feature: enter low power, signaling an eventfd on wakeup. */
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4;
/** Device feature: bring the device out of low power. */
export const VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5;
/** Device feature: start device DMA dirty-page logging over given IOVA ranges. */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6;
/** Device feature: stop device DMA logging started by DMA_LOGGING_START. */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7;
/** Device feature: read and clear the dirty bitmap for an IOVA range. */
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8;
/** Device feature: the estimated stop-copy migration data length. */
export const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;
/** Device feature: clear or set the device's bus master enable. */
export const VFIO_DEVICE_FEATURE_BUS_MASTER = 10;
/**
 * Device feature (GET): export regions of a BAR as a DMA-BUF fd, which the ioctl returns (struct
 * vfio_device_feature_dma_buf, then its ranges). Since Linux 6.19, with CONFIG_VFIO_PCI_DMABUF.
 */
export const VFIO_DEVICE_FEATURE_DMA_BUF = 11;
/** struct vfio_region_dma_range: one page-aligned slice (offset, length) of a region, for a DMA-BUF. Since Linux 6.19. */
export const vfio_region_dma_range: StructDef<{ offset: U64; length: U64 }> = new StructDef(
  "vfio_region_dma_range",
  16,
  {
    offset: ["u64", 0],
    length: ["u64", 8],
  },
);
/**
 * struct vfio_device_feature_dma_buf: the region (BAR) index, the DMA-BUF's open(2) flags, flags
 * (must be 0) and the number of vfio_region_dma_range entries that follow. Since Linux 6.19.
 */
export const vfio_device_feature_dma_buf: StructDef<
  { region_index: U32; open_flags: U32; flags: U32; nr_ranges: U32 }
> = new StructDef("vfio_device_feature_dma_buf", 16, {
  region_index: ["u32", 0],
  open_flags: ["u32", 4],
  flags: ["u32", 8],
  nr_ranges: ["u32", 12],
});
/** struct vfio_device_feature: argsz, flags (feature index, GET/SET/PROBE); data follows. */
export const vfio_device_feature: StructDef<{ argsz: U32; flags: U32 }> = new StructDef(
  "vfio_device_feature",
  8,
  {
    argsz: ["u32", 0],
    flags: ["u32", 4],
  },
);

/**
 * vfio_device_bind_iommufd flag: token_uuid_ptr points at a 16-byte VF token (the UUID of
 * VFIO_DEVICE_FEATURE_PCI_VF_TOKEN), which a VF whose PF is on vfio-pci needs. Since Linux 6.17;
 * older kernels refuse the flag (EINVAL).
 */
export const VFIO_DEVICE_BIND_FLAG_TOKEN = 1 << 0;
/**
 * struct vfio_device_bind_iommufd: the iommufd to bind to, the devid returned, and (since Linux 6.17,
 * with VFIO_DEVICE_BIND_FLAG_TOKEN) a pointer to the VF token. Older kernels take the first 16 bytes.
 */
export const vfio_device_bind_iommufd: StructDef<
  { argsz: U32; flags: U32; iommufd: S32; out_devid: U32; token_uuid_ptr: U64 }
> = new StructDef("vfio_device_bind_iommufd", 24, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  iommufd: ["s32", 8],
  out_devid: ["u32", 12],
  token_uuid_ptr: ["u64", 16],
});
/** vfio_device_attach_iommufd_pt flag: attach a PASID of the device (the `pasid` field), not the whole device. Since Linux 6.15. */
export const VFIO_DEVICE_ATTACH_PASID = 1 << 0;
/**
 * struct vfio_device_attach_iommufd_pt: the IOAS or hwpt id to attach to (VFIO_DEVICE_ATTACH_IOMMUFD_PT),
 * and (since Linux 6.15, with VFIO_DEVICE_ATTACH_PASID) the PASID. Older kernels take the first 12 bytes.
 */
export const vfio_device_attach_iommufd_pt: StructDef<{ argsz: U32; flags: U32; pt_id: U32; pasid: U32 }> =
  new StructDef("vfio_device_attach_iommufd_pt", 16, {
    argsz: ["u32", 0],
    flags: ["u32", 4],
    pt_id: ["u32", 8],
    pasid: ["u32", 12],
  });
/** vfio_device_detach_iommufd_pt flag: detach a PASID of the device (the `pasid` field). Since Linux 6.15. */
export const VFIO_DEVICE_DETACH_PASID = 1 << 0;
/**
 * struct vfio_device_detach_iommufd_pt: argsz and flags (VFIO_DEVICE_DETACH_IOMMUFD_PT), and (since
 * Linux 6.15, with VFIO_DEVICE_DETACH_PASID) the PASID. Older kernels take the first 8 bytes.
 */
export const vfio_device_detach_iommufd_pt: StructDef<{ argsz: U32; flags: U32; pasid: U32 }> = new StructDef(
  "vfio_device_detach_iommufd_pt",
  12,
  {
    argsz: ["u32", 0],
    flags: ["u32", 4],
    pasid: ["u32", 8],
  },
);

/** vfio_iommu_type1_info flag: iova_pgsizes holds the supported IOMMU page sizes. */
export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
/** vfio_iommu_type1_info flag: the info has a capability chain at cap_offset. */
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;
/** struct vfio_iommu_type1_info: flags, supported page sizes and capability offset (VFIO_IOMMU_GET_INFO). */
export const vfio_iommu_type1_info: StructDef<
  { argsz: U32; flags: U32; iova_pgsizes: U64; cap_offset: U32; pad: U32 }
> = new StructDef("vfio_iommu_type1_info", 24, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  iova_pgsizes: ["u64", 8],
  cap_offset: ["u32", 16],
  pad: ["u32", 20],
});
/** IOMMU capability id: the valid IOVA ranges, excluding reserved regions. */
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
/** struct vfio_iova_range: one valid IOVA range, start and end inclusive. */
export const vfio_iova_range: StructDef<{ start: U64; end: U64 }> = new StructDef("vfio_iova_range", 16, {
  start: ["u64", 0],
  end: ["u64", 8],
});
/** struct vfio_iommu_type1_info_cap_iova_range: the IOVA range capability; nr_iovas ranges follow. */
export const vfio_iommu_type1_info_cap_iova_range: StructDef<{ nr_iovas: U32; reserved: U32 }> =
  new StructDef(
    "vfio_iommu_type1_info_cap_iova_range",
    16,
    { nr_iovas: ["u32", 8], reserved: ["u32", 12] },
  );
/** IOMMU capability id: dirty page tracking for migration. */
export const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
/** IOMMU capability id: how many more DMA mappings the container allows. */
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;
/** struct vfio_iommu_type1_info_dma_avail: the number of DMA mappings still available. */
export const vfio_iommu_type1_info_dma_avail: StructDef<{ avail: U32 }> = new StructDef(
  "vfio_iommu_type1_info_dma_avail",
  12,
  {
    avail: ["u32", 8],
  },
);

/** vfio_iommu_type1_dma_map flag: the device may read the mapping. */
export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
/** vfio_iommu_type1_dma_map flag: the device may write the mapping. */
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;
/** vfio_iommu_type1_dma_map flag: update the vaddr of an existing mapping (VFIO_UPDATE_VADDR). */
export const VFIO_DMA_MAP_FLAG_VADDR = 1 << 2;
/** struct vfio_iommu_type1_dma_map: flags, process vaddr, IOVA and size of a mapping (VFIO_IOMMU_MAP_DMA). */
export const vfio_iommu_type1_dma_map: StructDef<
  { argsz: U32; flags: U32; vaddr: U64; iova: U64; size: U64 }
> = new StructDef("vfio_iommu_type1_dma_map", 32, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  vaddr: ["u64", 8],
  iova: ["u64", 16],
  size: ["u64", 24],
});
/** vfio_iommu_type1_dma_unmap flag: return the dirty bitmap of the unmapped range. */
export const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0;
/** vfio_iommu_type1_dma_unmap flag: unmap everything; iova and size must be 0 (VFIO_UNMAP_ALL). */
export const VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1;
/** vfio_iommu_type1_dma_unmap flag: invalidate the vaddr of mappings, keeping them (VFIO_UPDATE_VADDR). */
export const VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2;
/** struct vfio_iommu_type1_dma_unmap: flags, IOVA and size to unmap; size returns the bytes unmapped. */
export const vfio_iommu_type1_dma_unmap: StructDef<{ argsz: U32; flags: U32; iova: U64; size: U64 }> =
  new StructDef("vfio_iommu_type1_dma_unmap", 24, {
    argsz: ["u32", 0],
    flags: ["u32", 4],
    iova: ["u64", 8],
    size: ["u64", 16],
  });
