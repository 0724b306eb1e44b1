/**
 * The main job: fine-tune a LLaMA-family model with HD-PiSSA (or a baseline) on K GPU actors.
 *
 *   deno task finetune                       the shipped base model on the shipped benchmark
 *   deno task finetune --help                every flag
 *
 * With no --nats it starts a private nats-server and K local worker processes.
 */
import { FINETUNE_FLAGS } from "../train/cli/options.ts";
import { runFinetune } from "../actors/job.ts";
import { RemoteError } from "../runtime/mod.ts";

if (import.meta.main) {
  // --help prints the usage; a bad flag prints one line and exits 2.
  const { options } = FINETUNE_FLAGS.main();
  try {
    await runFinetune(options, {
      log: (line) => console.error(line),
      isTty: Deno.stderr.isTerminal(),
    });
  } catch (e) {
    // The Driver is an actor: what it throws arrives wrapped as a RemoteError; the user wants
    // the error itself (CheckpointError, TrainingError, SafetensorsError...), not the wrapping.
    const err = e as Error;
    const [name, message, stack] = err instanceof RemoteError
      ? [err.remoteName, err.remoteMessage, err.remoteStack]
      : [err.name, err.message, err.stack];
    console.error(`finetune: ${name}: ${message}`);
    if (Deno.env.get("HD_DEBUG")) console.error(stack);
    Deno.exit(1);
  }
}
