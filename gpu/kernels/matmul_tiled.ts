/**
 * The workgroup-memory tiled matmul for real GPUs, in several tile shapes (chosen per adapter by
 * gpu/autotune.ts). Semantics as in kernels/matmul.ts: `C = α·op(A)·op(B) + β·C`, described by a
 * `Problem` (sizes and element strides, A(m,k) and B(n,k)).
 *
 * A workgroup of (BN/TN)×(BM/TM) invocations owns a BM×BN tile of C. Per K slice of BK it stages
 * A's BM×BK and B's BN×BK elements in workgroup memory (k-major, four rows per vec4), loading
 * vec4s from storage along whichever index is contiguous when sizes and alignment allow ("k4",
 * "r4"; scalar "k1"/"r1" otherwise, consecutive invocations on consecutive addresses). Each
 * invocation then keeps TM×TN accumulators (as vec4 rows) in registers and reads its operands
 * from workgroup memory as vec4s. The rows and columns an invocation owns are interleaved in
 * groups of four across the workgroup, so neighbouring invocations read neighbouring vec4s.
 *
 * Bits: every output element is one FMA chain over k = 0..K-1 in order, as in the register
 * kernel, whatever the tile shape (the zero padding past K adds fma(0, 0, acc) = acc exactly, and
 * an accumulator that starts at +0 never becomes −0). So every tile shape gives the same bits as
 * every other and as the register kernel on a device whose fma is exact, and the autotune's
 * choice cannot make two workers differ.
 *
 * 16-bit staging: when A and B are both f16 and the device has `shader-f16`, the "h" variants
 * stage the slices as f16 (half the workgroup memory and its traffic); the values are the
 * inputs' own f16 values, converted exactly to f32 for the f32 FMA chain, so the bits are those
 * of the f32 variant.
 *
 * Grid: x = column tiles, y·z = row tiles (z only when the row tiles exceed the per-dimension
 * limit of 65,535). Loop passes per invocation: ⌈K/BK⌉ + 1 (the constant loops are written out).
 * @module
 */
import { defineKernelVariants } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { type GpuTensor, isHalf } from "../tensor.ts";
import { MAX_GROUPS_PER_DIM } from "./grid.ts";
import { type Fused, type NormAxis, normed, scaleArray, storeWgsl } from "./matmul_fused.ts";

/** A tile shape: BM×BN outputs per workgroup, K slices of BK, TM×TN per invocation. */
export interface TileShape {
  readonly BM: number;
  readonly BN: number;
  readonly BK: number;
  readonly TM: number;
  readonly TN: number;
}

/**
 * The shapes the autotune chooses among, by name. Every TM and TN is a multiple of 4 (vec4
 * reads), every workgroup has 128 or 256 invocations.
 */
export const TILE_SHAPES: Readonly<Record<string, TileShape>> = {
  "64x64x16/4x4": { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 },
  "32x64x16/4x4": { BM: 32, BN: 64, BK: 16, TM: 4, TN: 4 },
  "128x64x16/8x4": { BM: 128, BN: 64, BK: 16, TM: 8, TN: 4 },
  "64x128x16/4x8": { BM: 64, BN: 128, BK: 16, TM: 4, TN: 8 },
  "128x128x8/8x8": { BM: 128, BN: 128, BK: 8, TM: 8, TN: 8 },
  "128x128x16/8x8": { BM: 128, BN: 128, BK: 16, TM: 8, TN: 8 },
};

/** The shape used where nothing was tuned (the tiled kernel this module replaced). */
export const DEFAULT_TILE = "64x64x16/4x4";

/**
 * Version of the tiled kernels' code: part of the autotune cache key, so that a change of the
 * kernels invalidates choices measured on the old ones.
 */
export const TILED_KERNEL_VERSION = 2;

/** The logical problem: C(m,n) = α Σ_k A(m,k)·B(n,k) + β C(m,n), with element strides. */
export interface TiledProblem {
  M: number;
  N: number;
  K: number;
  sAm: number;
  sAk: number;
  sBn: number;
  sBk: number;
  /** The operand read through RMSNorm (kernels/matmul_fused.ts), by the axis t runs along. */
  normA?: NormAxis;
  normB?: NormAxis;
}

