/**
 * Typed handles to device memory.
 * @module
 */
import { GpuShapeError } from "./errors.ts";
import { type HalfType, halfWords } from "./half.ts";

/**
 * Element types the kernels read and write. f32 and i32 are 4 bytes; bf16 and f16 are 2 bytes,
 * packed two per 32-bit word (gpu/half.ts): WGSL storage has no 16-bit type without the
 * shader-f16 extension, which lavapipe lacks, so kernels read the words and unpack them.
 */
export type DType = "f32" | "i32" | HalfType;

/** True for the packed 16-bit element types. */
export function isHalf(dtype: DType): dtype is HalfType {
  return dtype === "bf16" || dtype === "f16";
}

/** Bytes that `n` elements of `dtype` take on the device (16-bit ones rounded up to a word). */
export function dtypeBytes(dtype: DType, n: number): number {
  return isHalf(dtype) ? halfWords(n) * 4 : n * 4;
}

/** The device allocation behind one or more tensors (views share it). */
export interface Allocation {
  readonly buffer: GPUBuffer;
  /** Stable number of the GPUBuffer, used in bind-group cache keys. */
  readonly bufferId: number;
  /** Bytes of the buffer (at least the tensor's bytes; pools round sizes up). */
  readonly capacity: number;
  /** Token of the engine that owns the buffer, to catch tensors of another engine. */
  readonly owner: object;
  /** False once released to the pool or destroyed. */
  alive: boolean;
}

/** Number of elements of a shape; throws on a non-positive or non-integer dimension. */
export function numel(shape: readonly number[]): number {
  if (shape.length === 0) throw new GpuShapeError("a tensor needs at least one dimension");
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d <= 0) {
      throw new GpuShapeError(
        `invalid shape [${shape.join(", ")}]: dimensions must be integers >= 1`,
      );
    }
    n *= d;
  }
  return n;
}

/**
 * A row-major tensor in device memory: `size` elements of `dtype` starting `offset` bytes into
 * `buffer`. Views made by `view` and `rows` share the allocation.
 */
export class GpuTensor {
  /** Number of elements. */
  readonly size: number;

  constructor(
    readonly allocation: Allocation,
    readonly shape: readonly number[],
    readonly dtype: DType = "f32",
    readonly offset = 0,
    readonly label = "",
  ) {
    this.size = numel(shape);
    if (offset % 4 !== 0) throw new GpuShapeError(`tensor offset ${offset} is not a multiple of 4`);
    if (offset + dtypeBytes(dtype, this.size) > allocation.capacity) {
      throw new GpuShapeError(
        `tensor ${this.describe()} does not fit its buffer of ${allocation.capacity} bytes`,
      );
    }
    this.shape = Object.freeze([...shape]);
  }

  get buffer(): GPUBuffer {
    return this.allocation.buffer;
  }

  /** Bytes covered by the tensor. */
  get bytes(): number {
    return dtypeBytes(this.dtype, this.size);
  }

  /** The same elements under another shape with the same element count. */
  view(shape: readonly number[], label = this.label): GpuTensor {
    const n = numel(shape);
    if (n !== this.size) {
      throw new GpuShapeError(
        `cannot view ${this.describe()} as [${shape.join(", ")}]: ${n} != ${this.size} elements`,
      );
    }
    return new GpuTensor(this.allocation, shape, this.dtype, this.offset, label);
  }

  /**
   * Rows `[start, start + count)` along the first dimension. Binding a view whose byte offset is
   * not a multiple of the device's `minStorageBufferOffsetAlignment` fails with GpuShapeError.
   */
  rows(start: number, count: number): GpuTensor {
    const rowSize = this.size / this.shape[0];
    if (
      !Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 1 ||
      start + count > this.shape[0]
    ) {
      throw new GpuShapeError(`rows(${start}, ${count}) is outside ${this.describe()}`);
    }
    // A packed view must start on a word: its first element is the low half of a word.
    if (isHalf(this.dtype) && (start * rowSize) % 2 !== 0) {
      throw new GpuShapeError(
        `rows(${start}, ${count}) of ${this.describe()} starts inside a 32-bit word of two ` +
          `${this.dtype} elements`,
      );
    }
    return new GpuTensor(
      this.allocation,
      [count, ...this.shape.slice(1)],
      this.dtype,
      this.offset + (isHalf(this.dtype) ? start * rowSize * 2 : start * rowSize * 4),
      this.label,
    );
  }

