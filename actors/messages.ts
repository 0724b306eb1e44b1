/**
 * The messages of the training actors, as zod schemas. Every step message carries the run's
 * generation and the step, so that messages of an older generation (before a restart and
 * rollback) can be told apart and dropped (docs/architecture.md §6).
 * @module
 */
import { z } from "zod";
import { tensor } from "../runtime/mod.ts";
import { METHODS } from "../train/methods/names.ts";
import { WorkerSettingsSchema } from "../train/cli/options.ts";

export const MethodName = z.enum(METHODS);

/** The method settings a worker needs: the run's flags marked `toWorkers`. */
export const WorkerMethodSettings = WorkerSettingsSchema;
export type WorkerMethodSettings = z.infer<typeof WorkerMethodSettings>;

/** Where a worker reads W: an object, or (on the driver's host) the base model folder itself. */
export const WeightSource = z.discriminatedUnion("via", [
  z.object({
    via: z.literal("store"),
    /**
     * Object-store name of the manifest of W's chunks (actors/stored_weights.ts): config.json's
     * contents and, per tensor, its chunks with their digests.
     */
    name: z.string(),
    /** The manifest's SHA-256 as the driver put it (`SHA-256=<base64url>`). */
    digest: z.string(),
  }).strict(),
  z.object({
    via: z.literal("folder"),
    /** The model folder, as the driver read it. */
    folder: z.string(),
    /** SHA-256 (hex) of each `*.safetensors` file of the folder, by file name. */
    digests: z.record(z.string(), z.string().regex(/^[0-9a-f]{64}$/)),
  }).strict(),
]);
export type WeightSource = z.infer<typeof WeightSource>;

/** Where a worker finds its weights and how it sizes its buffers. */
export const LoadInput = z.object({
  weights: WeightSource,
  seqLen: z.number().int().min(2),
  microBatch: z.number().int().min(1),
  maxMicroBatches: z.number().int().min(1),
  settings: WorkerMethodSettings,
  /** Subject the driver broadcasts each step's combined update on. */
  updateSubject: z.string(),
  /** Floats of one update (bigger messages on the update subject are refused unread). */
  updateFloats: z.number().int().min(1),
});

export const LoadOutput = z.object({
  device: z.string(),
  /** Why `--device auto` runs this worker on a CPU adapter; null on a GPU or under `cpu`. */
  fallback: z.string().nullable(),
  /** The device is a CPU adapter (lavapipe), whichever `--device` chose it. */
  cpu: z.boolean(),
  parameters: z.number().int(),
});

/**
 * An object in the store as its putter reported it: the name and the digest `put` returned
 * (`SHA-256=<base64url>`). The reader gets exactly those bytes, waiting out a lagging replica.
 */
export const ObjectRef = z.object({ name: z.string(), digest: z.string() });

/** The object-store window a worker's get waits for a lagging replica by default (30 s). */
export const OBJECT_WAIT_MS = 30_000;

/** Objects of the method's initial factors and of a state to restore, if any. */
export const InitInput = z.object({
  generation: z.number().int().min(0),
  /** Safetensors of `<weight>.A<j>`, `<weight>.B<j>`, and `<weight>.residual` (PiSSA). */
  factors: ObjectRef,
  /** A checkpoint's state of this worker to restore after the init (optimizer moments). */
  state: ObjectRef.optional(),
  /** The step the worker is at after the init: the last applied step (−1: none). */
  appliedStep: z.number().int().min(-1),
  /** How long the gets of `factors` and `state` wait for a lagging replica (ms). */
  waitMs: z.number().int().min(0).default(OBJECT_WAIT_MS),
});

export const InitOutput = z.object({ optimizerFloats: z.number().int() });

/** One micro-batch: ids and target masks of its examples, flattened [rows·seqLen]. */
export const MicroBatchMsg = z.object({
  rows: z.number().int().min(1),
  ids: tensor("i32"),
  targetMask: tensor("u8"),
});

export const StepInput = z.object({
  generation: z.number().int().min(0),
  step: z.number().int().min(0),
  lr: z.number(),
  batches: z.array(MicroBatchMsg).min(1),
  /** Subject prefix to publish the contribution on (`<prefix>.<worker>`). */
  subject: z.string(),
});

export const StepOutput = z.object({
  generation: z.number().int(),
  step: z.number().int(),
  /** Null when not finite (the step diverged; messages are JSON, which has no NaN). */
  loss: z.number().nullable(),
  /** Forward, backward and the local optimizer, in ms. */
  computeMs: z.number(),
  tokens: z.number().int(),
  /** SHA-256 (hex) of the contribution published: the driver takes no other bytes for it. */
  digest: z.string().regex(/^[0-9a-f]{64}$/),
});

