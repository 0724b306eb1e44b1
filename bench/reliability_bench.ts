/**
 * Reliability figures, measured on real processes with the tiny model of the tests (the
 * pass/fail checks, bit-exact comparisons included, are the tests: tests/reliability_*,
 * tests/security_*, tests/soak_*; bench/reliability.md has the table):
 *
 * - a worker's node SIGKILLed mid-step: time until the driver's process knows (the node is its
 *   child: its exit is seen at once), until the worker runs again (restarted on a fresh node on
 *   this host), until training goes on (the first step call of the new generation);
 * - a worker's node SIGSTOPped mid-step: time until it counts as dead (3 missed heartbeats of
 *   500 ms: the only sign a frozen or unreachable host gives);
 * - the nats-server a worker is connected to SIGKILLed (3-server cluster): time until the
 *   worker's node has reconnected and said so;
 * - the driver (the CLI) SIGKILLed: time until its nats-server and nodes have exited;
 * - calls against full mailboxes: throughput and the share refused.
 *
 * Each fault is repeated (REPS) and reported as the median.
 */
import type { Report } from "./figure.ts";
import { percentile } from "./figure.ts";
import { runFinetune } from "../actors/job.ts";
import { init, MailboxFullError, type System } from "../runtime/mod.ts";
import { tinyOptions, writeTinySetup } from "../tests/support/tiny_run.ts";
import {
  CONFIG,
  expendableServer,
  FINETUNE,
  type HandNode,
  leftovers,
  newTag,
  nodeOf,
  startCluster,
  startHandNode,
  TAG_ENV,
  tapCalls,
  type TestServer,
  tinyArgs,
  waitUntil,
  within,
} from "../tests/support/faults.ts";
import { Ledger } from "../tests/support/ledger_actor.ts";

const REPS = 3;
const quiet = { log: () => {}, isTty: false, progress: () => {} };
const median = (xs: number[]) => percentile(xs, 50);

interface WorkerFault {
  noticed: number;
  restarted: number;
  resumed: number;
}

/** One tiny run in which worker 1's node gets `signal` as its step-3 call goes by. */
async function workerFault(dir: string, signal: "SIGKILL" | "SIGSTOP"): Promise<WorkerFault> {
  let struck = 0;
  let frozen = 0;
  const at: Partial<WorkerFault> = {};
  const stops: (() => void)[] = [];
  const o = tinyOptions(dir, {
    out: `${dir}/w-${crypto.randomUUID()}`,
    eval: null,
    maxSteps: 6,
    checkpointEvery: 2,
  });
  try {
    await within(
      runFinetune(o, {
        ...quiet,
        onSystem: (system: System) => {
          system.on((e) => {
            if (!struck) return;
            const now = performance.now() - struck;
            if (e.type === "actor_down" && e.actor.id.endsWith("-w1")) at.noticed ??= now;
            if (e.type === "actor_up" && e.actor.id.endsWith("-w1") && e.actor.inc > 0) {
              at.restarted ??= now;
              if (frozen) Deno.kill(frozen, "SIGCONT");
              frozen = 0;
            }
          });
          stops.push(tapCalls(system, (c) => {
            const v = c.value as { step?: number; generation?: number };
            if (c.method !== "step") return;
            if (struck && v.generation === 1) at.resumed ??= performance.now() - struck;
            if (struck || !c.actor.endsWith("-w1") || v.step !== 3) return;
            const node = nodeOf(system, c.actor)!;
            struck = performance.now();
            if (signal === "SIGSTOP") frozen = node.pid;
            Deno.kill(node.pid, signal);
          }));
        },
      }),
      120_000,
      "a run with a worker fault",
    );
  } finally {
    if (frozen) Deno.kill(frozen, "SIGCONT");
    stops.forEach((f) => f());
    await Deno.remove(o.out, { recursive: true }).catch(() => {});
  }
  return at as WorkerFault;
}

