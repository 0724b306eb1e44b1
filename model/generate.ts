/**
 * Greedy decoding with a KV cache, a batch of prompts at a time.
 *
 * Prefill: every prompt is laid out in a [B, Pmax] block (Pmax the longest prompt); padding
 * rows get position −1, so the cache write skips them and they never become keys (their own
 * outputs are NaN and unused). Each prompt's last hidden row is gathered for the head. Decode:
 * one row per sequence per step. The argmax of step n is written on the device into the input
 * ids of step n + 1, so many steps are recorded into one submit; the host reads the ids back
 * after each submit only to see whether every sequence has met a stop id.
 * @module
 */
import {
  argmax,
  attentionDecode,
  createRopeTable,
  embeddingForward,
  embeddingForwardParts,
  fill,
  type Gpu,
  type GpuTensor,
  kvCacheWrite,
  type Recorder,
} from "../gpu/mod.ts";
import type { LinearKind, LlamaConfig } from "./config.ts";
import {
  type Attention,
  type BlockContext,
  type HeadActs,
  headForward,
  type LayerActs,
  layerActsRows,
  layerForward,
  lmHeadName,
} from "./llama_blocks.ts";
import { LlamaInputError } from "./llama_errors.ts";
import { dynamicRopeEngaged, ropeInvFreq } from "./rope.ts";

export interface GenerateOptions {
  /** New tokens per prompt at most (a stop id included). */
  maxNewTokens: number;
  /** Decoding of a sequence ends after it emits one of these. */
  stopIds: readonly number[];
  /** Prompts decoded together (default: all of them, at most 64). */
  batchSize?: number;
  /**
   * Chooses each next token on the host from the last position's logits (model/sampling.ts);
   * `seq` is the prompt's index, `history` its prompt and the tokens so far. Absent: the argmax
   * on the device, several steps per submit (greedy).
   */
  sample?: (logits: Float32Array, seq: number, history: readonly number[]) => number;
  /**
   * Called with each new token of prompt `seq` as soon as it is read back (a stop id too).
   * Returning true ends that sequence here (a stop string); when every sequence has ended,
   * decoding stops, and the returned lists may hold tokens past such an end.
   */
  onToken?: (seq: number, id: number) => boolean | void;
}

/** Decode steps recorded per submit: fewer wastes submits, more wastes work after stops. */
const STEPS_PER_SUBMIT = 8;

export async function generateGreedy(
  gpu: Gpu,
  config: LlamaConfig,
  ctx: BlockContext,
  prompts: readonly (readonly number[])[],
  options: GenerateOptions,
): Promise<number[][]> {
  const V = config.vocab_size;
  const { maxNewTokens, stopIds } = options;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) {
    throw new LlamaInputError(`maxNewTokens must be an integer >= 0, got ${maxNewTokens}`);
  }
  if (!Array.isArray(stopIds) || stopIds.some((s) => !Number.isInteger(s))) {
    throw new LlamaInputError(`stopIds must be a list of integers`);
  }
  prompts.forEach((p, i) => {
    if (!Array.isArray(p) || p.length === 0) {
      throw new LlamaInputError(`prompt ${i} is empty (it needs at least a bos token)`);
    }
    p.forEach((id, j) => {
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new LlamaInputError(
          `prompt ${i}: token id ${id} at position ${j} is outside the vocabulary [0, ${V})`,
        );
      }
    });
  });
  const longest = Math.max(0, ...prompts.map((p) => p.length)) + maxNewTokens - 1;
  if (maxNewTokens > 0 && dynamicRopeEngaged(config, longest)) {
    // transformers recomputes dynamic frequencies as a sequence grows past the limit, so keys
    // cached earlier keep older rotations; that history is not reproduced here.
    throw new LlamaInputError(
      `generation to ${longest} positions with rope_scaling "dynamic" passes ` +
        `max_position_embeddings (${config.max_position_embeddings}), where the frequencies ` +
        "change during decoding; not supported",
    );
  }
  const batchSize = options.batchSize ?? Math.min(64, Math.max(1, prompts.length));
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new LlamaInputError(`batchSize must be an integer >= 1, got ${batchSize}`);
  }
  const out: number[][] = [];
  for (let i = 0; i < prompts.length; i += batchSize) {
    const chunk = prompts.slice(i, i + batchSize);
    if (maxNewTokens === 0) out.push(...chunk.map(() => []));
    else {
      out.push(
        ...await generateBatch(gpu, config, ctx, chunk, maxNewTokens, new Set(stopIds), {
          offset: i,
          sample: options.sample,
          onToken: options.onToken,
        }),
      );
    }
  }
  return out;
}

