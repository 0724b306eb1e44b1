/**
 * Where each tensor sits inside the flat Float32Array a worker contributes every step, and inside
 * the update the driver sends back. Driver and workers derive the same layout from the same
 * settings, so only the numbers travel. Each method picks its layout from the builders here.
 * @module
 */
import {
  adaptableLinears,
  expectedTensors,
  type LinearKind,
  type LlamaConfig,
} from "../../model/config.ts";

/** One tensor inside a flat contribution. */
export interface Segment {
  /** The Hugging Face weight name the tensor belongs to. */
  name: string;
  /** dA/dB: HD-PiSSA signed steps; gA/gB: adapter gradients; gW: a weight's gradient. */
  part: "dA" | "dB" | "gA" | "gB" | "gW";
  shape: number[];
  offset: number;
  length: number;
}

export interface Layout {
  segments: Segment[];
  /** Floats in one worker's contribution. */
  length: number;
}

/** The settings a method's layout depends on. */
export interface LayoutOptions {
  targets: readonly LinearKind[];
  rank: number;
  /** For `full`: which weights train. */
  trainable?: (name: string) => boolean;
}

/** The weights full fine-tuning trains by default: all but the embeddings and the output head. */
export function fullTrainableDefault(name: string): boolean {
  return name !== "model.embed_tokens.weight" && name !== "lm_head.weight";
}

function build(
  fill: (push: (name: string, part: Segment["part"], shape: number[]) => void) => void,
) {
  const segments: Segment[] = [];
  let offset = 0;
  fill((name, part, shape) => {
    const length = shape.reduce((a, b) => a * b, 1);
    segments.push({ name, part, shape, offset, length });
    offset += length;
  });
  return { segments, length: offset };
}

/**
 * One `[r, in]` and one `[out, r]` tensor per adapted weight, in model order: HD-PiSSA's signed
 * steps (dA, dB) or the data-parallel adapters' gradients (gA, gB).
 */
export function adapterLayout(
  config: LlamaConfig,
  o: LayoutOptions,
  parts: readonly ["dA", "dB"] | readonly ["gA", "gB"],
): Layout {
  const [a, b] = parts;
  return build((push) => {
    for (const l of adaptableLinears(config, o.targets)) {
      push(l.name, a, [o.rank, l.in]);
      push(l.name, b, [l.out, o.rank]);
    }
  });
}

/** The gradient of every trainable weight, in the order of the model's tensors. */
export function weightLayout(config: LlamaConfig, o: LayoutOptions): Layout {
  const trainable = o.trainable ?? fullTrainableDefault;
  return build((push) => {
    for (const t of expectedTensors(config)) if (trainable(t.name)) push(t.name, "gW", t.shape);
  });
}
