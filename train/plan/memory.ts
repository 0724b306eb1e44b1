/**
 * The memory plan of a run, before anything starts: per GPU worker, the bytes of the weights, the
 * adapters (HD-PiSSA: the worker's own slice and all K pairs), the optimizer state (moments; for
 * HD-PiSSA also the K step buffers), the gradients, the activations at this micro-batch and
 * sequence length, and the workspace (the logits chunk and scratch); and the host memory of the
 * processes on this host: the driver's (the base weights in f32, the one chunk of them it holds
 * for the object store at a time when a worker loads through it, the SVD workspace, the runtime)
 * and each worker process's own (the runtime, and what it holds while it loads W: one tensor or
 * row block at a time, plus the chunk it is receiving through the object store), besides its
 * device's bytes when the device lives in host memory (lavapipe: `sharedHost`).
 *
 * Every figure is a sum over the buffers the GPU model and the method allocate, each rounded to
 * the buffer pool's size class, so the plan matches the engine's pool bytes up to the small
 * buffers the engine adds on its own (uniform arenas, staging).
 * @module
 */
import { DomainError } from "../../core/errors.ts";
import { dtypeBytes, rowBlockCounts, sizeClass } from "../../gpu/mod.ts";
import { heldInWeightsDtype, type WeightsDtype } from "../../model/weights_dtype.ts";
import { splitsLinear } from "../../model/llama_params.ts";
import {
  adaptableLinears,
  expectedTensors,
  headDim,
  LINEAR_KINDS,
  type LinearKind,
  type LlamaConfig,
} from "../../model/config.ts";
import { chunkCapacity, STORE_CHUNK_BYTES } from "../../model/weight_chunks.ts";
import { fullTrainableDefault } from "../methods/layout.ts";
import { defaultSvdThreads } from "../linalg/svd_pool.ts";

/** The device limits the plan checks against (WebGPU's guaranteed defaults when unknown). */
export interface PlanLimits {
  maxBufferSize: number;
  maxStorageBufferBindingSize: number;
  minStorageBufferOffsetAlignment?: number;
  /** Bytes one worker's device may hold (lavapipe: host memory), when known. */
  deviceMemory?: number | null;
  /** The host's memory (Deno.systemMemoryInfo().total), when known. */
  hostMemory?: number | null;
  /** The workers' devices live in the host's memory (lavapipe on this host). */
  sharedHost?: boolean;
}

/** WebGPU's guaranteed limits: what every device offers at least. */
export const DEFAULT_LIMITS: PlanLimits = {
  maxBufferSize: 268_435_456,
  maxStorageBufferBindingSize: 134_217_728,
  minStorageBufferOffsetAlignment: 256,
};

export interface MemoryPlanInput {
  config: LlamaConfig;
  method: "hd-pissa" | "pissa" | "lora" | "full";
  workers: number;
  rank: number;
  targets: readonly LinearKind[];
  microBatch: number;
  maxMicroBatches: number;
  seqLen: number;
  /** full: the trained weights (default: all but the embeddings and the head). */
  trainable?: (name: string) => boolean;
  /**
   * `--recompute`: the layers share one set of activations (each layer's input stays in the
   * residual stream), recomputed from that input before the layer's backward.
   */
  recompute?: boolean;
  /** The SVD the driver runs (hd-pissa, pissa); auto: exact up to 1024 on the short side. */
  svd?: "auto" | "exact" | "randomized";
  /**
   * The driver's SVD threads (`--svd-threads`; 0 or absent: one per core): each works on its own
   * matrix, with its own copy and workspace.
   */
  svdThreads?: number;
  /**
   * Where the randomized SVDs run (`--svd-device`; default cpu): the driver's threads, or the
   * workers' devices (gpu: passes over W on the device, the rest in float64 on the worker's
   * host; the exact SVDs of small matrices stay on the driver). auto decides once the workers
   * report their devices, after the plan, so it is counted both ways.
   */
  svdDevice?: "cpu" | "gpu" | "auto";
  /** The device dtype of the weight matrices (`--weights-dtype`; default f32). */
  weightsDtype?: WeightsDtype;
  /**
   * How the workers get W (`--load-via`; default store). auto: the workers on this host read
   * the model folder, so the driver puts nothing into the object store for them.
   */
  loadVia?: "auto" | "store";
  /** The largest chunk of W through the object store (default STORE_CHUNK_BYTES, 64 MiB). */
  storeChunkBytes?: number;
  /** The job starts its own nats-server on this host (no `--nats`): its memory is counted. */
  privateServer?: boolean;
  limits?: PlanLimits;
}

