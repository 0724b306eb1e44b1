/**
 * Tensors in messages: typed arrays with an optional shape, and zod helpers for them.
 *
 * A tensor is a plain `Float32Array`, `Int32Array` or `Uint8Array`, so handlers compute on it
 * directly. Its shape travels with it when set with {@link withShape}; otherwise it is 1-D.
 * @module
 */
import { z } from "zod";

/** Element types that travel as binary tensors. */
export type DType = "f32" | "i32" | "u8";

/** The typed array of each dtype. */
export interface DTypeArray {
  f32: Float32Array;
  i32: Int32Array;
  u8: Uint8Array;
}

/** Any typed array that can travel as a tensor. */
export type TensorArray = DTypeArray[DType];

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = { f32: 4, i32: 4, u8: 1 };

/** The dtype of a typed array, or undefined when it cannot travel as a tensor. */
export function dtypeOf(v: unknown): DType | undefined {
  if (v instanceof Float32Array) return "f32";
  if (v instanceof Int32Array) return "i32";
  if (v instanceof Uint8Array) return "u8";
  return undefined;
}

/** A view of `bytes` (8-byte aligned, length a multiple of the element size) as `dtype`. */
export function viewAs(dtype: DType, buffer: ArrayBuffer, offset: number, length: number) {
  switch (dtype) {
    case "f32":
      return new Float32Array(buffer, offset, length);
    case "i32":
      return new Int32Array(buffer, offset, length);
    case "u8":
      return new Uint8Array(buffer, offset, length);
  }
}

const shapes = new WeakMap<TensorArray, readonly number[]>();

/**
 * Attaches a shape to a typed array (the product must equal its length) and returns the array.
 * The shape travels in the frame header and is attached again on the receiving side.
 */
export function withShape<T extends TensorArray>(array: T, shape: readonly number[]): T {
  const n = shape.reduce((a, b) => a * b, 1);
  if (!shape.every((d) => Number.isInteger(d) && d >= 0) || n !== array.length) {
    throw new RangeError(
      `shape [${shape.join(", ")}] does not fit a typed array of length ${array.length}`,
    );
  }
  shapes.set(array, Object.freeze([...shape]));
  return array;
}

/** The shape of a typed array: the one attached with {@link withShape}, else `[length]`. */
export function shapeOf(array: TensorArray): readonly number[] {
  return shapes.get(array) ?? [array.length];
}

/** Options of {@link tensor}: a full shape (`null` for a free dimension) or a length. */
export interface TensorOptions {
  shape?: readonly (number | null)[];
  length?: number;
}

/**
 * A zod schema for a tensor field: checks the dtype and, when given, the shape or length.
 *
 * ```ts
 * const Delta = z.object({ a: tensor("f32", { shape: [4, null] }), ids: tensor("i32") });
 * ```
 */
export function tensor<D extends DType>(dtype: D, options: TensorOptions = {}) {
  return z.custom<DTypeArray[D]>().superRefine((v, ctx) => {
    const got = dtypeOf(v);
    if (got !== dtype) {
      ctx.addIssue({
        code: "custom",
        message: `expected a ${dtype} tensor, got ${got ?? describe(v)}`,
      });
      return;
    }
    const arr = v as TensorArray;
    if (options.length !== undefined && arr.length !== options.length) {
      ctx.addIssue({
        code: "custom",
        message: `expected ${options.length} elements, got ${arr.length}`,
      });
    }
    if (options.shape) {
      const want = options.shape;
      const have = shapes.get(arr);
      const ok = have
        ? have.length === want.length && want.every((d, i) => d === null || d === have[i])
        : fitsLength(want, arr.length);
      if (!ok) {
        ctx.addIssue({
          code: "custom",
          message: `expected shape [${want.map((d) => d ?? "*").join(", ")}], got [${
            (have ?? [arr.length]).join(", ")
          }]`,
        });
      }
    }
  });
}

function fitsLength(shape: readonly (number | null)[], n: number): boolean {
  const fixed = shape.reduce<number>((a, d) => a * (d ?? 1), 1);
  const free = shape.filter((d) => d === null).length;
  return free === 0 ? fixed === n : fixed > 0 ? n % fixed === 0 : n === 0;
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (ArrayBuffer.isView(v)) return v.constructor.name;
  return typeof v;
}