/**
 * How an operand's slice is staged: vec4 along k ("k4") or along its rows ("r4"), or scalar with
 * k ("k1") or the rows ("r1") as the fast index of consecutive invocations.
 */
type Stage = "k4" | "r4" | "k1" | "r1";
type Operand = "f32" | "bf16" | "f16";

interface TiledConfig extends TileShape {
  am: Stage;
  bm: Stage;
  at: Operand;
  bt: Operand;
  /** Stage in f16 workgroup memory (both operands f16, device with shader-f16). */
  half: boolean;
  /** RMSNorm on load of A or B, applied while staging (once per element and tile). */
  an: NormAxis | "";
  bn: NormAxis | "";
  /** The store adds the residual R (kernels/matmul_fused.ts). */
  res: boolean;
}

/** The name of a tile shape. */
export const tileName = (s: TileShape) => `${s.BM}x${s.BN}x${s.BK}/${s.TM}x${s.TN}`;

const configKey = (c: TiledConfig) =>
  `${c.BM}x${c.BN}x${c.BK}_${c.TM}x${c.TN}_${c.am}${c.bm}_${c.at}${c.bt}${c.half ? "_h" : ""}` +
  (c.an || c.bn ? `_n${c.an || "-"}${c.bn || "-"}` : "") + (c.res ? "_r" : "");

/** WGSL statements `line(0) … line(n-1)` written out (constant loops add no loop passes). */
function unrolled(n: number, line: (i: number) => string, indent = "  "): string {
  return Array.from({ length: n }, (_, i) => line(i)).join(`\n${indent}`);
}

/**
 * Staging statements of one operand: `op` A (rows m, tile R = BM) or B (rows n, R = BN). The
 * slice is R×BK elements stored k-major as [BK][R/4] vec4s of the workgroup array `${op}s`.
 */
function staging(
  op: "A" | "B",
  mode: Stage,
  R: number,
  BK: number,
  WG: number,
  st: string,
  norm: NormAxis | "",
): string {
  const [r0, Rn, sR, sK] = op === "A" ? ["m0", "M", "sAm", "sAk"] : ["n0", "N", "sBn", "sBk"];
  // `v = gamma·(v·rstd)` for a normalized operand: rows from `row` (four with `rows4`), k from k.
  const norming = (rows4: boolean, k4: boolean) => {
    if (!norm) return "";
    const ra = scaleArray(norm, true), ka = scaleArray(norm, false);
    const four = (arr: string, i: string) =>
      `vec4<f32>(${[0, 1, 2, 3].map((c) => `${arr}[${i} + ${c}u]`)})`;
    const rs = rows4 ? four(ra, `${r0} + r`) : `${ra}[${r0} + r]`;
    const ks = k4 ? four(ka, "k0 + k") : `${ka}[k0 + k]`;
    return ` v = ${normed(norm, "v", rs, ks)};`;
  };
  const arr = `${op}s`;
  const vec = mode === "k4" || mode === "r4";
  const items = vec ? (R * BK) / 4 : R * BK;
  const per = Math.ceil(items / WG);
  const guard = items % WG !== 0;
  const out: string[] = [];
  for (let j = 0; j < per; j++) {
    const L: string[] = [`let e = tid + ${j * WG}u;`];
    if (mode === "k4") {
      L.push(
        `let r = e / ${BK / 4}u;`,
        `let k = (e % ${BK / 4}u) * 4u;`,
        `var v = vec4<f32>(0.0);`,
        `if (${r0} + r < p.${Rn} && k0 + k < p.K) { v = ${op}_at4((${r0} + r) * p.${sR} + k0 + k);${
          norming(false, true)
        } }`,
        ...[0, 1, 2, 3].map((c) =>
          `${arr}[(k + ${c}u) * ${R / 4}u + r / 4u][r % 4u] = ${st}(v.${"xyzw"[c]});`
        ),
      );
    } else if (mode === "r4") {
      L.push(
        `let k = e / ${R / 4}u;`,
        `let r = (e % ${R / 4}u) * 4u;`,
        `var v = vec4<f32>(0.0);`,
        `if (${r0} + r < p.${Rn} && k0 + k < p.K) { v = ${op}_at4(${r0} + r + (k0 + k) * p.${sK});${
          norming(true, false)
        } }`,
        `${arr}[k * ${R / 4}u + r / 4u] = vec4<${st}>(v);`,
      );
    } else {
      L.push(
        mode === "k1" ? `let r = e / ${BK}u;` : `let r = e % ${R}u;`,
        mode === "k1" ? `let k = e % ${BK}u;` : `let k = e / ${R}u;`,
        `var v = 0.0;`,
        `if (${r0} + r < p.${Rn} && k0 + k < p.K) { v = ${op}_at((${r0} + r) * p.${sR} + (k0 + k) * p.${sK});${
          norming(false, false)
        } }`,
        `${arr}[k * ${R / 4}u + r / 4u][r % 4u] = ${st}(v);`,
      );
    }
    const body = L.join("\n      ");
    out.push(
      guard
        ? `if (tid + ${j * WG}u < ${items}u) {\n      ${body}\n    }`
        : `{\n      ${body}\n    }`,
    );
  }
  return out.join("\n    ");
}

