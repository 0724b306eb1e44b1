/**
 * The whole Hugging Face LLaMA-family forward and backward (LLaMA with biases and scaled RoPE,
 * Mistral's sliding window, Qwen2's q/k/v biases) in float64 on the CPU, with adapters on any
 * decoder linear layer: loss, logits, the gradient of every weight and every adapter's (g_A, g_B).
 * Built from the op pairs of `ops.ts`, in model order; the backward walks them in reverse.
 */

import { DomainError } from "../../core/errors.ts";
import {
  adaptableLinears,
  expectedTensors,
  hasBias,
  headDim,
  linearBiasName,
  type LinearKind,
  linearName,
  type LlamaConfig,
} from "../config.ts";
import {
  adapterBackward,
  adapterForward,
  attentionBackward,
  attentionForward,
  biasBackward,
  biasForward,
  crossEntropyBackward,
  crossEntropyForward,
  embeddingBackward,
  embeddingForward,
  matmulBackward,
  matmulForward,
  residualBackward,
  residualForward,
  rmsnormBackward,
  rmsnormForward,
  ropeBackward,
  ropeForward,
  ropeTables,
  swigluBackward,
  swigluForward,
} from "./ops.ts";

/** Bad input to the reference model (a missing weight, a bad token id, a misshaped adapter). */
export class ReferenceInputError extends DomainError {
  static override readonly code: string = "REFERENCE_INPUT";
}

/** A weight given to the reference: any array of numbers (f32 or f64) with its shape. */
export interface ReferenceTensor {
  shape: readonly number[];
  data: ArrayLike<number>;
}

/**
 * An adapter on one linear layer `W [out, in]`: `y = x Wᵀ + σ · (x Aᵀ) Bᵀ`, gradients
 * `g_B = s · dYᵀ (x Aᵀ)`, `g_A = s · (dY B)ᵀ x`.
 */
export interface ReferenceAdapter {
  /** `[rank, in]` */
  A: ArrayLike<number>;
  /** `[out, rank]` */
  B: ArrayLike<number>;
  rank: number;
  /** s = alpha / r, the scaling of the gradients. */
  scale: number;
  /** The forward scale: 0 (exact mute), γ·s (numeric mute γ), s (LoRA, PiSSA). */
  sigma: number;
}

/**
 * A batch: token ids `[B][S]` and a target mask `[B][S]`; `targetMask[b][j] = 1` makes token j
 * (j ≥ 1) a loss target, predicted by the logits at position j − 1. Position 0 is never a target.
 */
export interface ReferenceBatch {
  ids: readonly (readonly number[])[];
  targetMask: readonly (readonly number[])[];
}

/** The forward's results. */
export interface ReferenceForward {
  /** Mean cross-entropy over the targets (0 when there are none). */
  loss: number;
  /** Number of target tokens. */
  targets: number;
  /** `[B, S, vocab]` */
  logits: Float64Array;
}

/** The forward's results plus every gradient of the loss. */
export interface ReferenceResult extends ReferenceForward {
  /** ∂loss/∂W for every tensor of the checkpoint (Hugging Face names; tied embeddings summed). */
  gradW: Map<string, Float64Array>;
  /** g_A `[rank, in]` per adapted weight name. */
  gradA: Map<string, Float64Array>;
  /** g_B `[out, rank]` per adapted weight name. */
  gradB: Map<string, Float64Array>;
}

interface Shapes {
  B: number;
  S: number;
  N: number;
  C: number;
  I: number;
  H: number;
  KV: number;
  D: number;
  V: number;
}

/** The activations of one decoder layer, kept for the backward. */
interface LayerActs {
  xIn: Float64Array;
  ln1: Float64Array;
  rstd1: Float64Array;
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
  qr: Float64Array;
  kr: Float64Array;
  att: Float64Array;
  ao: Float64Array;
  o: Float64Array;
  xMid: Float64Array;
  ln2: Float64Array;
  rstd2: Float64Array;
  gate: Float64Array;
  up: Float64Array;
  h: Float64Array;
  down: Float64Array;
  /** `x Aᵀ` of each adapted linear of this layer. */
  xa: Map<LinearKind, Float64Array>;
}

