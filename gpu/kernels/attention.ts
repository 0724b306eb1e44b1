/**
 * Causal self-attention with grouped-query heads (GQA), forward and backward, plus a forward
 * for greedy generation against a KV cache.
 *
 * Layouts (row-major, one row per token, heads side by side as Hugging Face's projections give
 * them): q, out [B·S, nHeads·hd]; k, v [B·S, nKv·hd]; lse, delta [B·S, nHeads]. Query head h
 * reads KV head `h / (nHeads / nKv)`; scores are `q·k · headDim^-1/2`. With a sliding window W
 * (Mistral), query i sees only keys j with i − W < j ≤ i; the kernels still walk the same keys
 * and mask the rest, so the loop passes are those of full causal attention.
 *
 * Work split (deterministic, no atomics):
 * - forward and dQ: one invocation per (sequence, head, query row). A workgroup covers 64 query
 *   rows of one (sequence, head) and walks the keys in order; every invocation reads the same
 *   key at the same time (a broadcast on GPUs, a scalar load on lavapipe), and causality is a
 *   per-invocation mask. The forward keeps the row's logsumexp for the backward pass.
 * - dK, dV: one invocation per (sequence, KV head, key row), summing over its query heads in
 *   order and, within each, over query rows in order.
 *
 * Loop passes per invocation (see `MAX_INVOCATION_LOOP`; head dimensions are written out, not
 * looped; the dK/dV query loop is written out 4 rows a pass): forward 2·(S + 1) (decoding
 * 2·(maxPosition + 2)), dQ S + 1, dK/dV g·(⌈S/4⌉ + 1) + g + 1 with g = nHeads/nKvHeads query
 * heads per KV head. So S = 8192 fits with g ≤ 31, S = 16384 with g ≤ 15, S = 32766 (the
 * forward's limit) with g ≤ 7; a longer sequence is refused with KernelLoopBoundError.
 *
 * Memory: nothing of size [S, S] is held. The forward keeps per query row only its running
 * max and sum (in registers) and saves the row logsumexp [B·S, nHeads]; the backward
 * recomputes each score from q, k and that logsumexp, with one scratch rowsum(dO ⊙ O)
 * [B·S, nHeads]. So attention needs O(S) memory per head beyond q, k, v and the output.
 * @module
 */
import { GpuShapeError } from "../errors.ts";
import { defineKernel, defineKernelVariants } from "../kernel.ts";
import type { Recorder } from "../recorder.ts";
import { expectShape, type GpuTensor } from "../tensor.ts";
import { FLAT_INDEX_WGSL, grid1d, NAN_WGSL } from "./grid.ts";

/** Shape of a batch of equal-length sequences. */
export interface AttentionShape {
  batch: number;
  seqLen: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** Sliding window W: query i attends to keys j with i − W < j ≤ i. Absent: full causal. */
  window?: number;
}

// Key j is visible to the query at position 'last' (j <= last is checked by the caller).
const WINDOW_WGSL = /* wgsl */ `
fn inWindow(j: u32, last: u32) -> bool {
  return p.window == 0u || last - j < p.window;
}`;

// Workgroup width along the query (or key) rows. On CPU adapters one SIMD batch (8 lanes) per
// workgroup keeps the causal waste to within 8 rows (each workgroup only walks the keys its own
// rows need); on GPUs 64 rows keep the workgroup reasonably full.
function rowsPerGroup(rec: Recorder, options: AttentionOptions): number {
  const wg = options.rowsPerGroup ?? (rec.onCpu ? 8 : 64);
  if (![8, 16, 32, 64].includes(wg)) {
    throw new GpuShapeError(`attention: rowsPerGroup must be 8, 16, 32 or 64, got ${wg}`);
  }
  return wg;
}

/** Tuning overrides (tests use them to run the GPU configuration on any adapter). */
export interface AttentionOptions {
  /** Query/key rows per workgroup: default 8 on CPU adapters, 64 on GPUs. */
  rowsPerGroup?: number;
}

/** The head size (unrolled) and workgroup width of a generated attention kernel. */
interface AttentionConfig {
  hd: number;
  wg: number;
}

const configKey = (c: AttentionConfig) => `${c.hd}/${c.wg}`;

