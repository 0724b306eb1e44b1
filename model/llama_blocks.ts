/**
 * The LLaMA decoder as named forward/backward pairs in model order (llm.c style): a decoder
 * layer (RMSNorm, q/k/v, RoPE, causal attention, o + residual, RMSNorm, SwiGLU MLP + residual)
 * and the head (final RMSNorm, lm_head). The residual adds happen in the stores of o_proj and
 * down_proj, and the two RMSNorms of a layer are formed in the loads of the matmuls that read
 * them (only rstd is computed and kept, the normalized [T, C] is never written; gpu
 * kernels/matmul_fused.ts), unless the activations carry ln1/ln2 buffers (the model's
 * `normOnLoad: false`). Both have the bits of the separate passes they replace. They record into a Recorder and work on activation
 * buffers the caller preallocates; attention is a strategy, so the same layer code serves the
 * training forward (whole sequences) and cached greedy decoding.
 * @module
 */
import {
  attentionBackward,
  blockCopy,
  blockExtract,
  type GpuTensor,
  matmulNN,
  matmulNT,
  matmulTN,
  type NormOnLoad,
  type Recorder,
  rmsnormBackward,
  rmsnormForward,
  rmsnormRstd,
  rmsnormWeightGrad,
  ropeBackward,
  ropeForward,
  type RopeTable,
  swigluBackward,
  swigluForward,
} from "../gpu/mod.ts";
import {
  biasNameOf,
  headDim,
  type LinearKind,
  linearName,
  type LlamaConfig,
  slidingWindow,
} from "./config.ts";
import {
  type AdapterScales,
  linearBackward,
  linearForward,
  type LinearScratch,
} from "./llama_linear.ts";
import type { LlamaParams } from "./llama_params.ts";

/** Sizes used everywhere. */
export interface Dims {
  C: number;
  I: number;
  H: number;
  KV: number;
  D: number;
  V: number;
  L: number;
  eps: number;
  /** Sliding window of the attention, or undefined for full causal attention. */
  window?: number;
}

export function dimsOf(config: LlamaConfig): Dims {
  return {
    C: config.hidden_size,
    I: config.intermediate_size,
    H: config.num_attention_heads,
    KV: config.num_key_value_heads,
    D: headDim(config),
    V: config.vocab_size,
    L: config.num_hidden_layers,
    eps: config.rms_norm_eps,
    window: slidingWindow(config) ?? undefined,
  };
}

/** What the blocks read: the parameters, the adapter scales, the gradient switches. */
export interface BlockContext {
  dims: Dims;
  params: LlamaParams;
  scales: AdapterScales;
  /** Keep x·Aᵀ in the forward and accumulate adapter gradients in the backward. */
  adapterGrads: boolean;
  scratch: LinearScratch | null;
  /** Flat f32 scratch for the column blocks of the linears held as row blocks; null: none is. */
  splitBlock: GpuTensor | null;
}

/** One decoder layer's activations for T tokens (kept for the backward when training). */
export interface LayerActs {
  /** Layer input, the residual stream [T, C]. */
  x: GpuTensor;
  /** RMSNorm(x) [T, C], or null when the matmuls form it on load from x, rstd1 and its weight. */
  ln1: GpuTensor | null;
  /** 1/rms of every row of x [T]. */
  rstd1: GpuTensor;
  /** [T, H·D] after RoPE. */
  q: GpuTensor;
  /** [T, KV·D] after RoPE. */
  k: GpuTensor;
  v: GpuTensor;
  /** Attention output [T, H·D]. */
  att: GpuTensor;
  /** [T, H], or null without a backward. */
  lse: GpuTensor | null;
  /** x + o_proj(att). */
  xMid: GpuTensor;
  /** RMSNorm(xMid) [T, C], or null when formed on load. */
  ln2: GpuTensor | null;
  /** 1/rms of every row of xMid [T]. */
  rstd2: GpuTensor;
  gate: GpuTensor;
  up: GpuTensor;
  /** silu(gate)·up [T, I]. */
  h: GpuTensor;
  /** x·Aᵀ [T, r] of each adapted linear that needs it. */
  xa: Map<LinearKind, GpuTensor>;
  /** Layer output [T, C]; may be `x` itself when the input need not be kept. */
  out: GpuTensor;
}

