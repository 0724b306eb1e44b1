/**
 * Matrix products in the three layouts a linear layer and its adapters need (row-major, f32,
 * Hugging Face convention `y = x·Wᵀ` with `W [out, in]`):
 *
 * - NT `C[M,N] = α·A[M,K]·B[N,K]ᵀ + β·C` — linear forward `x·Wᵀ`, adapter products `x·Aᵀ`, `(xAᵀ)·Bᵀ`;
 * - NN `C[M,N] = α·A[M,K]·B[K,N] + β·C` — input gradients `dY·W`, `dY·B`, the HD-PiSSA update;
 * - TN `C[M,N] = α·A[K,M]ᵀ·B[K,N] + β·C` — weight gradients `dYᵀ·x`, `g_B`, `g_A`.
 *
 * `β = 0` overwrites C without reading it (C may hold garbage or NaN); `β = 1` accumulates.
 * Each output element is one fused-multiply-add chain over k = 0..K-1 in order, in every
 * implementation and tile shape, so results are deterministic and (on lavapipe, checked by the
 * tests) bit-identical whichever kernel computes them.
 *
 * Two implementations share these semantics:
 * - "register" (CPU adapters such as lavapipe, and skinny products everywhere): no workgroup
 *   memory. A workgroup owns TU rows of the "uniform" operand (addresses depend only on the
 *   workgroup id) and its invocations own TL columns each of the "lane" operand; every
 *   invocation keeps a TU×TL block of accumulators in registers, so each loaded element feeds
 *   TU or TL FMAs. Operands are loaded as vec4 along whichever index is contiguous when the
 *   sizes allow (see LoadMode). The larger of M and N becomes the lane dimension (computing
 *   Cᵀ = B·Aᵀ when M > N), so skinny adapter products (N = r) still fill the SIMD lanes.
 *   Workgroups are one or two SIMD batches (8/16 invocations) on CPU adapters, 64 on GPUs.
 *   On lavapipe a load costs about as much as twenty FMAs and workgroup barriers are slow, which
 *   is why this beats workgroup-memory tiling there (~26 GFLOP/s against an FMA peak of ~120 on
 *   two cores; the remaining gap is load instructions and spilled accumulators).
 * - "tiled" (real GPUs, when M and N are at least 32): workgroup-memory tiles in several shapes,
 *   the one in use chosen per adapter by a short autotune (kernels/matmul_tiled.ts,
 *   gpu/autotune.ts); f16 operands staged as f16 where the device has `shader-f16`.
 *
 * Weights in 16 bits: A and B may each be a bf16/f16 tensor (packed two per word, gpu/half.ts),
 * e.g. a frozen W in `x·Wᵀ` and `dY·W`. The kernels read every operand through the generated
 * accessors (`A_at`, `A_at4`, see gpu/kernel.ts), so the same kernel source serves every element
 * type, and each value is converted to f32 exactly before the same f32 FMA chain: a product
 * with a 16-bit W equals the f32 product with W's values. A 16-bit C (the HD-PiSSA update and
 * the adapter merge, which change W) is computed in f32 into a scratch [M, N] and then added
 * and rounded to nearest even once per element (`accumulatePacked`), so `W ← rnd(W + α·A·B)`
 * is the f32 formula with one rounding, the same bits on every device.
 *
 * Fusions (kernels/matmul_fused.ts), in both implementations: `norm` reads NT's A or TN's B
 * through RMSNorm (gamma·(x·rstd), applied to each loaded value; the tiled kernel does it once per
 * staged element), `residual` adds R in the store. Neither changes the FMA chain, so the bits
 * are those of the separate passes.
 *
 * Loop passes per invocation (see `MAX_INVOCATION_LOOP`): the register kernel runs ⌈K/step⌉ + 1
 * (step 4 when K % 4 == 0, else 1), the tiled kernel ⌈K/BK⌉ + 1 (its constant loops are written
 * out; BK is 8 or 16), so K may reach 65,534 (262,136 with step 4) and 524,272 or more; a larger K is
 * refused with KernelLoopBoundError.
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import { defineKernelVariants } from "../kernel.ts";
import type { MatmulVariant, Recorder } from "../recorder.ts";
import { type GpuTensor, isHalf } from "../tensor.ts";
import { accumulatePacked } from "./packed.ts";
import { dispatchTiled, TILE_SHAPES } from "./matmul_tiled.ts";
import { type Fused, type NormAxis, normed, scaleArray, storeWgsl } from "./matmul_fused.ts";

/** Operand layouts; the letters say whether A and B are used as stored (N) or transposed (T). */
export type MatmulLayout = "NT" | "NN" | "TN";

