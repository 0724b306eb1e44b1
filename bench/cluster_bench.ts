/**
 * Several hosts for real: the figures of tests/multihost_*_test.ts, measured on hosts made as
 * Linux network namespaces (tests/support/netns.ts: a nats-server per host in one cluster, a
 * node per GPU host, the finetune CLI on the driver's host), next to the same run on one host.
 *
 * - step time (median over the steps after the first) and payload bytes a worker sends and
 *   receives per step, one host vs across hosts, and the bytes on the wire per step at one GPU
 *   host's server (its node's connections, NATS framing included);
 * - recovery from each fault of the tests: a GPU host's link cut for 3 s, the object store's
 *   stream leader killed, a whole GPU host killed (spare host), the driver's host killed and
 *   `--resume` from another host;
 * - actor calls per second, one caller to one actor: on one host, and from the bridge (an
 *   operator's machine) to an actor on a GPU host, through two servers of the cluster.
 *
 * Needs root (`ip netns`), like the tests. Each figure is one run on this machine's CPU (lavapipe),
 * so the times are those of the tiny model under load, not of GPUs.
 *
 *   deno task bench cluster
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { init, type System } from "../runtime/mod.ts";
import { connectNats } from "../runtime/connect.ts";
import type { Report } from "./figure.ts";
import { BenchActor } from "./runtime_bench.ts";
import { newTag, tapCalls, type TestServer, waitUntil } from "../tests/support/faults.ts";
import {
  driverRun,
  oneHostRun,
  startTrainingLab,
  type TrainingLab,
} from "../tests/support/multihost.ts";
import { requireNetns } from "../tests/support/netns.ts";
import { writeTinySetup } from "../tests/support/tiny_run.ts";

const STEPS = 8;
const CKPT = ["--checkpoint-every", "2"];
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

interface RunFigures {
  stepMs: number;
  sent: number;
  received: number;
}

async function figuresOf(out: string): Promise<RunFigures> {
  const r = JSON.parse(await Deno.readTextFile(`${out}/report.json`));
  const steps = r.steps.slice(1) as { ms: number; bytes_sent: number; bytes_received: number }[];
  return {
    stepMs: median(steps.map((s) => s.ms)),
    sent: median(steps.map((s) => s.bytes_sent)),
    received: median(steps.map((s) => s.bytes_received)),
  };
}

/** Bytes in and out of the client connections of `s` (the host's node, its heartbeat). */
async function clientBytes(s: TestServer): Promise<number> {
  const connz = await (await fetch(`${s.http}/connz`)).json();
  let n = 0;
  for (const c of connz.connections ?? []) n += c.in_bytes + c.out_bytes;
  return n;
}

async function withLab<T>(
  tag: string,
  gpus: number,
  nodes: number,
  body: (t: TrainingLab, nc: Awaited<ReturnType<typeof connectNats>>) => Promise<T>,
): Promise<T> {
  const t = await startTrainingLab(tag, gpus, {
    nodes,
    nodeArgs: ["--allow-module", new URL("./", import.meta.url).href],
  });
  try {
    const nc = await connectNats(t.servers.map((s) => s.url), { user: t.user, pass: t.pass });
    try {
      return await body(t, nc);
    } finally {
      await nc.close();
    }
  } finally {
    await t.stop();
  }
}

function check(r: { code: number; stderr: string }, what: string) {
  if (r.code !== 0) throw new Error(`${what} failed:\n${r.stderr}`);
}

/** Sequential calls per second from `system` to one BenchActor placed by `where`. */
async function callsPerSecond(system: System, node: string): Promise<number> {
  const actor = await system.spawn(BenchActor, {}, { node });
  for (let i = 0; i < 200; i++) await actor.inc();
  const n = 3000;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) await actor.inc();
  const rate = n / ((performance.now() - t0) / 1000);
  await system.stop(actor);
  return rate;
}

