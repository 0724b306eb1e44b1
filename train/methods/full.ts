/**
 * Full fine-tuning (docs/architecture.md §2, baseline): the weights themselves (all but the embeddings and the
 * output head by default) trained data-parallel, AdamW or SGD on W; no adapters, no init.
 * @module
 */
import { type GpuTensor, isRowParts } from "../../gpu/mod.ts";
import type { LlamaGpu } from "../../model/llama.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import { DataParallelWorker, meanTraffic } from "./data_parallel.ts";
import { meanContributions } from "./combine.ts";
import { emptyInit } from "./init.ts";
import { fullTrainableDefault, weightLayout } from "./layout.ts";
import type { TrainingMethod } from "./method.ts";
import { type SharedStateSpec, type WorkerMethodConfig, WorkerStateError } from "./worker.ts";

/** Every worker takes the same optimizer step on the same mean: the moments agree everywhere. */
export const FULL_SHARED: SharedStateSpec = { adapters: false, optimizer: true };

/** Full fine-tuning on one worker: the trainable weights and their moments. */
export class FullWorker extends DataParallelWorker {
  readonly shared: SharedStateSpec = FULL_SHARED;

  constructor(model: LlamaGpu, config: WorkerMethodConfig) {
    super(model, config, weightLayout(model.config, config));
    const segments: GpuTensor[][] = [];
    for (const seg of this.layout.segments) {
      const W = model.weightMatrix(seg.name);
      const G = model.weightGradMatrix(seg.name);
      if (!isRowParts(W) && !isRowParts(G)) {
        this.addMoments(W, G, seg.name);
        segments.push([G]);
        continue;
      }
      // A weight over the binding limit: its row blocks, each with its own moments (keys name
      // the rows, so a checkpoint of another split is refused rather than misread).
      const Ws = isRowParts(W) ? W : null, Gs = isRowParts(G) ? G : null;
      if (!Ws || !Gs || Ws.parts.length !== Gs.parts.length) {
        throw new WorkerStateError(
          `${seg.name}: the weight and its gradient are split differently`,
        );
      }
      Ws.parts.forEach((p, i) => {
        const rows = Ws.parts.length === 1
          ? seg.name
          : `${seg.name}[${Ws.starts[i]}:${Ws.starts[i] + Ws.counts[i]}]`;
        this.addMoments(p, Gs.parts[i], rows);
      });
      segments.push([...Gs.parts]);
    }
    this.collectGradients(segments);
  }

  merge(): Promise<void> {
    return Promise.resolve(); // W is the model.
  }

  adapters(): Promise<Map<string, HostTensor>> {
    return Promise.resolve(new Map());
  }

  protected setAdapters(): void {}
}

export const full: TrainingMethod<"full"> = {
  name: "full",
  summary: "the weights themselves (embeddings and head frozen), data-parallel",
  rankBoundLabel: "min(in, out)",
  rankBound: (_s, shape) => shape ? Math.min(shape[0], shape[1]) : null,
  color: "#30638e",
  validate: () => {},
  layout: weightLayout,
  updateLength: (layout) => layout.length,
  combine: meanContributions,
  shared: FULL_SHARED,
  traffic: (layout) => meanTraffic(layout, "4·Σ(trainable weights) bytes (gradients)"),
  init: () => emptyInit(),
  initLog: () => null,
  initToTensors: () => new Map(),
  initFromTensors: () => emptyInit(),
  modelOptions: (c) => ({ gradients: "weights", trainable: c.trainable ?? fullTrainableDefault }),
  createWorker: (model, c) => new FullWorker(model, c),
};