/** The first T rows of every activation (a micro-batch or decode step smaller than the buffers). */
export function layerActsRows(a: LayerActs, T: number, keepXa = true): LayerActs {
  const v = (t: GpuTensor) => t.rows(0, T);
  const xa = new Map<LinearKind, GpuTensor>();
  if (keepXa) { for (const [k, t] of a.xa) xa.set(k, v(t)); }
  return {
    x: v(a.x),
    ln1: a.ln1 ? v(a.ln1) : null,
    rstd1: v(a.rstd1),
    q: v(a.q),
    k: v(a.k),
    v: v(a.v),
    att: v(a.att),
    lse: a.lse ? v(a.lse) : null,
    xMid: v(a.xMid),
    ln2: a.ln2 ? v(a.ln2) : null,
    rstd2: v(a.rstd2),
    gate: v(a.gate),
    up: v(a.up),
    h: v(a.h),
    xa,
    out: v(a.out),
  };
}

/** Gradient scratch shared by the layers' backward passes, for T tokens. */
export interface LayerGrads {
  /** ∂L/∂(residual stream) [T, C]: the layer output's on entry, its input's on exit. */
  dx: GpuTensor;
  /** [T, C] gradient of a norm output. */
  dln: GpuTensor;
  dh: GpuTensor;
  dgate: GpuTensor;
  dup: GpuTensor;
  /** [T, H·D] */
  dao: GpuTensor;
  dq: GpuTensor;
  /** [T, KV·D] */
  dk: GpuTensor;
  dv: GpuTensor;
  /** [T, H] */
  delta: GpuTensor;
}

/** How a layer attends: causal over whole sequences, or against a KV cache. */
export interface Attention {
  /** i32 [T] position of every token (for RoPE). */
  positions: GpuTensor;
  rope: RopeTable;
  forward(
    rec: Recorder,
    layer: number,
    out: GpuTensor,
    lse: GpuTensor | null,
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
  ): void;
  /** Sequences and their length, for the training backward. */
  shape?: { batch: number; seqLen: number };
}

function normName(l: number, which: "input" | "post"): string {
  return which === "input"
    ? `model.layers.${l}.input_layernorm.weight`
    : `model.layers.${l}.post_attention_layernorm.weight`;
}

export function layerForward(
  rec: Recorder,
  ctx: BlockContext,
  l: number,
  a: LayerActs,
  attn: Attention,
): void {
  const { dims, params } = ctx;
  const linear = (
    kind: LinearKind,
    y: GpuTensor,
    x: GpuTensor,
    norm: NormOnLoad | null,
    residual: GpuTensor | null,
  ) => {
    const name = linearName(l, kind);
    linearForward(rec, {
      y,
      x,
      norm,
      residual,
      W: params.matrix(name)!,
      block: ctx.splitBlock,
      b: params.weights.get(biasNameOf(name)) ?? null,
      adapter: params.adapters.get(name),
      xa: a.xa.get(kind) ?? null,
    }, ctx.scales);
  };
  const n1 = normForward(rec, ctx, l, "input", a);
  linear("q_proj", a.q, n1.x, n1.norm, null);
  linear("k_proj", a.k, n1.x, n1.norm, null);
  linear("v_proj", a.v, n1.x, n1.norm, null);
  ropeForward(rec, a.q, attn.positions, attn.rope, dims.H);
  ropeForward(rec, a.k, attn.positions, attn.rope, dims.KV);
  attn.forward(rec, l, a.att, a.lse, a.q, a.k, a.v);
  linear("o_proj", a.xMid, a.att, null, a.x);
  const n2 = normForward(rec, ctx, l, "post", a);
  linear("gate_proj", a.gate, n2.x, n2.norm, null);
  linear("up_proj", a.up, n2.x, n2.norm, null);
  // silu(gate)·up is one elementwise pass; gate and up stay stored for the backward.
  swigluForward(rec, a.h, a.gate, a.up);
  linear("down_proj", a.out, a.h, null, a.xMid);
}

/** How a layer's matmuls read one of its norms: a written ln (norm null), or x with the norm. */
interface NormInput {
  x: GpuTensor;
  norm: NormOnLoad | null;
}

/** A layer's norm as its matmuls read it, without recording anything (the backward). */
function normOf(ctx: BlockContext, l: number, which: "input" | "post", a: LayerActs): NormInput {
  const [x, ln, rstd] = which === "input" ? [a.x, a.ln1, a.rstd1] : [a.xMid, a.ln2, a.rstd2];
  if (ln) return { x: ln, norm: null };
  return { x, norm: { rstd, gamma: ctx.params.weights.get(normName(l, which))! } };
}

