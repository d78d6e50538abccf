/**
 * include/uapi/linux/vfio.h: every VFIO constant, ioctl number and struct layout the library uses,
 * under the kernel's names. Taken from Linux 6.12; tests/conformance checks each one against the
 * headers.
 *
 * @module
 */
import { _IO } from "./ioctl.ts";
import { StructDef } from "./struct.ts";

export const VFIO_API_VERSION = 0;

// Extensions and IOMMU types (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU).
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_SPAPR_TCE_IOMMU = 2;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_DMA_CC_IOMMU = 4;
export const VFIO_EEH = 5;
export const VFIO_TYPE1_NESTING_IOMMU = 6;
export const VFIO_SPAPR_TCE_v2_IOMMU = 7;
export const VFIO_NOIOMMU_IOMMU = 8;
export const VFIO_UNMAP_ALL = 9;
export const VFIO_UPDATE_VADDR = 10;

export const VFIO_TYPE = ";";
export const VFIO_BASE = 100;

export const VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0);
export const VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1);
export const VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2);
export const VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3);
export const VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4);
export const VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5);
export const VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6);
export const VFIO_DEVICE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 7);
export const VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_TYPE, VFIO_BASE + 8);
export const VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9);
export const VFIO_DEVICE_SET_IRQS = _IO(VFIO_TYPE, VFIO_BASE + 10);
export const VFIO_DEVICE_RESET = _IO(VFIO_TYPE, VFIO_BASE + 11);
export const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12);
export const VFIO_DEVICE_PCI_HOT_RESET = _IO(VFIO_TYPE, VFIO_BASE + 13);
export const VFIO_DEVICE_FEATURE = _IO(VFIO_TYPE, VFIO_BASE + 17);
export const VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_TYPE, VFIO_BASE + 18);
export const VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19);
export const VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 20);
export const VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12);
export const VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13);
export const VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14);

export const vfio_info_cap_header = new StructDef("vfio_info_cap_header", 8, {
  id: ["u16", 0],
  version: ["u16", 2],
  next: ["u32", 4],
});

export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;
export const vfio_group_status = new StructDef("vfio_group_status", 8, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
});

export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2;
export const VFIO_DEVICE_FLAGS_AMBA = 1 << 3;
export const VFIO_DEVICE_FLAGS_CCW = 1 << 4;
export const VFIO_DEVICE_FLAGS_AP = 1 << 5;
export const VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6;
export const VFIO_DEVICE_FLAGS_CAPS = 1 << 7;
export const VFIO_DEVICE_FLAGS_CDX = 1 << 8;
export const vfio_device_info = new StructDef("vfio_device_info", 24, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  num_regions: ["u32", 8],
  num_irqs: ["u32", 12],
  cap_offset: ["u32", 16],
  pad: ["u32", 20],
});

export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;
export const vfio_region_info = new StructDef("vfio_region_info", 32, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  index: ["u32", 8],
  cap_offset: ["u32", 12],
  size: ["u64", 16],
  offset: ["u64", 24],
});

export const VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1;
export const vfio_region_sparse_mmap_area = new StructDef("vfio_region_sparse_mmap_area", 16, {
  offset: ["u64", 0],
  size: ["u64", 8],
});
export const vfio_region_info_cap_sparse_mmap = new StructDef("vfio_region_info_cap_sparse_mmap", 16, {
  nr_areas: ["u32", 8],
  reserved: ["u32", 12],
});

export const VFIO_REGION_INFO_CAP_TYPE = 2;
export const vfio_region_info_cap_type = new StructDef("vfio_region_info_cap_type", 16, {
  type: ["u32", 8],
  subtype: ["u32", 12],
});
export const VFIO_REGION_TYPE_PCI_VENDOR_TYPE = 1 << 31 >>> 0;
export const VFIO_REGION_TYPE_GFX = 1;
export const VFIO_REGION_TYPE_CCW = 2;
export const VFIO_REGION_TYPE_MIGRATION_DEPRECATED = 3;
export const VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3;