interface Acts {
  shapes: Shapes;
  ids: Int32Array;
  targets: Int32Array;
  nTargets: number;
  x0: Float64Array;
  layers: LayerActs[];
  xOut: Float64Array;
  lnf: Float64Array;
  rstdf: Float64Array;
  logits: Float64Array;
  probs: Float64Array;
  losses: Float64Array;
  cos: Float64Array;
  sin: Float64Array;
}

function getWeight(
  weights: ReadonlyMap<string, ReferenceTensor>,
  name: string,
  shape: readonly number[],
): ArrayLike<number> {
  const t = weights.get(name);
  if (!t) throw new ReferenceInputError(`missing weight "${name}"`);
  const n = shape.reduce((a, b) => a * b, 1);
  if (
    t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]) ||
    t.data.length !== n
  ) {
    throw new ReferenceInputError(
      `weight "${name}" has shape [${t.shape}] (${t.data.length} values), expected [${shape}]`,
    );
  }
  return t.data;
}

/** Resolves and checks every weight once, so the ops below can index them without checks. */
function resolveWeights(
  config: LlamaConfig,
  weights: ReadonlyMap<string, ReferenceTensor>,
): Map<string, ArrayLike<number>> {
  const out = new Map<string, ArrayLike<number>>();
  for (const spec of expectedTensors(config)) {
    out.set(spec.name, getWeight(weights, spec.name, spec.shape));
  }
  return out;
}

function checkAdapters(
  config: LlamaConfig,
  adapters: ReadonlyMap<string, ReferenceAdapter>,
): void {
  const linears = new Map(adaptableLinears(config).map((l) => [l.name, l]));
  for (const [name, ad] of adapters) {
    const lin = linears.get(name);
    if (!lin) throw new ReferenceInputError(`adapter on "${name}", which is not a decoder linear`);
    if (!Number.isInteger(ad.rank) || ad.rank < 1) {
      throw new ReferenceInputError(`adapter "${name}": rank ${ad.rank} is not a positive integer`);
    }
    if (ad.A.length !== ad.rank * lin.in || ad.B.length !== lin.out * ad.rank) {
      throw new ReferenceInputError(
        `adapter "${name}": A must be [${ad.rank}, ${lin.in}] and B [${lin.out}, ${ad.rank}], ` +
          `got ${ad.A.length} and ${ad.B.length} values`,
      );
    }
    if (!Number.isFinite(ad.scale) || !Number.isFinite(ad.sigma)) {
      throw new ReferenceInputError(`adapter "${name}": scale and sigma must be finite`);
    }
  }
}

function flattenBatch(config: LlamaConfig, batch: ReferenceBatch) {
  const B = batch.ids.length;
  if (B === 0) throw new ReferenceInputError("empty batch");
  const S = batch.ids[0].length;
  if (S === 0) throw new ReferenceInputError("empty sequences");
  if (batch.targetMask.length !== B) {
    throw new ReferenceInputError(`targetMask has ${batch.targetMask.length} rows, ids has ${B}`);
  }
  const ids = new Int32Array(B * S);
  // targets[t] is the token row t predicts (the next one), or −1 when that is not a target.
  const targets = new Int32Array(B * S).fill(-1);
  let nTargets = 0;
  for (let b = 0; b < B; b++) {
    if (batch.ids[b].length !== S || batch.targetMask[b].length !== S) {
      throw new ReferenceInputError(`sequence ${b}: ids and targetMask must all have length ${S}`);
    }
    for (let j = 0; j < S; j++) {
      const id = batch.ids[b][j];
      if (!Number.isInteger(id) || id < 0 || id >= config.vocab_size) {
        throw new ReferenceInputError(`token id ${id} at [${b}][${j}] is outside the vocabulary`);
      }
      ids[b * S + j] = id;
      if (j >= 1 && batch.targetMask[b][j]) {
        targets[b * S + j - 1] = id;
        nTargets++;
      }
    }
  }
  return { B, S, ids, targets, nTargets };
}

