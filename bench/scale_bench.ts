// Real model sizes end to end, for three shapes (bench/support/random_model.ts): SmolLM2-135M,
// its body with Llama 3's vocabulary of 128,256 (180M parameters), and Llama-3.2-1B. For each:
//
// - writing the random-init checkpoint folder (BF16 shards, index, tokenizer files);
// - reading it back in f32 (what the driver and a folder-loading worker do), and forward +
//   backward of one micro-batch of 1 × 32 with rank-4 adapters on all seven linear kinds, on
//   this device: tokens/s, and the device pool's bytes against the memory plan's for the same
//   buffers;
// - loading W into K = 2 worker processes, from the folder (--load-via auto) and through the
//   object store (--load-via store, W packed into 64 MiB chunks): the job's setup with --method lora,
//   whose init needs no SVD, so the setup is the load; each process's peak against the plan,
//   nats-server's, and the driver's own count of the chunk bytes it held at once;
// - one HD-PiSSA step at K = 2 (r = 4, micro-batch 1 × 32, randomized SVD, lr without warmup) through the job's
//   Driver and worker processes: setup and step time, and the peak resident memory (VmHWM) of the
//   driver's process and of each worker's against the plan.
//
// Each measurement runs in its own process (bench/support/scale_job.ts), so the peaks are its
// own and the memory is the host's again afterwards; each peak is printed next to the plan's
// figure for that process (train/plan/memory.ts: the driver's host memory, and a worker's device
// bytes in host memory + its own host memory while it streams W in). A measurement whose plan
// needs more than the host's available memory now (other jobs share it) is not run, and says so;
// a step at K = 2 that does not fit is then tried at K = 1. SCALE_SHAPES=135m,205m,1b picks shapes
// (default: all); SCALE_PARTS=fwdbwd,step,load picks measurements (default: all).
//
//   deno task bench scale
import type { Report } from "./figure.ts";
import {
  LLAMA32_1B,
  LLAMA3_VOCAB_205M,
  type ModelShape,
  SMOLLM2_135M,
  writeRandomModel,
} from "./support/random_model.ts";
import { LINEAR_KINDS } from "../model/config.ts";
import {
  formatBytes,
  hostNeed as planHostNeed,
  type MemoryPlan,
  memoryPlan,
} from "../train/plan/memory.ts";

const SHAPES: { key: string; shape: ModelShape }[] = [
  { key: "135m", shape: SMOLLM2_135M },
  { key: "205m", shape: LLAMA3_VOCAB_205M },
  { key: "1b", shape: LLAMA32_1B },
];
/** The measurements of a shape, in the order they run. */
const PARTS = ["fwdbwd", "step", "load"] as const;
const SEQ = 32;
const K = 2;
const RANK = 4;
const HARNESS = new URL("support/scale_job.ts", import.meta.url).pathname;
const MiB = 1024 * 1024;

/** Peak resident bytes (VmHWM) of a process, or null once it is gone. */
async function vmHwm(pid: number): Promise<number | null> {
  try {
    const status = await Deno.readTextFile(`/proc/${pid}/status`);
    const m = /VmHWM:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** The processes below `root`: pid → command name. */
async function descendants(root: number): Promise<Map<number, string>> {
  const parent = new Map<number, number>();
  const comm = new Map<number, string>();
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = await Deno.readTextFile(`/proc/${e.name}/stat`);
      // pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
      const close = stat.lastIndexOf(")");
      const fields = stat.slice(close + 2).split(" ");
      parent.set(Number(e.name), Number(fields[1]));
      comm.set(Number(e.name), stat.slice(stat.indexOf("(") + 1, close));
    } catch {
      // The process ended while we looked.
    }
  }
  const out = new Map<number, string>();
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, pp] of parent) {
      if (!out.has(pid) && (pp === root || out.has(pp))) {
        out.set(pid, comm.get(pid) ?? "?");
        grew = true;
      }
    }
  }
  return out;
}

interface Peaks {
  /** The harness process itself (for a job: the driver's process). */
  main: number;
  /** Each Deno process below it (a job's worker nodes), largest first. */
  nodes: number[];
  /** The job's nats-server (its private one, found through the pid file).*/
  nats: number[];
}

/** A measurement's figures and peaks, or why it failed (for the table; the run goes on). */
type Measured = { figures: Record<string, unknown>; peaks: Peaks } | { failed: string };