/** What a worker publishes on the gather subject. */
export const Contribution = z.object({
  generation: z.number().int(),
  step: z.number().int(),
  worker: z.number().int(),
  data: tensor("f32"),
});
export type Contribution = z.infer<typeof Contribution>;

/** The combined update, published once for all workers. */
export const Update = z.object({
  generation: z.number().int(),
  step: z.number().int(),
  data: tensor("f32"),
});
export type Update = z.infer<typeof Update>;

export const ApplyInput = z.object({
  generation: z.number().int().min(0),
  step: z.number().int().min(0),
  lr: z.number(),
  /** Pass over the step: no update, no optimizer step (dropped under `--on-nonfinite skip`). */
  skip: z.boolean().default(false),
  /** SHA-256 (hex) of the update broadcast: the worker applies no other bytes. */
  digest: z.string().regex(/^[0-9a-f]{64}$/).optional(),
  /** How long to wait for the broadcast update to arrive. */
  waitMs: z.number().int().min(1).default(30_000),
});

export const ApplyOutput = z.object({
  generation: z.number().int(),
  step: z.number().int(),
  updateMs: z.number(),
  /** Payload bytes this worker sent and received since its previous step. */
  bytesSent: z.number(),
  bytesReceived: z.number(),
  /** True when this update had been applied already (a repeated call). */
  duplicate: z.boolean(),
  /** Messages on the update subject refused since the previous apply (malformed, forged...). */
  rejected: z.number().int().min(0),
});

export const GenerateInput = z.object({
  prompts: z.array(z.array(z.number().int().min(0))),
  maxNewTokens: z.number().int().min(1),
  stopIds: z.array(z.number().int()),
});
export const GenerateOutput = z.object({ tokens: z.array(z.array(z.number().int())) });

export const SaveInput = z.object({
  /** Object-store name to write this worker's state under. */
  name: z.string(),
  /** Also save the shared part (W and all adapters): one worker does it per checkpoint. */
  shared: z.boolean(),
});
export const SaveOutput = z.object({
  state: z.object({ name: z.string(), digest: z.string(), size: z.number() }),
  shared: z.object({ name: z.string(), digest: z.string(), size: z.number() }).optional(),
  appliedStep: z.number().int(),
  optimizerStep: z.number().int(),
});

export const ChecksumInput = z.object({
  /** Also return the digest of every tensor (asked after a mismatch: big models have many). */
  tensors: z.boolean().default(false),
});
export const ChecksumOutput = z.object({
  appliedStep: z.number().int(),
  /** SHA-256 (hex) over the per-tensor digests of W and the method's shared state. */
  sha256: z.string(),
  /** SHA-256 (hex) of each tensor by name (and of a shared optimizer step), when asked. */
  tensors: z.record(z.string(), z.string()).optional(),
});

/** A test's fault injection: one float of one tensor, changed now or after a step's apply. */
export const DebugPerturbInput = z.object({
  /** A weight, or a tensor of the method's shared state (e.g. `<weight>.B0`, `<key>.m`). */
  tensor: z.string(),
  /** The element (flat index). */
  index: z.number().int().min(0),
  /** Units in the last place to add to the element's bit pattern. */
  ulps: z.number().int().min(1).max(1 << 20).default(1),
  /** Perturb right after the apply of this step instead of now. */
  afterStep: z.number().int().min(0).optional(),
});
export const DebugPerturbOutput = z.object({
  /** True when the perturbation waits for the apply of `afterStep`. */
  armed: z.boolean(),
  appliedStep: z.number().int(),
});

/**
 * Randomized SVDs of some of the base weights the worker holds (before its init), computed on its
 * device; the factors go to the object store under `out` (train/linalg/svd_wire.ts).
 */
export const SvdInput = z.object({
  matrices: z.array(z.object({
    name: z.string(),
    rank: z.number().int().min(1),
    niter: z.number().int().min(0),
    seed: z.number().int(),
  })),
  out: z.string(),
});

/**
 * The shapes of the SVDs in `out`, in the order asked, and each one's time on the device; the
 * digest `out` was put with, which the driver's get asks for.
 */
export const SvdOutput = z.object({
  digest: z.string(),
  matrices: z.array(z.object({
    name: z.string(),
    m: z.number().int().min(1),
    n: z.number().int().min(1),
    k: z.number().int().min(1),
    ms: z.number(),
  })),
});
