// Weights in 16 bits on the device (--weights-dtype bf16|f16): the packed bf16/f16 tensors, the
// kernels that read them (matmul operands, the embedding table, its row blocks, the head) against
// a float64 reference on the decoded values at real sizes with odd lengths, the on-device
// rounding against the host's, and the model level (see the later tests in this file).
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import { f32BitsToBf16, f32BitsToF16, type HalfType, packHalf, unpackHalf } from "../gpu/half.ts";
import { accumulatePacked } from "../gpu/kernels/packed.ts";
import { matmul, type MatmulLayout } from "../gpu/kernels/matmul.ts";
import { embeddingForwardParts } from "../gpu/kernels/embedding.ts";
import { embeddingRef, matmulRef } from "../gpu/reference.ts";
import { relError, sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

const TYPES: HalfType[] = ["bf16", "f16"];

/** Rounds f32 values to `type` and returns the element bits and their exact f32 values. */
function rounded(x: Float32Array, type: HalfType): { bits: Uint16Array; values: Float32Array } {
  const words = packHalf(x, type);
  return { bits: new Uint16Array(words.buffer, 0, x.length), values: unpackHalf(words, x.length, type) };
}

Deno.test("16-bit tensors: upload, read back and the bits of odd counts", async () => {
  const gpu = await Gpu.open();
  try {
    const rng = new Rng(7);
    for (const type of TYPES) {
      for (const n of [1, 2, 3, 1001]) {
        const x = rng.normals(n, 3);
        const { bits, values } = rounded(x, type);
        const t = gpu.uploadHalf(bits, type, [n]);
        assert.equal(t.bytes, Math.ceil(n / 2) * 4, "two elements per 32-bit word");
        const back = await gpu.readF32(t);
        assert.ok(sameBits(back, values), `${type} n=${n}: read back is the exact decoded value`);
        gpu.release(t);
      }
    }
    // A row view of a packed tensor must start on a word.
    const t = gpu.uploadHalf(new Uint16Array(6), "bf16", [2, 3]);
    assert.equal(t.rows(0, 1).bytes, 8);
    assert.throws(() => t.rows(1, 1), GpuShapeError);
    assert.throws(() => t.view([6, 1]).rows(1, 2), /inside a 32-bit word/);
    assert.equal(t.view([3, 2]).rows(1, 2).offset, 4);
    gpu.release(t);
  } finally {
    gpu.close();
  }
});

Deno.test("16-bit rounding on the device equals the host's, bit for bit", async () => {
  const gpu = await Gpu.open();
  try {
    const rng = new Rng(8);
    // Normal values, ties (the f32 bits halfway between two 16-bit values), subnormals of both
    // formats, overflow to infinity, zeros of both signs, NaN; odd count (a padded word).
    const special: number[] = [0, -0, 65504, 65519.99, 65520, -70000, 1e-8, -3e-5, 6e-8, 2.98e-8,
      NaN, Infinity, -Infinity, 3.4e38, 1e-40];
    const ties = new Float32Array(64);
    const tieBits = new Uint32Array(ties.buffer);
    for (let i = 0; i < 32; i++) tieBits[i] = ((rng.int(0x7e) + 1) << 23) | (rng.int(0x7f) << 16) | 0x8000;
    for (let i = 32; i < 64; i++) tieBits[i] = ((rng.int(30) + 100) << 23) | (rng.int(0x3ff) << 13) | 0x1000;
    const x = new Float32Array([...rng.normals(2001, 10), ...special, ...ties]);
    const old = rng.normals(x.length, 10);
    // The old W holds the special values too: the device decodes subnormals and infinities.
    old.set(x.subarray(2001), 2001);
    for (const type of TYPES) {
      const round = type === "bf16" ? f32BitsToBf16 : f32BitsToF16;
      for (const add of [false, true]) {
        const W = gpu.uploadHalf(rounded(old, type).bits, type, [x.length]);
        const D = gpu.upload(x);
        await gpu.run((rec) => accumulatePacked(rec, W, D, add));
        const got = await gpu.readF32(W);
        const oldValues = rounded(old, type).values;
        const sum = new Float32Array(x.length);
        for (let i = 0; i < x.length; i++) sum[i] = add ? x[i] + oldValues[i] : x[i];
        const want = unpackHalf(packHalf(sum, type), x.length, type);
        const bitsOf = (a: Float32Array) => new Uint32Array(a.buffer);
        let bad = 0;
        for (let i = 0; i < x.length; i++) {
          const same = Number.isNaN(want[i]) ? Number.isNaN(got[i]) : bitsOf(got)[i] === bitsOf(want)[i];
          if (!same) bad++;
        }
        assert.equal(bad, 0, `${type} add=${add}: ${bad} elements differ from the host rounding`);
        // A NaN rounds to the format's canonical quiet NaN, as the host's does.
        assert.equal(round(0x7fc00001), type === "bf16" ? 0x7fc0 : 0x7e00);
        gpu.release(W);
        gpu.release(D);
      }
    }
  } finally {
    gpu.close();
  }
});

Deno.test("matmul with a 16-bit operand against float64, odd shapes, both implementations", async () => {
  const gpu = await Gpu.open();
  try {
    const rng = new Rng(9);
    // Odd K (scalar loads), K % 4 == 0 with vec4 loads along k or along rows, skinny and square.
    const shapes = [[3, 5, 7], [70, 33, 17], [65, 66, 68], [12, 132, 44]];
    for (const type of TYPES) {
      for (const variant of ["register", "tiled"] as const) {
        for (const layout of ["NT", "NN", "TN"] as MatmulLayout[]) {
          for (const [M, N, K] of shapes) {
            const aShape = layout === "TN" ? [K, M] : [M, K];
            const bShape = layout === "NT" ? [N, K] : [K, N];
            // W as B (x·Wᵀ, dY·W) and, to cover both operand slots, as A.
            for (const which of ["B", "A"] as const) {
              const a = rng.normals(M * K), b = rng.normals(N * K);
              const half = rounded(which === "A" ? a : b, type);
              const av = which === "A" ? half.values : a, bv = which === "B" ? half.values : b;
              const A = which === "A" ? gpu.uploadHalf(half.bits, type, aShape) : gpu.upload(a, aShape);
              const B = which === "B" ? gpu.uploadHalf(half.bits, type, bShape) : gpu.upload(b, bShape);
              const A32 = gpu.upload(av, aShape), B32 = gpu.upload(bv, bShape);
              const C = gpu.tensor([M, N]), C32 = gpu.tensor([M, N]);
              const [c, c32] = await gpu.run((rec) => {
                matmul(rec, layout, C, A, B, { variant, alpha: 0.75 });
                matmul(rec, layout, C32, A32, B32, { variant, alpha: 0.75 });
              }, [C, C32]);
              const err = relError(c, matmulRef(layout, M, N, K, av, bv, null, 0.75));
              assert.ok(err < 1e-5, `${type} ${variant} ${layout} ${which} ${M}x${N}x${K}: ${err}`);
              // The same FMA chain on the same values: bit-identical to the f32 kernel.
              assert.ok(sameBits(c as Float32Array, c32 as Float32Array), `${type} ${variant} ${layout} ${which} ${M}x${N}x${K}: bits`);
              for (const t of [A, B, A32, B32, C, C32]) gpu.release(t);
            }
          }
        }
      }
    }
  } finally {
    gpu.close();
  }
});

Deno.test("x·Wᵀ and dY·W with a 4096×4096 16-bit W against float64", async () => {
  const gpu = await Gpu.open();
  try {
    const rng = new Rng(10);
    const [T, D] = [6, 4096];
    for (const type of TYPES) {
      const w = rounded(rng.normals(D * D, 0.02), type);
      const x = rng.normals(T * D);
      const W = gpu.uploadHalf(w.bits, type, [D, D]);
      const X = gpu.upload(x, [T, D]);
      const Y = gpu.tensor([T, D]), DX = gpu.tensor([T, D]);
      const [y, dx] = await gpu.run((rec) => {
        matmul(rec, "NT", Y, X, W);
        matmul(rec, "NN", DX, X, W);
      }, [Y, DX]);
      const ey = relError(y, matmulRef("NT", T, D, D, x, w.values, null));
      const edx = relError(dx, matmulRef("NN", T, D, D, x, w.values, null));
      console.log(`${type} 4096x4096: x·Wᵀ rel ${ey.toExponential(2)}, dY·W rel ${edx.toExponential(2)}`);
      assert.ok(ey < 1e-5 && edx < 1e-5, `${type}: ${ey}, ${edx}`);
      for (const t of [W, X, Y, DX]) gpu.release(t);
    }
  } finally {
    gpu.close();
  }
});

Deno.test("embedding and head over a 128,256-row 16-bit table in row blocks (odd width)", async () => {
  // A lowered binding limit splits the table into several blocks, as a real vocabulary does.
  const gpu = await Gpu.open({ maxBindingBytes: 4 * 1024 * 1024 });
  try {
    const rng = new Rng(11);
    const [V, H, T] = [128256, 65, 5];
    for (const type of TYPES) {
      const w = rounded(rng.normals(V * H), type);
      const E = gpu.uploadRows(w.bits, V, H, "embed", type);
      assert.ok(E.parts.length > 1, `${E.parts.length} blocks`);
      assert.ok(E.parts.every((p) => p.dtype === type && p.bytes <= 4 * 1024 * 1024));
      const tokens = new Int32Array([0, V - 1, 77777, E.starts[1] - 1, E.starts[1]]);
      const ids = gpu.upload(tokens);
      const x = rng.normals(T * H);
      const X = gpu.upload(x, [T, H]);
      const Y = gpu.tensor([T, H]);
      const parts = E.parts.map((p) => gpu.tensor([T, p.shape[0]]));
      const out = await gpu.run((rec) => {
        embeddingForwardParts(rec, Y, E, ids);
        E.parts.forEach((p, i) => matmul(rec, "NT", parts[i], X, p));
      }, [Y, ...parts]);
      assert.ok(sameBits(out[0] as Float32Array, Float32Array.from(embeddingRef(w.values, tokens, H))));
      // The head's logits [T, V], assembled from the blocks, against float64.
      const logits = new Float64Array(T * V);
      E.parts.forEach((p, i) => {
        const n = p.shape[0];
        for (let t = 0; t < T; t++) {
          for (let j = 0; j < n; j++) logits[t * V + E.starts[i] + j] = out[1 + i][t * n + j];
        }
      });
      const err = relError(logits, matmulRef("NT", T, V, H, x, w.values, null));
      console.log(`${type} head [${T}, ${V}] in ${E.parts.length} blocks: rel ${err.toExponential(2)}`);
      assert.ok(err < 1e-5, `${type} head: ${err}`);
      for (const t of [...E.parts, ids, X, Y, ...parts]) gpu.release(t);
    }
  } finally {
    gpu.close();
  }
});
