/**
 * Walks a VFIO capability chain (`struct vfio_info_cap_header` linked by `next` offsets) inside an
 * info buffer, as returned by VFIO_DEVICE_GET_REGION_INFO and VFIO_IOMMU_GET_INFO.
 *
 * The walk trusts nothing: every offset is bounds-checked against the buffer, offsets must move
 * forward, so a cyclic chain cannot loop.
 *
 * @module
 */
import { vfio_info_cap_header } from "./uapi/vfio.ts";

/** One capability found in a chain. */
export interface CapHeader {
  /** The capability ID (e.g. VFIO_REGION_INFO_CAP_SPARSE_MMAP). */
  id: number;
  /** Its version. */
  version: number;
  /** Its byte offset in the info buffer. */
  offset: number;
  /** How many bytes it may span: up to the next capability or the end of the buffer. */
  length: number;
}

/**
 * Lists the capabilities of an info buffer.
 *
 * @param info The whole info buffer (the struct and its trailing capability data).
 * @param first The struct's `cap_offset`; 0 means no capabilities.
 * @param headerSize The size of the fixed struct, before which no capability may start.
 * @returns The capabilities in chain order.
 * @throws {RangeError} If an offset points outside the buffer, into the fixed struct, or backwards.
 */
export function capabilityChain(info: Uint8Array, first: number, headerSize: number): CapHeader[] {
  const caps: CapHeader[] = [];
  let offset = first;
  let floor = headerSize;
  while (offset !== 0) {
    if (offset < floor || offset % 4 !== 0 || offset + vfio_info_cap_header.size > info.length) {
      throw new RangeError(
        `Cannot parse capability chain: offset ${offset} is outside ${floor}..${info.length} ` +
          "(a corrupt or cyclic chain)",
      );
    }
    const h = vfio_info_cap_header.at(info, offset);
    const next = h.get("next");
    caps.push({
      id: h.get("id"),
      version: h.get("version"),
      offset,
      length: (next > offset && next <= info.length ? next : info.length) - offset,
    });
    floor = offset + vfio_info_cap_header.size;
    offset = next;
  }
  return caps;
}