// Per-dimension statements are written out (d = 0..hd-1) rather than looped over private
// arrays: compilers then keep the vectors in registers instead of indexed scratch memory,
// which on lavapipe halves the time.
function each(hd: number, line: (d: number) => string): string {
  return Array.from({ length: hd }, (_, d) => line(d)).join("\n  ");
}

/**
 * Forward (training: LSE saved when given) and decoding (positions given: each row attends to
 * keys 0..pos[row], visiting keys 0..bound).
 */
const FORWARD = defineKernelVariants(({ hd, wg }: AttentionConfig) => {
  const dotK = each(hd, (d) => `s = fma(q${d}, K[kr + ${d}u], s);`);
  return {
    name: `attention_forward_hd${hd}`,
    params: {
      B: "u32",
      Sq: "u32",
      Skv: "u32",
      nH: "u32",
      nKV: "u32",
      scale: "f32",
      usePos: "u32",
      saveLse: "u32",
      bound: "u32",
      window: "u32",
    },
    bindings: {
      Q: "read f32",
      K: "read f32",
      V: "read f32",
      pos: "read i32?",
      O: "read_write f32",
      LSE: "read_write f32?",
    },
    // Two passes over keys 0..jEnd-1.
    loopBound: (q: { usePos: number; bound: number; Skv: number; Sq: number }) =>
      2 * ((q.usePos ? Math.min(q.bound + 1, q.Skv) : q.Sq) + 1),
    body: /* wgsl */ `
${NAN_WGSL}
${WINDOW_WGSL}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.y / p.nH;
  let h = wid.y % p.nH;
  let kvh = h / (p.nH / p.nKV);
  let i = wid.x * ${wg}u + lid.x;
  let row = b * p.Sq + min(i, p.Sq - 1u);
  // Keys 0..jEnd-1 are visited by the whole workgroup; 'last' masks each query's own range.
  var last = min(i, p.Sq - 1u);
  var jEnd = min(wid.x * ${wg}u + ${wg}u, p.Sq);
  var bad = false;
  if (p.usePos != 0u) {
    let ps = pos[row];
    bad = ps < 0 || u32(ps) >= p.Skv;
    last = u32(max(ps, 0));
    jEnd = min(p.bound + 1u, p.Skv);
  }
  let qb = (row * p.nH + h) * ${hd}u;
  ${each(hd, (d) => `let q${d} = Q[qb + ${d}u];`)}
  let kvStride = p.nKV * ${hd}u;
  let kb = b * p.Skv * kvStride + kvh * ${hd}u;
  var m = -3.0e38;
  for (var j = 0u; j < jEnd; j++) {
    let kr = kb + j * kvStride;
    var s = 0.0;
    ${dotK}
    s = s * p.scale;
    m = select(m, max(m, s), j <= last && inWindow(j, last));
  }
  var l = 0.0;
  ${each(hd, (d) => `var o${d} = 0.0;`)}
  for (var j = 0u; j < jEnd; j++) {
    let kr = kb + j * kvStride;
    var s = 0.0;
    ${dotK}
    s = s * p.scale;
    let pj = select(0.0, exp(s - m), j <= last && inWindow(j, last));
    l += pj;
    ${each(hd, (d) => `o${d} = fma(pj, V[kr + ${d}u], o${d});`)}
  }
  if (i < p.Sq) {
    ${each(hd, (d) => `O[qb + ${d}u] = select(o${d} / l, nanF32(), bad);`)}
    if (p.saveLse != 0u) { LSE[row * p.nH + h] = m + log(l); }
  }
}
`,
  };
}, configKey);

const DELTA_WG = 64;

