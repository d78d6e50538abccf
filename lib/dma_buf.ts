/**
 * DMA-BUFs of a device's BARs (VFIO_DEVICE_FEATURE_DMA_BUF, Linux 6.19+): file descriptors that
 * stand for device memory, which another device's IOMMU mapping (IOMMU_IOAS_MAP_FILE), an RDMA
 * memory region or a GPU driver can import for peer-to-peer DMA.
 *
 * @module
 */
import { UnsupportedError, VfioError } from "./errors.ts";
import type { OwnedFd } from "./fd.ts";
import { needsKernel } from "./kernel_version.ts";
import type { Sys } from "./sys.ts";
import { O_CLOEXEC, O_RDWR } from "./uapi/libc.ts";
import {
  VFIO_DEVICE_FEATURE,
  vfio_device_feature,
  VFIO_DEVICE_FEATURE_DMA_BUF,
  vfio_device_feature_dma_buf,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_PCI_BAR5_REGION_INDEX,
  vfio_region_dma_range,
} from "./uapi/vfio.ts";
import { OwnedFd as Fd } from "./fd.ts";

/** A page-aligned slice of a region. */
export interface DmaBufRange {
  /** Where the slice starts in the region, in bytes; a multiple of the page size. */
  offset: number;
  /** Its length in bytes; a positive multiple of the page size. */
  length: number;
}

/** Options for {@link VfioDevice.exportDmaBuf}. */
export interface DmaBufOptions {
  /**
   * The slices of the region the DMA-BUF holds, in order (default: the whole region). The DMA-BUF's
   * size is the sum of their lengths. IOMMU_IOAS_MAP_FILE takes only a DMA-BUF of one range.
   */
  ranges?: readonly DmaBufRange[];
}

// vfio_pci_core_feature_dma_buf copies nr_ranges entries in one allocation; far below any real need.
const MAX_RANGES = 1024;

/**
 * A DMA-BUF file descriptor exported from a device's BAR. The device closes it when it closes; the
 * kernel revokes it (importers lose access) when the device is closed or reset, even while the fd is
 * still open.
 *
 * Made by {@link VfioDevice.exportDmaBuf}.
 *
 * @example
 * ```ts
 * import { open } from "vfio-ts";
 *
 * using edu = await open("0000:00:04.0");
 * using buf = edu.device.exportDmaBuf(0); // all of BAR0
 * console.log(buf.fd, buf.size);
 * ```
 */
export class DmaBufFd implements Disposable {
  readonly #fd: OwnedFd;

  /**
   * Wraps a DMA-BUF fd the kernel returned.
   *
   * @param fd The fd, now owned by this object.
   * @param regionIndex The region it was exported from.
   * @param ranges The slices of the region it holds.
   */
  constructor(
    fd: OwnedFd,
    /** The region (BAR) index it was exported from. */
    readonly regionIndex: number,
    /** The slices of the region it holds. */
    readonly ranges: readonly DmaBufRange[],
  ) {
    this.#fd = fd;
    this.size = ranges.reduce((n, r) => n + r.length, 0);
  }

  /** Its size in bytes: the sum of the ranges' lengths. */
  readonly size: number;

  /** The DMA-BUF fd. @throws {TypeError} If closed. */
  get fd(): number {
    return this.#fd.fd;
  }

  /** Whether {@link close} has run. */
  get closed(): boolean {
    return this.#fd.closed;
  }

  /**
   * Closes the fd. Importers that took a reference (an IOMMU mapping) keep it until they drop it.
   * Idempotent.
   *
   * @throws {VfioError} If close(2) fails (the fd is released regardless).
   */
  close(): void {
    this.#fd.close();
  }

