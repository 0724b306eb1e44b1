/**
 * The 16-bit float formats of checkpoints, to and from f32: IEEE half (F16) and bfloat16 (BF16).
 * Decoding is exact. Encoding rounds to nearest, ties to even, as PyTorch's `.to(torch.float16)`
 * and `.to(torch.bfloat16)` do: overflow goes to ±infinity, values below half the smallest
 * subnormal to ±0, and every NaN becomes the canonical quiet NaN of the format (F16 keeps the
 * sign, 0x7e00 or 0xfe00; BF16 is always 0x7fc0, as in c10::BFloat16).
 * @module
 */

// The bit conversions live with the device's 16-bit tensors (gpu/half.ts), which round the same
// way; checkpoints use them from here.
export { f16BitsToNumber, f32BitsToBf16, f32BitsToF16 } from "../gpu/half.ts";
import { f32BitsToBf16, f32BitsToF16 } from "../gpu/half.ts";

/** The checkpoint dtypes this project writes. */
export type FloatDtype = "F32" | "F16" | "BF16";

/** Bytes per element of each written dtype. */
export const FLOAT_DTYPE_BYTES: Readonly<Record<FloatDtype, number>> = { F32: 4, F16: 2, BF16: 2 };

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** f32 values as the little-endian bytes of `dtype` (a view of `data` itself for F32). */
export function encodeFloats(data: Float32Array, dtype: FloatDtype): Uint8Array {
  if (dtype === "F32") {
    if (LITTLE_ENDIAN) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const out = new Uint8Array(data.length * 4);
    const v = new DataView(out.buffer);
    for (let i = 0; i < data.length; i++) v.setFloat32(4 * i, data[i], true);
    return out;
  }
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const round = dtype === "BF16" ? f32BitsToBf16 : f32BitsToF16;
  const out = new Uint8Array(data.length * 2);
  const v = new DataView(out.buffer);
  for (let i = 0; i < data.length; i++) v.setUint16(2 * i, round(bits[i]), true);
  return out;
}

/** The `torch_dtype` of `config.json` for each written dtype, and back. */
export const TORCH_DTYPE: Readonly<Record<FloatDtype, string>> = {
  F32: "float32",
  F16: "float16",
  BF16: "bfloat16",
};

/** `float32` | `bfloat16` | `float16` (PyTorch's names, as `--save-dtype` takes them). */
export const SAVE_DTYPES = ["float32", "bfloat16", "float16"] as const;
export type SaveDtype = typeof SAVE_DTYPES[number];

/** The safetensors dtype of a PyTorch dtype name. */
export function dtypeOfTorch(name: SaveDtype): FloatDtype {
  return name === "float32" ? "F32" : name === "bfloat16" ? "BF16" : "F16";
}
