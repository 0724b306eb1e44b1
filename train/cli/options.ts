/**
 * The fine-tuning job's options, under the module name the rest of the code imports: the flags
 * themselves are declared in finetune_flags.ts.
 * @module
 */
export * from "./finetune_flags.ts";