/**
 * RoPE's inverse frequencies [D/2] in float64 for positions 0..S−1, from the formulas of
 * Hugging Face's `modeling_rope_utils.py` (default, linear, dynamic NTK, llama3).
 */
export function referenceInvFreq(config: LlamaConfig, S: number): Float64Array {
  const D = headDim(config);
  const rs = config.rope_scaling;
  let theta = config.rope_theta;
  if (rs?.rope_type === "dynamic" && S > config.max_position_embeddings) {
    const ratio = rs.factor * S / config.max_position_embeddings - (rs.factor - 1);
    theta = theta * Math.pow(ratio, D / (D - 2));
  }
  const inv = Float64Array.from({ length: D / 2 }, (_, i) => 1 / Math.pow(theta, (2 * i) / D));
  if (rs?.rope_type === "linear") return inv.map((f) => f / rs.factor);
  if (rs?.rope_type === "llama3") {
    const old = rs.original_max_position_embeddings!;
    const low = rs.low_freq_factor!, high = rs.high_freq_factor!;
    return inv.map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < old / high) return f; // high frequencies: kept
      if (wavelen > old / low) return f / rs.factor; // low frequencies: scaled
      const smooth = (old / wavelen - low) / (high - low);
      return (1 - smooth) * f / rs.factor + smooth * f;
    });
  }
  return inv;
}

function linearForward(
  y: Float64Array,
  x: Float64Array,
  W: ArrayLike<number>,
  b: ArrayLike<number> | undefined,
  N: number,
  inDim: number,
  outDim: number,
  adapter: ReferenceAdapter | undefined,
  xa: Map<LinearKind, Float64Array>,
  kind: LinearKind,
): void {
  matmulForward(y, x, W, N, inDim, outDim);
  if (b) biasForward(y, b, N, outDim);
  if (!adapter) return;
  const buf = new Float64Array(N * adapter.rank);
  adapterForward(y, buf, x, adapter.A, adapter.B, adapter.sigma, N, inDim, outDim, adapter.rank);
  xa.set(kind, buf);
}

