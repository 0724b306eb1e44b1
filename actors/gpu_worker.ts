/**
 * `GpuWorker`: one per GPU. It owns a WebGPU device, the model's weights W, its method state
 * (HD-PiSSA: all K adapter pairs and the optimizer moments of its own slice) and follows the
 * driver's step protocol (docs/architecture.md §6):
 *
 * - `step(g, t)` runs forward/backward on the worker's shard and publishes its contribution on
 *   the gather subject, and replies with the contribution's SHA-256; it keeps the contribution,
 *   so a repeated `step(g, t)` publishes the same bytes again without recomputing;
 * - `apply(g, t, digest)` takes the update the driver broadcast once for everybody, the one with
 *   that SHA-256 (anything else on the subject is refused and counted), and applies it, only
 *   when the worker is at step t − 1; a repeated `apply(g, t)` is a no-op; `apply` with `skip`
 *   passes over a dropped step without an update;
 * - messages of another generation than the current one are refused or dropped.
 * @module
 */
import { z } from "zod";
import {
  type ActorContext,
  CollectiveTimeoutError,
  defineActor,
  type Receiver,
} from "../runtime/mod.ts";
import { Gpu, type RowParts } from "../gpu/mod.ts";
import { SvdError, type SvdResult } from "../train/linalg/svd.ts";
import { gpuRandomizedSvd } from "../train/linalg/svd_gpu.ts";
import { encodeSvds } from "../train/linalg/svd_wire.ts";
import { type LlamaConfig, llamaConfigToJson } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import {
  type HostTensor,
  inspectModelFolder,
  parseSafetensors,
  serializeSafetensors,
  type StreamedTensors,
  streamModelFolder,
} from "../model/safetensors.ts";
import { checkWeightDigests } from "../model/folder_digest.ts";
import type { MicroBatch } from "../model/batch.ts";
import { type SharedState, type WorkerMethod, WorkerStateError } from "../train/methods/worker.ts";
import { getMethod } from "../train/methods/registry.ts";
import { combinedSha256, scalarSha256, tensorSha256 } from "../train/checkpoint/checksum.ts";
import {
  ApplyInput,
  ApplyOutput,
  ChecksumInput,
  ChecksumOutput,
  type Contribution,
  DebugPerturbInput,
  DebugPerturbOutput,
  GenerateInput,
  GenerateOutput,
  InitInput,
  InitOutput,
  LoadInput,
  LoadOutput,
  ObjectRef,
  SaveInput,
  SaveOutput,
  StepInput,
  StepOutput,
  SvdInput,
  SvdOutput,
  Update,
  type WeightSource,
} from "./messages.ts";
import { FRAME_SLACK, tensorDigest } from "./digest.ts";
import { DOMAIN_ERRORS } from "./errors.ts";
import { StoredWeightsError, streamStoredWeights } from "./stored_weights.ts";
import { getAnnounced, StoredObjectError } from "./stored_object.ts";
import { DomainError } from "../core/errors.ts";

/** The driver asked for something the worker's protocol state does not allow. */
export class StepProtocolError extends DomainError {
  static override readonly code: string = "STEP_PROTOCOL";
}

/**
 * The update announced by an apply call did not arrive in time (lost with a server, or still on
 * its way): the driver broadcasts it again and repeats the call.
 */
export class UpdateMissingError extends StepProtocolError {
  static override readonly code: string = "UPDATE_MISSING";
  static readonly fields = z.object({ step: z.number().int(), waitMs: z.number() });
  constructor(readonly step: number, readonly waitMs: number) {
    super(`the update of step ${step} did not arrive in ${waitMs} ms`);
  }
}

/** What reaches a GpuWorker's caller as itself: its protocol errors and the layers' below. */
export const WORKER_ERRORS = [
  StepProtocolError,
  UpdateMissingError,
  StoredWeightsError,
  StoredObjectError,
  ...DOMAIN_ERRORS,
];

/**
 * Set to "1" in a worker's environment to let it accept `debugPerturb`, the fault injection of
 * the tests; any other worker refuses it.
 */
export const FAULT_INJECTION_ENV = "HD_FAULT_INJECTION";

/** The name of the shared optimizer step counter among the per-tensor digests. */
export const OPTIMIZER_STEP = "optimizer.step";

