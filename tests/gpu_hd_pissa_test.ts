// The HD-PiSSA weight update W += c·s·[ΔB | B+ΔB]·[A ; ΔA] against the pair-by-pair float64
// formula Σ_j (B_j+ΔB_j)(A_j+ΔA_j) − B_j A_j, and the packing of L and R.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import {
  type AdapterSteps,
  blockCopy,
  hdPissaPack,
  hdPissaUpdate,
} from "../gpu/kernels/hd_pissa.ts";
import { hdPissaRef } from "../gpu/reference.ts";
import { relError, sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

Deno.test("gpu hd-pissa update", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(909);
  try {
    await t.step("update against float64 for several K, r and c", async () => {
      for (
        const [out, inn, K, r, c, s] of [[7, 5, 1, 1, 1, 1], [20, 33, 4, 2, 0.25, 2], [
          64,
          40,
          3,
          8,
          1 / 3,
          1,
        ]]
      ) {
        const w = rng.normals(out * inn);
        const host = Array.from({ length: K }, () => ({
          A: rng.normals(r * inn),
          B: rng.normals(out * r),
          dA: rng.normals(r * inn, 0.5),
          dB: rng.normals(out * r, 0.5),
        }));
        const pairs: AdapterSteps[] = host.map((h) => ({
          A: gpu.upload(h.A, [r, inn]),
          B: gpu.upload(h.B, [out, r]),
          dA: gpu.upload(h.dA, [r, inn]),
          dB: gpu.upload(h.dB, [out, r]),
        }));
        const W = gpu.upload(w, [out, inn]);
        const L = gpu.tensor([out, 2 * K * r]), R = gpu.tensor([2 * K * r, inn]);
        const [wn, l, rr] = await gpu.run((rec) => hdPissaUpdate(rec, W, pairs, L, R, { c, s }), [
          W,
          L,
          R,
        ]);
        const ref = hdPissaRef(w, host, out, inn, r, c, s);
        // Judge the update itself: W dominates W + update.
        const upd = relError(
          Float64Array.from(wn, (x, i) => x - w[i]),
          ref.map((x, i) => x - w[i]),
        );
        console.log(
          `hd-pissa out${out} in${inn} K${K} r${r} rel W ${
            relError(wn, ref).toExponential(2)
          } update ${upd.toExponential(2)}`,
        );
        assert.ok(relError(wn, ref) < 1e-6 && upd < 1e-5, `${upd}`);
        // L columns 2jr.. = ΔB_j, then B_j+ΔB_j; R rows 2jr.. = A_j, then ΔA_j.
        for (let j = 0; j < K; j++) {
          for (let o = 0; o < out; o++) {
            for (let k = 0; k < r; k++) {
              assert.equal(l[o * 2 * K * r + 2 * j * r + k], host[j].dB[o * r + k]);
              assert.equal(
                l[o * 2 * K * r + 2 * j * r + r + k],
                Math.fround(host[j].B[o * r + k] + host[j].dB[o * r + k]),
              );
            }
          }
          assert.deepEqual(rr.slice(2 * j * r * inn, (2 * j + 1) * r * inn), host[j].A);
          assert.deepEqual(rr.slice((2 * j + 1) * r * inn, (2 * j + 2) * r * inn), host[j].dA);
        }
        for (const q of pairs) for (const x of [q.A, q.B, q.dA, q.dB]) gpu.release(x);
        for (const x of [W, L, R]) gpu.release(x);
      }
    });

    await t.step("two workers applying the same update get the same bits", async () => {
      const out = 30, inn = 26, r = 3, K = 2;
      const w = rng.normals(out * inn);
      const mk = () => ({
        A: rng.normals(r * inn),
        B: rng.normals(out * r),
        dA: rng.normals(r * inn),
        dB: rng.normals(out * r),
      });
      const host = [mk(), mk()];
      const pairs: AdapterSteps[] = host.map((h) => ({
        A: gpu.upload(h.A, [r, inn]),
        B: gpu.upload(h.B, [out, r]),
        dA: gpu.upload(h.dA, [r, inn]),
        dB: gpu.upload(h.dB, [out, r]),
      }));
      const W1 = gpu.upload(w, [out, inn]), W2 = gpu.upload(w, [out, inn]);
      const L = gpu.tensor([out, 2 * K * r]), R = gpu.tensor([2 * K * r, inn]);
      const [a] = await gpu.run((rec) => hdPissaUpdate(rec, W1, pairs, L, R, { c: 0.5, s: 1 }), [
        W1,
      ]);
      const [b] = await gpu.run((rec) => hdPissaUpdate(rec, W2, pairs, L, R, { c: 0.5, s: 1 }), [
        W2,
      ]);
      assert.ok(sameBits(a, b));
      for (const q of pairs) for (const x of [q.A, q.B, q.dA, q.dB]) gpu.release(x);
      for (const x of [W1, W2, L, R]) gpu.release(x);
    });

    await t.step("mismatched shapes give GpuShapeError", () => {
      const out = 6, inn = 5, r = 2;
      const ok = {
        A: gpu.tensor([r, inn]),
        B: gpu.tensor([out, r]),
        dA: gpu.tensor([r, inn]),
        dB: gpu.tensor([out, r]),
      };
      const W = gpu.tensor([out, inn]), L = gpu.tensor([out, 2 * r]), R = gpu.tensor([2 * r, inn]);
      const rec = gpu.record();
      try {
        assert.throws(
          () => hdPissaPack(rec, L, R, W, [{ ...ok, dA: gpu.tensor([r, inn + 1]) }]),
          /dA_1/,
        );
        assert.throws(() => hdPissaPack(rec, L, R, W, [ok, ok]), /hdPissa L/);
        assert.throws(() => hdPissaPack(rec, L, R, W, []), GpuShapeError);
        assert.throws(() => blockCopy(rec, L, ok.B, null, 0, 3), /does not fit/);
      } finally {
        rec.discard();
      }
    });
  } finally {
    gpu.close();
  }
});
