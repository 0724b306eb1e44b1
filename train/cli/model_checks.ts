/**
 * The checks of a run's flags that need the model's config: made once the model folder is read,
 * before any worker starts.
 * @module
 */
import type { LlamaConfig } from "../../model/config.ts";
import { MethodSettingsError } from "../methods/method.ts";
import { getMethod, TRAINING_METHODS } from "../methods/registry.ts";
import { type FinetuneOptions, FlagError } from "./options.ts";

/**
 * The checks that need the model's config: the sequence length fits, and the method's own checks
 * pass (e.g. K·r ≤ min(in, out) of every adapted matrix for HD-PiSSA, r for PiSSA and LoRA).
 * `--compare` runs every method, so every method's checks apply.
 */
export function validateOptionsForModel(o: FinetuneOptions, config: LlamaConfig): void {
  if (o.seqLen > config.max_position_embeddings) {
    throw new FlagError(
      `--seq-len ${o.seqLen} exceeds the model's max_position_embeddings ` +
        `(${config.max_position_embeddings})`,
      "seq-len",
    );
  }
  const methods = o.compare ? TRAINING_METHODS : [getMethod(o.method)];
  try {
    for (const m of methods) m.validate(config, o);
  } catch (e) {
    if (e instanceof MethodSettingsError) throw new FlagError(e.message, e.flag);
    throw e;
  }
}