// PCI region and IRQ indexes (the enums in vfio.h).
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_BAR5_REGION_INDEX = 5;
export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_PCI_VGA_REGION_INDEX = 8;
export const VFIO_PCI_NUM_REGIONS = 9;
export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
export const VFIO_PCI_REQ_IRQ_INDEX = 4;
export const VFIO_PCI_NUM_IRQS = 5;

export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;
export const vfio_irq_info = new StructDef("vfio_irq_info", 16, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  index: ["u32", 8],
  count: ["u32", 12],
});

export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;
export const vfio_irq_set = new StructDef("vfio_irq_set", 20, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  index: ["u32", 8],
  start: ["u32", 12],
  count: ["u32", 16],
});

export const VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0;
export const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1;
export const VFIO_PCI_DEVID_OWNED = 0;
export const VFIO_PCI_DEVID_NOT_OWNED = -1;
export const vfio_pci_dependent_device = new StructDef("vfio_pci_dependent_device", 8, {
  group_id: ["u32", 0],
  devid: ["u32", 0],
  segment: ["u16", 4],
  bus: ["u8", 6],
  devfn: ["u8", 7],
});
export const vfio_pci_hot_reset_info = new StructDef("vfio_pci_hot_reset_info", 12, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  count: ["u32", 8],
});
export const vfio_pci_hot_reset = new StructDef("vfio_pci_hot_reset", 12, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  count: ["u32", 8],
});

export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;
export const VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0;
export const VFIO_DEVICE_FEATURE_MIGRATION = 1;
export const VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2;
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3;
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4;
export const VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7;
export const VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8;
export const VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9;
export const VFIO_DEVICE_FEATURE_BUS_MASTER = 10;
export const vfio_device_feature = new StructDef("vfio_device_feature", 8, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
});

export const vfio_device_bind_iommufd = new StructDef("vfio_device_bind_iommufd", 16, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  iommufd: ["s32", 8],
  out_devid: ["u32", 12],
});
export const vfio_device_attach_iommufd_pt = new StructDef("vfio_device_attach_iommufd_pt", 12, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  pt_id: ["u32", 8],
});
export const vfio_device_detach_iommufd_pt = new StructDef("vfio_device_detach_iommufd_pt", 8, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
});

export const VFIO_IOMMU_INFO_PGSIZES = 1 << 0;
export const VFIO_IOMMU_INFO_CAPS = 1 << 1;
export const vfio_iommu_type1_info = new StructDef("vfio_iommu_type1_info", 24, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  iova_pgsizes: ["u64", 8],
  cap_offset: ["u32", 16],
  pad: ["u32", 20],
});
export const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1;
export const vfio_iova_range = new StructDef("vfio_iova_range", 16, {
  start: ["u64", 0],
  end: ["u64", 8],
});
export const vfio_iommu_type1_info_cap_iova_range = new StructDef(
  "vfio_iommu_type1_info_cap_iova_range",
  16,
  { nr_iovas: ["u32", 8], reserved: ["u32", 12] },
);
export const VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION = 2;
export const VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3;
export const vfio_iommu_type1_info_dma_avail = new StructDef("vfio_iommu_type1_info_dma_avail", 12, {
  avail: ["u32", 8],
});

export const VFIO_DMA_MAP_FLAG_READ = 1 << 0;
export const VFIO_DMA_MAP_FLAG_WRITE = 1 << 1;
export const VFIO_DMA_MAP_FLAG_VADDR = 1 << 2;
export const vfio_iommu_type1_dma_map = new StructDef("vfio_iommu_type1_dma_map", 32, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  vaddr: ["u64", 8],
  iova: ["u64", 16],
  size: ["u64", 24],
});
export const VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0;
export const VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1;
export const VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2;
export const vfio_iommu_type1_dma_unmap = new StructDef("vfio_iommu_type1_dma_unmap", 24, {
  argsz: ["u32", 0],
  flags: ["u32", 4],
  iova: ["u64", 8],
  size: ["u64", 16],
});
