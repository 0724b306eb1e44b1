// A linear layer whose W is over the device's real maxStorageBufferBindingSize (no lowered limit):
// W [limit/8192 + 16, 2048] f32 is held as row blocks, and the forward x·Wᵀ, the backward dX and
// ∂W, and the HD-PiSSA update of W in place agree with float64 on fresh random inputs. A matrix
// exactly at the limit and one just below stay one block; one row more splits, and a plain
// tensor that large is refused.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import { type AdapterSteps, hdPissaUpdate } from "../gpu/kernels/hd_pissa.ts";
import { packHalf } from "../gpu/half.ts";
import {
  hdPissaUpdateRows,
  matmulNNRows,
  matmulNTRows,
  matmulTNRows,
  maxBlockRows,
} from "../gpu/kernels/matmul_rows.ts";
import { hdPissaRef, matmulRef } from "../gpu/reference.ts";
import { relError } from "../gpu/check.ts";
import type { RowParts } from "../gpu/tensor.ts";
import { Rng } from "../core/rng.ts";

const COLS = 2048;

async function readParts(gpu: Gpu, m: RowParts): Promise<Float32Array> {
  const out = new Float32Array(m.rows * m.cols);
  const data = await gpu.readMany(m.parts);
  data.forEach((d, i) => out.set(d as Float32Array, m.starts[i] * m.cols));
  return out;
}

function release(gpu: Gpu, m: RowParts): void {
  for (const p of m.parts) gpu.release(p);
}

Deno.test("row-split matrices at the device's real binding limit", async (t) => {
  const gpu = await Gpu.open();
  try {
    const limit = gpu.limits.maxStorageBufferBindingSize;
    console.log(`device maxStorageBufferBindingSize ${limit}`);
    // The device's own limit, not a lowered one (lavapipe: 128 MiB).
    assert.ok(limit >= 128 * 1024 * 1024, `limit ${limit}`);
    const atLimit = limit / (COLS * 4);
    assert.ok(Number.isInteger(atLimit), `${limit} is not a whole number of ${COLS}-float rows`);

    await t.step("at and just below the limit: one block; one row more: two", () => {
      for (const [rows, blocks] of [[atLimit, 1], [atLimit - 1, 1], [atLimit + 1, 2]]) {
        const m = gpu.uploadRows(null, rows, COLS, `W ${rows}`);
        try {
          assert.equal(m.parts.length, blocks, `[${rows}, ${COLS}]`);
          assert.equal(m.counts.reduce((a, b) => a + b, 0), rows);
          for (const p of m.parts) assert.ok(p.bytes <= limit);
        } finally {
          release(gpu, m);
        }
      }
      assert.throws(() => gpu.tensor([atLimit + 1, COLS], "f32", "whole"), GpuShapeError);
    });

    await t.step("forward, backward and HD-PiSSA update against float64", async () => {
      const rng = new Rng(16400);
      const out = atLimit + 16, inn = COLS, T = 24;
      const w = rng.normals(out * inn, 0.02);
      const x = rng.normals(T * inn);
      const dy = rng.normals(T * out);
      const W = gpu.uploadRows(w, out, inn, "W");
      const dW = gpu.uploadRows(null, out, inn, "dW");
      assert.equal(W.parts.length, 2);
      assert.ok(W.parts.every((p) => p.bytes <= limit));
      const block = gpu.tensor([T * maxBlockRows(W)], "f32", "block");
      const xT = gpu.upload(x, [T, inn], "x");
      const dyT = gpu.upload(dy, [T, out], "dy");
      const y = gpu.tensor([T, out], "f32", "y");
      const dx = gpu.tensor([T, inn], "f32", "dx");
      try {
        const [yGot, dxGot] = await gpu.run((rec) => {
          matmulNTRows(rec, y, xT, W, { block });
          matmulNNRows(rec, dx, dyT, W, { block });
          matmulTNRows(rec, dW, dyT, xT, { block });
        }, [y, dx]);
        const dwGot = await readParts(gpu, dW);
        const errY = relError(yGot, matmulRef("NT", T, out, inn, x, w, null));
        const errDx = relError(dxGot, matmulRef("NN", T, inn, out, dy, w, null));
        const errDw = relError(dwGot, matmulRef("TN", out, inn, T, dy, x, null));
        console.log(
          `W [${out}, ${inn}] f32 in ${W.parts.length} blocks (${W.counts.join(" + ")} rows): ` +
            `y rel ${errY.toExponential(2)}, dX ${errDx.toExponential(2)}, ` +
            `dW ${errDw.toExponential(2)}`,
        );
        assert.ok(errY < 1e-5, `y ${errY}`);
        assert.ok(errDx < 1e-5, `dX ${errDx}`);
        assert.ok(errDw < 1e-5, `dW ${errDw}`);
        // The rows past the first block are the ones the split adds: checked on their own too.
        const tail = (a: ArrayLike<number>, r0: number) =>
          Array.from({ length: T * 16 }, (_, i) => a[Math.floor(i / 16) * out + r0 + (i % 16)]);
        const yRef = matmulRef("NT", T, out, inn, x, w, null);
        assert.ok(relError(tail(yGot, atLimit), tail(yRef, atLimit)) < 1e-5);

        // HD-PiSSA: W += c·s·Σ_j (B_j+ΔB_j)(A_j+ΔA_j) − B_j A_j, in place on the blocks.
        const K = 2, r = 4, c = 1, s = 2;
        const host = Array.from({ length: K }, () => ({
          A: rng.normals(r * inn, 0.1),
          B: rng.normals(out * r, 0.1),
          dA: rng.normals(r * inn, 0.05),
          dB: rng.normals(out * r, 0.05),
        }));
        const pairs: AdapterSteps[] = host.map((h) => ({
          A: gpu.upload(h.A, [r, inn]),
          B: gpu.upload(h.B, [out, r]),
          dA: gpu.upload(h.dA, [r, inn]),
          dB: gpu.upload(h.dB, [out, r]),
        }));
        const L = gpu.tensor([out, 2 * K * r], "f32", "L");
        const R = gpu.tensor([2 * K * r, inn], "f32", "R");
        try {
          await gpu.run((rec) => hdPissaUpdateRows(rec, W, pairs, L, R, { c, s, block }));
          const wGot = await readParts(gpu, W);
          const ref = hdPissaRef(w, host, out, inn, r, c, s);
          const dGot = new Float64Array(w.length), dRef = new Float64Array(w.length);
          for (let i = 0; i < w.length; i++) {
            dGot[i] = wGot[i] - w[i];
            dRef[i] = ref[i] - w[i];
          }
          const errW = relError(wGot, ref);
          const errDelta = relError(dGot, dRef);
          console.log(
            `HD-PiSSA K=${K} r=${r}: W rel ${errW.toExponential(2)}, ` +
              `ΔW rel ${errDelta.toExponential(2)}`,
          );
          assert.ok(errW < 1e-6, `W ${errW}`);
          // ΔW read as W_after − W carries W's f32 rounding (measured 8.7e-8 relative to ΔW).
          assert.ok(errDelta < 1e-6, `ΔW ${errDelta}`);
          assert.ok(relError(dGot.subarray(atLimit * inn), dRef.subarray(atLimit * inn)) < 1e-6);
        } finally {
          for (const p of pairs) for (const b of [p.A, p.B, p.dA, p.dB]) gpu.release(b);
          gpu.release(L);
          gpu.release(R);
        }
      } finally {
        release(gpu, W);
        release(gpu, dW);
        for (const b of [block, xT, dyT, y, dx]) gpu.release(b);
      }
    });
  } finally {
    gpu.close();
  }
});

