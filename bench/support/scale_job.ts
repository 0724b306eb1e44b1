/**
 * One measurement of `deno task bench scale`, run as its own process so that its peak memory
 * (VmHWM) is its own and all of it is returned to the host when it exits. Prints one line
 * `SCALE {json}` with its figures.
 *
 *   deno run -A bench/support/scale_job.ts fwdbwd '{"model", "rows", "seq", "rank", "reps"}'
 *     reads the folder (timed), builds the GPU model as one worker of an adapter method holds it
 *     and times forward + backward; returns the device pool's bytes and the plan's bytes for
 *     the same buffers.
 *   deno run -A bench/support/scale_job.ts job '{FinetuneOptions fields..., "steps": n}'
 *     the job's memory plan and its check (MemoryPlanError: printed as `refused`), then the
 *     job's actor system and Driver as runFinetune starts them: setup (the driver reads the
 *     folder, K worker processes load W by --load-via, the method's init), then `steps` steps.
 *     The end of the run (evaluation, report.json, writing the model) is left out: the report's
 *     effective ranks take a dense SVD of every ΔW, minutes per matrix at 1B.
 * @module
 */
import { Driver } from "../../actors/driver.ts";
import { planInput, startSystem } from "../../actors/job.ts";
import { Rng } from "../../core/rng.ts";
import { Gpu, probeAdapter } from "../../gpu/mod.ts";
import { LINEAR_KINDS } from "../../model/config.ts";
import { LlamaGpu } from "../../model/llama.ts";
import { inspectModelFolder, loadModelFolder } from "../../model/safetensors.ts";
import { defaultOptions, type FinetuneOptions } from "../../train/cli/options.ts";
import {
  checkMemoryPlan,
  DEFAULT_LIMITS,
  memoryPlan,
  MemoryPlanError,
  type PlanLimits,
} from "../../train/plan/memory.ts";

function emit(figures: Record<string, unknown>): void {
  console.log(`SCALE ${JSON.stringify(figures)}`);
}

interface FwdBwdSpec {
  model: string;
  rows: number;
  seq: number;
  rank: number;
  reps: number;
  recompute?: boolean;
}

async function fwdBwd(spec: FwdBwdSpec): Promise<void> {
  const t0 = performance.now();
  const folder = await loadModelFolder(spec.model);
  const readMs = performance.now() - t0;
  const config = folder.config;
  const gpu = await Gpu.open();
  try {
    const b0 = gpu.stats().bytes;
    const model = await LlamaGpu.create(gpu, config, folder.tensors, {
      maxRows: spec.rows,
      seqLen: spec.seq,
      maxMicroBatches: 1,
      adapters: { targets: LINEAR_KINDS, rank: spec.rank },
      gradients: "adapters",
      recompute: spec.recompute ?? false,
    });
    const poolBytes = gpu.stats().bytes - b0;
    // The model's own buffers are an adapter method's (LoRA's plan: no HD-PiSSA pairs), less the
    // two clipping buffers the method adds.
    const plan = memoryPlan({
      config,
      method: "lora",
      workers: 1,
      rank: spec.rank,
      targets: LINEAR_KINDS,
      microBatch: spec.rows,
      maxMicroBatches: 1,
      seqLen: spec.seq,
      recompute: spec.recompute,
      limits: { ...DEFAULT_LIMITS, ...gpu.limits },
    }).worker;
    const planModel = plan.weights + plan.adapters + plan.gradients + plan.activations +
      plan.workspace - 512;
    const rng = new Rng(5);
    for (const name of model.adapterNames()) {
      const a = model.adapter(name);
      model.writeAdapter(name, rng.normals(a.A.size, 0.02), rng.normals(a.B.size, 0.02));
    }
    const T = spec.rows * spec.seq;
    const ids = new Int32Array(T);
    const targetMask = new Uint8Array(T);
    let targets = 0;
    const top = Math.min(config.vocab_size, 30000);
    for (let i = 0; i < T; i++) {
      ids[i] = 3 + rng.int(top - 3);
      if (i % spec.seq >= spec.seq / 2) {
        targetMask[i] = 1;
        if (i % spec.seq > 0) targets++;
      }
    }
    model.setStepBatches([{ ids, targetMask, targets, rows: spec.rows, seqLen: spec.seq }]);
    const step = async () => {
      const rec = gpu.record({ label: "forward+backward" });
      model.recordForwardBackward(rec);
      const loss = rec.read(model.loss);
      await rec.submit();
      const l = (await loss)[0];
      if (!Number.isFinite(l)) throw new Error(`loss is not finite: ${l}`);
    };
    const tw = performance.now();
    await step();
    const warmMs = performance.now() - tw;
    const ms: number[] = [];
    for (let i = 0; i < spec.reps; i++) {
      const t = performance.now();
      await step();
      ms.push(performance.now() - t);
    }
    ms.sort((a, b) => a - b);
    const median = ms[Math.floor(ms.length / 2)];
    emit({
      readMs,
      poolBytes,
      planModelBytes: planModel,
      warmMs,
      ms: median,
      tokens: T,
      tokensPerS: T / median * 1e3,
      device: gpu.info.description,
    });
    model.close();
  } finally {
    gpu.close();
  }
}