/** Runs the harness in `mode`; returns its `SCALE` figures and the processes' peak memory. */
async function harness(mode: "fwdbwd" | "job", spec: Record<string, unknown>): Promise<Measured> {
  // A job's private nats-server runs detached, not below the harness: its pid comes through a
  // file, so that its memory is polled with the rest.
  const serverPidFile = await Deno.makeTempFile({ prefix: "hd-scale-nats-" });
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", HARNESS, mode, JSON.stringify({ ...spec, serverPidFile })],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const peak = new Map<number, { comm: string; bytes: number }>();
  let done = false;
  const poll = (async () => {
    while (!done) {
      const pids = new Map([[child.pid, "main"], ...await descendants(child.pid)]);
      const server = Number(await Deno.readTextFile(serverPidFile).catch(() => ""));
      if (server > 0) pids.set(server, "nats-server");
      for (const [pid, comm] of pids) {
        const b = await vmHwm(pid);
        if (b !== null) peak.set(pid, { comm, bytes: Math.max(b, peak.get(pid)?.bytes ?? 0) });
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  })();
  const out = await child.output();
  done = true;
  await poll;
  await Deno.remove(serverPidFile).catch(() => {});
  const text = new TextDecoder().decode(out.stdout);
  const line = text.split("\n").find((l) => l.startsWith("SCALE "));
  if (!out.success || !line) {
    const err = new TextDecoder().decode(out.stderr);
    const first = err.split("\n").find((l) => /error/i.test(l)) ?? err.slice(-300);
    // deno-lint-ignore no-control-regex
    return { failed: `exit ${out.code}: ${first.replace(/\x1b\[[0-9;]*m/g, "").trim()}` };
  }
  const entries = [...peak.entries()];
  return {
    figures: JSON.parse(line.slice("SCALE ".length)),
    peaks: {
      main: peak.get(child.pid)?.bytes ?? NaN,
      nodes: entries.filter(([pid, p]) => pid !== child.pid && p.comm === "deno")
        .map(([, p]) => p.bytes).sort((a, b) => b - a),
      nats: entries.filter(([, p]) => p.comm.startsWith("nats")).map(([, p]) => p.bytes),
    },
  };
}

function planOf(
  shape: ModelShape,
  method: "hd-pissa" | "lora",
  workers: number,
  loadVia: "auto" | "store" = "auto",
): MemoryPlan {
  return memoryPlan({
    loadVia,
    // Every job here starts its own nats-server.
    privateServer: true,
    config: shape.config,
    method,
    workers,
    rank: RANK,
    targets: LINEAR_KINDS,
    microBatch: 1,
    maxMicroBatches: 1,
    seqLen: SEQ,
    svd: "randomized",
    limits: {
      maxBufferSize: Infinity,
      maxStorageBufferBindingSize: 128 * MiB,
      minStorageBufferOffsetAlignment: 256,
    },
  });
}

/**
 * Bytes the host must hold for a job of this plan: the plan's host need (the driver's process and
 * each worker's: runtime, what it holds while loading W one tensor at a time, and its device in
 * host memory under lavapipe), which the job checks too.
 */
function hostNeed(p: MemoryPlan): number {
  return planHostNeed(p, true);
}

/** The sum of the driver's and the worker processes' peaks. */
function sumPeaks(p: Peaks): number {
  return p.main + [...p.nodes, ...p.nats].reduce((a, b) => a + b, 0);
}

function available(): number {
  return Deno.systemMemoryInfo().available;
}

export async function run(report: Report): Promise<void> {
  const pick = (Deno.env.get("SCALE_SHAPES") ?? "135m,205m,1b").split(",");
  const parts = (Deno.env.get("SCALE_PARTS") ?? PARTS.join(",")).split(",");
  const unknown = parts.filter((p) => !(PARTS as readonly string[]).includes(p));
  if (unknown.length > 0) {
    throw new Error(`SCALE_PARTS: unknown ${unknown.join(", ")}; known: ${PARTS.join(", ")}`);
  }
  const root = await Deno.makeTempDir({ prefix: "hd-scale-bench-" });
  try {
    const data = `${root}/data.jsonl`;
    // Short enough for 32 tokens in bytes (the 135M folder has the byte tokenizer): every
    // example keeps its response, so every micro-batch has targets.
    const lines = Array.from(
      { length: 8 },
      (_, i) => JSON.stringify({ prompt: `${i}+${i + 1}=`, response: `${2 * i + 1}` }),
    );
    await Deno.writeTextFile(data, lines.join("\n") + "\n");
    for (const { key, shape } of SHAPES.filter((s) => pick.includes(s.key))) {
      const n = shape.name;
      const fig = (name: string, value: number, unit: string) =>
        report({ name: `${n}: ${name}`, value, unit });
      const skip = (name: string, note: string) =>
        report({ name: `${n}: ${name}`, value: NaN, unit: "", note });
      /** The harness's figures, or null after reporting why it failed. */
      const measure = async (name: string, ...args: Parameters<typeof harness>) => {
        const m = await harness(...args);
        if (!("failed" in m)) return m;
        skip(name, `failed: ${m.failed}`);
        return null;
      };
      const dir = `${root}/${key}`;
      console.error(`scale bench: ${n}: writing ${dir}`);
      const t0 = performance.now();
      const written = await writeRandomModel(dir, shape, { seed: 1 });
      fig("write folder (BF16)", (performance.now() - t0) / 1e3, "s");
      fig("parameters", written.parameters, "");
      fig("folder size", written.bytes / MiB, "MiB");

      // Forward + backward in one process: the folder in f32 on the host and the model's pool.
      const lora = planOf(shape, "lora", 1);
      const fbNeed = lora.host.weights + lora.worker.total;
      if (!parts.includes("fwdbwd")) {
        // Not asked for (SCALE_PARTS).
      } else if (fbNeed > available()) {
        skip("forward+backward", `needs ${formatBytes(fbNeed)}, ${formatBytes(available())} free`);
      } else {
        const fb = await measure("forward+backward", "fwdbwd", {
          model: dir,
          rows: 1,
          seq: SEQ,
          rank: RANK,
          reps: key === "1b" ? 1 : 3,
        });
        if (fb !== null) {
          const f = fb.figures as Record<string, number>;
          fig("read folder to f32 (one process)", f.readMs / 1e3, "s");
          fig(`forward+backward 1x${SEQ}, first (cold) step`, f.warmMs / 1e3, "s");
          fig(`forward+backward 1x${SEQ}, r${RANK} x7`, f.ms / 1e3, "s");
          fig(`forward+backward 1x${SEQ} throughput`, f.tokensPerS, "tokens/s");
          fig("device pool, measured", f.poolBytes / MiB, "MiB");
          fig("device pool, plan (same buffers)", f.planModelBytes / MiB, "MiB");
          fig("forward+backward process peak RSS", fb.peaks.main / MiB, "MiB");
        }
      }

      // One HD-PiSSA step at K = 2 (K = 1 for a shape whose K = 2 does not fit now), before
      // the loads: at 1B it is the figure that matters most.
      const hdStep = async () => {
        let workers = K;
        let plan = planOf(shape, "hd-pissa", workers);
        // What the job checks (and refuses with MemoryPlanError over the host's total memory).
        fig(
          `HD-PiSSA K=${K}: job's plan on the host (driver + ${K} workers)`,
          hostNeed(plan) / MiB,
          "MiB",
        );
        const why = (p: MemoryPlan) =>
          `the plan needs ${formatBytes(hostNeed(p))} of host memory, ` +
          `${formatBytes(available())} available now: not run`;
        if (hostNeed(plan) > available()) {
          skip(`HD-PiSSA step at K=${K}`, why(plan));
          workers = 1;
          plan = planOf(shape, "hd-pissa", workers);
          if (hostNeed(plan) > available()) {
            skip("HD-PiSSA step at K=1", why(plan));
            return;
          }
        }
        const r = await measure(`HD-PiSSA step at K=${workers}`, "job", {
          model: dir,
          data,
          eval: null,
          out: `${root}/out-${key}-hd`,
          method: "hd-pissa",
          workers,
          rank: RANK,
          batchSize: workers,
          microBatch: 1,
          seqLen: SEQ,
          svd: "randomized",
          warmupRatio: 0,
          checkpointEvery: 0,
          steps: 1,
        });
        if (r === null) return;
        if (typeof r.figures.refused === "string") {
          skip(`HD-PiSSA step at K=${workers}`, `MemoryPlanError: ${r.figures.refused}`);
          return;
        }
        const step = (r.figures.steps as Record<string, number>[])[0];
        const p = r.figures.plan as MemoryPlan;
        const tag = `HD-PiSSA K=${workers}`;
        fig(`${tag}: setup (read, load, SVD init)`, (r.figures.setupMs as number) / 1e3, "s");
        fig(`${tag}: step time`, step.ms / 1e3, "s");
        fig(`${tag}: step compute (fwd+bwd+optimizer)`, step.compute_ms / 1e3, "s");
        fig(`${tag}: step update`, step.update_ms / 1e3, "s");
        fig(`${tag}: loss`, step.loss, "");
        fig(`${tag}: driver peak RSS`, r.peaks.main / MiB, "MiB");
        fig(`${tag}: driver plan (host)`, p.host.total / MiB, "MiB");
        fig(`${tag}: largest worker peak RSS`, (r.peaks.nodes[0] ?? NaN) / MiB, "MiB");
        fig(`${tag}: worker plan (device, in host memory)`, p.worker.total / MiB, "MiB");
        fig(
          `${tag}: worker plan (device + process's host memory)`,
          (p.worker.total + (p.host.worker?.total ?? 0)) / MiB,
          "MiB",
        );
        fig(`${tag}: all processes, plan`, hostNeed(p) / MiB, "MiB");
        fig(
          `${tag}: all processes, measured peaks (sum)`,
          sumPeaks(r.peaks) / MiB,
          "MiB",
        );
        if (r.peaks.nats.length > 0) {
          fig(`${tag}: nats-server peak RSS`, r.peaks.nats[0] / MiB, "MiB");
        }
      };
      if (parts.includes("step")) await hdStep();

      // Loading W into K workers: folder vs object store (LoRA: the setup is the load).
      for (const via of parts.includes("load") ? ["auto", "store"] as const : []) {
        const label = via === "auto" ? "folder" : "object store";
        // K = 2 where it fits now, else one worker.
        let lk = K;
        if (hostNeed(planOf(shape, "lora", lk, via)) > available()) lk = 1;
        const lp = planOf(shape, "lora", lk, via);
        const need = hostNeed(lp);
        if (need > available()) {
          skip(
            `load W via ${label}`,
            `needs ${formatBytes(need)}, ${formatBytes(available())} available`,
          );
          continue;
        }
        const r = await measure(`load W via ${label}`, "job", {
          model: dir,
          data,
          eval: null,
          out: `${root}/out-${key}-${via}`,
          method: "lora",
          workers: lk,
          rank: RANK,
          batchSize: lk,
          microBatch: 1,
          seqLen: SEQ,
          loadVia: via,
          checkpointEvery: 0,
          steps: 0,
        });
        if (r === null) continue;
        fig(
          `load W into ${lk} worker(s) via ${label} (job setup)`,
          (r.figures.setupMs as number) / 1e3,
          "s",
        );
        fig(`load via ${label}: driver peak RSS`, r.peaks.main / MiB, "MiB");
        fig(`load via ${label}: driver plan (host)`, lp.host.total / MiB, "MiB");
        r.peaks.nodes.forEach((b, i) =>
          fig(
            `load via ${label}: worker peak RSS (${i + 1} of ${lk}, largest first)`,
            b / MiB,
            "MiB",
          )
        );
        fig(
          `load via ${label}: worker plan (device + process's host memory)`,
          (lp.worker.total + (lp.host.worker?.total ?? 0)) / MiB,
          "MiB",
        );
        fig(
          `load via ${label}: all processes, measured peaks (sum)`,
          sumPeaks(r.peaks) / MiB,
          "MiB",
        );
        fig(`load via ${label}: all processes, plan`, hostNeed(lp) / MiB, "MiB");
        if (r.peaks.nats.length > 0) {
          fig(`load via ${label}: nats-server peak RSS`, r.peaks.nats[0] / MiB, "MiB");
        }
        fig(`load via ${label}: nats-server plan`, (lp.host.server ?? 0) / MiB, "MiB");
        // The driver's own count of the bytes of W it held for the object store (one chunk at a
        // time), against the plan's serialized term.
        const ws = r.figures.weightsStore as { chunks: number; peakBytes: number } | undefined;
        if (via === "store" && ws) {
          fig(`load via ${label}: chunks put`, ws.chunks, "");
          fig(
            `load via ${label}: driver's most chunk bytes held at once`,
            ws.peakBytes / MiB,
            "MiB",
          );
          fig(`load via ${label}: plan's serialized (driver)`, lp.host.serialized / MiB, "MiB");
        }
      }

      await Deno.remove(dir, { recursive: true });
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}