class WorkerState {
  gpu: Gpu | null = null;
  model: LlamaGpu | null = null;
  method: WorkerMethod | null = null;
  load: z.infer<typeof LoadInput> | null = null;
  updates: Receiver<Update> | null = null;
  /** Update messages refused since the last apply, and the receiver's count already taken in. */
  rejected = 0;
  receiverRejected = 0;
  /** Digest of the last update applied (its re-broadcasts are not counted as refused). */
  appliedDigest = "";
  generation = 0;
  appliedStep = -1;
  last: {
    generation: number;
    step: number;
    contribution: Float32Array;
    out: z.input<typeof StepOutput>;
  } | null = null;
  lastApply: z.input<typeof ApplyOutput> | null = null;
  traffic = { sent: 0, received: 0 };
  /** A perturbation armed by `debugPerturb` for after the apply of a step (tests only). */
  perturbation: z.infer<typeof DebugPerturbInput> | null = null;

  constructor(readonly worker: number, readonly ctx: ActorContext) {}

  need(): { model: LlamaGpu; method: WorkerMethod } {
    if (!this.model || !this.method) {
      throw new StepProtocolError(`worker ${this.worker} is not initialised (call load and init)`);
    }
    return { model: this.model, method: this.method };
  }

  close(): void {
    this.updates?.close();
    this.model?.close();
    this.gpu?.close();
    this.updates = null;
    this.model = null;
    this.method = null;
    this.gpu = null;
  }
}

function toMicroBatch(b: z.infer<typeof StepInput>["batches"][number], seqLen: number): MicroBatch {
  let targets = 0;
  for (let j = 0; j < b.targetMask.length; j++) if (j % seqLen !== 0 && b.targetMask[j]) targets++;
  return { ids: b.ids, targetMask: b.targetMask, rows: b.rows, seqLen, targets };
}

/**
 * Reads the update subject until the update announced by the apply call arrives: generation g,
 * step t, and exactly the bytes of `digest`. Anything else read meanwhile is refused and counted,
 * except re-broadcasts of the update applied last.
 */
async function awaitUpdate(
  s: WorkerState,
  g: number,
  t: number,
  digest: string,
  waitMs: number,
  signal: AbortSignal,
): Promise<Float32Array> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0 || signal.aborted) {
      throw new UpdateMissingError(t, waitMs);
    }
    let value: Update;
    try {
      ({ value } = await s.updates!.next(left));
    } catch (e) {
      if (e instanceof CollectiveTimeoutError) continue;
      throw e;
    }
    const d = tensorDigest(value.data);
    if (value.generation === g && value.step === t && d === digest) return value.data;
    if (d !== s.appliedDigest) s.rejected++;
  }
}

/** The apply output, with the traffic and refused messages since the previous one. */
function done(
  s: WorkerState,
  g: number,
  t: number,
  updateMs: number,
): z.input<typeof ApplyOutput> {
  const traffic = trafficSince(s);
  const receiverRejected = s.updates?.rejected ?? 0;
  const rejected = s.rejected + receiverRejected - s.receiverRejected;
  s.rejected = 0;
  s.receiverRejected = receiverRejected;
  return {
    generation: g,
    step: t,
    updateMs,
    bytesSent: traffic.sent,
    bytesReceived: traffic.received,
    duplicate: false,
    rejected,
  };
}

function trafficSince(s: WorkerState): { sent: number; received: number } {
  const now = s.ctx.system.stats;
  const d = {
    sent: now.bytesSent - s.traffic.sent,
    received: now.bytesReceived - s.traffic.received,
  };
  s.traffic = { sent: now.bytesSent, received: now.bytesReceived };
  return d;
}

/** W and every adapter as one safetensors file: a checkpoint's shared part. */
async function checkpointBytes(
  model: LlamaGpu,
  method: WorkerMethod,
): Promise<Uint8Array> {
  const tensors = new Map(await model.readWeights());
  for (const [k, t] of await method.adapters()) tensors.set(k, t);
  return serializeSafetensors(tensors, {
    format: "pt",
    config: JSON.stringify(llamaConfigToJson(model.config)),
  });
}

/**
 * Everything that must be the same on every worker: W and the method's shared state (docs/
 * architecture.md §6, "Keeping the shared state equal").
 */
