/**
 * include/uapi/linux/iommufd.h: the iommufd ioctls and structs the library uses, under the
 * kernel's names. Taken from Linux 6.12; tests/conformance checks each one against the headers.
 *
 * iommufd structs lead with `size` where VFIO's lead with `argsz`; {@link StructDef.alloc} fills
 * either.
 *
 * @module
 */
import { _IO } from "./ioctl.ts";
import { StructDef } from "./struct.ts";

export const IOMMUFD_TYPE = ";";
export const IOMMUFD_CMD_DESTROY = 0x80;
export const IOMMUFD_CMD_IOAS_ALLOC = 0x81;
export const IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82;
export const IOMMUFD_CMD_IOAS_COPY = 0x83;
export const IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84;
export const IOMMUFD_CMD_IOAS_MAP = 0x85;
export const IOMMUFD_CMD_IOAS_UNMAP = 0x86;
export const IOMMUFD_CMD_OPTION = 0x87;

export const IOMMU_DESTROY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY);
export const IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC);
export const IOMMU_IOAS_ALLOW_IOVAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS);
export const IOMMU_IOAS_IOVA_RANGES = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES);
export const IOMMU_IOAS_MAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP);
export const IOMMU_IOAS_UNMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP);

export const iommu_destroy = new StructDef("iommu_destroy", 8, {
  size: ["u32", 0],
  id: ["u32", 4],
});
export const iommu_ioas_alloc = new StructDef("iommu_ioas_alloc", 12, {
  size: ["u32", 0],
  flags: ["u32", 4],
  out_ioas_id: ["u32", 8],
});
export const iommu_iova_range = new StructDef("iommu_iova_range", 16, {
  start: ["u64", 0],
  last: ["u64", 8],
});
export const iommu_ioas_iova_ranges = new StructDef("iommu_ioas_iova_ranges", 32, {
  size: ["u32", 0],
  ioas_id: ["u32", 4],
  num_iovas: ["u32", 8],
  __reserved: ["u32", 12],
  allowed_iovas: ["u64", 16],
  out_iova_alignment: ["u64", 24],
});
export const iommu_ioas_allow_iovas = new StructDef("iommu_ioas_allow_iovas", 24, {
  size: ["u32", 0],
  ioas_id: ["u32", 4],
  num_iovas: ["u32", 8],
  __reserved: ["u32", 12],
  allowed_iovas: ["u64", 16],
});
export const IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0;
export const IOMMU_IOAS_MAP_WRITEABLE = 1 << 1;
export const IOMMU_IOAS_MAP_READABLE = 1 << 2;
export const iommu_ioas_map = new StructDef("iommu_ioas_map", 40, {
  size: ["u32", 0],
  flags: ["u32", 4],
  ioas_id: ["u32", 8],
  __reserved: ["u32", 12],
  user_va: ["u64", 16],
  length: ["u64", 24],
  iova: ["u64", 32],
});
export const iommu_ioas_unmap = new StructDef("iommu_ioas_unmap", 24, {
  size: ["u32", 0],
  ioas_id: ["u32", 4],
  iova: ["u64", 8],
  length: ["u64", 16],
});
