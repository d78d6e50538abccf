/**
 * Typed views over C structs laid out exactly as the kernel uapi declares them.
 *
 * Every layout in lib/uapi is written with explicit offsets copied from the kernel headers, and
 * tests/conformance compiles a C program against those headers to check each size, offset and
 * ioctl number. Nothing else in the library computes a layout.
 *
 * @module
 */

/** The C scalar types that appear in the structs lib/uapi declares (uapi and libc). */
export type FieldType = "u8" | "u16" | "s16" | "u32" | "s32" | "u64";

/** One field: its C type and its byte offset from the start of the struct. */
export type Field = readonly [type: FieldType, offset: number];

/** A `__u8` field's layout entry, for typing a {@link StructDef}'s fields. */
export type U8 = readonly ["u8", number];
/** A `__u16` field's layout entry, for typing a {@link StructDef}'s fields. */
export type U16 = readonly ["u16", number];
/** A `short` (`__s16`) field's layout entry, for typing a {@link StructDef}'s fields. */
export type S16 = readonly ["s16", number];
/** A `__u32` field's layout entry, for typing a {@link StructDef}'s fields. */
export type U32 = readonly ["u32", number];
/** A `__s32` (`int`) field's layout entry, for typing a {@link StructDef}'s fields. */
export type S32 = readonly ["s32", number];
/** A `__u64` field's layout entry, for typing a {@link StructDef}'s fields; it reads as bigint. */
export type U64 = readonly ["u64", number];

/** The fields of a struct, by their kernel names. */
export type Fields = Record<string, Field>;

/** The JavaScript type a field reads as: 64-bit fields are bigint, the rest number. */
export type FieldValue<F extends Field> = F[0] extends "u64" ? bigint : number;

const WIDTH: Record<FieldType, number> = { u8: 1, u16: 2, s16: 2, u32: 4, s32: 4, u64: 8 };

/** The layout of one uapi struct: its kernel name, sizeof and fields. */
export class StructDef<F extends Fields = Fields> {
  /**
   * Declares a layout. Offsets must fit inside `size`; this is checked here and, against the real
   * headers, by the conformance test.
   *
   * @param name The struct's name in the kernel header, e.g. `vfio_region_info`.
   * @param size `sizeof(struct name)` in bytes.
   * @param fields Each field's type and offset, under the kernel's names.
   * @throws {RangeError} If a field does not fit inside `size`.
   */
  constructor(readonly name: string, readonly size: number, readonly fields: F) {
    for (const [key, [type, offset]] of Object.entries(fields)) {
      if (offset < 0 || offset + WIDTH[type] > size) {
        throw new RangeError(`Cannot declare ${name}.${key}: offset ${offset} is outside ${size} bytes`);
      }
      if (offset === 0 && type === "u32" && (key === "argsz" || key === "size")) this.#lengthField = key;
    }
  }

  // `argsz` or `size` when the struct leads with its own length, found once here since alloc() runs
  // on every ioctl.
  readonly #lengthField: string | undefined;

  /**
   * Allocates a zeroed buffer for the struct plus `extra` trailing bytes (for flexible arrays and
   * capability chains). The length field that leads VFIO structs (`argsz`) and iommufd structs
   * (`size`) is set to the whole length, as both interfaces require.
   *
   * @param extra Bytes to append after the fixed part.
   * @returns A view over the new buffer.
   */
  alloc(extra = 0): Struct<F> {
    const s = new Struct(this, new Uint8Array(this.size + extra));
    if (this.#lengthField !== undefined) s.view.setUint32(0, this.size + extra, true);
    return s;
  }

  /**
   * Views existing bytes as this struct, e.g. a capability inside an info buffer.
   *
   * @param bytes The buffer holding the struct.
   * @param offset Where the struct starts in `bytes`.
   * @returns A view sharing memory with `bytes`.
   * @throws {RangeError} If the struct would extend past the end of `bytes`.
   */
  at(bytes: Uint8Array, offset = 0): Struct<F> {
    if (!Number.isInteger(offset) || offset < 0 || offset + this.size > bytes.length) {
      throw new RangeError(
        `Cannot read ${this.name} at offset ${offset}: it needs ${this.size} bytes and ${bytes.length} are available`,
      );
    }
    return new Struct(this, bytes.subarray(offset));
  }
}

/** A struct in memory: a byte buffer read and written through its layout. */
export class Struct<F extends Fields = Fields> {
  /** DataView over `bytes`; structs live in ordinary memory, never in device registers. */
  readonly view: DataView;

  /**
   * Views `bytes` through the layout `def`; reads and writes go straight to that memory.
   *
   * @param def The layout.
   * @param bytes The memory; it may be longer than the struct (trailing data).
   */
  constructor(readonly def: StructDef<F>, readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /**
   * Reads a field.
   *
   * @param key The field's kernel name.
   * @returns The value; bigint for u64 fields.
   */
  get<K extends keyof F & string>(key: K): FieldValue<F[K]> {
    const [type, offset] = this.def.fields[key]!;
    const v = this.view;
    switch (type) {
      case "u8":
        return v.getUint8(offset) as FieldValue<F[K]>;
      case "u16":
        return v.getUint16(offset, true) as FieldValue<F[K]>;
      case "s16":
        return v.getInt16(offset, true) as FieldValue<F[K]>;
      case "u32":
        return v.getUint32(offset, true) as FieldValue<F[K]>;
      case "s32":
        return v.getInt32(offset, true) as FieldValue<F[K]>;
      case "u64":
        return v.getBigUint64(offset, true) as FieldValue<F[K]>;
    }
  }

  /**
   * Writes a field.
   *
   * @param key The field's kernel name.
   * @param value The value; bigint for u64 fields.
   * @returns This struct, for chaining.
   */
  set<K extends keyof F & string>(key: K, value: FieldValue<F[K]>): this {
    const [type, offset] = this.def.fields[key]!;
    const v = this.view;
    switch (type) {
      case "u8":
        v.setUint8(offset, value as number);
        break;
      case "u16":
        v.setUint16(offset, value as number, true);
        break;
      case "s16":
        v.setInt16(offset, value as number, true);
        break;
      case "u32":
        v.setUint32(offset, value as number, true);
        break;
      case "s32":
        v.setInt32(offset, value as number, true);
        break;
      case "u64":
        v.setBigUint64(offset, value as bigint, true);
        break;
    }
    return this;
  }

  /**
   * Writes a `__u64` field from a number, as two 32-bit halves: no bigint is made, which matters on
   * paths that run per operation (a DMA map's size).
   *
   * @param key The field's kernel name; it must be a u64 field.
   * @param value A non-negative safe integer.
   * @returns This struct, for chaining.
   * @throws {RangeError} If the value is not a non-negative safe integer.
   * @throws {TypeError} If the field is not a u64.
   */
  setU64(key: keyof F & string, value: number): this {
    const [type, offset] = this.def.fields[key]!;
    if (type !== "u64") throw new TypeError(`Cannot write ${key} as a u64: it is a ${type}`);
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(`Cannot write ${key}: ${value} is not a non-negative safe integer`);
    }
    const low = value >>> 0; // ToUint32 is exact modulo 2^32 for any safe integer
    this.view.setUint32(offset, low, true);
    this.view.setUint32(offset + 4, (value - low) / 0x1_0000_0000, true);
    return this;
  }
}