async function sharedState(
  model: LlamaGpu,
  method: WorkerMethod,
): Promise<{ W: Map<string, HostTensor>; shared: SharedState }> {
  return { W: await model.readWeights(), shared: await method.sharedState() };
}

/** A SHA-256 per tensor of the shared state (and one for a shared optimizer step), by name. */
function digestsOf(
  st: { W: Map<string, HostTensor>; shared: SharedState },
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [n, t] of st.W) out[n] = tensorSha256(t);
  for (const [n, t] of st.shared.tensors) {
    if (n in out) throw new WorkerStateError(`${n} is both a weight and shared state`);
    out[n] = tensorSha256(t);
  }
  if (st.shared.optimizerStep !== null) out[OPTIMIZER_STEP] = scalarSha256(st.shared.optimizerStep);
  return out;
}

/** The shared state as one safetensors file: the source of a tolerant re-synchronisation. */
function sharedBytes(
  model: LlamaGpu,
  st: { W: Map<string, HostTensor>; shared: SharedState },
): Uint8Array {
  const tensors = new Map(st.W);
  for (const [k, t] of st.shared.tensors) tensors.set(k, t);
  const meta: Record<string, string> = {
    format: "pt",
    config: JSON.stringify(llamaConfigToJson(model.config)),
  };
  if (st.shared.optimizerStep !== null) meta.optimizer_step = String(st.shared.optimizerStep);
  return serializeSafetensors(tensors, meta);
}

/**
 * Changes one float of one tensor of the shared state by `ulps` units in the last place (its
 * bit pattern as an integer, so away from zero for positive `ulps`): a drift between workers
 * that the checksums must find. With `dryRun` it only checks that the tensor and element exist.
 */
async function perturb(
  s: WorkerState,
  p: z.infer<typeof DebugPerturbInput>,
  dryRun = false,
): Promise<void> {
  const { model, method } = s.need();
  const bump = (data: Float32Array) => {
    if (p.index >= data.length) {
      throw new StepProtocolError(`${p.tensor} has ${data.length} elements, no element ${p.index}`);
    }
    if (dryRun) return;
    const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
    bits[p.index] += p.ulps;
  };
  if (model.weightNames().includes(p.tensor)) {
    const data = (await model.readWeights()).get(p.tensor)!.data;
    bump(data);
    if (!dryRun) model.writeWeight(p.tensor, data);
    return;
  }
  const shared = await method.sharedState();
  const t = shared.tensors.get(p.tensor);
  if (!t) {
    throw new StepProtocolError(
      `${p.tensor} is neither a weight nor shared state of ${s.load!.settings.method}`,
    );
  }
  bump(t.data);
  if (!dryRun) method.setSharedState(shared);
}

/**
 * W from the object store, or from the model folder after checking that its weight files are the
 * ones the driver read (a WeightDigestError otherwise: never another path in its place). The
 * tensors are read on demand, as the model uploads them (one at a time): the folder's from its
 * files, the store's from the packed chunks that cover them, fetched in order, one held at a
 * time, each by the digest in the driver's manifest (a StoredWeightsError otherwise).
 */
async function readWeights(
  src: WeightSource,
  ctx: ActorContext,
): Promise<{ config: LlamaConfig; tensors: StreamedTensors }> {
  if (src.via === "folder") {
    await checkWeightDigests(src.folder, src.digests);
    const layout = await inspectModelFolder(src.folder);
    return { config: layout.config, tensors: streamModelFolder(layout) };
  }
  return await streamStoredWeights(await ctx.objects(), src.name, src.digest);
}

