/**
 * include/uapi/linux/iommufd.h: the iommufd ioctls and structs the library uses, under the
 * kernel's names. Taken from Linux 6.12 and, for what is newer (each says "since Linux X.Y"), from
 * Linux 7.3; tests/conformance checks each one against the headers that define it.
 *
 * iommufd structs lead with `size` where VFIO's lead with `argsz`; {@link StructDef.alloc} fills
 * either.
 *
 * @module
 */
import { _IO } from "./ioctl.ts";
import { type S32, StructDef, type U32, type U64 } from "./struct.ts";

/** The ioctl type character of every iommufd request, `';'` (shared with VFIO). */
export const IOMMUFD_TYPE = ";";
/** iommufd command number of IOMMU_DESTROY. */
export const IOMMUFD_CMD_DESTROY = 0x80;
/** iommufd command number of IOMMU_IOAS_ALLOC. */
export const IOMMUFD_CMD_IOAS_ALLOC = 0x81;
/** iommufd command number of IOMMU_IOAS_ALLOW_IOVAS. */
export const IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82;
/** iommufd command number of IOMMU_IOAS_COPY (copy mappings between IOASes). */
export const IOMMUFD_CMD_IOAS_COPY = 0x83;
/** iommufd command number of IOMMU_IOAS_IOVA_RANGES. */
export const IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84;
/** iommufd command number of IOMMU_IOAS_MAP. */
export const IOMMUFD_CMD_IOAS_MAP = 0x85;
/** iommufd command number of IOMMU_IOAS_UNMAP. */
export const IOMMUFD_CMD_IOAS_UNMAP = 0x86;
/** iommufd command number of IOMMU_OPTION (get or set iommufd or IOAS options). */
export const IOMMUFD_CMD_OPTION = 0x87;
/** iommufd command number of IOMMU_IOAS_MAP_FILE. Since Linux 6.13. */
export const IOMMUFD_CMD_IOAS_MAP_FILE = 0x8f;
/** iommufd command number of IOMMU_IOAS_CHANGE_PROCESS. Since Linux 6.13. */
export const IOMMUFD_CMD_IOAS_CHANGE_PROCESS = 0x92;
/** iommufd command number of IOMMU_IOAS_NOIOMMU_GET_PA. Since Linux 7.3. */
export const IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA = 0x95;

/** IOMMU_DESTROY: destroys any object held within the iommufd, by ID (struct iommu_destroy). */
export const IOMMU_DESTROY: number = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY);
/** IOMMU_IOAS_ALLOC: allocates an IO address space (IOAS) and returns its ID (struct iommu_ioas_alloc). */
export const IOMMU_IOAS_ALLOC: number = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC);
/** IOMMU_IOAS_ALLOW_IOVAS: limits the IOVAs the kernel may allocate from (struct iommu_ioas_allow_iovas). */
export const IOMMU_IOAS_ALLOW_IOVAS: number = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS);
/** IOMMU_IOAS_IOVA_RANGES: reads the IOVA ranges available for mapping (struct iommu_ioas_iova_ranges). */
export const IOMMU_IOAS_IOVA_RANGES: number = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES);
/** IOMMU_IOAS_MAP: maps a range of user memory at an IOVA in an IOAS (struct iommu_ioas_map). */
export const IOMMU_IOAS_MAP: number = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP);
/** IOMMU_IOAS_UNMAP: unmaps an IOVA range covering whole earlier maps (struct iommu_ioas_unmap). */
export const IOMMU_IOAS_UNMAP: number = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP);
/**
 * IOMMU_IOAS_MAP_FILE: maps a range of a memfd (or, from Linux 6.19 on, of a single-range VFIO PCI
 * DMA-BUF) at an IOVA in an IOAS (struct iommu_ioas_map_file). Since Linux 6.13.
 */
export const IOMMU_IOAS_MAP_FILE: number = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE);
/**
 * IOMMU_IOAS_CHANGE_PROCESS: moves the pinned-memory accounting of every IOAS in the iommufd to the
 * calling process; only IOMMU_IOAS_MAP_FILE mappings may exist (struct iommu_ioas_change_process).
 * Since Linux 6.13.
 */
export const IOMMU_IOAS_CHANGE_PROCESS: number = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS);
/**
 * IOMMU_IOAS_NOIOMMU_GET_PA: the physical address behind a mapped IOVA of an IOAS whose devices have
 * no IOMMU, and how many bytes from it are physically contiguous (struct iommu_ioas_noiommu_get_pa).
 * Needs CAP_SYS_RAWIO. Since Linux 7.3, with CONFIG_IOMMUFD_NOIOMMU.
 */
export const IOMMU_IOAS_NOIOMMU_GET_PA: number = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_NOIOMMU_GET_PA);