const DELTA = defineKernel({
  name: "attention_delta",
  params: { n: "u32", hd: "u32" },
  bindings: { delta: "read_write f32", dO: "read f32", O: "read f32" },
  loopBound: ({ hd }) => hd + 1,
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(${DELTA_WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = flatIndex(gid, nwg, ${DELTA_WG}u);
  if (r >= p.n) { return; }
  var s = 0.0;
  for (var d = 0u; d < p.hd; d++) { s = fma(dO[r * p.hd + d], O[r * p.hd + d], s); }
  delta[r] = s;
}
`,
});

const BACKWARD_PARAMS = {
  B: "u32",
  S: "u32",
  nH: "u32",
  nKV: "u32",
  scale: "f32",
  window: "u32",
} as const;

const BACKWARD_DQ = defineKernelVariants(({ hd, wg }: AttentionConfig) => ({
  name: `attention_backward_dq_hd${hd}`,
  params: BACKWARD_PARAMS,
  bindings: {
    dQ: "read_write f32",
    Q: "read f32",
    K: "read f32",
    V: "read f32",
    dO: "read f32",
    LSE: "read f32",
    DELTA: "read f32",
  },
  loopBound: ({ S }: { S: number }) => S + 1,
  body: /* wgsl */ `
${WINDOW_WGSL}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.y / p.nH;
  let h = wid.y % p.nH;
  let kvh = h / (p.nH / p.nKV);
  let i = wid.x * ${wg}u + lid.x;
  let ic = min(i, p.S - 1u);
  let row = b * p.S + ic;
  let jEnd = min(wid.x * ${wg}u + ${wg}u, p.S);
  let qb = (row * p.nH + h) * ${hd}u;
  ${each(hd, (d) => `let q${d} = Q[qb + ${d}u]; let g${d} = dO[qb + ${d}u]; var a${d} = 0.0;`)}
  let lse = LSE[row * p.nH + h];
  let dl = DELTA[row * p.nH + h];
  let kvStride = p.nKV * ${hd}u;
  let kb = b * p.S * kvStride + kvh * ${hd}u;
  for (var j = 0u; j < jEnd; j++) {
    let kr = kb + j * kvStride;
    var s = 0.0;
    var dp = 0.0;
    ${each(hd, (d) => `s = fma(q${d}, K[kr + ${d}u], s); dp = fma(g${d}, V[kr + ${d}u], dp);`)}
    s = s * p.scale;
    let pj = select(0.0, exp(s - lse), j <= ic && inWindow(j, ic));
    let ds = pj * (dp - dl);
    ${each(hd, (d) => `a${d} = fma(ds, K[kr + ${d}u], a${d});`)}
  }
  if (i < p.S) {
    ${each(hd, (d) => `dQ[qb + ${d}u] = a${d} * p.scale;`)}
  }
}
`,
}), configKey);

// Query rows per pass of the dK/dV kernel's query loop (written out, so a pass covers DKV_STEP
// rows): keeps the loop passes of g query heads over S rows at g·(⌈S/DKV_STEP⌉ + 1) + g + 1.
const DKV_STEP = 4;

const BACKWARD_DKV = defineKernelVariants(({ hd, wg }: AttentionConfig) => {
  // One query row i: the same fixed-order accumulation as a plain loop over i.
  const step = (u: number) => /* wgsl */ `
    if (i0 + ${u}u < p.S) {
      let i = i0 + ${u}u;
      let qrow = b * p.S + i;
      let qb = (qrow * p.nH + hq) * ${hd}u;
      var s = 0.0;
      var dp = 0.0;
      ${each(hd, (d) => `s = fma(Q[qb + ${d}u], k${d}, s); dp = fma(dO[qb + ${d}u], v${d}, dp);`)}
      s = s * p.scale;
      let pj = select(0.0, exp(s - LSE[qrow * p.nH + hq]), i >= jc && inWindow(jc, i));
      let ds = pj * (dp - DELTA[qrow * p.nH + hq]);
      ${
    each(hd, (d) =>
      `dv${d} = fma(pj, dO[qb + ${d}u], dv${d}); dk${d} = fma(ds, Q[qb + ${d}u], dk${d});`)
  }
    }`;
  return {
    name: `attention_backward_dkv_hd${hd}`,
    params: BACKWARD_PARAMS,
    bindings: {
      dK: "read_write f32",
      dV: "read_write f32",
      Q: "read f32",
      K: "read f32",
      V: "read f32",
      dO: "read f32",
      LSE: "read f32",
      DELTA: "read f32",
    },
    // g query heads, each over at most S query rows, DKV_STEP rows a pass.
    loopBound: ({ S, nH, nKV }: { S: number; nH: number; nKV: number }) =>
      dkvLoopPasses(S, nH / nKV),
    body: /* wgsl */ `
${WINDOW_WGSL}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let b = wid.y / p.nKV;
  let kvh = wid.y % p.nKV;
  let group = p.nH / p.nKV;
  let j = wid.x * ${wg}u + lid.x;
  let jc = min(j, p.S - 1u);
  let kb = ((b * p.S + jc) * p.nKV + kvh) * ${hd}u;
  ${
      each(hd, (d) =>
        `let k${d} = K[kb + ${d}u]; let v${d} = V[kb + ${d}u]; var dk${d} = 0.0; var dv${d} = 0.0;`)
    }
  // Queries before the workgroup's first key see none of its keys.
  let iStart = wid.x * ${wg}u;
  for (var hq = kvh * group; hq < kvh * group + group; hq++) {
    for (var i0 = iStart; i0 < p.S; i0 += ${DKV_STEP}u) {
${Array.from({ length: DKV_STEP }, (_, u) => step(u)).join("\n")}
    }
  }
  if (j < p.S) {
    ${each(hd, (d) => `dK[kb + ${d}u] = dk${d} * p.scale; dV[kb + ${d}u] = dv${d};`)}
  }
}
`,
  };
}, configKey);

function dkvLoopPasses(S: number, g: number): number {
  return g * (Math.ceil(S / DKV_STEP) + 1) + g + 1;
}

/**
 * Loop passes per invocation of each training attention kernel for a shape (the bounds the
 * recorder checks against `MAX_INVOCATION_LOOP`).
 */
export function attentionLoopPasses(
  s: AttentionShape,
): { forward: number; dq: number; dkv: number } {
  return {
    forward: 2 * (s.seqLen + 1),
    dq: s.seqLen + 1,
    dkv: dkvLoopPasses(s.seqLen, s.nHeads / s.nKvHeads),
  };
}

function checkShape(what: string, s: AttentionShape): void {
  const { batch, seqLen, nHeads, nKvHeads, headDim } = s;
  for (const [k, v] of Object.entries(s)) {
    if (k === "window" && v === undefined) continue;
    if (!Number.isInteger(v) || v < 1) {
      throw new GpuShapeError(`${what}: ${k} must be an integer >= 1, got ${v}`);
    }
  }
  if (nHeads % nKvHeads !== 0) {
    throw new GpuShapeError(`${what}: nKvHeads ${nKvHeads} does not divide nHeads ${nHeads}`);
  }
  if (headDim > 256) throw new GpuShapeError(`${what}: headDim ${headDim} > 256 is not supported`);
  void batch;
  void seqLen;
}

export interface AttentionForwardTensors {
  /** [B·S, nHeads·hd] (written). */
  out: GpuTensor;
  /** [B·S, nHeads] row logsumexp for the backward pass (written); null when not training. */
  lse: GpuTensor | null;
  /** [B·S, nHeads·hd], after RoPE. */
  q: GpuTensor;
  /** [B·S, nKvHeads·hd], after RoPE. */
  k: GpuTensor;
  /** [B·S, nKvHeads·hd]. */
  v: GpuTensor;
}

/** Causal attention of every position of B sequences of length S over its own prefix. */
export function attentionForward(
  rec: Recorder,
  t: AttentionForwardTensors,
  s: AttentionShape,
  options: AttentionOptions = {},
): void {
  checkShape("attentionForward", s);
  const rows = s.batch * s.seqLen;
  expectShape("attention q", t.q, [rows, s.nHeads * s.headDim]);
  expectShape("attention out", t.out, [rows, s.nHeads * s.headDim]);
  expectShape("attention k", t.k, [rows, s.nKvHeads * s.headDim]);
  expectShape("attention v", t.v, [rows, s.nKvHeads * s.headDim]);
  if (t.lse) expectShape("attention lse", t.lse, [rows, s.nHeads]);
  const wg = rowsPerGroup(rec, options);
  rec.dispatch(FORWARD.variant({ hd: s.headDim, wg }), {
    bindings: { Q: t.q, K: t.k, V: t.v, O: t.out, LSE: t.lse },
    params: {
      B: s.batch,
      Sq: s.seqLen,
      Skv: s.seqLen,
      nH: s.nHeads,
      nKV: s.nKvHeads,
      scale: 1 / Math.sqrt(s.headDim),
      usePos: 0,
      saveLse: t.lse ? 1 : 0,
      bound: 0,
      window: s.window ?? 0,
    },
    grid: [Math.ceil(s.seqLen / wg), s.batch * s.nHeads],
  });
}

export interface AttentionBackwardTensors {
  /** [B·S, nHeads·hd] (written). */
  dq: GpuTensor;
  /** [B·S, nKvHeads·hd] (written). */
  dk: GpuTensor;
  /** [B·S, nKvHeads·hd] (written). */
  dv: GpuTensor;
  /** [B·S, nHeads·hd], gradient of the forward output. */
  dout: GpuTensor;
  q: GpuTensor;
  k: GpuTensor;
  v: GpuTensor;
  /** The forward output. */
  out: GpuTensor;
  /** The forward's lse. */
  lse: GpuTensor;
  /** [B·S, nHeads] scratch (written: rowsum(dout ⊙ out)). */
  delta: GpuTensor;
}

/**
 * Gradients of `attentionForward` w.r.t. q, k, v (k, v gradients summed over the query heads
 * that share a KV head).
 */
export function attentionBackward(
  rec: Recorder,
  t: AttentionBackwardTensors,
  s: AttentionShape,
  options: AttentionOptions = {},
): void {
  checkShape("attentionBackward", s);
  const rows = s.batch * s.seqLen;
  const qw = s.nHeads * s.headDim;
  const kw = s.nKvHeads * s.headDim;
  for (
    const [n, x, w] of [
      ["dq", t.dq, qw],
      ["dout", t.dout, qw],
      ["q", t.q, qw],
      ["out", t.out, qw],
      ["dk", t.dk, kw],
      ["dv", t.dv, kw],
      ["k", t.k, kw],
      ["v", t.v, kw],
    ] as const
  ) {
    expectShape(`attention ${n}`, x, [rows, w]);
  }
  expectShape("attention lse", t.lse, [rows, s.nHeads]);
  expectShape("attention delta", t.delta, [rows, s.nHeads]);
  const scale = 1 / Math.sqrt(s.headDim);
  const wg = rowsPerGroup(rec, options);
  rec.dispatch(DELTA, {
    bindings: { delta: t.delta, dO: t.dout, O: t.out },
    params: { n: rows * s.nHeads, hd: s.headDim },
    grid: grid1d(rows * s.nHeads, DELTA_WG),
  });
  const params = {
    B: s.batch,
    S: s.seqLen,
    nH: s.nHeads,
    nKV: s.nKvHeads,
    scale,
    window: s.window ?? 0,
  };
  const config = { hd: s.headDim, wg };
  const saved = { Q: t.q, K: t.k, V: t.v, dO: t.dout, LSE: t.lse, DELTA: t.delta };
  rec.dispatch(BACKWARD_DQ.variant(config), {
    bindings: { dQ: t.dq, ...saved },
    params,
    grid: [Math.ceil(s.seqLen / wg), s.batch * s.nHeads],
  });
  rec.dispatch(BACKWARD_DKV.variant(config), {
    bindings: { dK: t.dk, dV: t.dv, ...saved },
    params,
    grid: [Math.ceil(s.seqLen / wg), s.batch * s.nKvHeads],
  });
}

/** Shape of a decoding step: `newTokens` query rows per sequence against a cache of `maxLen`. */
export interface DecodeShape {
  batch: number;
  newTokens: number;
  maxLen: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  /** Sliding window W: the query at position p attends to cache rows p − W < j ≤ p. */
  window?: number;
}

export interface AttentionDecodeTensors {
  /** [B·newTokens, nHeads·hd] (written). */
  out: GpuTensor;
  /** [B·newTokens, nHeads·hd], after RoPE. */
  q: GpuTensor;
  /** [B·maxLen, nKvHeads·hd]: row b·maxLen + p holds sequence b's key at position p. */
  kCache: GpuTensor;
  /** [B·maxLen, nKvHeads·hd]. */
  vCache: GpuTensor;
  /** i32 [B·newTokens]: each query's absolute position; it attends to cache rows 0..position. */
  positions: GpuTensor;
}

function checkDecode(what: string, s: DecodeShape, maxPosition: number): void {
  checkShape(what, {
    batch: s.batch,
    seqLen: s.newTokens,
    nHeads: s.nHeads,
    nKvHeads: s.nKvHeads,
    headDim: s.headDim,
    window: s.window,
  });
  if (!Number.isInteger(s.maxLen) || s.maxLen < 1) {
    throw new GpuShapeError(`${what}: bad maxLen ${s.maxLen}`);
  }
  if (!Number.isInteger(maxPosition) || maxPosition < 0 || maxPosition >= s.maxLen) {
    throw new GpuShapeError(`${what}: maxPosition ${maxPosition} is outside [0, ${s.maxLen})`);
  }
}

/**
 * Attention of a few new positions per sequence against a KV cache that already holds their
 * own keys and values (write them first with `kvCacheWrite`). `maxPosition` bounds every
 * position in `positions` (it limits the keys visited); a position outside [0, maxLen) gives a
 * NaN output row.
 */
export function attentionDecode(
  rec: Recorder,
  t: AttentionDecodeTensors,
  s: DecodeShape,
  maxPosition: number,
  options: AttentionOptions = {},
): void {
  checkDecode("attentionDecode", s, maxPosition);
  const rows = s.batch * s.newTokens;
  expectShape("attentionDecode q", t.q, [rows, s.nHeads * s.headDim]);
  expectShape("attentionDecode out", t.out, [rows, s.nHeads * s.headDim]);
  expectShape("attentionDecode kCache", t.kCache, [s.batch * s.maxLen, s.nKvHeads * s.headDim]);
  expectShape("attentionDecode vCache", t.vCache, [s.batch * s.maxLen, s.nKvHeads * s.headDim]);
  expectShape("attentionDecode positions", t.positions, [rows], "i32");
  const wg = rowsPerGroup(rec, options);
  rec.dispatch(FORWARD.variant({ hd: s.headDim, wg }), {
    bindings: { Q: t.q, K: t.kCache, V: t.vCache, pos: t.positions, O: t.out },
    params: {
      B: s.batch,
      Sq: s.newTokens,
      Skv: s.maxLen,
      nH: s.nHeads,
      nKV: s.nKvHeads,
      scale: 1 / Math.sqrt(s.headDim),
      usePos: 1,
      saveLse: 0,
      bound: maxPosition,
      window: s.window ?? 0,
    },
    grid: [Math.ceil(s.newTokens / wg), s.batch * s.nHeads],
  });
}

const CACHE_WRITE = defineKernel({
  name: "kv_cache_write",
  params: { n: "u32", Tn: "u32", maxLen: "u32", W: "u32" },
  bindings: { cache: "read_write f32", x: "read f32", pos: "read i32" },
  body: /* wgsl */ `
${FLAT_INDEX_WGSL}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flatIndex(gid, nwg, 256u);
  if (i >= p.n) { return; }
  let r = i / p.W;
  let ps = pos[r];
  if (ps < 0 || u32(ps) >= p.maxLen) { return; }
  cache[((r / p.Tn) * p.maxLen + u32(ps)) * p.W + i % p.W] = x[i];
}
`,
});

/**
 * Stores the new rows `x` [B·newTokens, nKvHeads·hd] of k or v into `cache` [B·maxLen, same]
 * at row `b·maxLen + positions[r]`. Rows with a position outside [0, maxLen) are skipped.
 */
export function kvCacheWrite(
  rec: Recorder,
  cache: GpuTensor,
  x: GpuTensor,
  positions: GpuTensor,
  s: { batch: number; newTokens: number; maxLen: number },
): void {
  const rows = s.batch * s.newTokens;
  if (x.shape.length !== 2 || x.shape[0] !== rows) {
    throw new GpuShapeError(`kvCacheWrite: x must be [${rows}, width], got ${x.describe()}`);
  }
  const W = x.shape[1];
  expectShape("kvCacheWrite cache", cache, [s.batch * s.maxLen, W]);
  expectShape("kvCacheWrite positions", positions, [rows], "i32");
  rec.dispatch(CACHE_WRITE, {
    bindings: { cache, x, pos: positions },
    params: { n: rows * W, Tn: s.newTokens, maxLen: s.maxLen, W },
    grid: grid1d(rows * W, 256),
  });
}