export interface MatmulOptions {
  /** Scale of the product (default 1). */
  alpha?: number;
  /** Scale of the existing C (default 0: C is overwritten and not read). */
  beta?: number;
  /** Force an implementation (default: the device's preference, see the module doc). */
  variant?: MatmulVariant;
  /**
   * Invocations per workgroup of the register kernel (tests use it to run the GPU shape on any
   * adapter). Default: 8 or 16 on CPU adapters (one or two SIMD batches), 64 on GPUs (whole
   * warps).
   */
  registerWorkgroup?: 8 | 16 | 32 | 64;
  /**
   * Tile shape of the tiled kernel, by name (kernels/matmul_tiled.ts `TILE_SHAPES`); default the
   * engine's choice (gpu/autotune.ts).
   */
  tile?: string;
  /**
   * f32 [M, N] scratch for a 16-bit C (see the module doc); default a recorder scratch, held
   * until the submit. Callers updating many weights in one recording pass one per shape.
   */
  scratch?: GpuTensor;
  /**
   * RMSNorm on load (see `NormOnLoad`): the activation operand, NT's A or TN's B, is read as its
   * normalized values, so the normalized [T, F] tensor is never written.
   */
  norm?: NormOnLoad;
  /** `C = α·op(A)·op(B) + β·C + R` in the store: a residual add in the same pass. R [M, N]. */
  residual?: GpuTensor;
}

/**
 * An operand X [T, F] (row-major, f32) read as RMSNorm's output `gamma[f]·(X[t,f]·rstd[t])`,
 * the very f32 operations of `rmsnormForward`, so the product has the bits of the unfused one.
 * NT reads A = X (t = m, f = k); TN reads B = X (t = k, f = n): the layer's forward `x̂·Wᵀ` and
 * its weight gradient `dYᵀ·x̂`.
 */
export interface NormOnLoad {
  /** [T], from `rmsnormRstd` (kept for the backward). */
  rstd: GpuTensor;
  /** [F], the norm's weight. */
  gamma: GpuTensor;
}

/** The element type of a float operand (a 16-bit one is read through its accessors). */
type Operand = "f32" | "bf16" | "f16";

/** Throws GpuShapeError unless `t` is a 2-D float tensor (f32, bf16 or f16). */
function floatMatrix(what: string, t: GpuTensor): [number, number] {
  if (t.shape.length !== 2 || t.dtype === "i32") {
    throw new GpuShapeError(`${what}: expected a 2-D float tensor, got ${t.describe()}`);
  }
  return [t.shape[0], t.shape[1]];
}

/** The logical problem: C(m,n) = α Σ_k A(m,k)·B(n,k) + β C(m,n), with element strides. */
interface Problem {
  M: number;
  N: number;
  K: number;
  sAm: number;
  sAk: number;
  sBn: number;
  sBk: number;
  /** Which operand is read through RMSNorm, and along which index its rows (t) run. */
  normA?: NormAxis;
  normB?: NormAxis;
}

function problem(layout: MatmulLayout, c: GpuTensor, a: GpuTensor, b: GpuTensor): Problem {
  const [cm, cn] = floatMatrix(`matmul${layout} C`, c);
  const [a0, a1] = floatMatrix(`matmul${layout} A`, a);
  const [b0, b1] = floatMatrix(`matmul${layout} B`, b);
  let p: Problem;
  if (layout === "NT") p = { M: a0, K: a1, N: b0, sAm: a1, sAk: 1, sBn: b1, sBk: 1 };
  else if (layout === "NN") p = { M: a0, K: a1, N: b1, sAm: a1, sAk: 1, sBn: 1, sBk: b1 };
  else p = { M: a1, K: a0, N: b1, sAm: 1, sAk: a1, sBn: 1, sBk: b1 };
  const bk = layout === "NT" ? b1 : b0;
  if (bk !== p.K || cm !== p.M || cn !== p.N) {
    const shapes = {
      NT: "C[M,N], A[M,K], B[N,K]",
      NN: "C[M,N], A[M,K], B[K,N]",
      TN: "C[M,N], A[K,M], B[K,N]",
    };
    throw new GpuShapeError(
      `matmul${layout} needs ${shapes[layout]}; got C [${c.shape}], A [${a.shape}], B [${b.shape}]`,
    );
  }
  return p;
}

