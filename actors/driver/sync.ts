/**
 * Keeping the shared state equal (docs/architecture.md §6): W and what the method declares
 * shared (adapters; a data-parallel method's optimizer moments and step) must be the same on
 * every worker. The workers' checksums are compared; under exact sync any difference stops the
 * run, naming the worker and the first tensor that differs; under tolerant sync worker 0's copy
 * is handed to everybody once the differences are found to be within the tolerance.
 * @module
 */
import { parseSafetensors } from "../../model/safetensors.ts";
import { differingEntries, maxRelativeDifference } from "../../train/checkpoint/checksum.ts";
import { CALL, type DriverContext, type RunState, TrainingError, type Worker } from "./context.ts";
import { readReported, takeReported } from "./objects.ts";
import type { Fleet } from "./setup.ts";

/** How far apart W may drift on mixed devices before the run stops (docs/architecture.md §2). */
export const SYNC_TOLERANCE = 1e-6;

/**
 * Compares every worker's shared state. Exact sync: any difference stops the run. Tolerant sync
 * (mixed devices, docs/architecture.md §2): a worker more than 1e-6 relative away from worker 0
 * in any tensor stops the run; otherwise every worker takes worker 0's W and shared state, so
 * that rounding differences never accumulate. Returns worker 0's checksum.
 */
export async function verifyChecksums(
  ctx: DriverContext,
  fleet: Fleet,
  state: RunState,
): Promise<string> {
  const workers = fleet.workers;
  const sums = await Promise.all(workers.map((w) => w.checksum({}, CALL)));
  const first = sums[0].sha256;
  const bad = sums.flatMap((s, k) => s.sha256 !== first ? [k] : []);
  const after = state.nextStep - 1;
  if (!fleet.tolerant()) {
    if (bad.length > 0) throw await mismatch(workers, bad, after);
    return first;
  }
  if (workers.length === 1) return first;
  const store = await ctx.system.objects();
  const changed = (k: number) => (n: string) => `${n} changed after worker ${k} exported it`;
  const exported = (k: number) =>
    workers[k].exportShared({ name: `${ctx.job}.sync.g${state.generation}.w${k}` }, CALL);
  const ref = await exported(0);
  try {
    const refFile = parseSafetensors(await readReported(store, ref, changed(0)), {}, ref.name);
    for (const k of bad) {
      const other = await exported(k);
      const file = parseSafetensors(await takeReported(store, other, changed(k)), {}, other.name);
      const steps = [refFile, file].map((f) => f.metadata.optimizer_step);
      if (steps[0] !== steps[1]) {
        throw new TrainingError(
          `worker ${k} is at optimizer step ${steps[1]}, worker 0 at ${steps[0]}, after step ` +
            `${after}: not a rounding difference`,
        );
      }
      const d = maxRelativeDifference(file.tensors, refFile.tensors);
      if (!(d.value <= SYNC_TOLERANCE)) {
        throw new TrainingError(
          `worker ${k}'s ${d.name} is ${d.value.toExponential(2)} (relative) away from worker ` +
            `0's after step ${after}, more than ${SYNC_TOLERANCE}`,
        );
      }
      state.drift.push({ step: after, worker: k, tensor: d.name, relative: d.value });
      ctx.log(
        `step ${after}: worker ${k}'s ${d.name} drifted ${d.value.toExponential(2)} ` +
          `(relative) from worker 0's; re-synchronising from worker 0`,
      );
    }
    const synced = await Promise.all(
      workers.slice(1).map((w) => w.importShared({ name: ref.name, digest: ref.digest }, CALL)),
    );
    const off = synced.findIndex((s) => s.sha256 !== first);
    if (off >= 0) {
      throw new TrainingError(`worker ${off + 1} did not take worker 0's W and shared state`);
    }
    state.resyncs++;
    ctx.emit("resync", {
      step: after,
      workers: bad,
      drift: state.drift.filter((d) => d.step === after),
      resyncs: state.resyncs,
    });
  } finally {
    await store.delete(ref.name);
  }
  return first;
}

/**
 * The error of a mismatch under exact sync: the first worker that differs from worker 0 and the
 * first tensor (in name order) it differs in, from the per-tensor digests of both.
 */
async function mismatch(workers: Worker[], bad: number[], after: number): Promise<TrainingError> {
  const k = bad[0];
  const [ref, other] = await Promise.all(
    [0, k].map((j) => workers[j].checksum({ tensors: true }, CALL)),
  );
  const a = ref.tensors ?? {}, b = other.tensors ?? {};
  const names = differingEntries(a, b);
  const short = (d: string | undefined) => d === undefined ? "none" : `${d.slice(0, 12)}…`;
  const where = names.length === 0
    ? `its checksum (${short(ref.sha256)} against ${short(other.sha256)}; the tensors agree ` +
      `when asked again)`
    : `${names[0]}: worker 0 has ${short(a[names[0]])}, worker ${k} has ${short(b[names[0]])}` +
      (names.length > 1 ? ` (and ${names.length - 1} more)` : "");
  const others = bad.length > 1 ? `; workers ${bad.join(", ")} all differ from worker 0` : "";
  return new TrainingError(
    `the workers' state differs after step ${after}: worker ${k} differs from worker 0 in ` +
      `${where}${others} (on devices that round differently, use --sync tolerant)`,
  );
}
