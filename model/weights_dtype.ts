/**
 * The device dtype of a model's weight matrices (`--weights-dtype`), in a module of its own with
 * no runtime imports, so that the flag tables can name the choices without loading the engine.
 * What each choice means is in llama_params.ts.
 * @module
 */
import type { HalfType } from "../gpu/half.ts";

/** How the model's matrices are held on the device: f32, or 16 bits packed two per word. */
export type WeightsDtype = "f32" | HalfType;

export const WEIGHTS_DTYPES: readonly WeightsDtype[] = ["f32", "bf16", "f16"];

/** True for the weights a 16-bit weights dtype holds in 16 bits: the matrices (not vectors). */
export function heldInWeightsDtype(shape: readonly number[]): boolean {
  return shape.length === 2;
}