  /** Closes the fd, as {@link close}. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Checks the ranges of a DMA-BUF export against a region, before any syscall.
 *
 * @param name The region's name, for messages.
 * @param index The region index.
 * @param size The region's size.
 * @param pageSize The CPU page size.
 * @param ranges The requested ranges, or undefined for the whole region.
 * @returns The ranges to export.
 * @throws {RangeError} If the region is not a BAR, is not implemented, or a range is invalid.
 * @throws {TypeError} If `ranges` is not an array of ranges.
 */
export function checkDmaBufRanges(
  name: string,
  index: number,
  size: number,
  pageSize: number,
  ranges: readonly DmaBufRange[] | undefined,
): DmaBufRange[] {
  const action = `export ${name} as a DMA-BUF`;
  if (!Number.isInteger(index) || index < 0 || index > VFIO_PCI_BAR5_REGION_INDEX) {
    throw new RangeError(`Cannot ${action}: only BARs (regions 0-5) can be exported, not region ${index}`);
  }
  if (size === 0) throw new RangeError(`Cannot ${action}: the BAR is not implemented`);
  const list = ranges ?? [{ offset: 0, length: size }];
  if (!Array.isArray(list)) throw new TypeError(`Cannot ${action}: ranges must be an array`);
  if (list.length === 0 || list.length > MAX_RANGES) {
    throw new RangeError(`Cannot ${action}: give 1 to ${MAX_RANGES} ranges, not ${list.length}`);
  }
  return list.map((r, i) => {
    const { offset, length } = r ?? {};
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 ||
      offset % pageSize !== 0 || length % pageSize !== 0 || offset + length > size
    ) {
      throw new RangeError(
        `Cannot ${action}: range ${i} (offset ${offset}, length ${length}) must be page-aligned ` +
          `(0x${pageSize.toString(16)}), non-empty and inside the ${size}-byte BAR`,
      );
    }
    return { offset, length };
  });
}

/**
 * Exports ranges of a BAR as a DMA-BUF (VFIO_DEVICE_FEATURE GET | DMA_BUF). Internal: the device
 * calls it after {@link checkDmaBufRanges}.
 *
 * @param sys The syscall backend.
 * @param device The device fd.
 * @param name The device's name.
 * @param index The region (BAR) index.
 * @param ranges Checked ranges.
 * @returns The DMA-BUF.
 * @throws {UnsupportedError} If the kernel has no VFIO DMA-BUF export (ENOTTY, EOPNOTSUPP, EINVAL).
 * @throws {VfioError} If the kernel refuses otherwise.
 */
export function exportDmaBuf(
  sys: Sys,
  device: OwnedFd,
  name: string,
  index: number,
  ranges: DmaBufRange[],
): DmaBufFd {
  const head = vfio_device_feature.size, body = vfio_device_feature_dma_buf.size;
  const s = vfio_device_feature.alloc(body + ranges.length * vfio_region_dma_range.size);
  s.set("flags", VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF);
  vfio_device_feature_dma_buf.at(s.bytes, head).set("region_index", index)
    .set("open_flags", O_RDWR | O_CLOEXEC).set("flags", 0).set("nr_ranges", ranges.length);
  ranges.forEach((r, i) =>
    vfio_region_dma_range.at(s.bytes, head + body + i * vfio_region_dma_range.size)
      .set("offset", BigInt(r.offset)).set("length", BigInt(r.length))
  );
  const action = `export region ${index} of ${name} as a DMA-BUF`;
  let fd: number;
  try {
    fd = device.ioctl(
      VFIO_DEVICE_FEATURE,
      s.bytes,
      "VFIO_DEVICE_FEATURE",
      action,
      (code) =>
        code === "ENODEV"
          ? "vfio-pci has not claimed the BAR's resources (no memory assigned to it)"
          : code === "EMFILE" || code === "ENFILE"
          ? "too many open files: close some, or raise the limit (ulimit -n)"
          : undefined,
    );
  } catch (e) {
    if (e instanceof VfioError && ["ENOTTY", "EOPNOTSUPP", "EINVAL"].includes(e.code)) {
      // ENOTTY: no feature 11 (before 6.19, or CONFIG_VFIO_PCI_DMABUF off); EOPNOTSUPP: a variant
      // driver that exports nothing; EINVAL (the ranges were checked): no P2P provider for the BAR.
      throw new UnsupportedError({
        op: "VFIO_DEVICE_FEATURE",
        errno: e.errno,
        path: device.path,
        action,
        hint: needsKernel(
          sys,
          "VFIO_DEVICE_FEATURE_DMA_BUF",
          "6.19",
          "built with CONFIG_VFIO_PCI_DMABUF (and PCI_P2PDMA), and a vfio-pci driver that exports its BARs",
        ),
      });
    }
    throw e;
  }
  return new DmaBufFd(new Fd(sys, fd, `DMA-BUF of ${name} region ${index}`), index, ranges);
}