// ---- register-blocked implementation ---------------------------------------------------------

/**
 * How an operand is loaded. On lavapipe every load instruction costs about as much as twenty
 * FMAs whether its address is uniform or not, and a vec4 load costs about the same as a scalar
 * one, so loads are made vec4 along whichever index is contiguous:
 * - "s": scalar loads, any strides;
 * - "k": vec4 along k (the operand's k stride is 1);
 * - "r": vec4 along the operand's own rows/columns (its row stride is 1): four adjacent rows of
 *   the uniform operand, or four adjacent columns owned by one invocation of the lane operand.
 */
type LoadMode = "s" | "k" | "r";

/**
 * One register kernel: TU×TL accumulators per invocation, WG invocations, load modes, k step,
 * and the operands' element types.
 */
interface RegisterConfig {
  TU: number;
  TL: number;
  WG: number;
  pm: LoadMode;
  qm: LoadMode;
  step: 1 | 4;
  pt: Operand;
  qt: Operand;
  /** RMSNorm on load of P or Q (see `NormOnLoad`), by the axis t runs along; "" for none. */
  pn: NormAxis | "";
  qn: NormAxis | "";
  /** The store adds the residual R (kernels/matmul_fused.ts). */
  res: boolean;
}

/** "" for two f32 operands (the names of the f32 kernels are unchanged), else `_<P>_<Q>`. */
const typeKey = (p: Operand, q: Operand) => (p === "f32" && q === "f32" ? "" : `_${p}_${q}`);
const normKey = (p: NormAxis | "", q: NormAxis | "") => (p || q ? `_n${p || "-"}${q || "-"}` : "");
const registerKey = (c: RegisterConfig) =>
  `${c.TU}x${c.TL}x${c.WG}${c.pm}${c.qm}${c.step}${typeKey(c.pt, c.qt)}${normKey(c.pn, c.qn)}${
    c.res ? "_r" : ""
  }`;

const REGISTER = defineKernelVariants(registerKernel, registerKey);

