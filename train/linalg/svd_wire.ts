/**
 * Top SVDs as bytes, for the object store: a worker that computed some of an init's SVDs on its
 * device hands them to the driver this way (float64, so the factors the driver slices are the
 * very bits the worker computed). The shapes travel beside the bytes (in the worker's reply):
 * the bytes are, for each SVD in order, U [m·k], S [k] and Vt [k·n] as little-endian float64.
 * @module
 */
import { SvdError, type SvdResult } from "./svd.ts";

/** The shape of one encoded SVD. */
export interface SvdShape {
  m: number;
  n: number;
  k: number;
}

const floatsOf = ({ m, n, k }: SvdShape) => m * k + k + k * n;

/** The SVDs' factors, one after the other (see the module doc). */
export function encodeSvds(svds: readonly SvdResult[]): Uint8Array {
  const out = new Float64Array(svds.reduce((a, r) => a + floatsOf(r), 0));
  let at = 0;
  for (const r of svds) {
    for (const x of [r.U, r.S, r.Vt]) {
      out.set(x, at);
      at += x.length;
    }
  }
  // Float64Array is little-endian on every platform Deno runs on.
  return new Uint8Array(out.buffer);
}

/** The SVDs of `encodeSvds` back, given their shapes; a size that does not match is an SvdError. */
export function decodeSvds(bytes: Uint8Array, shapes: readonly SvdShape[]): SvdResult[] {
  const floats = shapes.reduce((a, s) => a + floatsOf(s), 0);
  if (bytes.byteLength !== floats * 8) {
    throw new SvdError(
      `the encoded SVDs are ${bytes.byteLength} bytes, their shapes need ${floats * 8}`,
    );
  }
  // A copy into a fresh buffer: the bytes may be a view (a Node Buffer's slice shares its pool)
  // at an offset that is not a multiple of 8.
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  const all = new Float64Array(copy.buffer);
  let at = 0;
  const take = (len: number) => all.slice(at, at += len);
  return shapes.map(({ m, n, k }) => ({ m, n, k, U: take(m * k), S: take(k), Vt: take(k * n) }));
}