async function generateBatch(
  gpu: Gpu,
  config: LlamaConfig,
  ctx: BlockContext,
  prompts: readonly (readonly number[])[],
  steps: number,
  stops: ReadonlySet<number>,
  host: Pick<GenerateOptions, "sample" | "onToken"> & { offset: number },
): Promise<number[][]> {
  const d = ctx.dims;
  const B = prompts.length;
  const lens = prompts.map((p) => p.length);
  const Pmax = Math.max(...lens);
  const maxLen = Pmax + steps - 1;
  const R = B * Pmax;
  const held: GpuTensor[] = [];
  const t = (shape: number[], label: string, dtype: "f32" | "i32" = "f32") => {
    const x = gpu.tensor(shape, dtype, label);
    held.push(x);
    return x;
  };
  const up = (data: Int32Array, label: string) => {
    const x = gpu.upload(data, [data.length], label);
    held.push(x);
    return x;
  };
  try {
    // Step slots start at multiples of the storage offset alignment so that each binds alone.
    const align = gpu.limits.minStorageBufferOffsetAlignment / 4;
    const Bp = Math.ceil(B / align) * align;

    const ids0 = new Int32Array(R);
    const pos0 = new Int32Array(R).fill(-1);
    const lastRows = new Int32Array(B);
    const stepPos = new Int32Array(Math.max(1, steps - 1) * Bp);
    for (let b = 0; b < B; b++) {
      prompts[b].forEach((id, i) => {
        ids0[b * Pmax + i] = id;
        pos0[b * Pmax + i] = i;
      });
      lastRows[b] = b * Pmax + lens[b] - 1;
      for (let n = 0; n + 1 < steps; n++) stepPos[n * Bp + b] = lens[b] + n;
    }
    const idsPrefill = up(ids0, "prefill ids");
    const posPrefill = up(pos0, "prefill positions");
    const gatherRows = up(lastRows, "last prompt rows");
    const posSteps = up(stepPos, "step positions");
    const idsSteps = t([steps * Bp], "step ids", "i32");
    const rope = createRopeTable(gpu, {
      headDim: d.D,
      theta: config.rope_theta,
      maxPositions: maxLen,
      invFreq: ropeInvFreq(config, maxLen),
    });
    held.push(rope.cos, rope.sin);

    const x = t([R, d.C], "x");
    const xa = new Map<LinearKind, GpuTensor>();
    if (ctx.scales.sigma !== 0) {
      for (const name of ctx.params.adapters.keys()) {
        const kind = name.split(".").at(-2) as LinearKind;
        if (!xa.has(kind)) xa.set(kind, t([R, ctx.params.rank], `xa ${kind}`));
      }
    }
    const acts: LayerActs = {
      x,
      ln1: null,
      rstd1: t([R], "rstd1"),
      q: t([R, d.H * d.D], "q"),
      k: t([R, d.KV * d.D], "k"),
      v: t([R, d.KV * d.D], "v"),
      att: t([R, d.H * d.D], "att"),
      lse: null,
      xMid: t([R, d.C], "xMid"),
      ln2: null,
      rstd2: t([R], "rstd2"),
      gate: t([R, d.I], "gate"),
      up: t([R, d.I], "up"),
      h: t([R, d.I], "h"),
      xa,
      out: x,
    };
    const kCache: GpuTensor[] = [];
    const vCache: GpuTensor[] = [];
    for (let l = 0; l < d.L; l++) {
      kCache.push(t([B * maxLen, d.KV * d.D], `k cache ${l}`));
      vCache.push(t([B * maxLen, d.KV * d.D], `v cache ${l}`));
    }
    const last = t([B, d.C], "last rows");
    const head: HeadActs = {
      x: last,
      lnf: t([B, d.C], "lnf"),
      rstdf: t([B], "rstdf"),
      logits: t([B, d.V], "logits"),
    };
    const lm = lmHeadName(config);
    const E = ctx.params.rowParts.get("model.embed_tokens.weight")!;
    const slot = (y: GpuTensor, n: number) => y.rows(n * Bp, B);

    const attention = (positions: GpuTensor, newTokens: number, maxPosition: number): Attention => {
      const shape = {
        batch: B,
        newTokens,
        maxLen,
        nHeads: d.H,
        nKvHeads: d.KV,
        headDim: d.D,
        window: d.window,
      };
      return {
        positions,
        rope,
        forward: (rec, l, out, _lse, q, k, v) => {
          kvCacheWrite(rec, kCache[l], k, positions, shape);
          kvCacheWrite(rec, vCache[l], v, positions, shape);
          attentionDecode(
            rec,
            { out, q, kCache: kCache[l], vCache: vCache[l], positions },
            shape,
            maxPosition,
          );
        },
      };
    };
    const layers = (rec: Recorder, a: LayerActs, attn: Attention) => {
      for (let l = 0; l < d.L; l++) layerForward(rec, ctx, l, a, attn);
    };
    const { sample, onToken } = host;
    const predict = (rec: Recorder, h: HeadActs, n: number) => {
      headForward(rec, ctx, lm, h);
      if (sample === undefined) argmax(rec, slot(idsSteps, n), h.logits);
    };
    // Sampling: one step per submit; the host reads the logits, chooses, writes the ids back.
    const hostIds = sample === undefined ? null : new Int32Array(steps * Bp);
    const histories = prompts.map((p) => [...p]);
    const stopped = new Uint8Array(B);
    const emit = (from: number, to: number) => {
      if (onToken === undefined) return;
      for (let b = 0; b < B; b++) {
        for (let n = from; n < to && !stopped[b]; n++) {
          const id = ids[n * Bp + b];
          if (onToken(host.offset + b, id) === true || stops.has(id)) stopped[b] = 1;
        }
      }
    };

    let done = 0; // step slots already produced
    let ids: Int32Array = new Int32Array(0);
    while (done < steps) {
      const before = done;
      const rec = gpu.record({ label: "generate" });
      let read: Promise<Float32Array | Int32Array>;
      try {
        let n0 = done;
        if (done === 0) {
          for (const c of [...kCache, ...vCache]) fill(rec, c, 0);
          embeddingForwardParts(rec, x, E, idsPrefill);
          layers(rec, acts, attention(posPrefill, Pmax, Pmax - 1));
          embeddingForward(rec, last, x, gatherRows);
          predict(rec, head, 0);
          n0 = 1;
        }
        const a = layerActsRows(acts, B);
        const h: HeadActs = { ...head, x: a.out };
        const end = Math.min(steps, hostIds === null ? n0 + STEPS_PER_SUBMIT : done + 1);
        for (let n = n0; n < end; n++) {
          // Token of slot n − 1 at position len + n − 1 predicts slot n.
          embeddingForwardParts(rec, a.x, E, slot(idsSteps, n - 1));
          layers(rec, a, attention(slot(posSteps, n - 1), 1, Pmax + n - 1));
          predict(rec, h, n);
        }
        done = end;
        read = rec.read(hostIds === null ? idsSteps : head.logits);
      } catch (e) {
        rec.discard();
        throw e;
      }
      await rec.submit();
      if (hostIds === null) ids = (await read) as Int32Array;
      else {
        const logits = (await read) as Float32Array;
        const n = done - 1;
        const V = d.V;
        for (let b = 0; b < B; b++) {
          const id = sample!(logits.subarray(b * V, (b + 1) * V), host.offset + b, histories[b]);
          hostIds[n * Bp + b] = id;
          histories[b].push(id);
        }
        gpu.write(slot(idsSteps, n), hostIds.subarray(n * Bp, n * Bp + B));
        ids = hostIds;
      }
      emit(before, done);
      if (onToken !== undefined && stopped.every((x) => x === 1)) break;
      if (allStopped(ids, B, Bp, done, stops)) break;
    }
    return prompts.map((_, b) => {
      const seq: number[] = [];
      for (let n = 0; n < done; n++) {
        const id = ids[n * Bp + b];
        seq.push(id);
        if (stops.has(id)) break;
      }
      return seq;
    });
  } finally {
    for (const x of held) gpu.release(x);
  }
}

function allStopped(
  ids: Int32Array,
  B: number,
  Bp: number,
  produced: number,
  stops: ReadonlySet<number>,
): boolean {
  if (stops.size === 0) return false;
  for (let b = 0; b < B; b++) {
    let stopped = false;
    for (let n = 0; n < produced && !stopped; n++) stopped = stops.has(ids[n * Bp + b]);
    if (!stopped) return false;
  }
  return true;
}
