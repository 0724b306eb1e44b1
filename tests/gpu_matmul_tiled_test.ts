// The tiled matmul in every tile shape (forced on lavapipe, whose default stays the register
// kernel) against the float64 reference and against the register kernel's bits, at odd and at
// real sizes, past the per-dimension workgroup limit, with f16 operands staged as f16 where the
// device has shader-f16; and the autotune with its per-adapter cache.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/engine.ts";
import { matmul, type MatmulLayout } from "../gpu/kernels/matmul.ts";
import { TILE_SHAPES } from "../gpu/kernels/matmul_tiled.ts";
import { adapterKey } from "../gpu/autotune.ts";
import { matmulRef } from "../gpu/reference.ts";
import { relError, sameBits } from "../gpu/check.ts";
import { packHalf, unpackHalf } from "../gpu/half.ts";
import { Rng } from "../core/rng.ts";

/** f32 values rounded to f16: their bits and their exact values. */
function f16(x: Float32Array): { bits: Uint16Array; values: Float32Array } {
  const words = packHalf(x, "f16");
  return {
    bits: new Uint16Array(words.buffer, 0, x.length),
    values: unpackHalf(words, x.length, "f16"),
  };
}

const LAYOUTS: MatmulLayout[] = ["NT", "NN", "TN"];
const TILES = Object.keys(TILE_SHAPES);

function dims(layout: MatmulLayout, M: number, N: number, K: number) {
  return { a: layout === "TN" ? [K, M] : [M, K], b: layout === "NT" ? [N, K] : [K, N] };
}

// Whether the default adapter has shader-f16 decides whether the f16-staging test can run here.
const probe = await Gpu.open({ log: () => {} });
const shaderF16 = probe.info.shaderF16;
const adapterName = probe.info.description;
probe.close();

Deno.test("tiled matmul: every tile shape and layout against float64 and the register bits", async () => {
  const gpu = await Gpu.open({ matmul: "tiled" });
  const rng = new Rng(303);
  try {
    // Tile multiples and not; K % 4 == 0 (vec4 staging along k or rows) and odd K (scalar).
    const shapes = [[1, 1, 1], [70, 33, 17], [65, 66, 68], [128, 128, 32], [130, 260, 20]];
    for (const tile of TILES) {
      for (const layout of LAYOUTS) {
        for (const [M, N, K] of shapes) {
          const d = dims(layout, M, N, K);
          const a = rng.normals(M * K), b = rng.normals(N * K), c0 = rng.normals(M * N);
          const A = gpu.upload(a, d.a), B = gpu.upload(b, d.b);
          const C = gpu.upload(c0, [M, N]), R = gpu.upload(c0, [M, N]);
          const [c, r] = await gpu.run((rec) => {
            matmul(rec, layout, C, A, B, { alpha: 0.7, beta: 1, variant: "tiled", tile });
            matmul(rec, layout, R, A, B, { alpha: 0.7, beta: 1, variant: "register" });
          }, [C, R]);
          const err = relError(c, matmulRef(layout, M, N, K, a, b, c0, 0.7, 1));
          assert.ok(err < 1e-5, `${tile} ${layout} ${M}x${N}x${K}: rel error ${err}`);
          assert.ok(sameBits(c, r), `${tile} ${layout} ${M}x${N}x${K}: bits differ from register`);
          for (const x of [A, B, C, R]) gpu.release(x);
        }
      }
    }
  } finally {
    gpu.close();
  }
});

Deno.test("tiled matmul: 2048×2048×1024 in every layout, rows against float64, all bits against register", async () => {
  const gpu = await Gpu.open({ matmul: "tiled", matmulTile: "128x128x16/8x8" });
  const rng = new Rng(304);
  try {
    const M = 2048, N = 2048, K = 1024;
    for (const layout of LAYOUTS) {
      const d = dims(layout, M, N, K);
      const a = rng.normals(M * K), b = rng.normals(N * K);
      const A = gpu.upload(a, d.a), B = gpu.upload(b, d.b);
      const C = gpu.tensor([M, N]), R = gpu.tensor([M, N]);
      const [c, r] = await gpu.run((rec) => {
        matmul(rec, layout, C, A, B); // the engine's variant and tile: tiled 128x128x16/8x8
        matmul(rec, layout, R, A, B, { variant: "register" });
      }, [C, R]);
      assert.ok(sameBits(c, r), `${layout}: bits differ from the register kernel`);
      // Float64 of 24 random rows (the whole product in float64 would take minutes here).
      let worst = 0;
      for (let s = 0; s < 24; s++) {
        const m = rng.int(M);
        const out = new Float64Array(N);
        for (let n = 0; n < N; n++) {
          let acc = 0;
          for (let k = 0; k < K; k++) {
            const av = layout === "TN" ? a[k * M + m] : a[m * K + k];
            const bv = layout === "NT" ? b[n * K + k] : b[k * N + n];
            acc += av * bv;
          }
          out[n] = acc;
        }
        worst = Math.max(worst, relError(c.subarray(m * N, (m + 1) * N), out));
      }
      console.log(`tiled ${layout} ${M}x${N}x${K}: worst row rel error ${worst.toExponential(2)}`);
      assert.ok(worst < 1e-5, `${layout}: rel error ${worst}`);
      for (const x of [A, B, C, R]) gpu.release(x);
    }
  } finally {
    gpu.close();
  }
});