export async function run(report: Report): Promise<void> {
  requireNetns();
  const dir = await Deno.makeTempDir({ prefix: "hd-bench-cluster-" });
  const tag = newTag();
  try {
    await writeTinySetup(dir);
    const one = await figuresOf(await oneHostRun(dir, STEPS));

    // One run across hosts, with the bytes at gpu1's server between steps 1 and STEPS - 1.
    let wire = NaN;
    const across = await withLab(tag, 2, 2, async (t, nc) => {
      const marks: Promise<number>[] = [];
      const stop = tapCalls({ name: "default", nc }, (c) => {
        const step = (c.value as { step?: number }).step;
        if (c.method !== "step" || marks.length >= 2) return;
        if ((step === 1 && marks.length === 0) || (step === STEPS - 1 && marks.length === 1)) {
          marks.push(clientBytes(t.servers[1]));
        }
      });
      const out = `${dir}/across`;
      check(await driverRun(t, dir, out, STEPS), "the run across hosts");
      stop();
      const [a, b] = await Promise.all(marks);
      wire = (b - a) / (STEPS - 2);
      return await figuresOf(out);
    });
    report({ name: "step time, one host (median)", value: one.stepMs, unit: "ms" });
    report({ name: "step time, 3 hosts (median)", value: across.stepMs, unit: "ms" });
    report({ name: "payload sent per step per worker, one host", value: one.sent, unit: "B" });
    report({ name: "payload sent per step per worker, 3 hosts", value: across.sent, unit: "B" });
    report({
      name: "payload received per step per worker, one host",
      value: one.received,
      unit: "B",
    });
    report({
      name: "payload received per step per worker, 3 hosts",
      value: across.received,
      unit: "B",
    });
    report({ name: "bytes on the wire per step, gpu1's node (both ways)", value: wire, unit: "B" });

    // A GPU host's link cut at step 3: for 0.5 s (no node taken for dead: the step is slower),
    // and for 3 s (a rollback: until the replayed steps start).
    for (const cutMs of [500, 3000]) {
      await withLab(newTag(), 2, 2, async (t, nc) => {
        let cutAt = 0;
        let resumedAt = 0;
        let restored: Promise<void> | undefined;
        const stop = tapCalls({ name: "default", nc }, (c) => {
          const step = (c.value as { step?: number }).step;
          // A worker's step call (the driver's own `step` calls carry no step number).
          if (c.method !== "step" || typeof step !== "number") return;
          if (!cutAt && step === 3) {
            cutAt = performance.now();
            restored = t.lab.cut(t.gpus[0]).then(() => new Promise((r) => setTimeout(r, cutMs)))
              .then(() => t.lab.restore(t.gpus[0]));
          } else if (cutAt && !resumedAt && step < 3) resumedAt = performance.now();
        });
        const out = `${dir}/cut${cutMs}`;
        const r = await driverRun(t, dir, out, STEPS, CKPT);
        stop();
        await restored;
        const name = `link cut ${cutMs / 1000} s`;
        if (r.code !== 0) {
          const why = /^finetune: (.*)$/m.exec(r.stderr)?.[1] ?? `exit ${r.code}`;
          report({ name, value: NaN, unit: "ms", note: `run failed: ${why.slice(0, 90)}` });
        } else if (resumedAt) {
          report({ name: `${name}: cut → replay starts`, value: resumedAt - cutAt, unit: "ms" });
        } else {
          const steps = JSON.parse(await Deno.readTextFile(`${out}/report.json`)).steps;
          report({ name: `${name}: step 3 time (no rollback)`, value: steps[3].ms, unit: "ms" });
        }
      });
    }

    // The object store's stream leader killed at step 1: until a new leader is reported.
    await withLab(newTag(), 2, 2, async (t, nc) => {
      const jsm = await jetstreamManager(nc);
      let elected: Promise<number> | undefined;
      const stop = tapCalls({ name: "default", nc }, (c) => {
        if (elected || c.method !== "step" || (c.value as { step?: number }).step !== 1) return;
        elected = (async () => {
          const leader = (await jsm.streams.info("OBJ_actors_default")).cluster?.leader;
          const i = t.lab.hosts.findIndex((h) => h.name === leader);
          const t0 = performance.now();
          await t.servers[i].kill("SIGKILL");
          await waitUntil("a new leader", async () => {
            const l = await jsm.streams.info("OBJ_actors_default").then(
              (s) => s.cluster?.leader,
              () => undefined,
            );
            return l !== undefined && l !== leader;
          }, 60_000);
          return performance.now() - t0;
        })();
      });
      check(await driverRun(t, dir, `${dir}/leader`, STEPS, CKPT), "the run losing the leader");
      stop();
      report({
        name: "object store leader killed: kill → new leader",
        value: await elected!,
        unit: "ms",
      });
    });

    // A whole GPU host killed at step 3, a spare host ready: until the replayed steps start.
    await withLab(newTag(), 3, 2, async (t, nc) => {
      let killedAt = 0;
      let resumedAt = 0;
      const stop = tapCalls({ name: "default", nc }, (c) => {
        const step = (c.value as { step?: number }).step;
        if (c.method === "load" && t.nodes.length === 2) t.startNode(t.gpus[2]);
        if (c.method !== "step" || typeof step !== "number") return;
        if (!killedAt && step === 3) {
          killedAt = performance.now();
          t.lab.killHost(t.gpus[0]);
        } else if (killedAt && !resumedAt && step < 3) resumedAt = performance.now();
      });
      check(await driverRun(t, dir, `${dir}/hostkill`, STEPS, CKPT), "the run losing a host");
      stop();
      report({
        name: "GPU host killed (spare host): kill → replay starts",
        value: resumedAt ? resumedAt - killedAt : NaN,
        unit: "ms",
        ...(resumedAt ? {} : { note: "no replay seen" }),
      });
    });

    // The driver's host killed at step 3; --resume from gpu3: until its first step call.
    await withLab(newTag(), 3, 2, async (t, nc) => {
      let killed = false;
      let resumeStart = 0;
      let firstStep = 0;
      const stop = tapCalls({ name: "default", nc }, (c) => {
        if (c.method !== "step" || typeof (c.value as { step?: number }).step !== "number") return;
        if (!killed && (c.value as { step?: number }).step === 3) {
          killed = true;
          t.lab.killHost(t.driver);
        } else if (resumeStart && !firstStep) firstStep = performance.now();
      });
      const out = `${dir}/dkill`;
      await driverRun(t, dir, out, STEPS, CKPT);
      resumeStart = performance.now();
      check(
        await driverRun(t, dir, out, STEPS, [...CKPT, "--resume", out], t.env, t.gpus[2]),
        "the resumed run",
      );
      const total = performance.now() - resumeStart;
      stop();
      report({
        name: "driver's host killed: --resume start → first step",
        value: firstStep - resumeStart,
        unit: "ms",
      });
      report({ name: "driver's host killed: --resume run, whole", value: total, unit: "ms" });
    });

    // Calls per second: one host, and from the bridge to an actor on gpu1.
    const local = await init({ nodes: 1 });
    try {
      report({
        name: "actor calls/s, sequential, one host",
        value: Math.round(await callsPerSecond(local, local.localNodes[0].id)),
        unit: "calls/s",
      });
    } finally {
      await local.shutdown();
    }
    await withLab(newTag(), 2, 1, async (t) => {
      const system = await init({
        nats: [t.servers[0].url],
        user: t.user,
        pass: t.pass,
      });
      try {
        report({
          name: "actor calls/s, sequential, bridge → drv's server → gpu1",
          value: Math.round(await callsPerSecond(system, "gpu1")),
          unit: "calls/s",
        });
      } finally {
        await system.shutdown();
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