const TILED = defineKernelVariants((c: TiledConfig) => {
  const { BM, BN, BK, TM, TN } = c;
  const WX = BN / TN, WY = BM / TM, WG = WX * WY;
  const st = c.half ? "f16" : "f32";
  const operand = (m: Stage, t: Operand): `read ${"f32" | "vec4<f32>" | "bf16" | "f16"}` =>
    t !== "f32" ? `read ${t}` : m === "k4" || m === "r4" ? "read vec4<f32>" : "read f32";
  const gs = [...Array(TM / 4).keys()], hs = [...Array(TN / 4).keys()];
  const acc = (i: number, h: number) => `acc${i}_${h}`;
  const inner = unrolled(BK, (kk) => {
    const L: string[] = [];
    for (const g of gs) L.push(`let a${g} = As[${kk * (BM / 4) + g * WY}u + lid.y];`);
    for (const h of hs) {
      L.push(
        `let b${h} = ${c.half ? "vec4<f32>(" : ""}Bs[${kk * (BN / 4) + h * WX}u + lid.x]${
          c.half ? ")" : ""
        };`,
      );
    }
    for (const g of gs) {
      for (let q = 0; q < 4; q++) {
        for (const h of hs) {
          const i = 4 * g + q;
          L.push(
            `${acc(i, h)} = fma(vec4<f32>(f32(a${g}.${"xyzw"[q]})), b${h}, ${acc(i, h)});`,
          );
        }
      }
    }
    return `{ ${L.join(" ")} }`;
  }, "    ");
  const stores: string[] = [];
  for (const g of gs) {
    for (let q = 0; q < 4; q++) {
      for (const h of hs) {
        const i = 4 * g + q;
        stores.push(
          `store4(m0 + (${g * WY}u + lid.y) * 4u + ${q}u, n0 + (${h * WX}u + lid.x) * 4u, ${
            acc(i, h)
          });`,
        );
      }
    }
  }
  return {
    name: `matmul_tiled_${configKey(c)}`,
    enables: c.half ? ["f16"] : [],
    params: {
      M: "u32",
      N: "u32",
      K: "u32",
      sAm: "u32",
      sAk: "u32",
      sBn: "u32",
      sBk: "u32",
      sCm: "u32",
      sCn: "u32",
      alpha: "f32",
      beta: "f32",
    },
    bindings: {
      A: operand(c.am, c.at),
      B: operand(c.bm, c.bt),
      C: "read_write f32",
      R: "read f32?",
      nr: "read f32?",
      ng: "read f32?",
    },
    loopBound: ({ K }: { K: number }) => Math.ceil(K / BK) + 1,
    body: /* wgsl */ `
// [BK][BM/4] and [BK][BN/4]: a k-slice of the tile's rows, four rows per vec4.
var<workgroup> As: array<vec4<${st}>, ${(BK * BM) / 4}>;
var<workgroup> Bs: array<vec4<${st}>, ${(BK * BN) / 4}>;

${storeWgsl("m < p.M && n < p.N", "m * p.sCm + n * p.sCn", "m: u32, n: u32", c.res)}

fn store4(m: u32, n: u32, acc: vec4<f32>) {
  store(m, n, acc.x);
  store(m, n + 1u, acc.y);
  store(m, n + 2u, acc.z);
  store(m, n + 3u, acc.w);
}

@compute @workgroup_size(${WX}, ${WY})
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
  @builtin(local_invocation_id) lid: vec3<u32>,
  @builtin(local_invocation_index) tid: u32,
) {
  // Uniform over the workgroup, so returning before the barriers is allowed.
  let m0 = (wid.y + wid.z * nwg.y) * ${BM}u;
  if (m0 >= p.M) { return; }
  let n0 = wid.x * ${BN}u;
  ${unrolled(TM, (i) => hs.map((h) => `var ${acc(i, h)} = vec4<f32>(0.0);`).join(" "))}
  for (var k0 = 0u; k0 < p.K; k0 += ${BK}u) {
    ${staging("A", c.am, BM, BK, WG, st, c.an)}
    ${staging("B", c.bm, BN, BK, WG, st, c.bn)}
    workgroupBarrier();
    ${inner}
    workgroupBarrier();
  }
  ${stores.join("\n  ")}
}
`,
  } as const;
}, configKey);