export const GpuWorker = defineActor({
  name: "GpuWorker",
  module: import.meta.url,
  init: z.object({ worker: z.number().int().min(0) }),
  create: (input, ctx) => new WorkerState(input.worker, ctx),
  close: (s) => s.close(),
  errors: WORKER_ERRORS,
  methods: {
    /** Opens the device and loads W from the object store or the base model folder. */
    load: {
      input: LoadInput,
      output: LoadOutput,
      handler: async (s, input, ctx) => {
        s.close();
        const { config, tensors } = await readWeights(input.weights, ctx);
        try {
          s.gpu = await Gpu.open({ adapter: input.settings.device });
          const settings = { ...input.settings };
          s.model = await LlamaGpu.create(s.gpu, config, { streamed: tensors.tensors }, {
            maxRows: input.microBatch,
            seqLen: input.seqLen,
            maxMicroBatches: input.maxMicroBatches,
            recompute: settings.recompute,
            weightsDtype: settings.weightsDtype,
            ...getMethod(settings.method).modelOptions(settings),
          });
        } finally {
          tensors.close();
        }
        s.load = input;
        s.updates = await ctx.collectives.subscribe(input.updateSubject, {
          schema: Update,
          maxFrameBytes: 4 * input.updateFloats + FRAME_SLACK,
          maxQueue: 64,
        });
        s.rejected = 0;
        s.receiverRejected = 0;
        let parameters = 0;
        for (const t of tensors.tensors.values()) parameters += t.shape.reduce((a, b) => a * b, 1);
        return {
          device: s.gpu.info.description,
          fallback: s.gpu.info.fallback,
          cpu: s.gpu.info.isCpu,
          parameters,
        };
      },
    },
    /** Sets up the method from the driver's factors (and a checkpoint's state on a restore). */
    init: {
      input: InitInput,
      output: InitOutput,
      handler: async (s, input, ctx) => {
        if (!s.model || !s.load) throw new StepProtocolError("init before load");
        const store = await ctx.objects();
        const settings = s.load.settings;
        const method = getMethod(settings.method);
        // Both objects are read before anything changes: a failed get leaves the worker as it was.
        const factors = await getAnnounced(store, input.factors, "the factors", input.waitMs);
        const state = input.state &&
          await getAnnounced(store, input.state, "the checkpoint's state", input.waitMs);
        const { tensors } = parseSafetensors(factors, {}, input.factors.name);
        const init = method.initFromTensors(tensors, settings);
        s.method = method.createWorker(s.model, settings, s.worker, init);
        if (input.state && state) {
          const { tensors, metadata } = parseSafetensors(state, {}, input.state.name);
          s.method.restoreState({
            optimizerStep: Number(metadata.optimizer_step),
            moments: tensors,
          });
        }
        s.generation = input.generation;
        s.appliedStep = input.appliedStep;
        s.last = null;
        s.lastApply = null;
        s.appliedDigest = "";
        trafficSince(s);
        return { optimizerFloats: s.method.optimizerFloats };
      },
    },
    /** Forward/backward of this worker's shard of step t; publishes the contribution. */
    step: {
      input: StepInput,
      output: StepOutput,
      handler: async (s, input, ctx) => {
        const { method } = s.need();
        const { generation: g, step: t } = input;
        if (g !== s.generation) {
          throw new StepProtocolError(`step of generation ${g}, the worker is at ${s.generation}`);
        }
        const subject = input.subject;
        if (s.last && s.last.generation === g && s.last.step === t) {
          // A repeated request: publish the kept contribution again.
          await ctx.collectives.contribute(
            subject,
            s.worker,
            {
              generation: g,
              step: t,
              worker: s.worker,
              data: s.last.contribution,
            } satisfies Contribution,
          );
          return s.last.out;
        }
        if (t !== s.appliedStep + 1) {
          throw new StepProtocolError(
            `step ${t} asked, but the worker applied step ${s.appliedStep} last`,
          );
        }
        const seqLen = s.load!.seqLen;
        const batches = input.batches.map((b) => toMicroBatch(b, seqLen));
        const res = await method.step(batches, input.lr);
        const out = {
          generation: g,
          step: t,
          loss: Number.isFinite(res.loss) ? res.loss : null,
          computeMs: res.ms,
          tokens: batches.reduce((n, b) => n + b.rows * seqLen, 0),
          digest: tensorDigest(res.contribution),
        };
        s.last = { generation: g, step: t, contribution: res.contribution, out };
        await ctx.collectives.contribute(
          subject,
          s.worker,
          {
            generation: g,
            step: t,
            worker: s.worker,
            data: res.contribution,
          } satisfies Contribution,
        );
        return out;
      },
    },
    /** Applies the broadcast update of step t (waits for it to arrive). */
    apply: {
      input: ApplyInput,
      output: ApplyOutput,
      handler: async (s, input, ctx) => {
        const { method } = s.need();
        const { generation: g, step: t } = input;
        if (g !== s.generation) {
          throw new StepProtocolError(`apply of generation ${g}, the worker is at ${s.generation}`);
        }
        if (t === s.appliedStep && s.lastApply) return { ...s.lastApply, duplicate: true };
        // A dropped step is passed over without having been computed.
        if (input.skip && t === s.appliedStep + 1) {
          s.appliedStep = t;
          s.lastApply = done(s, g, t, 0);
          return s.lastApply;
        }
        if (t !== s.appliedStep + 1 || !s.last || s.last.step !== t) {
          throw new StepProtocolError(
            `apply of step ${t}, but the worker applied ${s.appliedStep} and computed ` +
              `${s.last?.step ?? "nothing"}`,
          );
        }
        if (!input.digest) throw new StepProtocolError(`apply of step ${t} names no update`);
        const data = await awaitUpdate(s, g, t, input.digest, input.waitMs, ctx.signal);
        const updateMs = await method.apply(data, input.lr);
        s.appliedStep = t;
        s.appliedDigest = input.digest;
        s.lastApply = done(s, g, t, updateMs);
        if (s.perturbation?.afterStep === t) {
          const p = s.perturbation;
          s.perturbation = null;
          await perturb(s, p);
        }
        return s.lastApply;
      },
    },
    /**
     * The checksum of everything that must be the same on every worker (W and the method's
     * shared state): one SHA-256 over the per-tensor digests, and those digests when asked.
     */
    checksum: {
      input: ChecksumInput,
      output: ChecksumOutput,
      handler: async (s, input) => {
        const { model, method } = s.need();
        const digests = digestsOf(await sharedState(model, method));
        return {
          appliedStep: s.appliedStep,
          sha256: combinedSha256(digests),
          tensors: input.tensors ? digests : undefined,
        };
      },
    },
    /**
     * Randomized SVDs of base weights on this worker's device (train/linalg/svd_gpu.ts), before
     * the init: after it a method may have replaced W (PiSSA's residual). W is the tensor the
     * model holds, so under a 16-bit `--weights-dtype` it is W rounded to that type.
     */
    svd: {
      input: SvdInput,
      output: SvdOutput,
      handler: async (s, input, ctx) => {
        if (!s.model || !s.gpu) throw new StepProtocolError("svd before load");
        if (s.method) throw new StepProtocolError("svd after init: W is no longer the base weight");
        const results: SvdResult[] = [];
        const out: z.input<typeof SvdOutput>["matrices"] = [];
        for (const { name, rank, niter, seed } of input.matrices) {
          const W = s.model.weight(name);
          const [m, n] = W.shape;
          const parts: RowParts = {
            rows: m,
            cols: n,
            label: name,
            parts: [W],
            starts: [0],
            counts: [m],
          };
          const t0 = performance.now();
          let r: SvdResult;
          try {
            r = await gpuRandomizedSvd(s.gpu, parts, rank, { niter, seed });
          } catch (e) {
            if (e instanceof SvdError) throw new SvdError(`"${name}": ${e.message}`);
            throw e;
          }
          results.push(r);
          out.push({ name, m, n, k: r.k, ms: performance.now() - t0 });
        }
        const e = await (await ctx.objects()).put(input.out, encodeSvds(results));
        return { digest: e.digest, matrices: out };
      },
    },
    /** Greedy decoding of token prompts with the current (merged, if merged) weights. */
    generate: {
      input: GenerateInput,
      output: GenerateOutput,
      handler: async (s, input) => {
        if (!s.model) throw new StepProtocolError("generate before load");
        const tokens = input.prompts.length === 0 ? [] : await s.model.generate(input.prompts, {
          maxNewTokens: input.maxNewTokens,
          stopIds: input.stopIds,
          batchSize: 64,
        });
        return { tokens };
      },
    },
    /** Folds the adapter into W (LoRA/PiSSA); HD-PiSSA's W is already the model. */
    merge: {
      input: z.object({}),
      output: z.object({}),
      handler: async (s) => {
        await s.need().method.merge();
        return {};
      },
    },
    /** Saves this worker's state (and, when `shared`, W and all adapters) to the object store. */
    save: {
      input: SaveInput,
      output: SaveOutput,
      handler: async (s, input, ctx) => {
        const { model, method } = s.need();
        const store = await ctx.objects();
        const st = await method.state();
        const stateBytes = serializeSafetensors(st.moments, {
          format: "pt",
          optimizer_step: String(st.optimizerStep),
          applied_step: String(s.appliedStep),
          worker: String(s.worker),
        });
        const state = await store.put(input.name, stateBytes);
        let shared;
        if (input.shared) {
          const e = await store.put(`${input.name}.shared`, await checkpointBytes(model, method));
          shared = { name: e.name, digest: e.digest, size: e.size };
        }
        return {
          state: { name: state.name, digest: state.digest, size: state.size },
          shared,
          appliedStep: s.appliedStep,
          optimizerStep: st.optimizerStep,
        };
      },
    },
    /**
     * Puts W and the method's shared state into the object store: the reference of a
     * re-synchronisation.
     */
    exportShared: {
      input: z.object({ name: z.string() }),
      output: z.object({ name: z.string(), digest: z.string(), size: z.number() }),
      handler: async (s, input, ctx) => {
        const { model, method } = s.need();
        const bytes = sharedBytes(model, await sharedState(model, method));
        const e = await (await ctx.objects()).put(input.name, bytes);
        return { name: e.name, digest: e.digest, size: e.size };
      },
    },
    /**
     * Replaces W and the method's shared state (adapters, and a data-parallel method's moments
     * and optimizer step) with another worker's export, checked against the digest the driver
     * read: mixed devices round differently, and the shared state is re-synchronised from
     * worker 0 so that the drift never accumulates.
     */
    importShared: {
      input: ObjectRef,
      output: z.object({ sha256: z.string() }),
      handler: async (s, input, ctx) => {
        const { model, method } = s.need();
        const bytes = await getAnnounced(await ctx.objects(), input, "the export to import");
        const { tensors, metadata } = parseSafetensors(bytes, {}, input.name);
        for (const name of model.weightNames()) {
          const t = tensors.get(name);
          if (!t) throw new StepProtocolError(`${input.name} lacks ${name}`);
          model.writeWeight(name, t.data);
        }
        const step = metadata.optimizer_step;
        method.setSharedState({
          tensors,
          optimizerStep: step === undefined ? null : Number(step),
        });
        return { sha256: combinedSha256(digestsOf(await sharedState(model, method))) };
      },
    },
    /**
     * Fault injection for tests: changes one float of `tensor` (a weight, or the method's shared
     * state) by `ulps` units in the last place, now or right after the apply of `afterStep`.
     * Refused unless the worker's process runs with HD_FAULT_INJECTION=1.
     */
    debugPerturb: {
      input: DebugPerturbInput,
      output: DebugPerturbOutput,
      handler: async (s, input) => {
        if (Deno.env.get(FAULT_INJECTION_ENV) !== "1") {
          throw new StepProtocolError(
            `debugPerturb is fault injection for tests; worker ${s.worker} was not started ` +
              `with ${FAULT_INJECTION_ENV}=1`,
          );
        }
        await perturb(s, input, true);
        if (input.afterStep !== undefined && input.afterStep > s.appliedStep) {
          s.perturbation = input;
          return { armed: true, appliedStep: s.appliedStep };
        }
        await perturb(s, input);
        return { armed: false, appliedStep: s.appliedStep };
      },
    },
    /** Puts the current weights (merged after `merge`) into the object store. */
    exportWeights: {
      input: z.object({ name: z.string() }),
      output: z.object({ name: z.string(), digest: z.string(), size: z.number() }),
      handler: async (s, input, ctx) => {
        if (!s.model) throw new StepProtocolError("export before load");
        const bytes = serializeSafetensors(await s.model.readWeights(), {
          format: "pt",
          config: JSON.stringify(llamaConfigToJson(s.model.config)),
        });
        const e = await (await ctx.objects()).put(input.name, bytes);
        return { name: e.name, digest: e.digest, size: e.size };
      },
    },
    /** Frees the device (the actor stays). */
    release: {
      input: z.object({}),
      output: z.object({}),
      handler: (s) => {
        s.close();
        return {};
      },
    },
  },
});
