// Top SVDs through the object store's bytes (train/linalg/svd_wire.ts): the same bits back, at
// any byte offset, and a size that does not match its shapes refused.
import assert from "node:assert/strict";
import { Rng } from "../core/rng.ts";
import { SvdError, type SvdResult } from "../train/linalg/svd.ts";
import { decodeSvds, encodeSvds } from "../train/linalg/svd_wire.ts";

const rng = new Rng(crypto.getRandomValues(new Uint32Array(1))[0]);
const svdOf = (m: number, n: number, k: number): SvdResult => ({
  m,
  n,
  k,
  U: Float64Array.from(rng.normals(m * k)),
  S: Float64Array.from(rng.normals(k)),
  Vt: Float64Array.from(rng.normals(k * n)),
});

Deno.test("svd wire: the same bits back, also from a view at an odd offset", () => {
  const svds = [svdOf(7, 5, 3), svdOf(1, 9, 1), svdOf(12, 4, 4)];
  const bytes = encodeSvds(svds);
  const shifted = new Uint8Array(bytes.length + 3);
  shifted.set(bytes, 3);
  for (const b of [bytes, shifted.subarray(3)]) {
    const back = decodeSvds(b, svds);
    back.forEach((r, i) => {
      assert.deepEqual([r.m, r.n, r.k], [svds[i].m, svds[i].n, svds[i].k]);
      for (const key of ["U", "S", "Vt"] as const) {
        assert.ok(r[key].every((v, j) => Object.is(v, svds[i][key][j])), `${i} ${key}`);
      }
    });
  }
  assert.throws(() => decodeSvds(bytes, [{ m: 7, n: 5, k: 3 }]), SvdError);
  assert.throws(() => decodeSvds(bytes.subarray(8), svds), SvdError);
});
