/**
 * The 16-bit float formats, bit-exact on the host: IEEE half (f16) and bfloat16 (bf16), and the
 * packing of 16-bit device tensors, two elements per 32-bit word (element 2i in the low half of
 * word i, 2i+1 in the high half; an odd count pads the last word's high half with zero). On a
 * little-endian host the words' bytes are exactly the safetensors bytes of the elements, so a
 * BF16/F16 file's data can be uploaded as it is.
 *
 * Decoding is exact. Encoding rounds to nearest, ties to even, as PyTorch's `.to(torch.float16)`
 * and `.to(torch.bfloat16)` do: overflow goes to ±infinity, values below half the smallest
 * subnormal to ±0, and every NaN becomes the canonical quiet NaN of the format (F16 keeps the
 * sign, 0x7e00 or 0xfe00; BF16 is always 0x7fc0, as in c10::BFloat16). The device kernels
 * (`gpu/kernels/half_wgsl.ts`) round the same way, so host and device agree bit for bit.
 * @module
 */

/** The 16-bit element types of device tensors. */
export type HalfType = "bf16" | "f16";

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

/** 32-bit words holding `n` 16-bit elements. */
export function halfWords(n: number): number {
  return Math.ceil(n / 2);
}

/**
 * f32 values rounded to `type` and packed two per word (see the module doc). `onOverflow` is
 * called with the first index whose finite value rounds to an infinity (f16 above 65504, bf16
 * above its largest finite value), before anything is returned.
 */
export function packHalf(
  data: Float32Array,
  type: HalfType,
  onOverflow?: (index: number, value: number) => void,
): Uint32Array {
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const round = type === "bf16" ? f32BitsToBf16 : f32BitsToF16;
  const out = new Uint32Array(halfWords(data.length));
  const halves = new Uint16Array(out.buffer);
  for (let i = 0; i < data.length; i++) {
    const h = round(bits[i]);
    // An infinity exponent (all ones, zero mantissa) from a finite input is an overflow.
    if (onOverflow && (h & 0x7fff) === (type === "bf16" ? 0x7f80 : 0x7c00)) {
      if (Number.isFinite(data[i])) onOverflow(i, data[i]);
    }
    halves[i] = h;
  }
  return out;
}

/** The exact f32 values of `n` packed 16-bit elements of `type`. */
export function unpackHalf(words: Uint32Array, n: number, type: HalfType): Float32Array {
  const halves = new Uint16Array(words.buffer, words.byteOffset, 2 * words.length);
  const out = new Float32Array(n);
  if (type === "bf16") {
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) bits[i] = halves[i] << 16;
  } else {
    for (let i = 0; i < n; i++) out[i] = f16BitsToNumber(halves[i]);
  }
  return out;
}
