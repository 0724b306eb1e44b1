/**
 * The data pipeline in one import: JSONL loading, encoding and masking (chat templates too),
 * batch plans and the data cursor (docs/architecture.md §4).
 * @module
 */
export * from "./errors.ts";
export * from "./jsonl.ts";
export * from "./encode.ts";
export * from "./chat.ts";
export * from "./batching.ts";
