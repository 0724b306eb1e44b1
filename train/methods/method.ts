/**
 * A training method as a value (docs/architecture.md §2). Everything that differs between HD-PiSSA, PiSSA,
 * LoRA and full fine-tuning sits behind this interface, and the code around it (flag checks,
 * driver, workers, reports) asks the method instead of testing its name. Each method is one
 * file that exports one `TrainingMethod`; `registry.ts` lists them.
 *
 * A method is built from small parts (a layout, a way to combine contributions, an init, a
 * worker), much as an optimizer is a chain of gradient transformations: the data-parallel
 * adapter methods share everything but their init (see `data_parallel.ts`).
 * @module
 */
import { z } from "zod";
import { DomainError } from "../../core/errors.ts";
import { adaptableLinears, type LinearKind, type LlamaConfig } from "../../model/config.ts";
import type { LlamaGpu } from "../../model/llama.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import type { InitOptions, MethodInit } from "./init.ts";
import type { Layout, LayoutOptions } from "./layout.ts";
import type { ModelOptions, SharedStateSpec, WorkerMethod, WorkerMethodConfig } from "./worker.ts";

/** The run settings the host-side parts of a method read. */
export interface MethodSettings {
  /** K, the number of GPU workers. */
  workers: number;
  /** r, the adapter rank per worker. */
  rank: number;
  targets: readonly LinearKind[];
}

/**
 * The settings do not suit the model (e.g. K·r larger than an adapted matrix's rank). `flag`
 * names the command-line flag to blame.
 */
export class MethodSettingsError extends DomainError {
  static override readonly code: string = "METHOD_SETTINGS";
  static readonly fields = z.object({ method: z.string(), flag: z.string() });
  readonly method: string;
  readonly flag: string;
  constructor(method: string, message: string, flag: string) {
    super(message);
    this.method = method;
    this.flag = flag;
  }
}

/** Bytes per step and worker, and how to read them. */
export interface Traffic {
  /** Bytes each worker sends per step (its contribution). */
  sent: number;
  /** Bytes each worker receives per step (the combined update). */
  received: number;
  /** The formula in words, for reports. */
  expression: string;
}

export interface TrainingMethod<N extends string = string> {
  /** The name used by `--method`, in reports and in folder names of `--compare`. */
  readonly name: N;
  /** One line for help texts and reports. */
  readonly summary: string;

  // Reports.

  /** The first-order bound on rank(ΔW) per matrix, as a formula ("2Kr", "r", ...). */
  readonly rankBoundLabel: string;
  /**
   * The bound's value; `shape` ([out, in]) is needed only by bounds that depend on the matrix.
   * Null when the settings given do not determine it.
   */
  rankBound(
    s: { rank: number; workers?: number },
    shape?: readonly [number, number],
  ): number | null;
  /** The colour of the method's curves in reports (a CSS colour), if it has its own. */
  readonly color?: string;

  // Checks, before anything starts.

  /** Throws MethodSettingsError when the settings cannot work with this model. */
  validate(config: LlamaConfig, s: MethodSettings): void;

  // The driver's side.

  /** Where each tensor sits in one worker's contribution. */
  layout(config: LlamaConfig, o: LayoutOptions): Layout;
  /** Floats in the update the driver broadcasts each step. */
  updateLength(layout: Layout, workers: number): number;
  /** The update of a step from the K validated contributions (in worker order). */
  combine(contributions: readonly Float32Array[]): Float32Array;
  /** What crosses the network per step and worker. */
  traffic(layout: Layout, workers: number): Traffic;
  /**
   * What must be the same on every worker besides W: the driver's checksums cover it and a
   * tolerant re-sync copies it from worker 0 (the method's worker class declares the same).
   */
  readonly shared: SharedStateSpec;
  /** The initial factors (and residuals), computed once from the base weights. */
  init(
    config: LlamaConfig,
    weights: ReadonlyMap<string, HostTensor>,
    o: InitOptions,
    onProgress?: (done: number, total: number) => void,
  ): MethodInit;
  /**
   * Singular triplets the init takes from every adapted matrix (K·r, r), so that the driver can
   * compute the randomized SVDs ahead on several threads; absent when the init needs no SVD.
   */
  svdComponents?(s: MethodSettings): number;
  /** The log line announcing the init, or null when there is nothing to announce. */
  initLog(config: LlamaConfig, s: MethodSettings): string | null;
  /** The init as named tensors for the object store (and back, on the workers). */
  initToTensors(config: LlamaConfig, s: MethodSettings, init: MethodInit): Map<string, HostTensor>;
  initFromTensors(tensors: ReadonlyMap<string, HostTensor>, s: MethodSettings): MethodInit;

  // The worker's side.

  /** The options LlamaGpu must be created with. */
  modelOptions(c: WorkerMethodConfig): ModelOptions;
  /** The method's state on worker `worker`, set up from the driver's init. */
  createWorker(
    model: LlamaGpu,
    c: WorkerMethodConfig,
    worker: number,
    init: MethodInit,
  ): WorkerMethod;
}

/**
 * The rank check shared by the adapter methods: `needed` components must fit every adapted
 * matrix, i.e. needed ≤ min(out, in). `what` names the flags in the message.
 */
export function checkRankFits(
  method: string,
  config: LlamaConfig,
  targets: readonly LinearKind[],
  needed: number,
  what: string,
): void {
  for (const l of adaptableLinears(config, targets)) {
    const cap = Math.min(l.out, l.in);
    if (needed > cap) {
      throw new MethodSettingsError(
        method,
        `${what} exceeds the rank of ${l.name} [${l.out}, ${l.in}] (at most ${cap})`,
        "rank",
      );
    }
  }
}
