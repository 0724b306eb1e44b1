/**
 * The checks of a run's flags that need the model's config: made once the model folder is read,
 * before any worker starts.
 * @module
 */
import { adaptableLinears, type LlamaConfig } from "../../model/config.ts";
import { type FinetuneOptions, FlagError } from "./options.ts";

/**
 * The checks that need the model's config: the targets exist and, for the SVD-initialised
 * methods, K·r (HD-PiSSA) or r (PiSSA) fits every adapted matrix; LoRA needs r ≤ min too.
 */
export function validateOptionsForModel(o: FinetuneOptions, config: LlamaConfig): void {
  if (o.seqLen > config.max_position_embeddings) {
    throw new FlagError(
      `--seq-len ${o.seqLen} exceeds the model's max_position_embeddings ` +
        `(${config.max_position_embeddings})`,
      "seq-len",
    );
  }
  if (o.method === "full" && !o.compare) return;
  const needed = o.method === "hd-pissa" || o.compare ? o.workers * o.rank : o.rank;
  for (const l of adaptableLinears(config, o.targets)) {
    const cap = Math.min(l.out, l.in);
    if (needed > cap) {
      const what = o.method === "hd-pissa" || o.compare
        ? `--workers × --rank = ${o.workers} × ${o.rank} = ${needed}`
        : `--rank ${o.rank}`;
      throw new FlagError(
        `${what} exceeds the rank of ${l.name} [${l.out}, ${l.in}] (at most ${cap})`,
        "rank",
      );
    }
  }
}
