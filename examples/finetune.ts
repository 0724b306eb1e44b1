/**
 * The main job: fine-tune a LLaMA-family model with HD-PiSSA (or a baseline) on K GPU actors.
 *
 *   deno task finetune                       the shipped base model on the shipped benchmark
 *   deno task finetune --help                every flag
 *
 * With no --nats it starts a private nats-server and K local worker processes.
 */
import { FlagError, parseFinetuneArgs, USAGE } from "../train/cli/options.ts";
import { runFinetune } from "../actors/job.ts";

if (import.meta.main) {
  let parsed;
  try {
    parsed = parseFinetuneArgs(Deno.args);
  } catch (e) {
    if (e instanceof FlagError) {
      console.error(`finetune: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
  if (parsed.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  try {
    await runFinetune(parsed.options, {
      log: (line) => console.error(line),
      isTty: Deno.stderr.isTerminal(),
    });
  } catch (e) {
    // The Driver is an actor that declares its errors: what it throws (CheckpointError,
    // TrainingError, SafetensorsError...) arrives here as itself, with the Driver's stack.
    const err = e instanceof Error ? e : new Error(String(e));
    console.error(`finetune: ${err.name}: ${err.message}`);
    if (Deno.env.get("HD_DEBUG")) console.error(err);
    Deno.exit(1);
  }
}