// A bf16 W in row blocks (sized by f32 bytes, so each block's f32 product fits a binding): the
// HD-PiSSA update through a block-sized f32 scratch gives the same bits as the update of the
// same W held whole (each element's product and rounded add are the same operations). The limit
// is lowered here only to keep W small; the f32 path runs at the real limit above.
Deno.test("a bf16 W in row blocks takes the HD-PiSSA update with the bits of the whole W", async () => {
  const rng = new Rng(1616);
  const out = 100, inn = 64, K = 2, r = 3;
  const w = rng.normals(out * inn);
  const bits = new Uint16Array(packHalf(w, "bf16", () => {}).buffer, 0, out * inn);
  const host = Array.from({ length: K }, () => ({
    A: rng.normals(r * inn),
    B: rng.normals(out * r),
    dA: rng.normals(r * inn, 0.5),
    dB: rng.normals(out * r, 0.5),
  }));
  const run = async (limit: number | undefined) => {
    const gpu = await Gpu.open(limit ? { maxBindingBytes: limit } : {});
    try {
      const W = gpu.uploadRows(bits, out, inn, "W", "bf16", "f32");
      const pairs: AdapterSteps[] = host.map((h) => ({
        A: gpu.upload(h.A, [r, inn]),
        B: gpu.upload(h.B, [out, r]),
        dA: gpu.upload(h.dA, [r, inn]),
        dB: gpu.upload(h.dB, [out, r]),
      }));
      const L = gpu.tensor([out, 2 * K * r]), R = gpu.tensor([2 * K * r, inn]);
      const rows = maxBlockRows(W);
      const scratch = gpu.tensor([rows * inn], "f32", "D");
      const block = gpu.tensor([rows * 2 * K * r], "f32", "L rows");
      await gpu.run((rec) =>
        W.parts.length === 1
          ? hdPissaUpdate(rec, W.parts[0], pairs, L, R, {
            c: 0.5,
            s: 1.5,
            scratch: scratch.view([out, inn]),
          })
          : hdPissaUpdateRows(rec, W, pairs, L, R, { c: 0.5, s: 1.5, block, scratch })
      );
      return { blocks: W.parts.length, w: await readParts(gpu, W) };
    } finally {
      gpu.close();
    }
  };
  // 8 KiB: 32 rows of 64 f32 a block (the bf16 blocks 4 KiB), so 4 blocks.
  const split = await run(8192);
  const whole = await run(undefined);
  assert.equal(split.blocks, 4);
  assert.equal(whole.blocks, 1);
  assert.deepEqual(split.w, whole.w);
  // And the update did something: most elements moved from their bf16 start.
  let moved = 0;
  for (let i = 0; i < w.length; i++) if (whole.w[i] !== unpackOne(bits[i])) moved++;
  assert.ok(moved > w.length / 2, `${moved} of ${w.length} elements changed`);
});

/** The f32 value of one bf16 element. */
function unpackOne(h: number): number {
  return new Float32Array(new Uint32Array([h << 16]).buffer)[0];
}