  /** e.g. `q f32[64, 128]`. */
  describe(): string {
    return `${this.label || "tensor"} ${this.dtype}[${this.shape.join(", ")}]`;
  }
}

/**
 * A matrix [rows, cols] held as consecutive row blocks, each a tensor of at most the device's
 * binding limit (`Gpu.uploadRows`, `Gpu.zerosRows`). Part i holds rows
 * `starts[i] .. starts[i] + counts[i]`. Only the kernels named `…Parts` accept one; every other
 * kernel takes a GpuTensor, so a split matrix cannot reach them.
 */
export interface RowParts {
  readonly rows: number;
  readonly cols: number;
  readonly label: string;
  readonly parts: readonly GpuTensor[];
  readonly starts: readonly number[];
  readonly counts: readonly number[];
}

/**
 * Row counts of the blocks of a [rows, cols] matrix of `dtype` under a binding limit of
 * `maxBytes` (each block's byte size a multiple of `align`, so parts could also be views of one
 * buffer; for a 16-bit dtype that also makes every block start on a whole word).
 * @throws GpuShapeError when a single row is over the limit.
 */
export function rowBlockCounts(
  rows: number,
  cols: number,
  maxBytes: number,
  align = 256,
  dtype: DType = "f32",
): number[] {
  const rowBytes = cols * (isHalf(dtype) ? 2 : 4);
  // A block of one row of a packed odd-length row is padded to a whole word.
  let per = Math.floor(maxBytes / rowBytes);
  while (per > 1 && (per * rowBytes) % align !== 0) per--;
  if (per < 1 || dtypeBytes(dtype, cols) > maxBytes) {
    throw new GpuShapeError(
      `a row of ${cols} ${dtype} (${rowBytes} bytes) is over the limit ${maxBytes}`,
    );
  }
  const out: number[] = [];
  for (let r = 0; r < rows; r += per) out.push(Math.min(per, rows - r));
  return out;
}

/** Throws GpuShapeError unless `t` has exactly `shape` (and `dtype`, default f32). */
export function expectShape(
  what: string,
  t: GpuTensor,
  shape: readonly number[],
  dtype: DType = "f32",
): void {
  const ok = t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);
  if (!ok || t.dtype !== dtype) {
    throw new GpuShapeError(
      `${what}: expected ${dtype}[${shape.join(", ")}], got ${t.describe()}`,
    );
  }
}

/** Throws GpuShapeError unless `t` is a 2-D tensor of `dtype`; returns its [rows, cols]. */
export function expect2d(what: string, t: GpuTensor, dtype: DType = "f32"): [number, number] {
  if (t.shape.length !== 2 || t.dtype !== dtype) {
    throw new GpuShapeError(`${what}: expected a 2-D ${dtype} tensor, got ${t.describe()}`);
  }
  return [t.shape[0], t.shape[1]];
}

/** Throws GpuShapeError unless `t` has `size` elements of `dtype` (any shape). */
export function expectSize(what: string, t: GpuTensor, size: number, dtype: DType = "f32"): void {
  if (t.size !== size || t.dtype !== dtype) {
    throw new GpuShapeError(`${what}: expected ${size} ${dtype} elements, got ${t.describe()}`);
  }
}

/** A matrix as one tensor or as row blocks (the linear layers' W: split only when over the limit). */
export type Matrix = GpuTensor | RowParts;

/** True when `m` is held as row blocks (even a single one). */
export function isRowParts(m: Matrix): m is RowParts {
  return !(m instanceof GpuTensor);
}

/** [rows, cols] of a 2-D tensor or of a split matrix. */
export function matrixShape(m: Matrix): [number, number] {
  if (isRowParts(m)) return [m.rows, m.cols];
  if (m.shape.length !== 2) throw new GpuShapeError(`expected a matrix, got ${m.describe()}`);
  return [m.shape[0], m.shape[1]];
}
