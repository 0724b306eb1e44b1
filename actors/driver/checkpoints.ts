/**
 * Checkpoints (docs/architecture.md §6, "Checkpoints"): written from the parts the workers save
 * into the object store, and restored onto every worker (a resume, or a rollback).
 * @module
 */
import {
  type HostTensor,
  parseSafetensors,
  serializeSafetensors,
} from "../../model/safetensors.ts";
import { resolvedConfig } from "../../train/cli/options.ts";
import { isFactorKey } from "../../train/methods/factors.ts";
import type { EvalScore } from "../../train/eval/score.ts";
import { type LoadedCheckpoint, writeCheckpoint } from "../../train/checkpoint/checkpoint.ts";
import { CALL, type DriverContext, type RunState, type StoredRef } from "./context.ts";
import { takeReported } from "./objects.ts";
import type { Fleet, RunInputs } from "./setup.ts";

/** Where a run's checkpoints go: `<out>/checkpoints`. */
export function checkpointDir(ctx: DriverContext): string {
  return `${ctx.o.out}/checkpoints`;
}

/** Writes a checkpoint of the state after the last applied step; returns its folder. */
export async function saveCheckpoint(
  ctx: DriverContext,
  run: RunInputs,
  fleet: Fleet,
  state: RunState,
  evalBefore: EvalScore | null,
): Promise<string> {
  const store = await ctx.system.objects();
  const t = state.nextStep - 1;
  // Names carry the generation, and every object read must have the digest its worker
  // reported: a stale worker of an older generation cannot slip its state into this one.
  const saved = await Promise.all(
    fleet.workers.map((w, k) =>
      w.save({ name: `${ctx.job}.ckpt.g${state.generation}.w${k}`, shared: k === 0 }, CALL)
    ),
  );
  const changed = (name: string) => `checkpoint object ${name} changed after its worker saved it`;
  const files = new Map<string, Uint8Array>();
  files.set("shared.safetensors", await takeReported(store, saved[0].shared!, changed));
  for (let k = 0; k < saved.length; k++) {
    files.set(`worker-${k}.safetensors`, await takeReported(store, saved[k].state, changed));
  }
  const checkpoint = {
    applied_step: t,
    generation: state.generation,
    method: ctx.o.method,
    workers: ctx.o.workers,
    cursor: run.plan.cursor(state.nextStep),
    seed: ctx.o.seed,
    config: resolvedConfig(ctx.o),
    steps: state.steps,
    eval_before: evalBefore,
    nonfinite_losses: state.nonfiniteLosses,
  };
  return await writeCheckpoint(checkpointDir(ctx), checkpoint, files);
}

/**
 * Rolls every worker back to a checkpoint (resume, or recovery after a failure): W and the
 * factors go into the object store, every worker loads and inits from them and restores its
 * optimizer state; the run continues after the checkpoint's step.
 */
export async function restoreCheckpoint(
  ctx: DriverContext,
  run: RunInputs,
  fleet: Fleet,
  state: RunState,
  ckpt: LoadedCheckpoint,
): Promise<void> {
  const shared = parseSafetensors(
    ckpt.files.get("shared.safetensors")!,
    {},
    "shared.safetensors",
  );
  const W = new Map<string, HostTensor>();
  const factors = new Map<string, HostTensor>();
  for (const [k, t] of shared.tensors) {
    if (isFactorKey(k)) factors.set(k, t);
    else W.set(k, t);
  }
  // PiSSA's live W is the residual; the worker keeps it as loaded.
  const store = await ctx.system.objects();
  const put = await store.put(
    `${ctx.job}.factors.g${state.generation}`,
    serializeSafetensors(factors),
  );
  state.factors = { name: put.name, digest: put.digest };
  await fleet.load(W, run, state.generation);
  const states: StoredRef[] = [];
  for (let k = 0; k < ctx.o.workers; k++) {
    const name = `${ctx.job}.state.g${state.generation}.w${k}`;
    const e = await store.put(name, ckpt.files.get(`worker-${k}.safetensors`)!);
    states.push({ name: e.name, digest: e.digest });
  }
  await fleet.init(state.generation, state.factors, states, ckpt.state.applied_step);
  for (const s of states) await store.delete(s.name);
  state.nextStep = ckpt.state.applied_step + 1;
  state.steps = state.steps.filter((s) => s.step < state.nextStep);
}
