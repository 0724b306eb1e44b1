/**
 * Training-step figures on real worker processes (a private nats-server, K node processes,
 * lavapipe when there is no GPU), at the model benchmark's config (hidden 128, intermediate
 * 344, 4 layers, 4 heads, 2 KV heads, byte vocabulary; ~0.79M parameters), batch 16 × seq 64:
 *
 * - HD-PiSSA against data-parallel PiSSA at K = 4, r = 4, side by side, split into compute,
 *   communication and update, with the update's share of the step;
 * - bytes per step per worker, measured, next to the formula of docs/architecture.md §2;
 * - HD-PiSSA step time for K = 1, 2, 4.
 *
 * Every K workers share this machine's cores, so on a CPU the update of each worker competes
 * with the others', which inflates the update's cost against a real multi-GPU setup.
 */
import type { Report } from "./figure.ts";
import { benchModelConfig, writeBenchModel } from "./support/bench_model.ts";
import { runOne, startSystem } from "../actors/job.ts";
import { defaultOptions, type FinetuneOptions, type Method } from "../train/cli/options.ts";
import type { RunReport } from "../train/report/report.ts";

const CONFIG = benchModelConfig(64);
const STEPS = 14;
const WARMUP = 4;

interface Figures {
  ms: number;
  compute: number;
  comm: number;
  update: number;
  sent: number;
  received: number;
  report: RunReport;
}

function summarise(r: RunReport): Figures {
  const steps = r.steps.slice(WARMUP) as (RunReport["steps"][number] & Record<string, number>)[];
  const mean = (f: (s: typeof steps[number]) => number) =>
    steps.reduce((a, s) => a + f(s), 0) / steps.length;
  return {
    ms: mean((s) => s.ms),
    compute: mean((s) => s.compute_ms),
    comm: mean((s) => s.comm_ms),
    update: mean((s) => s.update_ms),
    sent: mean((s) => s.bytes_sent),
    received: mean((s) => s.bytes_received),
    report: r,
  };
}

export async function run(report: Report): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "hd-bench-" });
  try {
    await writeBenchModel(`${dir}/model`, CONFIG);
    const base: FinetuneOptions = {
      ...defaultOptions(),
      model: `${dir}/model`,
      eval: null,
      rank: 4,
      alpha: 4,
      batchSize: 16,
      microBatch: 4,
      maxSteps: STEPS,
      checkpointEvery: 0,
      checksumEvery: STEPS,
      warmupRatio: 0,
    };
    const io = { log: () => {}, isTty: false, progress: () => {} };
    const runOn = async (workers: number, methods: Method[]) => {
      const o0 = { ...base, workers, microBatch: 16 / workers >= 4 ? 4 : 16 / workers };
      const system = await startSystem(o0);
      try {
        const out: Figures[] = [];
        for (const method of methods) {
          const o = { ...o0, method, out: `${dir}/${method}-${workers}` };
          await Deno.mkdir(o.out, { recursive: true });
          out.push(summarise(await runOne(system, o, io)));
        }
        return out;
      } finally {
        await system.shutdown();
      }
    };

    const [hd, pissa] = await runOn(4, ["hd-pissa", "pissa"]);
    for (const [name, f] of [["hd-pissa", hd], ["pissa", pissa]] as const) {
      report({ name: `K=4 r=4 ${name}: step`, value: f.ms, unit: "ms" });
      report({ name: `K=4 r=4 ${name}: compute (max over workers)`, value: f.compute, unit: "ms" });
      report({
        name: `K=4 r=4 ${name}: communication (gather + broadcast)`,
        value: f.comm,
        unit: "ms",
      });
      report({ name: `K=4 r=4 ${name}: update (max over workers)`, value: f.update, unit: "ms" });
      report({
        name: `K=4 r=4 ${name}: update share of the step`,
        value: 100 * f.update / f.ms,
        unit: "%",
      });
      const formula = f.report.bytes_per_step_formula!;
      report({ name: `K=4 r=4 ${name}: bytes sent per worker per step`, value: f.sent, unit: "B" });
      report({ name: `K=4 r=4 ${name}: bytes sent, formula`, value: formula.sent, unit: "B" });
      report({
        name: `K=4 r=4 ${name}: bytes received per worker per step`,
        value: f.received,
        unit: "B",
      });
      report({
        name: `K=4 r=4 ${name}: bytes received, formula`,
        value: formula.received,
        unit: "B",
      });
    }
    report({
      name: "HD-PiSSA / PiSSA step time (paper: 1.10)",
      value: hd.ms / pissa.ms,
      unit: "x",
    });
    report({
      name: "HD-PiSSA / PiSSA step time without the update",
      value: (hd.ms - hd.update) / (pissa.ms - pissa.update),
      unit: "x",
    });
    report({ name: "HD-PiSSA K=4 tokens/s", value: 16 * 64 / (hd.ms / 1000), unit: "tok/s" });
    for (const K of [1, 2]) {
      const [f] = await runOn(K, ["hd-pissa"]);
      report({ name: `HD-PiSSA K=${K} step`, value: f.ms, unit: "ms" });
    }
    report({ name: "HD-PiSSA K=4 step", value: hd.ms, unit: "ms" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
