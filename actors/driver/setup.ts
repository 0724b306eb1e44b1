/**
 * The driver's setup (docs/architecture.md §6, "Driver"): the model, tokenizer, data, batch plan
 * and evaluation set of a run, and its K workers (spawn, load W, init the method).
 * @module
 */
import type { LlamaConfig } from "../../model/config.ts";
import {
  type HostTensor,
  loadModelFolder,
  type ModelSource,
  serializeSafetensors,
} from "../../model/safetensors.ts";
import { loadTokenizer, type Tokenizer } from "../../model/tokenizer.ts";
import { BatchPlan } from "../../train/data/batching.ts";
import { type EncodedExample, encodeExamples } from "../../train/data/encode.ts";
import { loadJsonl } from "../../train/data/jsonl.ts";
import {
  type FinetuneOptions,
  resolvedConfig,
  RESUME_KEYS,
  workerSettings,
} from "../../train/cli/options.ts";
import { validateOptionsForModel } from "../../train/cli/model_checks.ts";
import type { Layout } from "../../train/methods/layout.ts";
import {
  chatFormatFor,
  type PreparedEval,
  prepareEval,
  stopIdsOf,
} from "../../train/eval/evaluate.ts";
import type { CheckpointState } from "../../train/checkpoint/checkpoint.ts";
import { GpuWorker } from "../gpu_worker.ts";
import type { WeightSource } from "../messages.ts";
import { weightFileDigests } from "../../model/folder_digest.ts";
import { defaultSvdThreads, SvdPool } from "../../train/linalg/svd_pool.ts";
import {
  randomizedSvdMatrices,
  randomizedSvdRequests,
  randomizedSvdsAhead,
} from "../../train/methods/init_svd.ts";
import { SvdError, type SvdResult } from "../../train/linalg/svd.ts";
import { decodeSvds } from "../../train/linalg/svd_wire.ts";
import { AdapterInitError } from "../../train/methods/adapter_init.ts";
import { type InitOptions, initOptionsOf } from "../../train/methods/init.ts";
import { deleteStoredWeights, putStoredWeights, StoreBytes } from "../stored_weights.ts";
import {
  CALL,
  type DriverContext,
  type RunState,
  type StoredRef,
  TrainingError,
  type Worker,
} from "./context.ts";

/** What a run reads once, in setup, and never changes. */

/** What each worker asks of the node it runs on. */
export const WORKER_RESOURCES: Record<string, number> = { gpu: 1 };

export interface RunInputs {
  config: LlamaConfig;
  tokenizer: Tokenizer;
  /** The base model's weights (what ΔW is measured from). */
  baseWeights: Map<string, HostTensor>;
  /** The model folder's config.json, dtypes and sharding, which the written folder follows. */
  source: ModelSource;
  train: EncodedExample[];
  evalPrepared: PreparedEval | null;
  plan: BatchPlan;
  layout: Layout;
}

/** Loads the model folder, the tokenizer and the data; builds the batch plan and the eval set. */
export async function loadInputs(ctx: DriverContext): Promise<RunInputs> {
  const o = ctx.o;
  const model = await loadModelFolder(o.model);
  const config = model.config;
  const baseWeights = new Map(model.tensors);
  validateOptionsForModel(o, config);
  const tokenizer = await loadTokenizer(o.model, config);
  const jsonl = {
    promptField: o.promptField,
    responseField: o.responseField,
    taskField: o.taskField,
    messagesField: o.messagesField,
    skipMalformed: o.skipMalformed,
  };
  const data = await loadJsonl(o.data, jsonl);
  if (data.skipped > 0) ctx.log(`skipped ${data.skipped} malformed lines of ${o.data}`);
  const ev = o.eval ? await loadJsonl(o.eval, jsonl) : null;
  const examples = [...data.examples, ...(ev?.examples ?? [])];
  const chat = chatFormatFor(tokenizer, examples, o.chatTemplate, o.model);
  if (chat) ctx.log(`chat template of ${chat.file}`);
  const train = encodeExamples(tokenizer, data.examples, o.seqLen, {
    chat,
    chatTemplate: o.chatTemplate,
    source: o.data,
    lines: data.lines,
  });
  const plan = new BatchPlan({
    numExamples: train.length,
    batchSize: o.batchSize,
    workers: o.workers,
    microBatch: o.microBatch,
    epochs: o.epochs,
    maxSteps: o.maxSteps ?? undefined,
    shuffle: o.shuffle,
    seed: o.seed,
  });
  let evalPrepared: PreparedEval | null = null;
  if (ev) {
    // The subset is fixed (seed 0), so runs with different seeds are scored on the same items.
    evalPrepared = prepareEval(tokenizer, ev.examples, {
      perTask: o.evalPerTask,
      all: o.evalAll,
      maxNewTokens: o.maxNewTokens ?? undefined,
      stopIds: stopIdsOf(config, tokenizer, chat),
      chat,
      chatTemplate: o.chatTemplate,
    });
  }
  const layout = ctx.method.layout(config, { targets: o.targets, rank: o.rank });
  return {
    config,
    tokenizer,
    baseWeights,
    source: model.source,
    train,
    evalPrepared,
    plan,
    layout,
  };
}

