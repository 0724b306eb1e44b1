/**
 * Keeping W equal (docs/architecture.md §6): the workers' checksums are compared; under exact
 * sync any difference stops the run, under tolerant sync worker 0's copy is handed to everybody
 * once the differences are found to be within the tolerance.
 * @module
 */
import { parseSafetensors } from "../../model/safetensors.ts";
import { maxRelativeDifference } from "../../train/checkpoint/checksum.ts";
import { CALL, type DriverContext, type RunState, TrainingError } from "./context.ts";
import { readReported, takeReported } from "./objects.ts";
import type { Fleet } from "./setup.ts";

/** How far apart W may drift on mixed devices before the run stops (docs/architecture.md §2). */
export const SYNC_TOLERANCE = 1e-6;

/**
 * Compares every worker's W. Exact sync: any difference stops the run. Tolerant sync (mixed
 * devices, docs/architecture.md §2): a worker more than 1e-6 relative away from worker 0 stops
 * the run; otherwise every worker takes worker 0's W (and trained adapter), so that rounding
 * differences never accumulate. Returns worker 0's checksum.
 */
export async function verifyChecksums(
  ctx: DriverContext,
  fleet: Fleet,
  state: RunState,
): Promise<string> {
  const workers = fleet.workers;
  const sums = await Promise.all(workers.map((w) => w.checksum({}, CALL)));
  const first = sums[0].sha256;
  const bad = sums.findIndex((s) => s.sha256 !== first);
  const after = state.nextStep - 1;
  if (!fleet.tolerant()) {
    if (bad >= 0) {
      throw new TrainingError(
        `W differs between workers after step ${after}: worker 0 has ` +
          `${first.slice(0, 12)}…, worker ${bad} has ${sums[bad].sha256.slice(0, 12)}… ` +
          `(on devices that round differently, use --sync tolerant)`,
      );
    }
    return first;
  }
  if (workers.length === 1) return first;
  const store = await ctx.system.objects();
  const changed = (k: number) => (n: string) => `${n} changed after worker ${k} exported it`;
  const exported = (k: number) =>
    workers[k].exportShared({ name: `${ctx.job}.sync.g${state.generation}.w${k}` }, CALL);
  const ref = await exported(0);
  try {
    const refBytes = await readReported(store, ref, changed(0));
    const refTensors = parseSafetensors(refBytes, {}, ref.name).tensors;
    for (let k = 1; k < sums.length; k++) {
      if (sums[k].sha256 === first) continue;
      const other = await exported(k);
      const bytes = await takeReported(store, other, changed(k));
      const d = maxRelativeDifference(
        parseSafetensors(bytes, {}, other.name).tensors,
        refTensors,
      );
      if (!(d.value <= SYNC_TOLERANCE)) {
        throw new TrainingError(
          `W of worker ${k} is ${d.value.toExponential(2)} (relative) away from worker 0's in ` +
            `${d.name} after step ${after}, more than ${SYNC_TOLERANCE}`,
        );
      }
    }
    const synced = await Promise.all(
      workers.slice(1).map((w) => w.importShared({ name: ref.name, digest: ref.digest }, CALL)),
    );
    const off = synced.findIndex((s) => s.sha256 !== first);
    if (off >= 0) throw new TrainingError(`worker ${off + 1} did not take worker 0's W`);
    state.resyncs++;
  } finally {
    await store.delete(ref.name);
  }
  return first;
}