Deno.test("tiled matmul: more than 65,535 row tiles fold into the grid's z (65,537 workgroups)", async () => {
  const gpu = await Gpu.open({ matmul: "tiled", matmulTile: "32x64x16/4x4" });
  const rng = new Rng(305);
  try {
    // 65,536 × 32 + 9 rows: 65,537 row tiles of 32, over the per-dimension limit.
    const M = 65536 * 32 + 9, N = 5, K = 4;
    const a = rng.normals(M * K), b = rng.normals(N * K);
    const A = gpu.upload(a, [M, K]), B = gpu.upload(b, [N, K]), C = gpu.tensor([M, N]);
    const [c] = await gpu.run((rec) => matmul(rec, "NT", C, A, B, { variant: "tiled" }), [C]);
    const err = relError(c, matmulRef("NT", M, N, K, a, b, null));
    assert.ok(err < 1e-5, `rel error ${err}`);
    assert.ok(c.subarray((M - 9) * N).every((v) => v !== 0), "the last rows were written");
    for (const x of [A, B, C]) gpu.release(x);
  } finally {
    gpu.close();
  }
});

Deno.test({
  name: "tiled matmul: two f16 operands staged as f16 (shader-f16), f32 accumulation",
  ignore: !shaderF16,
  fn: async () => {
    const gpu = await Gpu.open({ matmul: "tiled" });
    const rng = new Rng(306);
    try {
      assert.ok(gpu.info.features.includes("shader-f16"), "shader-f16 was requested");
      for (const tile of ["64x64x16/4x4", "128x128x8/8x8"]) {
        for (const layout of LAYOUTS) {
          for (const [M, N, K] of [[70, 33, 17], [130, 260, 64], [512, 512, 512]]) {
            const d = dims(layout, M, N, K);
            const ha = f16(rng.normals(M * K));
            const hb = f16(rng.normals(N * K));
            const A = gpu.uploadHalf(ha.bits, "f16", d.a), B = gpu.uploadHalf(hb.bits, "f16", d.b);
            const A32 = gpu.upload(ha.values, d.a), B32 = gpu.upload(hb.values, d.b);
            const C = gpu.tensor([M, N]), R = gpu.tensor([M, N]);
            const [c, r] = await gpu.run((rec) => {
              matmul(rec, layout, C, A, B, { variant: "tiled", tile });
              matmul(rec, layout, R, A32, B32, { variant: "register" });
            }, [C, R]);
            const err = relError(c, matmulRef(layout, M, N, K, ha.values, hb.values, null));
            assert.ok(err < 1e-5, `${tile} ${layout} ${M}x${N}x${K}: rel error ${err}`);
            // The f16 values convert to f32 exactly: the f32 chain's bits.
            assert.ok(sameBits(c, r), `${tile} ${layout} ${M}x${N}x${K}: bits`);
            for (const x of [A, B, A32, B32, C, R]) gpu.release(x);
          }
        }
      }
    } finally {
      gpu.close();
    }
  },
});

Deno.test("autotune: tunes once per adapter, caches the choice, the next engine reads it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "autotune-" });
  const cacheFile = `${dir}/hd-pissa/autotune.json`;
  const lines: string[] = [];
  const candidates = ["32x64x16/4x4", "64x64x16/4x4"];
  const options = {
    matmul: "tiled" as const,
    autotune: { force: true, size: 128, candidates, cacheFile },
    log: (l: string) => lines.push(l),
  };
  try {
    const g1 = await Gpu.open(options);
    const first = g1.matmulChoice;
    assert.equal(first.source, "tuned");
    assert.ok(candidates.includes(first.tile), first.tile);
    assert.deepEqual(Object.keys(first.timings ?? {}).sort(), [...candidates].sort());
    assert.deepEqual(g1.stats().matmul, { variant: "tiled", tile: first.tile, source: "tuned" });
    const cache = JSON.parse(await Deno.readTextFile(cacheFile));
    assert.equal(cache.entries[adapterKey(g1.info)].tile, first.tile);
    assert.ok(adapterKey(g1.info).includes(adapterName));
    g1.close();
    assert.ok(lines.some((l) => l.includes("autotuning")), lines.join("\n"));

    lines.length = 0;
    const g2 = await Gpu.open(options);
    assert.equal(g2.matmulChoice.source, "cache");
    assert.equal(g2.matmulChoice.tile, first.tile);
    assert.ok(lines.length === 1 && lines[0].includes("autotune cache"), lines.join("\n"));
    g2.close();
    await assert.rejects(() => Deno.stat(`${cacheFile}.lock`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("autotune: a cache folder that cannot be written is announced, the engine still opens", async () => {
  const dir = await Deno.makeTempDir({ prefix: "autotune-ro-" });
  const lines: string[] = [];
  try {
    // A file where the cache folder should be: the folder cannot be made.
    await Deno.writeTextFile(`${dir}/hd-pissa`, "not a folder");
    const gpu = await Gpu.open({
      matmul: "tiled",
      autotune: {
        force: true,
        size: 64,
        candidates: ["32x64x16/4x4"],
        cacheFile: `${dir}/hd-pissa/autotune.json`,
      },
      log: (l) => lines.push(l),
    });
    assert.equal(gpu.matmulChoice.tile, "32x64x16/4x4");
    assert.match(lines.join("\n"), /autotuned for this process only: the cache .* is not writable/);
    gpu.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the CPU adapter keeps the register kernel and says so; a bad tile name is refused", async () => {
  const lines: string[] = [];
  const gpu = await Gpu.open({ log: (l) => lines.push(l) });
  try {
    if (gpu.info.isCpu) {
      assert.equal(gpu.matmulVariant, "register");
      assert.equal(gpu.stats().matmul.source, "cpu");
      assert.match(lines.join("\n"), /register kernel on the CPU adapter/);
    } else {
      assert.equal(gpu.matmulVariant, "tiled");
      assert.ok(["cache", "tuned"].includes(gpu.stats().matmul.source));
    }
  } finally {
    gpu.close();
  }
  await assert.rejects(() => Gpu.open({ matmulTile: "7x7" }), /no tile shape named '7x7'/);
});
