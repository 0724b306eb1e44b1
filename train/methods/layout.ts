/**
 * Where each tensor sits inside the flat Float32Array a worker contributes every step, and inside
 * the update the driver sends back. Driver and workers derive the same layout from the same
 * settings, so only the numbers travel.
 * @module
 */
import {
  adaptableLinears,
  expectedTensors,
  type LinearKind,
  type LlamaConfig,
} from "../../model/config.ts";

import type { Method } from "../cli/options.ts";

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

/** The weights full fine-tuning trains by default: all but the embeddings and the output head. */
export function fullTrainableDefault(name: string): boolean {
  return name !== "model.embed_tokens.weight" && name !== "lm_head.weight";
}

export interface LayoutOptions {
  method: Method;
  targets: readonly LinearKind[];
  rank: number;
  /** For `full`: which weights train. */
  trainable?: (name: string) => boolean;
}

/** The layout of one worker's contribution. */
export function contributionLayout(config: LlamaConfig, o: LayoutOptions): Layout {
  const segments: Segment[] = [];
  let offset = 0;
  const push = (name: string, part: Segment["part"], shape: number[]) => {
    const length = shape.reduce((a, b) => a * b, 1);
    segments.push({ name, part, shape, offset, length });
    offset += length;
  };
  if (o.method === "full") {
    const trainable = o.trainable ?? fullTrainableDefault;
    for (const t of expectedTensors(config)) if (trainable(t.name)) push(t.name, "gW", t.shape);
  } else {
    const [a, b] = o.method === "hd-pissa" ? ["dA", "dB"] as const : ["gA", "gB"] as const;
    for (const l of adaptableLinears(config, o.targets)) {
      push(l.name, a, [o.rank, l.in]);
      push(l.name, b, [l.out, o.rank]);
    }
  }
  return { segments, length: offset };
}

/** Floats the driver broadcasts each step: all K contributions (HD-PiSSA) or their mean. */
export function updateLength(layout: Layout, method: Method, workers: number): number {
  return method === "hd-pissa" ? layout.length * workers : layout.length;
}