/** The forward pass, keeping every activation for the backward. */
function forward(
  config: LlamaConfig,
  w: Map<string, ArrayLike<number>>,
  batch: ReferenceBatch,
  adapters: ReadonlyMap<string, ReferenceAdapter>,
): Acts {
  const { B, S, ids, targets, nTargets } = flattenBatch(config, batch);
  const N = B * S;
  const C = config.hidden_size;
  const I = config.intermediate_size;
  const H = config.num_attention_heads;
  const KV = config.num_key_value_heads;
  const D = headDim(config);
  const V = config.vocab_size;
  const shapes: Shapes = { B, S, N, C, I, H, KV, D, V };
  const { cos, sin } = ropeTables(S, referenceInvFreq(config, S));
  const window = config.sliding_window ?? Infinity;
  const eps = config.rms_norm_eps;

  const x0 = new Float64Array(N * C);
  embeddingForward(x0, ids, w.get("model.embed_tokens.weight")!, N, C);

  const layers: LayerActs[] = [];
  let x = x0;
  for (let l = 0; l < config.num_hidden_layers; l++) {
    const W = (kind: LinearKind) => w.get(linearName(l, kind))!;
    const bias = (kind: LinearKind) =>
      hasBias(config, kind) ? w.get(linearBiasName(l, kind))! : undefined;
    const ad = (kind: LinearKind) => adapters.get(linearName(l, kind));
    const lin = (kind: LinearKind, y: Float64Array, x: Float64Array, inDim: number, out: number) =>
      linearForward(y, x, W(kind), bias(kind), N, inDim, out, ad(kind), a.xa, kind);
    const a: LayerActs = {
      xIn: x,
      ln1: new Float64Array(N * C),
      rstd1: new Float64Array(N),
      q: new Float64Array(N * H * D),
      k: new Float64Array(N * KV * D),
      v: new Float64Array(N * KV * D),
      qr: new Float64Array(N * H * D),
      kr: new Float64Array(N * KV * D),
      att: new Float64Array(B * H * S * S),
      ao: new Float64Array(N * H * D),
      o: new Float64Array(N * C),
      xMid: new Float64Array(N * C),
      ln2: new Float64Array(N * C),
      rstd2: new Float64Array(N),
      gate: new Float64Array(N * I),
      up: new Float64Array(N * I),
      h: new Float64Array(N * I),
      down: new Float64Array(N * C),
      xa: new Map(),
    };
    rmsnormForward(
      a.ln1,
      a.rstd1,
      x,
      w.get(`model.layers.${l}.input_layernorm.weight`)!,
      N,
      C,
      eps,
    );
    lin("q_proj", a.q, a.ln1, C, H * D);
    lin("k_proj", a.k, a.ln1, C, KV * D);
    lin("v_proj", a.v, a.ln1, C, KV * D);
    ropeForward(a.qr, a.q, cos, sin, B, S, H, D);
    ropeForward(a.kr, a.k, cos, sin, B, S, KV, D);
    attentionForward(a.ao, a.att, a.qr, a.kr, a.v, B, S, H, KV, D, window);
    lin("o_proj", a.o, a.ao, H * D, C);
    residualForward(a.xMid, x, a.o, N * C);
    rmsnormForward(
      a.ln2,
      a.rstd2,
      a.xMid,
      w.get(`model.layers.${l}.post_attention_layernorm.weight`)!,
      N,
      C,
      eps,
    );
    lin("gate_proj", a.gate, a.ln2, C, I);
    lin("up_proj", a.up, a.ln2, C, I);
    swigluForward(a.h, a.gate, a.up, N * I);
    lin("down_proj", a.down, a.h, I, C);
    const xNext = new Float64Array(N * C);
    residualForward(xNext, a.xMid, a.down, N * C);
    layers.push(a);
    x = xNext;
  }

  const lnf = new Float64Array(N * C);
  const rstdf = new Float64Array(N);
  rmsnormForward(lnf, rstdf, x, w.get("model.norm.weight")!, N, C, eps);
  const logits = new Float64Array(N * V);
  matmulForward(logits, lnf, w.get(lmHeadName(config))!, N, C, V);
  const probs = new Float64Array(N * V);
  const losses = new Float64Array(N);
  crossEntropyForward(losses, probs, logits, targets, N, V);
  return {
    shapes,
    ids,
    targets,
    nTargets,
    x0,
    layers,
    xOut: x,
    lnf,
    rstdf,
    logits,
    probs,
    losses,
    cos,
    sin,
  };
}

function lmHeadName(config: LlamaConfig): string {
  return config.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
}

function meanLoss(acts: Acts): number {
  if (acts.nTargets === 0) return 0;
  let sum = 0;
  for (let t = 0; t < acts.shapes.N; t++) sum += acts.losses[t];
  return sum / acts.nTargets;
}

function linearBackward(
  dx: Float64Array,
  dW: Float64Array,
  db: Float64Array | undefined,
  dy: Float64Array,
  x: Float64Array,
  W: ArrayLike<number>,
  N: number,
  inDim: number,
  outDim: number,
  adapter: ReferenceAdapter | undefined,
  xa: Float64Array | undefined,
  gA: Float64Array | undefined,
  gB: Float64Array | undefined,
): void {
  matmulBackward(dx, dW, dy, x, W, N, inDim, outDim);
  if (db) biasBackward(db, dy, N, outDim);
  if (!adapter) return;
  adapterBackward(
    dx,
    gA!,
    gB!,
    dy,
    x,
    xa!,
    adapter.A,
    adapter.B,
    adapter.sigma,
    adapter.scale,
    N,
    inDim,
    outDim,
    adapter.rank,
  );
}