/** Refuses to resume a checkpoint made with other flags that decide what the run computes. */
export function checkResumable(o: FinetuneOptions, state: CheckpointState): void {
  const now = resolvedConfig(o);
  const keys = RESUME_KEYS;
  for (const k of keys) {
    if (JSON.stringify(state.config[k]) !== JSON.stringify(now[k])) {
      throw new TrainingError(
        `--resume: the checkpoint was made with ${k} = ${JSON.stringify(state.config[k])}, ` +
          `this run has ${JSON.stringify(now[k])}; resume with the same flags`,
      );
    }
  }
}

/** A worker that `--device auto` put on a CPU adapter, and why. */
export interface DeviceFallback {
  worker: number;
  device: string;
  reason: string;
}

/** The K workers of a run, and what they reported about their devices. */
export class Fleet {
  devices: string[] = [];
  /** Whether each worker's device is a CPU adapter (from the last load). */
  cpus: boolean[] = [];
  readonly fallbacks: DeviceFallback[] = [];
  /** Floats of optimizer state per worker (from the last init). */
  optimizerFloats = 0;
  /** How each worker read the base weights at their last load: the folder or the object store. */
  loadedVia: ("folder" | "store")[] = [];
  /** The bytes of W's chunks the driver has held for the object store: now and at most. */
  readonly storeBytes: StoreBytes = new StoreBytes();
  /** SHA-256 of the model folder's weight files, computed at the first direct load. */
  #digests: Record<string, string> | null = null;

  private constructor(
    private readonly ctx: DriverContext,
    readonly workers: Worker[],
  ) {}

  /** Spawns the K workers, one per GPU, each restarted up to 3 times within a minute. */
  static async spawn(ctx: DriverContext): Promise<Fleet> {
    ctx.log(`starting ${ctx.o.workers} GPU workers`);
    const workers = await Promise.all(
      Array.from({ length: ctx.o.workers }, (_, k) =>
        ctx.system.spawn(GpuWorker, { worker: k }, {
          name: `${ctx.job}-w${k}`,
          resources: WORKER_RESOURCES,
          maxRestarts: 3,
          withinMs: 60_000,
          placementTimeoutMs: 60_000,
        })),
    );
    return new Fleet(ctx, workers);
  }