/** Records a layer's norm in the forward: all of it into ln, or only rstd when formed on load. */
function normForward(
  rec: Recorder,
  ctx: BlockContext,
  l: number,
  which: "input" | "post",
  a: LayerActs,
): NormInput {
  const [x, ln, rstd] = which === "input" ? [a.x, a.ln1, a.rstd1] : [a.xMid, a.ln2, a.rstd2];
  const eps = ctx.dims.eps;
  if (ln) rmsnormForward(rec, ln, rstd, x, ctx.params.weights.get(normName(l, which))!, eps);
  else rmsnormRstd(rec, rstd, x, eps);
  return normOf(ctx, l, which, a);
}

/**
 * Backward of `layerForward`: on entry `g.dx` holds ∂L/∂out, on exit ∂L/∂x (unless
 * `inputGrad` is false: then only the weight and adapter gradients are accumulated, which is
 * all the first layer needs when the embeddings are frozen).
 */
export function layerBackward(
  rec: Recorder,
  ctx: BlockContext,
  l: number,
  a: LayerActs,
  g: LayerGrads,
  attn: Attention,
  inputGrad: boolean,
): void {
  const { dims, params } = ctx;
  const w = (name: string) => params.weights.get(name)!;
  const linear = (
    kind: LinearKind,
    dx: GpuTensor | null,
    accumulateDx: boolean,
    dy: GpuTensor,
    x: GpuTensor,
    norm: NormOnLoad | null = null,
  ) => {
    const name = linearName(l, kind);
    const adapter = ctx.adapterGrads ? params.adapters.get(name) : undefined;
    linearBackward(rec, {
      dx,
      accumulateDx,
      dy,
      x,
      norm,
      W: params.matrix(name)!,
      dW: params.gradMatrix(name) ?? null,
      block: ctx.splitBlock,
      db: params.grads.get(biasNameOf(name)) ?? null,
      adapter,
      xa: adapter ? a.xa.get(kind)! : null,
      scratch: ctx.scratch,
    }, ctx.scales);
  };
  if (!attn.shape || !a.lse) throw new Error("layerBackward needs a training forward");
  const shape = {
    ...attn.shape,
    nHeads: dims.H,
    nKvHeads: dims.KV,
    headDim: dims.D,
    window: dims.window,
  };

  // out = xMid + down(h): the residual passes dx on to xMid unchanged.
  linear("down_proj", g.dh, false, g.dx, a.h);
  swigluBackward(rec, g.dgate, g.dup, g.dh, a.gate, a.up);
  const n2 = normOf(ctx, l, "post", a);
  linear("gate_proj", g.dln, false, g.dgate, n2.x, n2.norm);
  linear("up_proj", g.dln, true, g.dup, n2.x, n2.norm);
  const post = normName(l, "post");
  const dPost = params.grads.get(post);
  if (dPost) rmsnormWeightGrad(rec, dPost, g.dln, a.xMid, a.rstd2, true);
  rmsnormBackward(rec, g.dx, g.dln, a.xMid, w(post), a.rstd2, true);

  // xMid = x + o_proj(att)
  linear("o_proj", g.dao, false, g.dx, a.att);
  attentionBackward(rec, {
    dq: g.dq,
    dk: g.dk,
    dv: g.dv,
    dout: g.dao,
    q: a.q,
    k: a.k,
    v: a.v,
    out: a.att,
    lse: a.lse,
    delta: g.delta,
  }, shape);
  ropeBackward(rec, g.dq, attn.positions, attn.rope, dims.H);
  ropeBackward(rec, g.dk, attn.positions, attn.rope, dims.KV);
  const inName = normName(l, "input");
  const dIn = params.grads.get(inName);
  const needDln = inputGrad || dIn !== undefined;
  const n1 = normOf(ctx, l, "input", a);
  linear("q_proj", needDln ? g.dln : null, false, g.dq, n1.x, n1.norm);
  linear("k_proj", needDln ? g.dln : null, true, g.dk, n1.x, n1.norm);
  linear("v_proj", needDln ? g.dln : null, true, g.dv, n1.x, n1.norm);
  if (dIn) rmsnormWeightGrad(rec, dIn, g.dln, a.x, a.rstd1, true);
  if (inputGrad) rmsnormBackward(rec, g.dx, g.dln, a.x, w(inName), a.rstd1, true);
}

