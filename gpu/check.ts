/**
 * Numeric comparison helpers for checking kernels against the float64 references: relative
 * error, central finite differences, and bit-level equality for determinism checks.
 * @module
 */

type Arr = ArrayLike<number>;

/** ‖out − ref‖₂ / ‖ref‖₂ (∞ when the lengths differ or the result is NaN). */
export function relError(out: Arr, ref: Arr): number {
  if (out.length !== ref.length) return Infinity;
  let e = 0;
  let n = 0;
  for (let i = 0; i < ref.length; i++) {
    e += (out[i] - ref[i]) ** 2;
    n += ref[i] ** 2;
  }
  const r = Math.sqrt(e) / Math.sqrt(n);
  return Number.isNaN(r) ? Infinity : r;
}

/**
 * Central difference `(f(x + h·e_i) − f(x − h·e_i)) / 2h` of a scalar function of a float64
 * vector, restoring x afterwards.
 */
export function centralDiff(
  f: (x: Float64Array) => number,
  x: Float64Array,
  i: number,
  h: number,
): number {
  const x0 = x[i];
  x[i] = x0 + h;
  const up = f(x);
  x[i] = x0 - h;
  const down = f(x);
  x[i] = x0;
  return (up - down) / (2 * h);
}

/**
 * The largest relative disagreement between `grad` and central differences of `f` at the
 * indices `at`: max |fd − g| / max(|fd|, scale), with `scale` the largest |grad| (so entries
 * near zero are judged against the gradient's size).
 */
export function finiteDiffError(
  f: (x: Float64Array) => number,
  x: Float64Array,
  grad: Arr,
  at: readonly number[],
  h = 1e-6,
): number {
  let scale = 0;
  for (let i = 0; i < grad.length; i++) scale = Math.max(scale, Math.abs(grad[i]));
  let worst = 0;
  for (const i of at) {
    const fd = centralDiff(f, x, i, h);
    worst = Math.max(worst, Math.abs(fd - grad[i]) / Math.max(Math.abs(fd), scale, 1e-300));
  }
  return worst;
}

/** Σ_i a[i]·b[i] in float64 (loss = ⟨output, random weights⟩ for gradient checks). */
export function dot(a: Arr, b: Arr): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** True when both arrays hold the same 32-bit patterns (NaNs included). */
export function sameBits(a: Float32Array | Int32Array, b: Float32Array | Int32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}