function registerKernel(c: RegisterConfig) {
  const { TU, TL, WG, pm, qm, step, pt, qt, pn, qn, res } = c;
  const L: string[] = [];
  const us = [...Array(TU).keys()];
  const ls = [...Array(TL).keys()];
  const kks = [...Array(step).keys()];
  const comp = (x: number) => "xyzw"[x];
  // Lane column of accumulator j: interleaved by WG for scalar/k loads, in runs of four for r.
  const col = (j: number) =>
    qm === "r" ? `lb + ${(Math.floor(j / 4) * WG) * 4 + (j % 4)}u` : `lb + ${j * WG}u`;
  L.push(`  let lb = wid.x * ${WG * TL}u + lid.x * ${qm === "r" ? 4 : 1}u;`);
  if (pm === "r") {
    for (let g = 0; g < TU / 4; g++) L.push(`  let pg${g} = min(u0 + ${4 * g}u, p.U - 4u);`);
  } else {
    for (const i of us) L.push(`  let pu${i} = min(u0 + ${i}u, p.U - 1u) * p.sPu;`);
  }
  if (qm === "r") {
    for (let g = 0; g < TL / 4; g++) L.push(`  let qg${g} = min(lb + ${g * WG * 4}u, p.L - 4u);`);
  } else {
    for (const j of ls) L.push(`  let ql${j} = min(${col(j)}, p.L - 1u) * p.sQl;`);
  }
  // Scales of a normalized operand along its rows, loaded once (see `normed`).
  if (pn) {
    const arr = scaleArray(pn, true);
    if (pm === "r") {
      for (let g = 0; g < TU / 4; g++) {
        L.push(`  let ps${g} = vec4<f32>(${[0, 1, 2, 3].map((c) => `${arr}[pg${g} + ${c}u]`)});`);
      }
    } else for (const i of us) L.push(`  let ps${i} = ${arr}[min(u0 + ${i}u, p.U - 1u)];`);
  }
  if (qn) {
    const arr = scaleArray(qn, true);
    if (qm === "r") {
      for (let g = 0; g < TL / 4; g++) {
        L.push(`  let qs${g} = vec4<f32>(${[0, 1, 2, 3].map((c) => `${arr}[qg${g} + ${c}u]`)});`);
      }
    } else for (const j of ls) L.push(`  let qs${j} = ${arr}[min(${col(j)}, p.L - 1u)];`);
  }
  for (const i of us) for (const j of ls) L.push(`  var c${i}_${j} = 0.0;`);
  L.push(`  for (var k = 0u; k < p.K; k += ${step}u) {`);
  // Scales along k of a normalized operand, for this step's k + kk.
  for (const [n, x, m] of [[pn, "p", pm], [qn, "q", qm]] as const) {
    if (!n) continue;
    for (const kk of kks) L.push(`    let ${x}k${kk} = ${scaleArray(n, false)}[k + ${kk}u];`);
    if (m === "k") L.push(`    let ${x}k4 = vec4<f32>(${kks.map((kk) => `${x}k${kk}`)});`);
  }
  // a(i, kk) and b(j, kk): the operand values at row i / column j and k + kk.
  const a: string[][] = us.map(() => []);
  const b: string[][] = ls.map(() => []);
  if (pm === "k") {
    for (const i of us) {
      const v = `P_at4(pu${i} + k)`;
      L.push(`    let a${i} = ${pn ? normed(pn, v, `ps${i}`, "pk4") : v};`);
      for (const kk of kks) a[i][kk] = `a${i}.${comp(kk)}`;
    }
  } else if (pm === "r") {
    for (let g = 0; g < TU / 4; g++) {
      for (const kk of kks) {
        const v = `P_at4(pg${g} + (k + ${kk}u) * p.sPk)`;
        L.push(`    let a${g}_${kk} = ${pn ? normed(pn, v, `ps${g}`, `pk${kk}`) : v};`);
        for (let c = 0; c < 4; c++) a[4 * g + c][kk] = `a${g}_${kk}.${comp(c)}`;
      }
    }
  } else {
    for (const i of us) {
      for (const kk of kks) {
        const v = `P_at(pu${i} + (k + ${kk}u) * p.sPk)`;
        L.push(`    let a${i}_${kk} = ${pn ? normed(pn, v, `ps${i}`, `pk${kk}`) : v};`);
        a[i][kk] = `a${i}_${kk}`;
      }
    }
  }
  if (qm === "k") {
    for (const j of ls) {
      const v = `Q_at4(ql${j} + k)`;
      L.push(`    let b${j} = ${qn ? normed(qn, v, `qs${j}`, "qk4") : v};`);
      for (const kk of kks) b[j][kk] = `b${j}.${comp(kk)}`;
    }
  } else if (qm === "r") {
    for (let g = 0; g < TL / 4; g++) {
      for (const kk of kks) {
        const v = `Q_at4(qg${g} + (k + ${kk}u) * p.sQk)`;
        L.push(`    let b${g}_${kk} = ${qn ? normed(qn, v, `qs${g}`, `qk${kk}`) : v};`);
        for (let c = 0; c < 4; c++) b[4 * g + c][kk] = `b${g}_${kk}.${comp(c)}`;
      }
    }
  } else {
    for (const j of ls) {
      for (const kk of kks) {
        const v = `Q_at(ql${j} + (k + ${kk}u) * p.sQk)`;
        L.push(`    let b${j}_${kk} = ${qn ? normed(qn, v, `qs${j}`, `qk${kk}`) : v};`);
        b[j][kk] = `b${j}_${kk}`;
      }
    }
  }
  // k ascending for every accumulator: the same FMA chain as the scalar kernel.
  for (const kk of kks) {
    for (const i of us) {
      for (const j of ls) L.push(`    c${i}_${j} = fma(${a[i][kk]}, ${b[j][kk]}, c${i}_${j});`);
    }
  }
  L.push(`  }`);
  for (const i of us) for (const j of ls) L.push(`  store(u0 + ${i}u, ${col(j)}, c${i}_${j});`);
  // A 16-bit operand is one packed binding whatever its load mode (its accessors unpack).
  const operand = (m: LoadMode, t: Operand): `read ${"f32" | "vec4<f32>" | "bf16" | "f16"}` =>
    t !== "f32" ? `read ${t}` : m === "s" ? "read f32" : "read vec4<f32>";
  return {
    name: `matmul_register_${registerKey(c)}`,
    params: {
      U: "u32",
      L: "u32",
      K: "u32",
      sPu: "u32",
      sPk: "u32",
      sQl: "u32",
      sQk: "u32",
      sCu: "u32",
      sCl: "u32",
      alpha: "f32",
      beta: "f32",
    },
    bindings: {
      P: operand(pm, pt),
      Q: operand(qm, qt),
      C: "read_write f32",
      R: "read f32?",
      nr: "read f32?",
      ng: "read f32?",
    },
    // The k loop is the only loop: ⌈K/step⌉ iterations.
    loopBound: ({ K }: { K: number }) => Math.ceil(K / step) + 1,
    body: /* wgsl */ `
${storeWgsl("u < p.U && l < p.L", "u * p.sCu + l * p.sCl", "u: u32, l: u32", res)}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let u0 = wid.y * ${TU}u;
${L.join("\n")}
}
`,
  } as const;
}

