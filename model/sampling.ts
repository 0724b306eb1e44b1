/**
 * Choosing the next token from a row of logits, as transformers' `generate` does: the
 * repetition penalty (a logits processor, also under greedy decoding), then temperature, top-k
 * and top-p (the warpers, in that order), then a draw from the softmax, or the argmax when not
 * sampling. Pure functions over host logits, in float64.
 * @module
 */
import { DomainError } from "../core/errors.ts";
import { Rng } from "../core/rng.ts";

export interface SamplingParams {
  /** false: the argmax (after the repetition penalty). */
  doSample: boolean;
  /** > 0; 1 leaves the logits as they are. */
  temperature: number;
  /** Keep the k most likely tokens (ties with the k-th kept too); 0 keeps all. */
  topK: number;
  /** Keep the smallest set of most likely tokens whose probability reaches top_p; 1 keeps all. */
  topP: number;
  /** HF's: logits of tokens already present divided (> 0) or multiplied (< 0) by it; 1 = off. */
  repetitionPenalty: number;
}

export const GREEDY: SamplingParams = {
  doSample: false,
  temperature: 1,
  topK: 0,
  topP: 1,
  repetitionPenalty: 1,
};

/** Sampling settings that transformers refuses too (a temperature of 0, a top-p outside (0, 1]...). */
export class SamplingError extends DomainError {
  static override readonly code: string = "SAMPLING";
}

/** Throws a SamplingError for values transformers refuses. */
export function checkSampling(p: SamplingParams): void {
  if (!(p.temperature > 0) || !Number.isFinite(p.temperature)) {
    throw new SamplingError(`temperature must be a positive number, got ${p.temperature}`);
  }
  if (!Number.isInteger(p.topK) || p.topK < 0) {
    throw new SamplingError(`top_k must be an integer >= 0, got ${p.topK}`);
  }
  if (!(p.topP > 0 && p.topP <= 1)) {
    throw new SamplingError(`top_p must be in (0, 1], got ${p.topP}`);
  }
  if (!(p.repetitionPenalty > 0) || !Number.isFinite(p.repetitionPenalty)) {
    throw new SamplingError(
      `repetition_penalty must be a positive number, got ${p.repetitionPenalty}`,
    );
  }
}

/** True when the device-side argmax gives the same tokens (no host work needed). */
export function isPlainGreedy(p: SamplingParams): boolean {
  return !p.doSample && p.repetitionPenalty === 1;
}

/** HF's RepetitionPenaltyLogitsProcessor over a float64 copy of `logits`. */
export function applyRepetitionPenalty(
  logits: ArrayLike<number>,
  present: Iterable<number>,
  penalty: number,
): Float64Array {
  const out = Float64Array.from(logits);
  if (penalty === 1) return out;
  for (const id of new Set(present)) {
    if (id < 0 || id >= out.length) continue;
    const x = logits[id];
    out[id] = x < 0 ? x * penalty : x / penalty;
  }
  return out;
}

/**
 * The distribution a sampled token is drawn from: penalty, temperature, top-k, top-p, softmax.
 * Removed tokens have probability exactly 0.
 */
export function samplingDistribution(
  logits: ArrayLike<number>,
  params: SamplingParams,
  present: Iterable<number> = [],
): Float64Array {
  const x = applyRepetitionPenalty(logits, present, params.repetitionPenalty);
  const V = x.length;
  for (let i = 0; i < V; i++) x[i] /= params.temperature;
  if (params.topK > 0 && params.topK < V) {
    // TopKLogitsWarper: remove what is below the k-th largest value.
    const kth = Float64Array.from(x).sort()[V - params.topK];
    for (let i = 0; i < V; i++) if (x[i] < kth) x[i] = -Infinity;
  }
  const p = softmax(x);
  if (params.topP < 1) {
    // TopPLogitsWarper: sort ascending, remove the tokens whose cumulative probability is
    // <= 1 - top_p; the most likely token always stays.
    const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => x[a] - x[b] || a - b);
    let cum = 0;
    const remove = new Uint8Array(V);
    for (let j = 0; j < V - 1; j++) {
      cum += p[order[j]];
      if (cum <= 1 - params.topP) remove[order[j]] = 1;
      else break;
    }
    for (let i = 0; i < V; i++) if (remove[i]) x[i] = -Infinity;
    return softmax(x);
  }
  return p;
}

function softmax(x: Float64Array): Float64Array {
  let m = -Infinity;
  for (const v of x) if (v > m) m = v;
  const p = new Float64Array(x.length);
  let s = 0;
  for (let i = 0; i < x.length; i++) {
    p[i] = x[i] === -Infinity ? 0 : Math.exp(x[i] - m);
    s += p[i];
  }
  for (let i = 0; i < x.length; i++) p[i] /= s;
  return p;
}

/** The first index of the largest value. */
export function argmaxOf(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** One next token: the argmax when not sampling, else a draw with `rng`. */
export function sampleToken(
  logits: ArrayLike<number>,
  params: SamplingParams,
  present: Iterable<number>,
  rng: Rng,
): number {
  if (!params.doSample) {
    return argmaxOf(applyRepetitionPenalty(logits, present, params.repetitionPenalty));
  }
  const p = samplingDistribution(logits, params, present);
  const u = rng.float();
  let cum = 0;
  let lastKept = -1;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0) continue;
    lastKept = i;
    cum += p[i];
    if (u < cum) return i;
  }
  return lastKept; // rounding left u above the total
}

/**
 * A per-sequence sampler for generate(): sequence i draws from its own Rng seeded `seed + i`,
 * so that a sequence's tokens do not depend on what it is batched with.
 */
export function makeSampler(
  params: SamplingParams,
  seed: number,
): (logits: Float32Array, seq: number, history: readonly number[]) => number {
  checkSampling(params);
  const rngs = new Map<number, Rng>();
  return (logits, seq, history) => {
    let rng = rngs.get(seq);
    if (rng === undefined) rngs.set(seq, rng = new Rng(seed + seq));
    return sampleToken(logits, params, history, rng);
  };
}

/** What `generation_config.json` sets (transformers' defaults for what it leaves out). */
export function samplingFromGenerationConfig(
  cfg: Record<string, unknown> | null,
): SamplingParams & { maxNewTokens: number | null } {
  const num = (k: string, d: number) => typeof cfg?.[k] === "number" ? cfg[k] as number : d;
  return {
    doSample: cfg?.do_sample === true,
    temperature: num("temperature", 1),
    topK: num("top_k", 50),
    topP: num("top_p", 1),
    repetitionPenalty: num("repetition_penalty", 1),
    maxNewTokens: typeof cfg?.max_new_tokens === "number" ? cfg.max_new_tokens : null,
  };
}

/** Reads `generation_config.json` of a model folder, or null when there is none. */
export async function readGenerationConfig(dir: string): Promise<Record<string, unknown> | null> {
  try {
    return JSON.parse(await Deno.readTextFile(`${dir}/generation_config.json`));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}
