/**
 * The main job: fine-tune a LLaMA-family model with HD-PiSSA (or a baseline) on K GPU actors.
 *
 *   deno task finetune                       the shipped base model on the shipped benchmark
 *   deno task finetune --help                every flag
 *
 * With no --nats it starts a private nats-server and K local worker processes; with
 * --dashboard [HOST:]PORT it serves a live dashboard of the run (dashboard/).
 */
import { exitWithFlagError, FlagError } from "../cli/flags.ts";
import { FINETUNE_FLAGS } from "../train/cli/options.ts";
import { checkDashboardFlags, runFinetuneWithDashboard } from "../dashboard/finetune.ts";

if (import.meta.main) {
  // --help prints the usage; a bad flag prints one line and exits 2.
  const { options, given } = FINETUNE_FLAGS.main();
  try {
    checkDashboardFlags(options);
  } catch (e) {
    if (e instanceof FlagError) exitWithFlagError(FINETUNE_FLAGS.name, e);
    throw e;
  }
  try {
    await runFinetuneWithDashboard(options, {
      log: (line) => console.error(line),
      isTty: Deno.stderr.isTerminal(),
      given,
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
