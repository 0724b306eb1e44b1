// Causal GQA attention: forward (with logsumexp), backward (dQ, dK, dV), KV-cache decoding,
// full and with a sliding window, against float64; the reference gradients against finite differences.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { GpuShapeError } from "../gpu/errors.ts";
import {
  attentionBackward,
  attentionDecode,
  attentionForward,
  type AttentionShape,
  kvCacheWrite,
} from "../gpu/kernels/attention.ts";
import { attentionBackwardRef, attentionDecodeRef, attentionRef } from "../gpu/reference.ts";
import { dot, finiteDiffError, relError, sameBits } from "../gpu/check.ts";
import { Rng } from "../core/rng.ts";

const POS_OF = (S: number) => Int32Array.from({ length: S }, (_, i) => i);

Deno.test("gpu attention", async (t) => {
  const gpu = await Gpu.open();
  const rng = new Rng(505);
  try {
    await t.step("forward and backward against float64 (GQA, S across workgroups)", async () => {
      // The last field is the rows per workgroup: 8 is lavapipe's default, 64 the GPUs'.
      const cases: [number, number, number, number, number, number][] = [
        [1, 1, 1, 1, 4, 8],
        [2, 5, 4, 2, 8, 8],
        [2, 70, 4, 1, 16, 8],
        [2, 70, 4, 2, 16, 64],
        [1, 33, 2, 2, 32, 16],
      ];
      for (const [B, S, nH, nKV, hd, rowsPerGroup] of cases) {
        const shape: AttentionShape = {
          batch: B,
          seqLen: S,
          nHeads: nH,
          nKvHeads: nKV,
          headDim: hd,
        };
        const rows = B * S;
        const q = rng.normals(rows * nH * hd),
          k = rng.normals(rows * nKV * hd),
          v = rng.normals(rows * nKV * hd);
        const dout = rng.normals(rows * nH * hd);
        const Q = gpu.upload(q, [rows, nH * hd]), K = gpu.upload(k, [rows, nKV * hd]);
        const V = gpu.upload(v, [rows, nKV * hd]), DO = gpu.upload(dout, [rows, nH * hd]);
        const O = gpu.tensor([rows, nH * hd]),
          L = gpu.tensor([rows, nH]),
          DL = gpu.tensor([rows, nH]);
        const DQ = gpu.tensor([rows, nH * hd]),
          DK = gpu.tensor([rows, nKV * hd]),
          DV = gpu.tensor([rows, nKV * hd]);
        const [o, lse, dq, dk, dv] = await gpu.run((rec) => {
          attentionForward(rec, { out: O, lse: L, q: Q, k: K, v: V }, shape, { rowsPerGroup });
          attentionBackward(
            rec,
            {
              dq: DQ,
              dk: DK,
              dv: DV,
              dout: DO,
              q: Q,
              k: K,
              v: V,
              out: O,
              lse: L,
              delta: DL,
            },
            shape,
            { rowsPerGroup },
          );
        }, [O, L, DQ, DK, DV]);
        const dims = { B, S, nH, nKV, hd };
        const f = attentionRef(q, k, v, dims);
        const g = attentionBackwardRef(dout, q, k, v, dims);
        // With S = 1 the softmax is constant, dq and dk are exactly zero: judge them absolutely.
        const err = (x: Float32Array | Int32Array, r: Float64Array) =>
          r.every((z) => z === 0) ? Math.max(...x.map(Math.abs)) : relError(x, r);
        const errs = {
          out: err(o, f.out),
          lse: err(lse, f.lse),
          dq: err(dq, g.dq),
          dk: err(dk, g.dk),
          dv: err(dv, g.dv),
        };
        console.log(
          `attention B${B} S${S} nH${nH} nKV${nKV} hd${hd} rows/group ${rowsPerGroup}`,
          Object.entries(errs).map(([n, e]) => `${n} ${e.toExponential(2)}`).join(" "),
        );
        for (const [n, e] of Object.entries(errs)) assert.ok(e < 1e-5, `${n}: ${e}`);
        for (const x of [Q, K, V, DO, O, L, DL, DQ, DK, DV]) gpu.release(x);
      }
    });

    await t.step("seqLen 4096, 8 query heads per KV head, against float64", async () => {
      // Past the old dK/dV loop bound's margin: 8·(⌈4096/4⌉ + 1) + 9 passes per invocation.
      const [S, nH, nKV, hd] = [4096, 8, 1, 4];
      const shape: AttentionShape = { batch: 1, seqLen: S, nHeads: nH, nKvHeads: nKV, headDim: hd };
      const q = rng.normals(S * nH * hd),
        k = rng.normals(S * nKV * hd),
        v = rng.normals(S * nKV * hd),
        dout = rng.normals(S * nH * hd);
      const Q = gpu.upload(q, [S, nH * hd]), K = gpu.upload(k, [S, nKV * hd]);
      const V = gpu.upload(v, [S, nKV * hd]), DO = gpu.upload(dout, [S, nH * hd]);
      const O = gpu.tensor([S, nH * hd]), L = gpu.tensor([S, nH]), DL = gpu.tensor([S, nH]);
      const DQ = gpu.tensor([S, nH * hd]), DK = gpu.tensor([S, nKV * hd]);
      const DV = gpu.tensor([S, nKV * hd]);
      const [o, lse, dq, dk, dv] = await gpu.run((rec) => {
        attentionForward(rec, { out: O, lse: L, q: Q, k: K, v: V }, shape);
        attentionBackward(
          rec,
          { dq: DQ, dk: DK, dv: DV, dout: DO, q: Q, k: K, v: V, out: O, lse: L, delta: DL },
          shape,
        );
      }, [O, L, DQ, DK, DV]);
      const dims = { B: 1, S, nH, nKV, hd };
      const f = attentionRef(q, k, v, dims);
      const g = attentionBackwardRef(dout, q, k, v, dims);
      const errs = {
        out: relError(o, f.out),
        lse: relError(lse, f.lse),
        dq: relError(dq, g.dq),
        dk: relError(dk, g.dk),
        dv: relError(dv, g.dv),
      };
      console.log(
        `attention S${S} nH${nH} nKV${nKV} hd${hd}`,
        Object.entries(errs).map(([n, e]) => `${n} ${e.toExponential(2)}`).join(" "),
      );
      for (const [n, e] of Object.entries(errs)) assert.ok(e < 1e-5, `${n}: ${e}`);
      for (const x of [Q, K, V, DO, O, L, DL, DQ, DK, DV]) gpu.release(x);
    });

    await t.step("sliding window: forward, backward and decoding against float64", async () => {
      // Windows narrower than the sequence (1 sees only itself), across workgroups of 8 and
      // 64 rows, and one wider than the sequence (full causal attention).
      const cases: [number, number, number, number, number, number, number][] = [
        [2, 21, 4, 2, 8, 1, 8],
        [1, 21, 4, 2, 8, 5, 8],
        [2, 70, 2, 1, 16, 9, 64],
        [1, 12, 2, 2, 4, 40, 8],
      ];
      for (const [B, S, nH, nKV, hd, window, rowsPerGroup] of cases) {
        const shape: AttentionShape = {
          batch: B,
          seqLen: S,
          nHeads: nH,
          nKvHeads: nKV,
          headDim: hd,
          window,
        };
        const rows = B * S;
        const q = rng.normals(rows * nH * hd),
          k = rng.normals(rows * nKV * hd),
          v = rng.normals(rows * nKV * hd),
          dout = rng.normals(rows * nH * hd);
        const Q = gpu.upload(q, [rows, nH * hd]), K = gpu.upload(k, [rows, nKV * hd]);
        const V = gpu.upload(v, [rows, nKV * hd]), DO = gpu.upload(dout, [rows, nH * hd]);
        const O = gpu.tensor([rows, nH * hd]), L = gpu.tensor([rows, nH]);
        const DL = gpu.tensor([rows, nH]), DQ = gpu.tensor([rows, nH * hd]);
        const DK = gpu.tensor([rows, nKV * hd]), DV = gpu.tensor([rows, nKV * hd]);
        // Decoding: every row of sequence 0 as a query against its keys as the cache.
        const OD = gpu.tensor([S, nH * hd]);
        const POS = gpu.upload(Int32Array.from({ length: S }, (_, i) => i));
        const Q0 = Q.rows(0, S), K0 = K.rows(0, S), V0 = V.rows(0, S);
        const decodeShape = {
          batch: 1,
          newTokens: S,
          maxLen: S,
          nHeads: nH,
          nKvHeads: nKV,
          headDim: hd,
          window,
        };
        const [o, dq, dk, dv, od] = await gpu.run((rec) => {
          attentionForward(rec, { out: O, lse: L, q: Q, k: K, v: V }, shape, { rowsPerGroup });
          attentionBackward(
            rec,
            {
              dq: DQ,
              dk: DK,
              dv: DV,
              dout: DO,
              q: Q,
              k: K,
              v: V,
              out: O,
              lse: L,
              delta: DL,
            },
            shape,
            { rowsPerGroup },
          );
          attentionDecode(
            rec,
            { out: OD, q: Q0, kCache: K0, vCache: V0, positions: POS },
            decodeShape,
            S - 1,
            { rowsPerGroup },
          );
        }, [O, DQ, DK, DV, OD]);
        const dims = { B, S, nH, nKV, hd, window };
        const f = attentionRef(q, k, v, dims);
        const g = attentionBackwardRef(dout, q, k, v, dims);
        const d = attentionDecodeRef(q.slice(0, S * nH * hd), k, v, POS_OF(S), {
          B: 1,
          Tn: S,
          maxLen: S,
          nH,
          nKV,
          hd,
          window,
        });
        // Window 1: each query sees only its own key, so dq and dk are exactly zero.
        const err = (x: Float32Array | Int32Array, r: Float64Array) =>
          r.every((z) => z === 0) ? Math.max(...x.map(Math.abs)) : relError(x, r);
        const errs = {
          out: err(o, f.out),
          dq: err(dq, g.dq),
          dk: err(dk, g.dk),
          dv: err(dv, g.dv),
          decode: err(od, d),
        };
        console.log(
          `attention window ${window} B${B} S${S} nH${nH} nKV${nKV} hd${hd}`,
          Object.entries(errs).map(([n, e]) => `${n} ${e.toExponential(2)}`).join(" "),
        );
        for (const [n, e] of Object.entries(errs)) assert.ok(e < 1e-5, `${n}: ${e}`);
        if (window >= S) {
          // As wide as the sequence: plain causal attention.
          const full = attentionRef(q, k, v, { B, S, nH, nKV, hd });
          assert.ok(relError(o, full.out) < 1e-5);
        } else {
          const full = attentionRef(q, k, v, { B, S, nH, nKV, hd });
          assert.ok(relError(o, full.out) > 1e-3, "the window changes the output");
        }
        for (const x of [Q, K, V, DO, O, L, DL, DQ, DK, DV, OD, POS]) gpu.release(x);
      }
      // The reference's windowed gradients against finite differences.
      const dims = { B: 1, S: 6, nH: 2, nKV: 1, hd: 3, window: 2 };
      const q = Float64Array.from(rng.normals(36)), k = Float64Array.from(rng.normals(18));
      const v = Float64Array.from(rng.normals(18)), r = rng.normals(36);
      const g = attentionBackwardRef(r, q, k, v, dims);
      const at = [0, 5, 13, 17];
      const eq = finiteDiffError((x) => dot(attentionRef(x, k, v, dims).out, r), q, g.dq, at);
      const ek = finiteDiffError((x) => dot(attentionRef(q, x, v, dims).out, r), k, g.dk, at);
      const ev = finiteDiffError((x) => dot(attentionRef(q, k, x, dims).out, r), v, g.dv, at);
      assert.ok(eq < 1e-6 && ek < 1e-6 && ev < 1e-6, `${eq} ${ek} ${ev}`);
    });

    await t.step("reference gradients match finite differences", () => {
      const dims = { B: 2, S: 4, nH: 4, nKV: 2, hd: 3 };
      const nq = 2 * 4 * 4 * 3, nk = 2 * 4 * 2 * 3;
      const q = Float64Array.from(rng.normals(nq)), k = Float64Array.from(rng.normals(nk));
      const v = Float64Array.from(rng.normals(nk)), r = rng.normals(nq);
      const g = attentionBackwardRef(r, q, k, v, dims);
      const at = [0, 7, 20, 33, 47];
      const eq = finiteDiffError((x) => dot(attentionRef(x, k, v, dims).out, r), q, g.dq, [
        ...at,
        60,
        95,
      ]);
      const ek = finiteDiffError((x) => dot(attentionRef(q, x, v, dims).out, r), k, g.dk, at);
      const ev = finiteDiffError((x) => dot(attentionRef(q, k, x, dims).out, r), v, g.dv, at);
      console.log(
        `attention finite differences dq ${eq.toExponential(2)} dk ${ek.toExponential(2)} dv ${
          ev.toExponential(2)
        }`,
      );
      assert.ok(eq < 1e-6 && ek < 1e-6 && ev < 1e-6, `${eq} ${ek} ${ev}`);
    });

    await t.step("KV-cache decoding matches float64 and the training forward", async () => {
      const B = 3, maxLen = 12, nH = 4, nKV = 2, hd = 8, Tn = 2;
      const kw = nKV * hd;
      const kc = rng.normals(B * maxLen * kw), vc = rng.normals(B * maxLen * kw);
      // Sequences at different lengths; row r = b·Tn + t.
      const positions = new Int32Array([3, 4, 0, 1, 9, 10]);
      const kNew = rng.normals(B * Tn * kw),
        vNew = rng.normals(B * Tn * kw),
        q = rng.normals(B * Tn * nH * hd);
      const KC = gpu.upload(kc, [B * maxLen, kw]), VC = gpu.upload(vc, [B * maxLen, kw]);
      const KN = gpu.upload(kNew, [B * Tn, kw]), VN = gpu.upload(vNew, [B * Tn, kw]);
      const POS = gpu.upload(positions), Q = gpu.upload(q, [B * Tn, nH * hd]);
      const O = gpu.tensor([B * Tn, nH * hd]);
      const shape = { batch: B, newTokens: Tn, maxLen, nHeads: nH, nKvHeads: nKV, headDim: hd };
      const [kcache, o] = await gpu.run((rec) => {
        kvCacheWrite(rec, KC, KN, POS, shape);
        kvCacheWrite(rec, VC, VN, POS, shape);
        attentionDecode(rec, { out: O, q: Q, kCache: KC, vCache: VC, positions: POS }, shape, 10);
      }, [KC, O]);
      const kExp = Float64Array.from(kc), vExp = Float64Array.from(vc);
      for (let r = 0; r < B * Tn; r++) {
        const row = Math.floor(r / Tn) * maxLen + positions[r];
        for (let c = 0; c < kw; c++) {
          kExp[row * kw + c] = kNew[r * kw + c];
          vExp[row * kw + c] = vNew[r * kw + c];
        }
      }
      assert.ok(relError(kcache, kExp) === 0, "cache rows written exactly");
      const e = relError(
        o,
        attentionDecodeRef(q, kExp, vExp, positions, { B, Tn, maxLen, nH, nKV, hd }),
      );
      console.log(`attention decode rel ${e.toExponential(2)}`);
      assert.ok(e < 1e-5, `decode ${e}`);

      // The last position of a full sequence decoded against its own keys equals the training
      // forward's last row.
      const S = 9;
      const qs = rng.normals(S * nH * hd), ks = rng.normals(S * kw), vs = rng.normals(S * kw);
      const QS = gpu.upload(qs, [S, nH * hd]),
        KS = gpu.upload(ks, [S, kw]),
        VS = gpu.upload(vs, [S, kw]);
      const OS = gpu.tensor([S, nH * hd]), OD = gpu.tensor([1, nH * hd]);
      const QL = gpu.upload(qs.slice((S - 1) * nH * hd), [1, nH * hd]),
        PL = gpu.upload(new Int32Array([S - 1]));
      const [os, od] = await gpu.run((rec) => {
        attentionForward(rec, { out: OS, lse: null, q: QS, k: KS, v: VS }, {
          batch: 1,
          seqLen: S,
          nHeads: nH,
          nKvHeads: nKV,
          headDim: hd,
        });
        attentionDecode(rec, { out: OD, q: QL, kCache: KS, vCache: VS, positions: PL }, {
          ...shape,
          batch: 1,
          newTokens: 1,
          maxLen: S,
        }, S - 1);
      }, [OS, OD]);
      assert.ok(relError(od, os.slice((S - 1) * nH * hd)) < 1e-6);
      for (const x of [KC, VC, KN, VN, POS, Q, O, QS, KS, VS, OS, OD, QL, PL]) gpu.release(x);
    });

    await t.step("deterministic backward; shape errors are typed", async () => {
      const shape = { batch: 2, seqLen: 20, nHeads: 4, nKvHeads: 2, headDim: 8 };
      const rows = 40;
      const Q = gpu.upload(rng.normals(rows * 32), [rows, 32]),
        K = gpu.upload(rng.normals(rows * 16), [rows, 16]);
      const V = gpu.upload(rng.normals(rows * 16), [rows, 16]),
        DO = gpu.upload(rng.normals(rows * 32), [rows, 32]);
      const O = gpu.tensor([rows, 32]), L = gpu.tensor([rows, 4]), DL = gpu.tensor([rows, 4]);
      const DQ = gpu.tensor([rows, 32]), DK = gpu.tensor([rows, 16]), DV = gpu.tensor([rows, 16]);
      const run = () =>
        gpu.run((rec) => {
          attentionForward(rec, { out: O, lse: L, q: Q, k: K, v: V }, shape);
          attentionBackward(rec, {
            dq: DQ,
            dk: DK,
            dv: DV,
            dout: DO,
            q: Q,
            k: K,
            v: V,
            out: O,
            lse: L,
            delta: DL,
          }, shape);
        }, [DQ, DK, DV]);
      const a = await run(), b = await run();
      for (let i = 0; i < 3; i++) assert.ok(sameBits(a[i], b[i]));
      const rec = gpu.record();
      try {
        assert.throws(
          () =>
            attentionForward(rec, { out: O, lse: L, q: Q, k: K, v: V }, { ...shape, nKvHeads: 3 }),
          /does not divide/,
        );
        assert.throws(
          () =>
            attentionForward(rec, { out: O, lse: L, q: Q, k: K, v: V }, { ...shape, seqLen: 21 }),
          GpuShapeError,
        );
        assert.throws(
          () =>
            attentionForward(rec, { out: O, lse: gpu.tensor([rows, 3]), q: Q, k: K, v: V }, shape),
          GpuShapeError,
        );
      } finally {
        rec.discard();
      }
    });
  } finally {
    gpu.close();
  }
});