/** One worker's device memory, bytes. */
export interface WorkerMemory {
  weights: number;
  adapters: number;
  optimizer: number;
  gradients: number;
  activations: number;
  workspace: number;
  total: number;
  /**
   * The largest single buffer (one binding: a matrix in row blocks counts by its largest block),
   * and which part of the plan it is in (absent in reports from before it was recorded).
   */
  largest: { label: string; bytes: number; part?: Part };
}

/** The host memory of the driver's process (`total`) and of each worker's, bytes. */
export interface HostMemory {
  weights: number;
  /**
   * The driver's serialized bytes of W for the object store: one chunk at a time, never all of W
   * (0 when no worker loads through the store).
   */
  serialized: number;
  /**
   * The largest chunk of W through the object store, which the driver and each worker hold at
   * most one of at a time (0: no store load; absent in reports from before W was chunked).
   */
  store_chunk?: number;
  svd: number;
  /** The driver process's own (Deno, the runtime, data): measured, see DRIVER_RUNTIME. */
  runtime?: number;
  /** The driver's process: weights + serialized + svd + runtime. */
  total: number;
  /**
   * The job's private nats-server on this host (absent: none started, `--nats`, or a report
   * from before it was counted): see NATS_SERVER_RUNTIME.
   */
  server?: number;
  /**
   * One worker process's host memory besides its device's bytes: its runtime and its peak while
   * loading W (absent in reports from before it was counted), or, if larger, while it runs a
   * randomized SVD of the init on its device (`svd`, present only then).
   */
  worker?: { runtime: number; load: number; svd?: number; total: number };
}

const MiB = 1024 * 1024;
/**
 * A process's own memory besides the buffers the plan counts, as measured by
 * `deno task bench scale` (VmHWM less the counted bytes, 135M to 1B): Deno, the actor runtime,
 * the WebGPU driver's own, the tokenizer and the data for the driver.
 */
export const DRIVER_RUNTIME = 1024 * MiB;
export const WORKER_RUNTIME = 512 * MiB;
/**
 * One SVD thread's own memory (a Deno worker's isolate), as measured at 1B with 2 threads: the
 * driver's peak was 339 MiB over W + one SVD workspace + DRIVER_RUNTIME.
 */
export const SVD_THREAD_RUNTIME = 160 * MiB;
/**
 * A private nats-server's own memory (JetStream's file store, the actors' subjects), and, for a
 * load through the object store, a chunk per worker being delivered plus the driver's put in
 * flight and the store's cache of the last written block. `deno task bench scale` measured its
 * peak RSS at K = 2: 16 / 61 MiB loading 135M / 1B from the folder, 237 / 341 MiB through the
 * store (9 / 74 chunks of 64 MiB): bounded by the chunks, not by W.
 */
export const NATS_SERVER_RUNTIME = 128 * MiB;

export interface MemoryPlan {
  workers: number;
  /** The method planned for (absent in reports from before it was recorded). */
  method?: MemoryPlanInput["method"];
  /** The device dtype of the weight matrices the plan counts (absent: f32, older reports). */
  weights_dtype?: WeightsDtype;
  micro_batch: number;
  seq_len: number;
  head_chunk: number;
  worker: WorkerMemory;
  host: HostMemory;
}

type Part = Exclude<keyof WorkerMemory, "total" | "largest">;