  /**
   * The host of the node running worker `w`, as its heartbeats advertise it; null while the
   * directory does not know it yet.
   */
  #hostOf(w: Worker): string | null {
    const { system } = this.ctx;
    const node = system.actors().find((a) => a.id === w.ref.id)?.node;
    return system.nodes().find((n) => n.id === node)?.host ?? null;
  }

  /**
   * Where each worker reads W: the model folder, or null for the object store. Only the base weights (`base`) may come from the model folder, and
   * only for workers on this host under `--load-via auto`: a checkpoint's W or a re-sync is not
   * the folder's.
   */
  async #sources(base: boolean): Promise<(WeightSource & { via: "folder" } | null)[]> {
    const store = this.workers.map(() => null);
    if (!base || this.ctx.o.loadVia === "store") return store;
    let folder: string;
    try {
      folder = await Deno.realPath(this.ctx.o.model);
      if (!(await Deno.stat(folder)).isDirectory) return store;
    } catch {
      return store;
    }
    const here = Deno.hostname();
    const local = this.workers.map((w) => this.#hostOf(w) === here);
    if (!local.some((l) => l)) return store;
    // Computed once: the folder must not change during the run (a worker refuses it if it did).
    this.#digests ??= await weightFileDigests(folder);
    const direct = { via: "folder" as const, folder, digests: this.#digests };
    return local.map((l) => l ? direct : null);
  }

  /**
   * Has every worker load W: through the object store, or, for the base weights (`base`), from
   * the model folder for the workers on this host (see `--load-via`).
   */
  async load(
    weights: ReadonlyMap<string, HostTensor>,
    run: RunInputs,
    generation: number,
    base = false,
  ): Promise<void> {
    const { o, job, system } = this.ctx;
    const direct = await this.#sources(base);
    const store = await system.objects();
    // W goes into the store as packed chunks, one at a time, never serialized whole
    // (actors/stored_weights.ts).
    const put = direct.some((d) => d === null)
      ? await putStoredWeights(store, `${job}.weights.g${generation}`, run.config, weights, {
        counter: this.storeBytes,
      })
      : null;
    const sources: WeightSource[] = direct.map((d) =>
      d ?? { via: "store", name: put!.name, digest: put!.digest }
    );
    const byPath = new Map<string, number[]>();
    sources.forEach((s, k) => byPath.set(s.via, [...(byPath.get(s.via) ?? []), k]));
    for (const [via, ks] of byPath) {
      const who = ks.length === 1 ? `worker ${ks[0]} loads` : `workers ${ks.join(", ")} load`;
      this.ctx.log(
        via === "folder"
          ? `${who} the weights from the model folder ${o.model} (same host)`
          : `${who} the weights through the object store`,
      );
    }
    if (base) this.loadedVia = sources.map((s) => s.via);
    const maxMicroBatches = o.batchSize / (o.workers * o.microBatch);
    const loaded = await Promise.all(this.workers.map((w, k) =>
      w.load({
        weights: sources[k],
        seqLen: o.seqLen,
        microBatch: o.microBatch,
        maxMicroBatches,
        settings: workerSettings(o),
        updateSubject: `${this.ctx.prefix}.update`,
        updateFloats: this.ctx.method.updateLength(run.layout, o.workers),
      }, CALL)
    ));
    this.devices = loaded.map((r) => r.device);
    this.cpus = loaded.map((r) => r.cpu);
    // Announced once per worker and kept for report.json: a run on the CPU adapter is slow, and
    // a user who expected a GPU must see why it did not get one. Workers with the same device and
    // reason share one line.
    const fresh = new Map<string, number[]>();
    loaded.forEach((r, k) => {
      if (r.fallback === null || this.fallbacks.some((f) => f.worker === k)) return;
      this.fallbacks.push({ worker: k, device: r.device, reason: r.fallback });
      const key = JSON.stringify([r.device, r.fallback]);
      fresh.set(key, [...(fresh.get(key) ?? []), k]);
    });
    for (const [key, workers] of fresh) {
      const [device, reason] = JSON.parse(key) as [string, string];
      const who = workers.length === 1
        ? `worker ${workers[0]} runs`
        : `workers ${workers.join(", ")} run`;
      this.ctx.log(
        `warning: ${who} on a CPU adapter (${device}): ${reason}; ` +
          `--device gpu refuses to, --device cpu asks for it`,
      );
    }
    if (put) await deleteStoredWeights(store, put.objects);
  }

  /**
   * Sets up the method on every worker from `factors` (and a checkpoint's states), each named
   * with the digest its put returned.
   */
  async init(
    generation: number,
    factors: StoredRef,
    states: StoredRef[] | undefined,
    appliedStep: number,
  ): Promise<void> {
    const out = await Promise.all(
      this.workers.map((w, k) =>
        w.init({ generation, factors, state: states?.[k], appliedStep }, CALL)
      ),
    );
    this.optimizerFloats = out[0].optimizerFloats;
  }

  /** Whether W may differ across workers within 1e-6 (mixed devices) or must be bit-identical. */
  tolerant(): boolean {
    const sync = this.ctx.o.sync;
    return sync === "tolerant" || (sync === "auto" && new Set(this.devices).size > 1);
  }

  /** Stops the workers. */
  async close(): Promise<void> {
    await Promise.allSettled(this.workers.map((w) => this.ctx.system.stop(w)));
    this.workers.length = 0;
  }
}

/**
 * Where the init's randomized SVDs run: `--svd-device` cpu or gpu as asked; auto takes the
 * workers' devices when every one of them is a GPU, and the driver's threads when any is a CPU
 * adapter (there the passes over W would compete for the same cores, and lavapipe's f32 matmuls
 * are slower than the float64 threads: `deno task bench svd`). Announced, and kept for
 * report.json.
 */
function chooseSvdDevice(ctx: DriverContext, fleet: Fleet, state: RunState): "cpu" | "gpu" {
  const asked = ctx.o.svdDevice;
  const onCpu = fleet.cpus.flatMap((c, k) => c ? [k] : []);
  let used: "cpu" | "gpu";
  let reason: string;
  if (asked !== "auto") {
    used = asked;
    reason = `--svd-device ${asked}`;
  } else if (onCpu.length === 0 && fleet.cpus.length > 0) {
    used = "gpu";
    reason = "auto: every worker has a GPU";
  } else {
    used = "cpu";
    reason = `auto: worker${onCpu.length === 1 ? "" : "s"} ${onCpu.join(", ")} ` +
      `${onCpu.length === 1 ? "is" : "are"} on a CPU adapter`;
  }
  state.svdDevice = { asked, used, reason };
  return used;
}

