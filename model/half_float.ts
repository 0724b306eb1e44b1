/**
 * The 16-bit float formats of checkpoints, to and from f32: IEEE half (F16) and bfloat16 (BF16).
 * Decoding is exact. Encoding rounds to nearest, ties to even, as PyTorch's `.to(torch.float16)`
 * and `.to(torch.bfloat16)` do: overflow goes to ±infinity, values below half the smallest
 * subnormal to ±0, and every NaN becomes the canonical quiet NaN of the format (F16 keeps the
 * sign, 0x7e00 or 0xfe00; BF16 is always 0x7fc0, as in c10::BFloat16).
 * @module
 */

/** IEEE half-precision bits to a number (subnormals, infinities and NaN included). */
export function f16BitsToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1024 + frac) * 2 ** (exp - 25);
}

/** `m / 2^s` rounded to nearest, ties to even (`m` below 2^31, `s` from 1 to 31). */
function shiftRoundEven(m: number, s: number): number {
  const q = m >>> s;
  const rem = m - q * 2 ** s;
  const half = 2 ** (s - 1);
  return rem > half || (rem === half && (q & 1) === 1) ? q + 1 : q;
}

/** The bits of an f32 (given as its 32 bits) rounded to bfloat16. */
export function f32BitsToBf16(bits: number): number {
  bits >>>= 0;
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x7fffff) !== 0) return 0x7fc0;
  // PyTorch's round_to_nearest_even: add 0x7fff plus the lowest kept bit, keep the top half.
  // A carry out of the mantissa raises the exponent, and out of the largest finite value gives
  // infinity, which is the correct rounding in both cases.
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The bits of an f32 (given as its 32 bits) rounded to IEEE half precision. */
export function f32BitsToF16(bits: number): number {
  bits >>>= 0;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | (mant !== 0 ? 0x7e00 : 0x7c00);
  const e = exp - 127 + 15; // the half's biased exponent, before rounding
  if (e >= 0x1f) return sign | 0x7c00; // 2^16 and above
  if (e >= 1) {
    // Normal: 23 mantissa bits to 10. A carry into the exponent is the right result, up to
    // 0x7c00 (infinity) for values from 65520 on.
    return sign | ((e << 10) + shiftRoundEven(mant, 13));
  }
  // Subnormal half (or zero): the value in units of 2^-24 is m24 · 2^(exp - 126), rounded. The
  // result may round up to 0x400, the smallest normal, whose bits are the same number.
  if (exp === 0) return sign; // f32 zero or subnormal (below 2^-126): far below 2^-25
  const shift = 126 - exp; // from 14 (exp 112) up
  if (shift > 25) return sign; // below 2^-25 · (2 - 2^-23): rounds to zero
  return sign | shiftRoundEven(mant | 0x800000, shift);
}

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