/** A run that does not fit its device or host: names what to change. */
export class MemoryPlanError extends DomainError {
  static override readonly code: string = "MEMORY_PLAN";
  constructor(message: string, readonly plan: MemoryPlan) {
    super(message);
  }
}

const f32 = 4;

/** The memory plan (pure). Throws nothing; `checkMemoryPlan` decides whether it fits. */
export function memoryPlan(input: MemoryPlanInput): MemoryPlan {
  const { config, method, workers: K, microBatch: M, seqLen: S } = input;
  const limits = input.limits ?? DEFAULT_LIMITS;
  const align = limits.minStorageBufferOffsetAlignment ?? 256;
  const binding = limits.maxStorageBufferBindingSize;
  const w: WorkerMemory = {
    weights: 0,
    adapters: 0,
    optimizer: 0,
    gradients: 0,
    activations: 0,
    workspace: 0,
    total: 0,
    largest: { label: "", bytes: 0 },
  };
  const add = (part: Part, label: string, elems: number, times = 1) => {
    const raw = elems * f32;
    if (raw > w.largest.bytes) w.largest = { label, bytes: raw, part };
    w[part] += sizeClass(raw) * times;
  };
  const rows = (part: Part, label: string, r: number, c: number) => {
    let counts: number[];
    try {
      counts = rowBlockCounts(r, c, binding, align);
    } catch {
      counts = [r];
    }
    for (const n of counts) add(part, label, n * c);
  };
  const Tm = M * S;
  const C = config.hidden_size;
  const I = config.intermediate_size;
  const H = config.num_attention_heads;
  const KV = config.num_key_value_heads;
  const D = headDim(config);
  const V = config.vocab_size;
  const L = config.num_hidden_layers;
  const adapter = method !== "full";
  const r = adapter ? input.rank : 0;
  const specs = expectedTensors(config);
  const split = ["model.embed_tokens.weight", "lm_head.weight"];
  const trainable = input.trainable ?? fullTrainableDefault;
  // Any other matrix whose f32 bytes are over the binding limit is row blocks sized by their
  // f32 bytes (model/llama_params.ts); the row counts of its blocks, or null when held whole.
  const linearBlocks = (shape: readonly number[]): number[] | null => {
    if (!splitsLinear(shape, binding)) return null;
    try {
      return rowBlockCounts(shape[0], shape[1], binding, align);
    } catch {
      return null; // a single row over the limit: counted whole, refused by checkMemoryPlan
    }
  };
  let splitRows = 0;

  // Weights (and, for full, their gradients and moments). With --weights-dtype bf16/f16 the
  // matrices take 2 bytes an element, packed two per word and row-split by their own byte size
  // (llama_params.ts); vectors stay f32. A 16-bit W that HD-PiSSA updates also needs one f32
  // [out, in] scratch per shape for the product before its rounded add (workspace).
  const wd = input.weightsDtype ?? "f32";
  const weight = (label: string, shape: readonly number[]) => {
    const dtype = wd !== "f32" && heldInWeightsDtype(shape) ? wd : "f32";
    const n = shape.reduce((a, b) => a * b, 1);
    let counts = [shape[0]];
    if (split.includes(label)) {
      try {
        counts = rowBlockCounts(shape[0], shape[1], binding, align, dtype);
      } catch {
        counts = [shape[0]];
      }
    } else {
      const blocks = linearBlocks(shape);
      if (blocks) {
        counts = blocks;
        splitRows = Math.max(splitRows, ...blocks);
      }
    }
    const cols = n / shape[0];
    for (const c of counts) {
      const raw = dtypeBytes(dtype, c * cols);
      if (raw > w.largest.bytes) w.largest = { label, bytes: raw, part: "weights" };
      w.weights += sizeClass(raw);
    }
  };
  if (wd !== "f32" && method === "hd-pissa") {
    const seen = new Set<string>();
    for (const l of adaptableLinears(config, input.targets)) {
      const key = `${l.out}x${l.in}`;
      // A W in row blocks takes the product one block at a time.
      const rowsAt = Math.max(...(linearBlocks([l.out, l.in]) ?? [l.out]));
      if (!seen.has(key)) add("workspace", `D ${key}`, rowsAt * l.in);
      seen.add(key);
    }
  }
  let params = 0;
  let embedGrad = false;
  for (const s of specs) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    params += n;
    weight(s.name, s.shape);
    if (method === "full" && trainable(s.name)) {
      // A gradient and moments split as the (f32) weight is, one buffer per row block.
      const blocks = split.includes(s.name) ? null : linearBlocks(s.shape);
      if (split.includes(s.name) || blocks) {
        rows("gradients", `grad ${s.name}`, s.shape[0], s.shape[1]);
        let counts: number[];
        try {
          counts = rowBlockCounts(s.shape[0], s.shape[1], binding, align);
        } catch {
          counts = [s.shape[0]];
        }
        for (const c of counts) add("optimizer", `${s.name}.m`, c * s.shape[1], 2);
      } else {
        add("gradients", `grad ${s.name}`, n);
        add("optimizer", `${s.name}.m`, n, 2);
      }
      if (s.name === "model.embed_tokens.weight") embedGrad = true;
    }
  }

  // Adapters: A, B in the model with g_A, g_B, their moments; HD-PiSSA's K pairs and step buffers.
  const linears = adapter ? adaptableLinears(config, input.targets) : [];
  const shapes = new Set<string>();
  for (const l of linears) {
    for (const [label, n] of [["A", r * l.in], ["B", l.out * r]] as const) {
      add("adapters", `${label} ${l.name}`, n);
      add("gradients", `g${label} ${l.name}`, n);
      add("optimizer", `${l.name}.${label}.m`, n, 2);
      if (method === "hd-pissa") {
        add("adapters", `${l.name}.${label}j`, n, K);
        add("optimizer", `${l.name}.d${label}j`, n, K);
      }
    }
    const key = `${l.out}x${l.in}`;
    if (method === "hd-pissa" && !shapes.has(key)) {
      shapes.add(key);
      add("workspace", `L ${key}`, l.out * 2 * K * r);
      add("workspace", `R ${key}`, 2 * K * r * l.in);
      const blocks = linearBlocks([l.out, l.in]);
      if (blocks) add("workspace", `L rows ${key}`, Math.max(...blocks) * 2 * K * r);
    }
  }

  // Activations at this micro-batch and sequence (docs/architecture.md §3): every layer's input
  // (the residual stream) is kept; the rest of a layer's activations once per layer, or, with
  // --recompute, one set the layers share. The normalized activations are not
  // kept: the layers' matmuls form them on load (model/llama_blocks.ts).
  const kinds = new Set(linears.map((l) => l.kind));
  const act = (label: string, n: number, times = 1) => add("activations", label, n, times);
  const perLayer = input.recompute ? 1 : L;
  act("resid", Tm * C, L + 1);
  for (
    const [label, n] of [
      ["rstd1", Tm],
      ["q", Tm * H * D],
      ["k", Tm * KV * D],
      ["v", Tm * KV * D],
      ["att", Tm * H * D],
      ["lse", Tm * H],
      ["xMid", Tm * C],
      ["rstd2", Tm],
      ["gate", Tm * I],
      ["up", Tm * I],
      ["h", Tm * I],
    ] as const
  ) act(label, n, perLayer);
  for (const k of LINEAR_KINDS) if (kinds.has(k)) act(`xa ${k}`, Tm * r, perLayer);
  act("lnf", Tm * C);
  act("rstdf", Tm);
  act("losses", Tm);
  act("loss", 1, 2);
  for (
    const [label, n] of [
      ["dx", Tm * C],
      ["dln", Tm * C],
      ["dh", Tm * I],
      ["dgate", Tm * I],
      ["dup", Tm * I],
      ["dao", Tm * H * D],
      ["dq", Tm * H * D],
      ["dk", Tm * KV * D],
      ["dv", Tm * KV * D],
      ["delta", Tm * H],
    ] as const
  ) act(label, n);
  // The column blocks of the linears in row blocks, one [Tm, n] block the layers share.
  if (splitRows > 0) act("split block", Tm * splitRows);
  act("positions", Tm);
  act("rope", S * (D / 2), 2);
  // Inputs: ids, targets, loss weights per micro-batch slot, and the inference slot.
  act("inputs", Tm, 3 * (input.maxMicroBatches + 1));
  if (embedGrad) {
    act("embedding plan", Tm, 2 * input.maxMicroBatches);
    act("embedding starts", Tm + 1, input.maxMicroBatches);
  }

  // Workspace: the logits of a chunk of positions, the adapters' backward scratch, clipping.
  const fit = Math.floor(binding / (V * f32));
  const headChunk = Math.max(1, Math.min(fit, Tm));
  add("workspace", "logits chunk", headChunk * V);
  if (r > 0) {
    const maxOut = Math.max(C, I, H * D, KV * D);
    add("workspace", "dyB", Tm * r);
    add("workspace", "dH", Tm * maxOut);
  }
  add("workspace", "clip", 1);
  const nGrads = method === "full"
    ? specs.filter((s) => trainable(s.name)).length
    : 2 * linears.length;
  add("workspace", "clip partials", nGrads);

  // Host: W in f32, the chunk of it the driver holds for the object store, the SVD of the
  // largest matrix on each SVD thread (and the thread itself); with the SVDs on the workers'
  // devices, the driver keeps only the exact SVDs (one at a time, on its own thread) and each
  // worker holds one randomized SVD's float64 workspace on its host and its f32 products on its
  // device.
  const onDriver = input.svdDevice !== "gpu";
  const onWorkers = input.svdDevice === "gpu" || input.svdDevice === "auto";
  let svd = 0;
  let workerSvd = 0;
  let deviceSvd = 0;
  if (method === "hd-pissa" || method === "pissa") {
    let exact = 0;
    let randomized = 0;
    for (const l of linears) {
      const k = Math.min(l.out, l.in);
      const sketch = Math.min(k, K * r + 10);
      if (input.svd === "randomized" || (input.svd !== "exact" && k > 1024)) {
        randomized = Math.max(randomized, ((l.out + l.in) * sketch * 3 + l.out * l.in) * f32);
        // The sketch, Q, Z, the products read back and the small SVD's factors, in float64.
        workerSvd = Math.max(workerSvd, (l.out + l.in) * sketch * 6 * 8);
        // The operand uploaded and the products written, per pass.
        deviceSvd = Math.max(deviceSvd, (l.out + l.in) * sketch * 2 * f32);
      } else {
        exact = Math.max(exact, (2 * l.out * l.in + (l.out + l.in + 1) * k) * f32);
      }
    }
    const threads = input.svdThreads ? input.svdThreads : defaultSvdThreads();
    if (onDriver && exact + randomized > 0) {
      svd = threads * (Math.max(exact, randomized) + SVD_THREAD_RUNTIME);
    } else if (exact > 0) {
      svd = exact;
    }
    if (!onWorkers) workerSvd = deviceSvd = 0;
  }
  if (deviceSvd > 0) add("workspace", "svd products", deviceSvd / f32);
  w.total = w.weights + w.adapters + w.optimizer + w.gradients + w.activations + w.workspace;
  const hostWeights = params * f32;
  const viaStore = (input.loadVia ?? "store") === "store";
  // W goes into the store as one packed stream of f32 values cut into chunks (at most
  // storeChunkBytes; a W smaller than that is one chunk of its own size), one at a time: the
  // driver holds the chunk it is putting, a worker the chunk it copies rows from and, while the
  // next arrives, the client's received pieces of it before they are joined
  // (actors/stored_weights.ts).
  const chunk = viaStore
    ? Math.min(chunkCapacity(input.storeChunkBytes ?? STORE_CHUNK_BYTES), hostWeights)
    : 0;
  const serialized = chunk;
  // A worker loads W one tensor at a time (the row-split tables one block at a time): the piece
  // read (at most its f32 bytes), decoded to f32, and the queue's staging copy of it; through the
  // object store also the chunk it copies from and the one arriving (above).
  let piece = 0;
  for (const s of specs) {
    const cols = s.shape.slice(1).reduce((a, b) => a * b, 1);
    let rowsAt = linearBlocks(s.shape) ?? [s.shape[0] ?? 1];
    if (split.includes(s.name)) {
      try {
        rowsAt = rowBlockCounts(s.shape[0], s.shape[1], binding, align);
      } catch {
        rowsAt = [s.shape[0]];
      }
    }
    for (const n of rowsAt) piece = Math.max(piece, n * cols * f32);
  }
  const load = 3 * piece + 2 * chunk;
  const server = input.privateServer ? NATS_SERVER_RUNTIME + (viaStore ? (K + 2) * chunk : 0) : 0;
  const host: HostMemory = {
    weights: hostWeights,
    serialized,
    store_chunk: chunk,
    svd,
    runtime: DRIVER_RUNTIME,
    total: hostWeights + serialized + svd + DRIVER_RUNTIME,
    ...(server > 0 ? { server } : {}),
    // Loading ends before the SVDs start: the worker's peak is the larger of the two.
    worker: {
      runtime: WORKER_RUNTIME,
      load,
      ...(workerSvd > 0 ? { svd: workerSvd } : {}),
      total: WORKER_RUNTIME + Math.max(load, workerSvd),
    },
  };
  return {
    workers: K,
    method,
    weights_dtype: wd,
    micro_batch: M,
    seq_len: S,
    head_chunk: headChunk,
    worker: w,
    host,
  };
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** `1.5 GiB`. */
export function formatBytes(n: number): string {
  let i = 0;
  let v = n;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${UNITS[i]}`;
}

/** The plan as one compact block of lines. */
export function planLines(p: MemoryPlan): string[] {
  const w = p.worker;
  const b = formatBytes;
  return [
    `memory plan (micro-batch ${p.micro_batch} × seq ${p.seq_len}, head chunk ${p.head_chunk}, ` +
    `weights ${p.weights_dtype ?? "f32"}):`,
    `  per worker: weights ${b(w.weights)}, adapters ${b(w.adapters)}, optimizer ${
      b(w.optimizer)
    }, gradients ${b(w.gradients)}, activations ${b(w.activations)}, workspace ${
      b(w.workspace)
    } = ${b(w.total)} (largest buffer ${b(w.largest.bytes)}: ${w.largest.label})`,
    `  host, driver: weights ${b(p.host.weights)}, serialized ${b(p.host.serialized)}${
      p.host.store_chunk ? " (one object-store chunk at a time)" : ""
    }, svd ${b(p.host.svd)}, runtime ${b(p.host.runtime ?? 0)} = ${b(p.host.total)}`,
    ...(p.host.worker
      ? [
        `  host, each worker process: runtime ${b(p.host.worker.runtime)}, loading W ${
          b(p.host.worker.load)
        }${
          p.host.store_chunk
            ? ` (through the object store: ${b(p.host.store_chunk)} chunks, at most 2 held)`
            : ""
        }${
          p.host.worker.svd
            ? `, then the SVDs on its device ${b(p.host.worker.svd)} (the larger)`
            : ""
        } = ${b(p.host.worker.total)}`,
      ]
      : []),
    ...(p.host.server
      ? [`  host, the private nats-server: ${b(p.host.server)} (its own and the chunks in flight)`]
      : []),
  ];
}

/**
 * The host memory the run's processes on this host need at their peaks: the driver's, and each
 * worker process's own plus, when the devices live in host memory, its device's bytes.
 */
export function hostNeed(p: MemoryPlan, sharedHost: boolean): number {
  const perWorker = (p.host.worker?.total ?? 0) + (sharedHost ? p.worker.total : 0);
  return p.host.total + (p.host.server ?? 0) + p.workers * perWorker;
}

/**
 * Throws MemoryPlanError, with the plan and what to change, when a single buffer is over
 * maxBufferSize, a worker's total over the device memory (when known; `sharedHost`: the workers'
 * devices live in host memory, as lavapipe's), or the host's total over the host memory.
 */
export function checkMemoryPlan(
  p: MemoryPlan,
  limits: PlanLimits,
  sharedHost = limits.sharedHost ?? false,
): void {
  const b = formatBytes;
  // Full fine-tuning keeps an f32 W (finetune_flags.ts), so only the other methods are offered
  // 16-bit weights; the memory plan's weights is the figure that halves.
  const halve = (p.weights_dtype ?? "f32") === "f32" && p.method !== "full"
    ? ", or --weights-dtype bf16 (halves the weights)"
    : "";
  const advice = `lower --micro-batch or --seq-len, or use a smaller --rank${halve}`;
  const fail = (what: string) => {
    throw new MemoryPlanError(
      `the run does not fit: ${what}; ${advice}\n${planLines(p).join("\n")}`,
      p,
    );
  };
  const w = p.worker;
  if (w.largest.bytes > limits.maxBufferSize) {
    fail(
      `the buffer ${w.largest.label} (${b(w.largest.bytes)}) is over the device's maxBufferSize ` +
        `${b(limits.maxBufferSize)}`,
    );
  }
  const binding = limits.maxStorageBufferBindingSize;
  if (w.largest.bytes > binding) {
    // Every matrix over the limit is already in row blocks here: what is left is one buffer a
    // kernel binds whole (an activation of micro-batch × seq-len positions, a workspace) or a
    // single row of a matrix.
    const part = w.largest.part;
    const change =
      part === "activations" || (part === "workspace" && /^(dH|dyB)$/.test(w.largest.label))
        ? "it holds micro-batch × seq-len positions: lower --micro-batch or --seq-len"
        : part === "workspace" || part === "adapters" || part === "optimizer"
        ? "use a smaller --rank (or fewer --workers for hd-pissa)"
        : "one row of it is over the limit, which no setting splits: use a device with a larger " +
          "maxStorageBufferBindingSize";
    throw new MemoryPlanError(
      `the run does not fit: the buffer ${w.largest.label} (${b(w.largest.bytes)}, ${
        part ?? "unknown part"
      }) is over the device's maxStorageBufferBindingSize ${b(binding)} and is bound whole; ` +
        `${change}\n${planLines(p).join("\n")}`,
      p,
    );
  }

  const dev = limits.deviceMemory;
  if (dev != null && !sharedHost && w.total > dev) {
    fail(`a worker needs ${b(w.total)}, the device has ${b(dev)}`);
  }
  const hostMem = limits.hostMemory;
  const onHost = hostNeed(p, sharedHost);
  if (hostMem != null && onHost > hostMem) {
    const perWorker = (p.host.worker?.total ?? 0) + (sharedHost ? w.total : 0);
    const hostAdvice = [
      p.workers > 1 ? "fewer --workers" : "",
      p.host.serialized > 0 ? "--load-via auto (no object-store chunks of W)" : "",
      (p.weights_dtype ?? "f32") === "f32" && p.method !== "full" && sharedHost
        ? "--weights-dtype bf16 (halves each worker's weights)"
        : "",
      "a host with more memory",
    ].filter((x) => x !== "").join(", or ");
    throw new MemoryPlanError(
      `the run does not fit: the driver (${b(p.host.total)})${
        p.host.server ? `, the nats-server (${b(p.host.server)})` : ""
      } and ${p.workers} worker ` +
        `process(es) (${b(perWorker)} each${
          sharedHost ? ", their devices in host memory" : ""
        }) need ${b(onHost)} of host memory, the host has ${b(hostMem)}; use ${hostAdvice}\n${
          planLines(p).join("\n")
        }`,
      p,
    );
  }
}