/** The cheapest load mode an operand's strides and alignment allow (see LoadMode). */
function loadMode(
  t: GpuTensor,
  rows: number,
  sRow: number,
  sK: number,
  K: number,
  tile: number,
): LoadMode {
  // A 16-bit operand's four elements are two words from an even index: no offset condition.
  if (K % 4 !== 0 || (!isHalf(t.dtype) && t.offset % 16 !== 0)) return "s";
  if (sK === 1 && sRow % 4 === 0) return "k";
  if (sRow === 1 && sK % 4 === 0 && rows % 4 === 0 && tile % 4 === 0) return "r";
  return "s";
}

function dispatchRegister(
  rec: Recorder,
  c: GpuTensor,
  a: GpuTensor,
  b: GpuTensor,
  p: Problem,
  alpha: number,
  beta: number,
  options: MatmulOptions,
  fused: Fused,
): void {
  const swap = p.M > p.N;
  const U = swap ? p.N : p.M;
  const Lw = swap ? p.M : p.N;
  const TU = U <= 4 ? 4 : U <= 8 ? 8 : 16;
  const forced = options.registerWorkgroup;
  const [WG, TL] = forced ? [forced, 4] : !rec.onCpu ? [64, 4] : Lw >= 128 ? [16, 8] : [8, 4];
  const [P, Q] = swap ? [b, a] : [a, b];
  const [sPu, sPk, sQl, sQk] = swap ? [p.sBn, p.sBk, p.sAm, p.sAk] : [p.sAm, p.sAk, p.sBn, p.sBk];
  let pm = loadMode(P, U, sPu, sPk, p.K, TU);
  let qm = loadMode(Q, Lw, sQl, sQk, p.K, TL);
  // A vec4 step needs K % 4 == 0; with it, any operand left scalar still steps by four.
  const step = pm === "s" && qm === "s" ? 1 : 4;
  if (step === 1) pm = qm = "s";
  const pt = P.dtype as Operand, qt = Q.dtype as Operand;
  const [pn, qn]: (NormAxis | "")[] = swap
    ? [p.normB ?? "", p.normA ?? ""]
    : [p.normA ?? "", p.normB ?? ""];
  rec.dispatch(
    REGISTER.variant({ TU, TL, WG, pm, qm, step, pt, qt, pn, qn, res: fused.R !== null }),
    {
      bindings: { P, Q, C: c, R: fused.R, nr: fused.nr, ng: fused.ng },
      params: {
        U,
        L: Lw,
        K: p.K,
        sPu,
        sPk,
        sQl,
        sQk,
        sCu: swap ? 1 : p.N,
        sCl: swap ? p.N : 1,
        alpha,
        beta,
      },
      grid: [Math.ceil(Lw / (WG * TL)), Math.ceil(U / TU)],
    },
  );
}

// ---- public API ------------------------------------------------------------------------------

/**
 * Records `C = α·op(A)·op(B) + β·C` for `layout` (see the module doc for the shapes). C must
 * not share a buffer with A or B.
 * @throws GpuShapeError on shapes that do not match the layout.
 * @throws KernelLoopBoundError for a K over the loop bound (see the module doc).
 */
