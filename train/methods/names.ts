/**
 * The names of the training methods, as the registry lists them.
 * @module
 */
export { type Method, METHODS } from "./registry.ts";