/** The name of the output projection's weight (the embeddings when tied). */
export function lmHeadName(config: LlamaConfig): string {
  return config.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
}

export interface HeadActs {
  /** Last layer's output [T, C]. */
  x: GpuTensor;
  lnf: GpuTensor;
  rstdf: GpuTensor;
  /** [T, V] */
  logits: GpuTensor;
}

export function headForward(rec: Recorder, ctx: BlockContext, lmHead: string, a: HeadActs): void {
  const w = ctx.params.weights;
  rmsnormForward(rec, a.lnf, a.rstdf, a.x, w.get("model.norm.weight")!, ctx.dims.eps);
  headLogits(rec, ctx, lmHead, a.logits, a.lnf);
}

/**
 * logits [T, V] = x [T, C]·Wᵀ with W the lm_head, one matmul per row block of W writing the
 * matching column block of the logits (through a scratch block when W is split).
 */
export function headLogits(
  rec: Recorder,
  ctx: BlockContext,
  lmHead: string,
  logits: GpuTensor,
  x: GpuTensor,
): void {
  const W = ctx.params.rowParts.get(lmHead)!;
  if (W.parts.length === 1) return matmulNT(rec, logits, x, W.parts[0]);
  const T = x.shape[0];
  W.parts.forEach((part, i) => {
    const tmp = rec.scratch([T, W.counts[i]], "f32", "logits block");
    matmulNT(rec, tmp, x, part);
    blockCopy(rec, logits, tmp, null, 0, W.starts[i]);
  });
}

/**
 * Backward of `headLogits`: dx [T, C] = dlogits·W (written), and ∂W += dlogitsᵀ·x per row block
 * when the lm_head has a gradient. With a split W, dx sums the blocks in order (one rounding per
 * block more than the whole product).
 */
export function headLogitsBackward(
  rec: Recorder,
  ctx: BlockContext,
  lmHead: string,
  dx: GpuTensor,
  dlogits: GpuTensor,
  x: GpuTensor,
): void {
  const W = ctx.params.rowParts.get(lmHead)!;
  const dW = ctx.params.gradParts.get(lmHead) ?? null;
  if (W.parts.length === 1) {
    matmulNN(rec, dx, dlogits, W.parts[0]);
    if (dW) matmulTN(rec, dW.parts[0], dlogits, x, { beta: 1 });
    return;
  }
  const T = x.shape[0];
  W.parts.forEach((part, i) => {
    const tmp = rec.scratch([T, W.counts[i]], "f32", "dlogits block");
    blockExtract(rec, tmp, dlogits, 0, W.starts[i]);
    matmulNN(rec, dx, tmp, part, { beta: i === 0 ? 0 : 1 });
    if (dW) matmulTN(rec, dW.parts[i], tmp, x, { beta: 1 });
  });
}

/**
 * The head's backward below the lm_head, from dln = ∂L/∂(final norm output) [T, C] (already
 * computed by `headLogitsBackward`): the final norm's weight gradient, and ∂L/∂x into `dx`
 * when `inputGrad`.
 */
export function headNormBackward(
  rec: Recorder,
  ctx: BlockContext,
  a: HeadActs,
  g: { dx: GpuTensor; dln: GpuTensor },
  inputGrad: boolean,
): void {
  const p = ctx.params;
  const dNorm = p.grads.get("model.norm.weight");
  if (dNorm) rmsnormWeightGrad(rec, dNorm, g.dln, a.x, a.rstdf, true);
  if (inputGrad) {
    rmsnormBackward(rec, g.dx, g.dln, a.x, p.weights.get("model.norm.weight")!, a.rstdf, false);
  }
}

/**
 * Backward of `headForward` from ∂L/∂logits; writes ∂L/∂x into `dx` (or only accumulates the
 * weight gradients when `inputGrad` is false).
 */
export function headBackward(
  rec: Recorder,
  ctx: BlockContext,
  lmHead: string,
  a: HeadActs,
  dlogits: GpuTensor,
  g: { dx: GpuTensor; dln: GpuTensor },
  inputGrad: boolean,
): void {
  headLogitsBackward(rec, ctx, lmHead, g.dln, dlogits, a.lnf);
  headNormBackward(rec, ctx, a, g, inputGrad);
}