/** struct iommu_destroy: size and the ID of the object to destroy (IOMMU_DESTROY). */
export const iommu_destroy: StructDef<{ size: U32; id: U32 }> = new StructDef("iommu_destroy", 8, {
  size: ["u32", 0],
  id: ["u32", 4],
});
/** struct iommu_ioas_alloc: size, flags (must be 0) and the new IOAS ID (IOMMU_IOAS_ALLOC). */
export const iommu_ioas_alloc: StructDef<{ size: U32; flags: U32; out_ioas_id: U32 }> = new StructDef(
  "iommu_ioas_alloc",
  12,
  {
    size: ["u32", 0],
    flags: ["u32", 4],
    out_ioas_id: ["u32", 8],
  },
);
/** struct iommu_iova_range: an interval in IOVA space, first IOVA and inclusive last. */
export const iommu_iova_range: StructDef<{ start: U64; last: U64 }> = new StructDef("iommu_iova_range", 16, {
  start: ["u64", 0],
  last: ["u64", 8],
});
/** struct iommu_ioas_iova_ranges: IOAS ID, range count and array pointer, and the required IOVA alignment. */
export const iommu_ioas_iova_ranges: StructDef<
  { size: U32; ioas_id: U32; num_iovas: U32; __reserved: U32; allowed_iovas: U64; out_iova_alignment: U64 }
> = new StructDef("iommu_ioas_iova_ranges", 32, {
  size: ["u32", 0],
  ioas_id: ["u32", 4],
  num_iovas: ["u32", 8],
  __reserved: ["u32", 12],
  allowed_iovas: ["u64", 16],
  out_iova_alignment: ["u64", 24],
});
/** struct iommu_ioas_allow_iovas: IOAS ID, and the count and pointer of the allowed ranges. */
export const iommu_ioas_allow_iovas: StructDef<
  { size: U32; ioas_id: U32; num_iovas: U32; __reserved: U32; allowed_iovas: U64 }
> = new StructDef("iommu_ioas_allow_iovas", 24, {
  size: ["u32", 0],
  ioas_id: ["u32", 4],
  num_iovas: ["u32", 8],
  __reserved: ["u32", 12],
  allowed_iovas: ["u64", 16],
});
/** iommu_ioas_map flag: map at the given iova; if clear, the kernel picks the IOVA and returns it. */
export const IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0;
/** iommu_ioas_map flag: DMA may write to the mapping. */
export const IOMMU_IOAS_MAP_WRITEABLE = 1 << 1;
/** iommu_ioas_map flag: DMA may read from the mapping. */
export const IOMMU_IOAS_MAP_READABLE = 1 << 2;
/** struct iommu_ioas_map: flags, IOAS ID, user VA, length and IOVA of a mapping (IOMMU_IOAS_MAP). */
export const iommu_ioas_map: StructDef<
  { size: U32; flags: U32; ioas_id: U32; __reserved: U32; user_va: U64; length: U64; iova: U64 }
> = new StructDef("iommu_ioas_map", 40, {
  size: ["u32", 0],
  flags: ["u32", 4],
  ioas_id: ["u32", 8],
  __reserved: ["u32", 12],
  user_va: ["u64", 16],
  length: ["u64", 24],
  iova: ["u64", 32],
});
/** struct iommu_ioas_unmap: IOAS ID, IOVA and length to unmap; length returns the bytes unmapped. */
export const iommu_ioas_unmap: StructDef<{ size: U32; ioas_id: U32; iova: U64; length: U64 }> = new StructDef(
  "iommu_ioas_unmap",
  24,
  {
    size: ["u32", 0],
    ioas_id: ["u32", 4],
    iova: ["u64", 8],
    length: ["u64", 16],
  },
);
/**
 * struct iommu_ioas_map_file: flags and IOAS ID as for iommu_ioas_map, the file (memfd or DMA-BUF)
 * fd, the byte offset in it, and the length and IOVA (IOMMU_IOAS_MAP_FILE). Since Linux 6.13.
 */
export const iommu_ioas_map_file: StructDef<
  { size: U32; flags: U32; ioas_id: U32; fd: S32; start: U64; length: U64; iova: U64 }
> = new StructDef("iommu_ioas_map_file", 40, {
  size: ["u32", 0],
  flags: ["u32", 4],
  ioas_id: ["u32", 8],
  fd: ["s32", 12],
  start: ["u64", 16],
  length: ["u64", 24],
  iova: ["u64", 32],
});
/** struct iommu_ioas_change_process: size and a reserved word (IOMMU_IOAS_CHANGE_PROCESS). Since Linux 6.13. */
export const iommu_ioas_change_process: StructDef<{ size: U32; __reserved: U32 }> = new StructDef(
  "iommu_ioas_change_process",
  8,
  {
    size: ["u32", 0],
    __reserved: ["u32", 4],
  },
);
/**
 * struct iommu_ioas_noiommu_get_pa: IOAS ID and IOVA to look up; `length` goes in as the most bytes
 * to report and comes back as the physically contiguous bytes from `out_phys`
 * (IOMMU_IOAS_NOIOMMU_GET_PA). Since Linux 7.3.
 */
export const iommu_ioas_noiommu_get_pa: StructDef<
  { size: U32; flags: U32; ioas_id: U32; __reserved: U32; iova: U64; length: U64; out_phys: U64 }
> = new StructDef("iommu_ioas_noiommu_get_pa", 40, {
  size: ["u32", 0],
  flags: ["u32", 4],
  ioas_id: ["u32", 8],
  __reserved: ["u32", 12],
  iova: ["u64", 16],
  length: ["u64", 24],
  out_phys: ["u64", 32],
});