/** The backward pass: every weight's gradient and every adapter's (g_A, g_B). */
function backward(
  config: LlamaConfig,
  w: Map<string, ArrayLike<number>>,
  acts: Acts,
  adapters: ReadonlyMap<string, ReferenceAdapter>,
): Pick<ReferenceResult, "gradW" | "gradA" | "gradB"> {
  const { B, S, N, C, I, H, KV, D, V } = acts.shapes;
  const gradW = new Map<string, Float64Array>();
  for (const spec of expectedTensors(config)) {
    gradW.set(spec.name, new Float64Array(spec.shape.reduce((a, b) => a * b, 1)));
  }
  const gradA = new Map<string, Float64Array>();
  const gradB = new Map<string, Float64Array>();
  for (const [name, ad] of adapters) {
    gradA.set(name, new Float64Array(ad.A.length));
    gradB.set(name, new Float64Array(ad.B.length));
  }
  if (acts.nTargets === 0) return { gradW, gradA, gradB };

  const dlogits = new Float64Array(N * V);
  crossEntropyBackward(dlogits, acts.probs, acts.targets, 1 / acts.nTargets, N, V);
  const dlnf = new Float64Array(N * C);
  matmulBackward(
    dlnf,
    gradW.get(lmHeadName(config))!,
    dlogits,
    acts.lnf,
    w.get(lmHeadName(config))!,
    N,
    C,
    V,
  );
  let dx = new Float64Array(N * C);
  rmsnormBackward(
    dx,
    gradW.get("model.norm.weight")!,
    dlnf,
    acts.xOut,
    w.get("model.norm.weight")!,
    acts.rstdf,
    N,
    C,
  );

  for (let l = config.num_hidden_layers - 1; l >= 0; l--) {
    const a = acts.layers[l];
    const W = (kind: LinearKind) => w.get(linearName(l, kind))!;
    const dW = (kind: LinearKind) => gradW.get(linearName(l, kind))!;
    const lin = (
      kind: LinearKind,
      dIn: Float64Array,
      dy: Float64Array,
      x: Float64Array,
      inDim: number,
      outDim: number,
    ) => {
      const name = linearName(l, kind);
      linearBackward(
        dIn,
        dW(kind),
        gradW.get(linearBiasName(l, kind)),
        dy,
        x,
        W(kind),
        N,
        inDim,
        outDim,
        adapters.get(name),
        a.xa.get(kind),
        gradA.get(name),
        gradB.get(name),
      );
    };

    // xNext = xMid + down
    const dxMid = new Float64Array(N * C);
    const ddown = new Float64Array(N * C);
    residualBackward(dxMid, ddown, dx, N * C);
    const dh = new Float64Array(N * I);
    lin("down_proj", dh, ddown, a.h, I, C);
    const dgate = new Float64Array(N * I);
    const dup = new Float64Array(N * I);
    swigluBackward(dgate, dup, dh, a.gate, a.up, N * I);
    const dln2 = new Float64Array(N * C);
    lin("gate_proj", dln2, dgate, a.ln2, C, I);
    lin("up_proj", dln2, dup, a.ln2, C, I);
    const postNorm = `model.layers.${l}.post_attention_layernorm.weight`;
    rmsnormBackward(dxMid, gradW.get(postNorm)!, dln2, a.xMid, w.get(postNorm)!, a.rstd2, N, C);

    // xMid = xIn + o
    const dxIn = new Float64Array(N * C);
    const dO = new Float64Array(N * C);
    residualBackward(dxIn, dO, dxMid, N * C);
    const dao = new Float64Array(N * H * D);
    lin("o_proj", dao, dO, a.ao, H * D, C);
    const dqr = new Float64Array(N * H * D);
    const dkr = new Float64Array(N * KV * D);
    const dv = new Float64Array(N * KV * D);
    attentionBackward(dqr, dkr, dv, dao, a.att, a.qr, a.kr, a.v, B, S, H, KV, D);
    const dq = new Float64Array(N * H * D);
    const dk = new Float64Array(N * KV * D);
    ropeBackward(dq, dqr, acts.cos, acts.sin, B, S, H, D);
    ropeBackward(dk, dkr, acts.cos, acts.sin, B, S, KV, D);
    const dln1 = new Float64Array(N * C);
    lin("q_proj", dln1, dq, a.ln1, C, H * D);
    lin("k_proj", dln1, dk, a.ln1, C, KV * D);
    lin("v_proj", dln1, dv, a.ln1, C, KV * D);
    const inNorm = `model.layers.${l}.input_layernorm.weight`;
    rmsnormBackward(dxIn, gradW.get(inNorm)!, dln1, a.xIn, w.get(inNorm)!, a.rstd1, N, C);
    dx = dxIn;
  }
  embeddingBackward(gradW.get("model.embed_tokens.weight")!, dx, acts.ids, N, C);
  return { gradW, gradA, gradB };
}

