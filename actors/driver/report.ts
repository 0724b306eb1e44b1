/**
 * The end of a run (docs/architecture.md §6, "Evaluation and the end of the run"): greedy
 * evaluation spread over the workers, the exported model folder, the effective rank of every
 * adapted matrix, and report.json's contents (§9).
 * @module
 */
import { adaptableLinears } from "../../model/config.ts";
import { dtypeOfTorch } from "../../model/half_float.ts";
import { type HostTensor, parseSafetensors, saveModelFolder } from "../../model/safetensors.ts";
import { resolvedConfig } from "../../train/cli/options.ts";
import { effectiveRank } from "../../train/report/effective_rank.ts";
import type { EvalScore } from "../../train/eval/score.ts";
import { scoreGenerations } from "../../train/eval/evaluate.ts";
import type { RunReport } from "../../train/report/report.ts";
import { CALL, CALL_MS, type DriverContext, type DriverStep, type RunState } from "./context.ts";
import { takeReported } from "./objects.ts";
import type { Fleet, RunInputs } from "./setup.ts";

/** Greedy evaluation of the eval set, its prompts spread over the workers. */
export async function evaluate(run: RunInputs, fleet: Fleet): Promise<EvalScore | null> {
  const p = run.evalPrepared;
  if (!p) return null;
  const workers = fleet.workers;
  const K = workers.length;
  const per = Math.ceil(p.items.length / K);
  const shards = workers.map((_, k) => p.items.slice(k * per, (k + 1) * per));
  const outs = await Promise.all(workers.map((w, k) =>
    w.generate({
      prompts: shards[k].map((it) => it.prompt),
      maxNewTokens: p.maxNewTokens,
      stopIds: p.stopIds,
    }, CALL)
  ));
  return scoreGenerations(run.tokenizer, p, outs.flatMap((o) => o.tokens)).score;
}

/**
 * Has worker 0 export its (merged) weights and writes the model folder the way the input model
 * is written (its dtypes and sharding, unless --save-dtype or --max-shard-size say otherwise;
 * its config.json fields, tokenizer and generation files carried over); returns the weights.
 */
export async function exportModel(
  ctx: DriverContext,
  run: RunInputs,
  fleet: Fleet,
): Promise<Map<string, HostTensor>> {
  const store = await ctx.system.objects();
  const e = await fleet.workers[0].exportWeights({ name: `${ctx.job}.final` }, {
    timeoutMs: CALL_MS,
  });
  const bytes = await takeReported(
    store,
    e,
    (n) => `${n} changed after worker 0 exported it`,
  );
  const final = parseSafetensors(bytes, {}, e.name).tensors;
  const saved = await saveModelFolder(ctx.o.out, run.config, final, {
    source: run.source,
    dtype: ctx.o.saveDtype === null ? null : dtypeOfTorch(ctx.o.saveDtype),
    maxShardBytes: ctx.o.maxShardSize,
  });
  const size = saved.totalBytes >= 1e6
    ? `${(saved.totalBytes / 1e6).toFixed(1)} MB`
    : `${(saved.totalBytes / 1e3).toFixed(1)} kB`;
  const files = saved.files.length === 1 ? saved.files[0] : `${saved.files.length} shards`;
  ctx.log(`model: ${saved.torchDtype}, ${files} (${size})`);
  return final;
}

/** What the report reads besides the run's inputs, workers and state. */
export interface ReportInputs {
  final: ReadonlyMap<string, HostTensor>;
  evalBefore: EvalScore | null;
  evalAfter: EvalScore | null;
  startedAt: string;
}

/** report.json of the run (docs/architecture.md §9). */
export function runReport(
  ctx: DriverContext,
  run: RunInputs,
  fleet: Fleet,
  state: RunState,
  r: ReportInputs,
): RunReport {
  const o = ctx.o;
  const effective: Record<string, { "rank_1e-2": number; energy90: number }> = {};
  const spectra: Record<string, number[]> = {};
  for (const l of adaptableLinears(run.config, o.targets)) {
    const e = effectiveRank(r.final.get(l.name)!, run.baseWeights.get(l.name)!, l.name);
    effective[l.name] = { "rank_1e-2": e["rank_1e-2"], energy90: e.energy90 };
    spectra[l.name] = e.spectrum.map((v) => v);
  }
  const sum = (f: (s: DriverStep) => number) => state.steps.reduce((a, s) => a + f(s), 0);
  return {
    method: o.method,
    config: resolvedConfig(o) as RunReport["config"],
    steps: state.steps.map((s) => ({
      step: s.step,
      loss: s.loss,
      lr: s.lr,
      ms: s.ms,
      bytes_sent: s.bytes_sent,
      bytes_received: s.bytes_received,
      tokens: s.tokens,
      compute_ms: s.compute_ms,
      comm_ms: s.comm_ms,
      update_ms: s.update_ms,
      ...(s.skipped ? { skipped: s.skipped } : {}),
    })),
    eval: { before: r.evalBefore, after: r.evalAfter },
    effective_rank: effective,
    spectra,
    timing: {
      total_ms: Date.now() - Date.parse(r.startedAt),
      compute_ms: sum((s) => s.compute_ms),
      comm_ms: sum((s) => s.comm_ms),
      update_ms: sum((s) => s.update_ms),
      ...(state.initMs !== null ? { init_ms: state.initMs } : {}),
    },
    memory: {
      optimizer_floats_per_worker: fleet.optimizerFloats,
      trainable_floats_per_worker: fleet.optimizerFloats / 2,
    },
    bytes_per_step_formula: ctx.method.traffic(run.layout, o.workers),
    started_at: r.startedAt,
    finished_at: new Date().toISOString(),
    model: {
      path: o.model,
      parameters: [...run.baseWeights.values()].reduce((n, t) => n + t.data.length, 0),
    },
    data: { path: o.data, examples: run.train.length },
    devices: fleet.devices,
    device_fallback: fleet.fallbacks,
    ...(state.svdDevice ? { svd_device: state.svdDevice } : {}),
    ...(fleet.loadedVia.length > 0 ? { weights_loaded_via: fleet.loadedVia } : {}),
    ...(fleet.storeBytes.chunks > 0
      ? { weights_store: { chunks: fleet.storeBytes.chunks, peak_bytes: fleet.storeBytes.peak } }
      : {}),
    recoveries: state.recoveries,
    resyncs: state.resyncs,
    sync_drift: state.drift,
    nonfinite_losses: [...state.nonfiniteLosses].sort((a, b) =>
      a.step - b.step || a.worker - b.worker
    ),
    nonfinite_loss_count: state.nonfiniteLosses.length,
    sync: fleet.tolerant() ? "tolerant" : "exact",
    rejected_messages: state.rejected,
  } as RunReport;
}
