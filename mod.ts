/**
 * HD-PiSSA on actors: the public API.
 *
 * This module only re-exports; each part lives in its own folder (see README.md).
 * @module
 */

export * from "./runtime/mod.ts";