/** Options of the reference model. */
export interface ReferenceOptions {
  /** Adapters by the Hugging Face name of the weight they attach to. */
  adapters?: ReadonlyMap<string, ReferenceAdapter>;
}

/** Loss and logits only (what finite differences need). */
export function referenceForward(
  config: LlamaConfig,
  weights: ReadonlyMap<string, ReferenceTensor>,
  batch: ReferenceBatch,
  options: ReferenceOptions = {},
): ReferenceForward {
  const adapters = options.adapters ?? new Map();
  checkAdapters(config, adapters);
  const acts = forward(config, resolveWeights(config, weights), batch, adapters);
  return { loss: meanLoss(acts), targets: acts.nTargets, logits: acts.logits };
}

/**
 * Loss, logits and every gradient. The loss is the mean, over all target tokens of the batch,
 * of the next-token cross-entropy; with no target at all the loss and every gradient are 0.
 */
export function referenceForwardBackward(
  config: LlamaConfig,
  weights: ReadonlyMap<string, ReferenceTensor>,
  batch: ReferenceBatch,
  options: ReferenceOptions = {},
): ReferenceResult {
  const adapters = options.adapters ?? new Map();
  checkAdapters(config, adapters);
  const w = resolveWeights(config, weights);
  const acts = forward(config, w, batch, adapters);
  const grads = backward(config, w, acts, adapters);
  return { loss: meanLoss(acts), targets: acts.nTargets, logits: acts.logits, ...grads };
}

/**
 * Greedy decoding by recomputing the whole forward for every new token (no cache: it is the
 * reference a cached generator is checked against). Stops after `maxNewTokens` or at a stop id;
 * returns only the new tokens (a stop id included).
 */
export function referenceGreedy(
  config: LlamaConfig,
  weights: ReadonlyMap<string, ReferenceTensor>,
  prompt: readonly number[],
  maxNewTokens: number,
  stopIds: readonly number[] = [],
  options: ReferenceOptions = {},
): number[] {
  const seq = [...prompt];
  const out: number[] = [];
  const V = config.vocab_size;
  for (let n = 0; n < maxNewTokens; n++) {
    const { logits } = referenceForward(
      config,
      weights,
      { ids: [seq], targetMask: [seq.map(() => 0)] },
      options,
    );
    const o = (seq.length - 1) * V;
    let best = 0;
    for (let v = 1; v < V; v++) if (logits[o + v] > logits[o + best]) best = v;
    seq.push(best);
    out.push(best);
    if (stopIds.includes(best)) break;
  }
  return out;
}