/**
 * The randomized SVDs of the init, with a `train.init` event after each matrix for the progress
 * display; none when the method needs no SVD or every matrix gets the exact one. On the driver's
 * pool of `--svd-threads` threads (float64), or on the workers' devices (`--svd-device`).
 */
async function svdsAhead(
  ctx: DriverContext,
  run: RunInputs,
  fleet: Fleet,
  state: RunState,
  options: InitOptions,
) {
  const components = ctx.method.svdComponents?.(ctx.o) ?? 0;
  const total = randomizedSvdMatrices(run.config, options).length;
  if (components === 0 || total === 0) return undefined;
  const device = chooseSvdDevice(ctx, fleet, state);
  const threads = ctx.o.svdThreads === 0 ? defaultSvdThreads() : ctx.o.svdThreads;
  ctx.log(
    device === "gpu"
      ? `randomized SVD of ${total} matrices on the ${fleet.workers.length} workers' devices ` +
        `(${state.svdDevice!.reason})`
      : `randomized SVD of ${total} matrices on ${threads} threads (${state.svdDevice!.reason})`,
  );
  ctx.emit("init", { done: 0, total, ms: 0 });
  if (device === "gpu") return await svdsOnWorkers(ctx, run, fleet, options, components);
  using pool = new SvdPool({ threads });
  return await randomizedSvdsAhead(
    run.config,
    run.baseWeights,
    options,
    components,
    pool,
    (p) => ctx.emit("init", { matrix: p.matrix, done: p.done, total: p.total, ms: p.ms }),
  );
}

/**
 * The randomized SVDs on the workers: matrix i (model order) on worker i mod K, each worker
 * through its list one matrix at a time on its own device with the base W it holds, its factors
 * back through the object store. The driver then builds the init from these factors once, so
 * every worker takes its slice of the same factors whichever worker computed them.
 */
async function svdsOnWorkers(
  ctx: DriverContext,
  run: RunInputs,
  fleet: Fleet,
  options: InitOptions,
  components: number,
): Promise<Map<string, SvdResult>> {
  const requests = randomizedSvdRequests(run.config, options);
  const K = fleet.workers.length;
  const store = await ctx.system.objects();
  const results = new Map<string, SvdResult>();
  let done = 0;
  await Promise.all(fleet.workers.map(async (w, k) => {
    for (const r of requests.filter((_, i) => i % K === k)) {
      const out = `${ctx.job}.svd.${r.name}`;
      let reply;
      try {
        reply = await w.svd({
          matrices: [{ name: r.name, rank: components, niter: r.niter, seed: r.seed }],
          out,
        }, CALL);
      } catch (e) {
        if (!(e instanceof SvdError)) throw e;
        throw new AdapterInitError(`worker ${k}: ${e.message}`, r.name);
      }
      const [svd] = decodeSvds(await store.get(out, { digest: reply.digest }), reply.matrices);
      await store.delete(out);
      results.set(r.name, svd);
      const ms = reply.matrices[0].ms;
      ctx.emit("init", { matrix: r.name, done: ++done, total: requests.length, ms });
    }
  }));
  return new Map(requests.map((r) => [r.name, results.get(r.name)!]));
}

/**
 * Computes the method's initial factors from the base weights (docs/architecture.md §2), once,
 * puts them into the object store (kept for rollbacks) and sets up every worker from them.
 */
export async function initMethod(
  ctx: DriverContext,
  run: RunInputs,
  fleet: Fleet,
  state: RunState,
): Promise<void> {
  const o = ctx.o;
  const announce = ctx.method.initLog(run.config, o);
  if (announce) ctx.log(announce);
  const t0 = performance.now();
  const options: InitOptions = initOptionsOf(o);
  const svds = await svdsAhead(ctx, run, fleet, state, options);
  const init = ctx.method.init(run.config, run.baseWeights, { ...options, svds });
  state.initMs = performance.now() - t0;
  ctx.log(`adapter init: ${(state.initMs / 1000).toFixed(1)} s`);
  const tensors = ctx.method.initToTensors(run.config, o, init);
  const put = await (await ctx.system.objects()).put(
    `${ctx.job}.factors`,
    serializeSafetensors(tensors),
  );
  state.factors = { name: put.name, digest: put.digest };
  await fleet.init(state.generation, state.factors, undefined, -1);
  state.nextStep = 0;
}
