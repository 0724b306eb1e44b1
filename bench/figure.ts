/** One measured figure printed by `deno task bench`. */
export interface Figure {
  name: string;
  /** NaN when the figure could not be measured; `note` then says why. */
  value: number;
  unit: string;
  /** Printed in place of the value: why it was not measured. */
  note?: string;
}

/** Receives the figures of a suite as they are measured. */
export type Report = (figure: Figure) => void;

/** The p-th percentile (0..100) of a list of samples, by nearest rank. */
export function percentile(samples: number[], p: number): number {
  if (samples.length === 0) return NaN;
  const s = [...samples].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i];
}
