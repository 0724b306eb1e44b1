/**
 * Which examples each step uses and where they go (docs/architecture.md §4).
 *
 * Each epoch orders the N examples (file order, or a shuffle seeded by (seed, epoch)) and cuts
 * them into floor(N / batch_size) batches, dropping the partial last one. Step t takes the next
 * batch, moving into the next epoch when one runs out. Worker k of K gets examples k, k+K, ...
 * of the batch; its micro-batches are consecutive slices of M of that share.
 *
 * Everything here is a pure function of (config, t), so resuming at step t from a checkpoint
 * gives exactly the batches an uninterrupted run would have used.
 * @module
 */
import { Rng } from "../../core/rng.ts";
import { BatchConfigError, DataError } from "./errors.ts";

export interface BatchConfig {
  /** N, the number of examples in the data set. */
  numExamples: number;
  batchSize: number;
  /** K, the number of workers. */
  workers: number;
  /** M, examples per micro-batch on one worker. */
  microBatch: number;
  /** Passes over the data when maxSteps is not given (default 1). */
  epochs?: number;
  /** T when given; epochs then continue as far as needed. */
  maxSteps?: number;
  /** Shuffle each epoch (true) or keep file order (false). */
  shuffle: boolean;
  seed: number;
}

/** One worker's part of a step. */
export interface WorkerShare {
  /** Example indices k, k+K, ... of the batch. */
  examples: number[];
  /** Consecutive slices of M of `examples`. */
  microBatches: number[][];
}

export interface StepPlan {
  step: number;
  epoch: number;
  /** Index of this batch within its epoch. */
  batchInEpoch: number;
  /** The batch's example indices, in order. */
  examples: number[];
  workers: WorkerShare[];
}

/** Where the data stands, for a checkpoint; the rest of it checks the data did not change. */
export interface DataCursor {
  version: 1;
  /** The next step to run. */
  step: number;
  numExamples: number;
  batchSize: number;
  workers: number;
  microBatch: number;
  shuffle: boolean;
  seed: number;
}

/** The seed of epoch `epoch`'s shuffle: a hash of (seed, epoch), so every epoch differs. */
export function epochSeed(seed: number, epoch: number): number {
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 4294967296) >>> 0;
  let h = fmix32(lo ^ 0x6a09e667);
  h = fmix32((h ^ hi) + 0x3c6ef372);
  return fmix32((h ^ (epoch >>> 0)) + 0xa54ff53a);
}

/** The order of the examples in `epoch`: identity, or Rng(epochSeed(seed, epoch)).shuffle. */
export function epochOrder(
  numExamples: number,
  shuffle: boolean,
  seed: number,
  epoch: number,
): number[] {
  const order = Array.from({ length: numExamples }, (_, i) => i);
  return shuffle ? new Rng(epochSeed(seed, epoch)).shuffle(order) : order;
}

/** Splits a batch over K workers (strided) and each share into micro-batches of M. */
export function shardBatch(
  batch: readonly number[],
  workers: number,
  microBatch: number,
): WorkerShare[] {
  positiveInt("workers", workers);
  positiveInt("micro_batch", microBatch);
  checkShape(batch.length, workers, microBatch);
  const shares: WorkerShare[] = [];
  for (let k = 0; k < workers; k++) {
    const examples: number[] = [];
    for (let i = k; i < batch.length; i += workers) examples.push(batch[i]);
    const microBatches: number[][] = [];
    for (let i = 0; i < examples.length; i += microBatch) {
      microBatches.push(examples.slice(i, i + microBatch));
    }
    shares.push({ examples, microBatches });
  }
  return shares;
}

/** The step plans of one training run. */
export class BatchPlan {
  readonly config: Readonly<BatchConfig>;
  /** floor(N / batch_size). */
  readonly stepsPerEpoch: number;
  /** T. */
  readonly totalSteps: number;
  #cachedEpoch = -1;
  #cachedOrder: number[] = [];

