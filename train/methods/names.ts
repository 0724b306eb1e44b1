/**
 * The names of the training methods.
 * @module
 */
export const METHODS = ["hd-pissa", "pissa", "lora", "full"] as const;
export type Method = typeof METHODS[number];