/** A 3-server cluster; the server worker node "hostA" is on is killed at step 3. */
async function serverFault(dir: string): Promise<number> {
  const tag = newTag();
  const servers: TestServer[] = [];
  const nodes: HandNode[] = [];
  try {
    servers.push(...await startCluster(tag));
    const victim = await expendableServer(servers);
    const [home, third] = servers.filter((s) => s !== victim);
    nodes.push(startHandNode({ urls: victim.url, id: "hostA", tag, quiet: true }));
    nodes.push(startHandNode({ urls: third.url, id: "hostB", tag, quiet: true }));
    let killedAt = 0;
    let reconnected = 0;
    let stop = () => {};
    await within(
      runFinetune(
        tinyOptions(dir, {
          out: `${dir}/c-${crypto.randomUUID()}`,
          eval: null,
          maxSteps: 6,
          nats: `${home.url},${third.url}`,
        }),
        {
          ...quiet,
          onSystem: (system) => {
            system.on((e) => {
              if (e.type === "node_reconnected" && e.node === "hostA" && killedAt) {
                reconnected ||= performance.now() - killedAt;
              }
            });
            stop = tapCalls(system, (c) => {
              const v = c.value as { step?: number };
              if (killedAt || c.method !== "step" || v.step !== 3) return;
              if (system.actors().find((a) => a.id === c.actor)?.node !== "hostA") return;
              killedAt = performance.now();
              victim.kill("SIGKILL");
            });
          },
        },
      ),
      120_000,
      "a run on the cluster",
    );
    stop();
    return reconnected;
  } finally {
    await Promise.all(nodes.map((n) => n.stop()));
    await Promise.all(servers.map((s) => s.kill()));
    await leftovers(tag);
  }
}

/** The CLI killed right after its first checkpoint; ms until all its processes are gone. */
async function driverFault(dir: string): Promise<number> {
  const tag = newTag();
  const out = `${dir}/d-${crypto.randomUUID()}`;
  const cli = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      `--config=${CONFIG}`,
      FINETUNE,
      ...tinyArgs(dir, out, 8, ["--checkpoint-every", "2"]),
    ],
    env: { [TAG_ENV]: tag },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  await waitUntil("a checkpoint", () => {
    try {
      Deno.statSync(`${out}/checkpoints/step-000001/state.json`);
      return true;
    } catch {
      return false;
    }
  }, 120_000);
  cli.kill("SIGKILL");
  await cli.status;
  const t0 = performance.now();
  await leftovers(tag);
  const ms = performance.now() - t0;
  await Deno.remove(out, { recursive: true }).catch(() => {});
  return ms;
}

async function soak(): Promise<{ rate: number; refused: number }> {
  const system = await init({ nodes: 2 });
  try {
    const total = 64 * 200;
    const actors = await Promise.all(
      [0, 1, 2].map((i) =>
        system.spawn(Ledger, { ids: total }, {
          node: system.localNodes[i % 2].id,
          mailbox: 8,
        })
      ),
    );
    let next = 0;
    let refused = 0;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 64 }, async (_, c) => {
      for (let i = 0; i < 200; i++) {
        const id = next++;
        try {
          await actors[(c + i) % 3].take({ id, ms: (id % 3) / 2 }, {
            timeoutMs: 60_000,
            failFast: true, // refused at once, as counted here, rather than held back
          });
        } catch (e) {
          if (!(e instanceof MailboxFullError)) throw e;
          refused++;
          await new Promise((r) => setTimeout(r, 5));
        }
      }
    }));
    return { rate: total / ((performance.now() - t0) / 1000), refused: refused / total };
  } finally {
    await system.shutdown();
  }
}

export async function run(report: Report): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "hd-rel-bench-" });
  try {
    await writeTinySetup(dir);
    const kills: WorkerFault[] = [];
    const stops: WorkerFault[] = [];
    for (let i = 0; i < REPS; i++) kills.push(await workerFault(dir, "SIGKILL"));
    for (let i = 0; i < REPS; i++) stops.push(await workerFault(dir, "SIGSTOP"));
    report({
      name: "worker SIGKILL: death noticed (node exit)",
      value: median(kills.map((k) => k.noticed)),
      unit: "ms",
    });
    report({
      name: "worker SIGKILL: worker running again (fresh node)",
      value: median(kills.map((k) => k.restarted)),
      unit: "ms",
    });
    report({
      name: "worker SIGKILL: training resumed (rolled back)",
      value: median(kills.map((k) => k.resumed)),
      unit: "ms",
    });
    report({
      name: "worker SIGSTOP: death noticed (3 missed heartbeats)",
      value: median(stops.map((k) => k.noticed)),
      unit: "ms",
    });
    report({
      name: "worker SIGSTOP: training resumed",
      value: median(stops.map((k) => k.resumed)),
      unit: "ms",
    });
    const reconnects: number[] = [];
    for (let i = 0; i < REPS; i++) reconnects.push(await serverFault(dir));
    report({
      name: "server SIGKILL: worker's node reconnected",
      value: median(reconnects),
      unit: "ms",
    });
    const cleanups: number[] = [];
    for (let i = 0; i < REPS; i++) cleanups.push(await driverFault(dir));
    report({
      name: "driver SIGKILL: its server and nodes exited",
      value: median(cleanups),
      unit: "ms",
    });
    const s = await soak();
    report({ name: "calls against full mailboxes (64 callers)", value: s.rate, unit: "calls/s" });
    report({ name: "calls refused with MailboxFullError", value: 100 * s.refused, unit: "%" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