  constructor(config: BatchConfig) {
    const { numExamples: n, batchSize: b, workers: k, microBatch: m } = config;
    positiveInt("number of examples", n);
    positiveInt("batch_size", b);
    positiveInt("workers", k);
    positiveInt("micro_batch", m);
    checkShape(b, k, m);
    if (b > n) {
      throw new BatchConfigError(
        `batch_size ${b} is larger than the data set (${n} examples): no full batch to train on`,
      );
    }
    if (!Number.isSafeInteger(config.seed)) {
      throw new BatchConfigError(`seed must be an integer, got ${config.seed}`);
    }
    this.stepsPerEpoch = Math.floor(n / b);
    if (config.maxSteps !== undefined) {
      positiveInt("max_steps", config.maxSteps);
      this.totalSteps = config.maxSteps;
    } else {
      const epochs = config.epochs ?? 1;
      positiveInt("epochs", epochs);
      this.totalSteps = epochs * this.stepsPerEpoch;
    }
    this.config = Object.freeze({ ...config });
  }

  /** The example order of `epoch`. */
  epochOrder(epoch: number): readonly number[] {
    if (epoch !== this.#cachedEpoch) {
      const c = this.config;
      this.#cachedOrder = epochOrder(c.numExamples, c.shuffle, c.seed, epoch);
      this.#cachedEpoch = epoch;
    }
    return this.#cachedOrder;
  }

  /** What step t trains on, for t in [0, T). */
  step(t: number): StepPlan {
    if (!Number.isInteger(t) || t < 0 || t >= this.totalSteps) {
      throw new DataError(`step ${t} is outside [0, ${this.totalSteps})`);
    }
    const b = this.config.batchSize;
    const epoch = Math.floor(t / this.stepsPerEpoch);
    const batchInEpoch = t % this.stepsPerEpoch;
    const examples = this.epochOrder(epoch).slice(batchInEpoch * b, (batchInEpoch + 1) * b);
    const workers = shardBatch(examples, this.config.workers, this.config.microBatch);
    return { step: t, epoch, batchInEpoch, examples, workers };
  }

  /** A cursor saying that step `t` is the next to run (t = T: the run is done). */
  cursor(t: number): DataCursor {
    if (!Number.isInteger(t) || t < 0 || t > this.totalSteps) {
      throw new DataError(`cursor step ${t} is outside [0, ${this.totalSteps}]`);
    }
    const c = this.config;
    return {
      version: 1,
      step: t,
      numExamples: c.numExamples,
      batchSize: c.batchSize,
      workers: c.workers,
      microBatch: c.microBatch,
      shuffle: c.shuffle,
      seed: c.seed,
    };
  }

  /** The step a saved cursor resumes at, after checking it was made for this same plan. */
  resume(cursor: unknown): number {
    if (typeof cursor !== "object" || cursor === null) {
      throw new DataError("data cursor is not an object");
    }
    const saved = cursor as Record<string, unknown>;
    if (saved.version !== 1) {
      throw new DataError(`data cursor version ${String(saved.version)} is not supported`);
    }
    const now = this.cursor(0);
    for (const key of Object.keys(now) as (keyof DataCursor)[]) {
      if (key === "step" || key === "version") continue;
      if (saved[key] !== now[key]) {
        throw new DataError(
          `data cursor was saved with ${key} = ${JSON.stringify(saved[key])} but this run has ` +
            `${JSON.stringify(now[key])}; resuming would train on different batches`,
        );
      }
    }
    const step = saved.step;
    if (typeof step !== "number" || !Number.isInteger(step) || step < 0 || step > this.totalSteps) {
      throw new DataError(`data cursor step ${String(step)} is outside [0, ${this.totalSteps}]`);
    }
    return step;
  }
}

/** What step t of a run with `config` trains on (a BatchPlan, built once, is cheaper per step). */
export function stepPlan(config: BatchConfig, t: number): StepPlan {
  return new BatchPlan(config).step(t);
}

function checkShape(batchSize: number, workers: number, microBatch: number): void {
  if (batchSize % (workers * microBatch) !== 0) {
    throw new BatchConfigError(
      `batch_size ${batchSize} is not a multiple of workers × micro_batch = ${workers} × ` +
        `${microBatch} = ${workers * microBatch}; each worker must get whole micro-batches`,
    );
  }
}

function positiveInt(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1) {
    throw new BatchConfigError(`${name} must be an integer >= 1, got ${v}`);
  }
}

// MurmurHash3's 32-bit finaliser: every input bit flips about half the output bits.
function fmix32(h: number): number {
  h = h >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}