/**
 * `serverPidFile`: where to write the pid of the job's private nats-server, which runs detached
 * (runtime/nats_server.ts) and so is not below this process for the bench's memory poll.
 */
type JobSpec = Partial<FinetuneOptions> & { steps: number; serverPidFile?: string };

async function job(spec: JobSpec): Promise<void> {
  const { steps, serverPidFile, ...over } = spec;
  const o: FinetuneOptions = { ...defaultOptions(), ...over };
  // The folder's config only: the weights are the driver's to read.
  const { config } = await inspectModelFolder(o.model);
  // The job's limits (actors/job.ts): this host's memory and the adapter its workers open.
  const found = await probeAdapter();
  if (!found) throw new Error("no WebGPU adapter");
  const limits: PlanLimits = {
    maxBufferSize: found.limits.maxBufferSize,
    maxStorageBufferBindingSize: found.limits.maxStorageBufferBindingSize,
    minStorageBufferOffsetAlignment: found.limits.minStorageBufferOffsetAlignment,
    sharedHost: found.isCpu,
    hostMemory: Deno.systemMemoryInfo().total,
  };
  const plan = memoryPlan(planInput(o, config, limits));
  try {
    checkMemoryPlan(plan, limits);
  } catch (e) {
    if (!(e instanceof MemoryPlanError)) throw e;
    emit({ refused: e.message, plan });
    return;
  }
  await Deno.mkdir(o.out, { recursive: true });
  const system = await startSystem(o);
  if (serverPidFile && system.server) {
    await Deno.writeTextFile(serverPidFile, String(system.server.pid));
  }
  try {
    const driver = await system.spawn(Driver, {
      job: `scale${crypto.randomUUID().slice(0, 8)}`,
      options: o,
      baseEval: null,
    }, { node: "local", maxRestarts: 0, initTimeoutMs: 600_000 });
    const long = { timeoutMs: 3 * 3600_000 };
    const t0 = performance.now();
    const setup = await driver.setup({}, long);
    const setupMs = performance.now() - t0;
    const records = [];
    for (let i = 0; i < steps; i++) {
      const t = performance.now();
      const r = await driver.step({}, long);
      records.push({ ...r.record, wallMs: performance.now() - t });
    }
    emit({
      setupMs,
      log: setup.log,
      devices: setup.devices,
      weightsStore: setup.weightsStore,
      steps: records,
      plan,
    });
    await system.stop(driver).catch(() => {});
  } finally {
    await system.shutdown();
  }
}

if (import.meta.main) {
  const [mode, json] = Deno.args;
  const spec = JSON.parse(json ?? "{}");
  if (mode === "fwdbwd") await fwdBwd(spec);
  else if (mode === "job") await job(spec);
  else throw new Error(`mode must be fwdbwd or job, got ${mode}`);
  Deno.exit(0);
}
