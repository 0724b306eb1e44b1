/**
 * The effective rank of what a method changed (docs/architecture.md §2): the singular values of
 * ΔW = W_final − W_initial, summarised as `rank_1e-2` (σ_i > 10⁻²·σ_1) and `energy90` (the fewest
 * leading components holding 90% of Σσ²). The spectrum is returned for plots.
 */

import { DomainError } from "../../core/errors.ts";
import type { HostTensor } from "../../model/safetensors.ts";
import { singularValues } from "../linalg/svd.ts";

/** Two weights that cannot be compared (different shapes, not a matrix). */
export class EffectiveRankError extends DomainError {
  static override readonly code: string = "EFFECTIVE_RANK";
}

/** The summary written into `report.json` per matrix, plus the spectrum. */
export interface EffectiveRank {
  "rank_1e-2": number;
  energy90: number;
  /** Singular values of ΔW, descending. */
  spectrum: number[];
}

/** Count of σ_i > relTol·σ_1 (0 for an all-zero spectrum). */
export function rankAbove(spectrum: ArrayLike<number>, relTol = 1e-2): number {
  if (spectrum.length === 0 || !(spectrum[0] > 0)) return 0;
  let n = 0;
  for (let i = 0; i < spectrum.length; i++) if (spectrum[i] > relTol * spectrum[0]) n++;
  return n;
}

/** The smallest k with Σ_{i<k} σ_i² ≥ fraction·Σ σ² (0 for an all-zero spectrum). */
export function energyRank(spectrum: ArrayLike<number>, fraction = 0.9): number {
  let total = 0;
  for (let i = 0; i < spectrum.length; i++) total += spectrum[i] ** 2;
  if (total === 0) return 0;
  // A relative slack so that a spectrum holding exactly the fraction is not lost to rounding.
  const goal = fraction * total * (1 - 1e-12);
  let acc = 0;
  for (let i = 0; i < spectrum.length; i++) {
    acc += spectrum[i] ** 2;
    if (acc >= goal) return i + 1;
  }
  return spectrum.length;
}

/** The effective rank of `final − initial` for two weights of the same 2-D shape. */
export function effectiveRank(
  final: HostTensor,
  initial: HostTensor,
  name = "the matrix",
): EffectiveRank {
  if (
    final.shape.length !== 2 || initial.shape.length !== 2 ||
    final.shape[0] !== initial.shape[0] || final.shape[1] !== initial.shape[1] ||
    final.data.length !== initial.data.length ||
    final.data.length !== final.shape[0] * final.shape[1]
  ) {
    throw new EffectiveRankError(
      `${name}: final [${final.shape}] and initial [${initial.shape}] are not matching matrices`,
    );
  }
  const [m, n] = final.shape;
  const delta = new Float64Array(m * n);
  // f32 differences are exact in float64.
  for (let i = 0; i < delta.length; i++) delta[i] = final.data[i] - initial.data[i];
  const spectrum = Array.from(singularValues(delta, m, n));
  return { "rank_1e-2": rankAbove(spectrum, 1e-2), energy90: energyRank(spectrum, 0.9), spectrum };
}