export function matmul(
  rec: Recorder,
  layout: MatmulLayout,
  c: GpuTensor,
  a: GpuTensor,
  b: GpuTensor,
  options: MatmulOptions = {},
): void {
  const p = problem(layout, c, a, b);
  const alpha = options.alpha ?? 1;
  const beta = options.beta ?? 0;
  const fused = fusedOf(layout, c, p, options);
  if (isHalf(c.dtype) && (fused.R || fused.nr)) {
    throw new GpuShapeError(`matmul${layout}: a 16-bit C takes no residual or norm on load`);
  }
  if (isHalf(c.dtype)) {
    if (beta !== 0 && beta !== 1) {
      throw new GpuShapeError(`matmul${layout}: a 16-bit C takes beta 0 or 1, got ${beta}`);
    }
    const tmp = options.scratch ?? rec.scratch([p.M, p.N], "f32", "matmul 16-bit C");
    if (tmp.dtype !== "f32" || tmp.size !== p.M * p.N) {
      throw new GpuShapeError(
        `matmul${layout}: scratch ${tmp.describe()} is not f32[${p.M}, ${p.N}]`,
      );
    }
    const d = tmp.view([p.M, p.N]);
    matmul(rec, layout, d, a, b, { ...options, alpha, beta: 0, scratch: undefined });
    accumulatePacked(rec, c, d, beta === 1);
    return;
  }
  const variant = options.variant ?? rec.matmulVariant;
  // Tiles of 64 waste most of their work on skinny products; the register kernel is the better
  // GPU kernel there too.
  const tiled = variant === "tiled" && (options.variant === "tiled" || Math.min(p.M, p.N) >= 32);
  if (tiled) {
    const shape = options.tile === undefined ? rec.matmulTile : TILE_SHAPES[options.tile];
    if (!shape) throw new GpuShapeError(`matmul: no tile shape named '${options.tile}'`);
    dispatchTiled(rec, c, a, b, p, alpha, beta, { shape, shaderF16: rec.shaderF16, fused });
  } else dispatchRegister(rec, c, a, b, p, alpha, beta, options, fused);
}

/**
 * Checks the residual and norm-on-load options against the problem and marks the normalized
 * operand in `p` (NT's A with t along its rows, TN's B with t along k).
 * @throws GpuShapeError for a layout without a normalized operand, or mismatched shapes.
 */
function fusedOf(layout: MatmulLayout, c: GpuTensor, p: Problem, o: MatmulOptions): Fused {
  const f32 = (what: string, t: GpuTensor, shape: number[]) => {
    if (t.dtype !== "f32" || t.shape.join() !== shape.join()) {
      throw new GpuShapeError(
        `matmul${layout} ${what}: expected f32[${shape}], got ${t.describe()}`,
      );
    }
  };
  if (o.residual) {
    f32("residual", o.residual, [p.M, p.N]);
    if (o.residual.allocation === c.allocation) {
      throw new GpuShapeError(`matmul${layout}: the residual shares C's buffer (use beta = 1)`);
    }
  }
  if (!o.norm) return { R: o.residual ?? null, nr: null, ng: null };
  if (layout === "NT") {
    f32("norm rstd", o.norm.rstd, [p.M]);
    f32("norm gamma", o.norm.gamma, [p.K]);
    p.normA = "r";
  } else if (layout === "TN") {
    f32("norm rstd", o.norm.rstd, [p.K]);
    f32("norm gamma", o.norm.gamma, [p.N]);
    p.normB = "k";
  } else {
    throw new GpuShapeError("matmulNN: norm on load reads NT's A or TN's B only");
  }
  return { R: o.residual ?? null, nr: o.norm.rstd, ng: o.norm.gamma };
}

/** `C[M,N] = α·A[M,K]·B[N,K]ᵀ + β·C` (linear forward `y = x·Wᵀ`). */
export function matmulNT(
  rec: Recorder,
  c: GpuTensor,
  a: GpuTensor,
  b: GpuTensor,
  options: MatmulOptions = {},
): void {
  matmul(rec, "NT", c, a, b, options);
}

/** `C[M,N] = α·A[M,K]·B[K,N] + β·C` (input gradient `dX = dY·W`). */
export function matmulNN(
  rec: Recorder,
  c: GpuTensor,
  a: GpuTensor,
  b: GpuTensor,
  options: MatmulOptions = {},
): void {
  matmul(rec, "NN", c, a, b, options);
}

/** `C[M,N] = α·A[K,M]ᵀ·B[K,N] + β·C` (weight gradient `dW = dYᵀ·x`). */
export function matmulTN(
  rec: Recorder,
  c: GpuTensor,
  a: GpuTensor,
  b: GpuTensor,
  options: MatmulOptions = {},
): void {
  matmul(rec, "TN", c, a, b, options);
}