/** The staging an operand's strides and alignment allow (see `Stage`). */
function stageOf(t: GpuTensor, rows: number, sRow: number, sK: number, K: number): Stage {
  const aligned = isHalf(t.dtype) || t.offset % 16 === 0;
  if (sK === 1 && sRow % 4 === 0 && K % 4 === 0 && aligned) return "k4";
  if (sRow === 1 && sK % 4 === 0 && rows % 4 === 0 && aligned) return "r4";
  return sK === 1 ? "k1" : "r1";
}

/** Options of one tiled dispatch. */
export interface TiledOptions {
  shape: TileShape;
  /** The device has `shader-f16` (enabled): two f16 operands are staged as f16. */
  shaderF16: boolean;
  /** Residual and norm-on-load tensors (kernels/matmul_fused.ts); default none. */
  fused?: Fused;
}

/** Records `C = α·op(A)·op(B) + β·C` with the tiled kernel of `options.shape`. */
export function dispatchTiled(
  rec: Recorder,
  c: GpuTensor,
  a: GpuTensor,
  b: GpuTensor,
  p: TiledProblem,
  alpha: number,
  beta: number,
  options: TiledOptions,
): void {
  const s = options.shape;
  const at = a.dtype as Operand, bt = b.dtype as Operand;
  const config: TiledConfig = {
    ...s,
    am: stageOf(a, p.M, p.sAm, p.sAk, p.K),
    bm: stageOf(b, p.N, p.sBn, p.sBk, p.K),
    at,
    bt,
    half: options.shaderF16 && at === "f16" && bt === "f16",
    an: p.normA ?? "",
    bn: p.normB ?? "",
    res: options.fused?.R != null,
  };
  const f = options.fused ?? { R: null, nr: null, ng: null };
  const rowTiles = Math.ceil(p.M / s.BM);
  const z = Math.ceil(rowTiles / MAX_GROUPS_PER_DIM);
  rec.dispatch(TILED.variant(config), {
    bindings: { A: a, B: b, C: c, R: f.R, nr: f.nr, ng: f.ng },
    params: {
      M: p.M,
      N: p.N,
      K: p.K,
      sAm: p.sAm,
      sAk: p.sAk,
      sBn: p.sBn,
      sBk: p.sBk,
      sCm: p.N,
      sCn: 1,
      alpha,
      beta,
    },
    grid: [Math.ceil(p.N / s.BN), Math.ceil(rowTiles / z), z],
  });
}
