/**
 * A rogue client holding the system's credentials attacks a running job on its own subjects.
 * Each time a worker's step call goes by, it publishes on that step's gather subject, before
 * the worker can (it is still computing): garbage, a truncated frame, an oversized frame, a part
 * announcing a 512 MiB frame, two wrong-schema values, four schema-valid contributions for the
 * right (generation, step, worker): NaN, Inf, too short, and plausible random numbers, and a
 * replay of the worker's genuine contribution to the step before, captured off the wire. On
 * the update subject it publishes the same kinds of garbage plus NaN and plausible updates for
 * the step under way, which reach the workers before the real update.
 *
 * A first-come gather (watched alongside, as a naive driver would use it) takes the forged
 * parts. The job does not: every rogue message is refused and counted (`rejected_messages`),
 * and the final weights are bit-identical to a run without the rogue.
 */
import assert from "node:assert/strict";
import { headers, type NatsConnection } from "@nats-io/nats-core";
import { runFinetune } from "../actors/job.ts";
import { Contribution } from "../actors/messages.ts";
import { getMethod } from "../train/methods/registry.ts";
import { Collectives, type System } from "../runtime/mod.ts";
import { connectNats } from "../runtime/connect.ts";
import { decodeFrame, encodeFrame } from "../runtime/codec.ts";
import { PART_HEADER } from "../runtime/chunks.ts";
import { readReportJson } from "../train/report/report.ts";
import { TINY_CONFIG, tinyOptions, writeTinySetup } from "./support/tiny_run.ts";
import { sameFile, tapCalls } from "./support/faults.ts";

const STEPS = 4;
const K = 2;
const quiet = { log: () => {}, isTty: false, progress: () => {} };

/** Floats of one worker's contribution in the tiny run (hd-pissa, r = 2, every linear). */
const L = getMethod("hd-pissa").layout(TINY_CONFIG, {
  targets: tinyOptions("").targets,
  rank: 2,
}).length;

function random(n: number, scale = 1e-3): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (Math.random() - 0.5) * scale;
  return a;
}

/** A part claiming to start a frame of `total` bytes (the receiver must not allocate it). */
function hugeAnnouncement(nc: NatsConnection, subject: string, total: number) {
  const h = headers();
  h.set(PART_HEADER, `${"ab".repeat(12)} 0 1024 0 1024 ${total}`);
  nc.publish(subject, new Uint8Array(1024), { headers: h });
}

/** Everything the rogue sends on one subject; returns how many messages. */
function garbage(nc: NatsConnection, subject: string, valid: Record<string, unknown>): number {
  const frame = encodeFrame({ k: "bc" }, valid);
  nc.publish(subject, crypto.getRandomValues(new Uint8Array(200))); // not a frame
  nc.publish(subject, frame.subarray(0, frame.length >> 1)); // truncated
  nc.publish(subject, encodeFrame({ k: "bc" }, { ...valid, data: random(40 * L * K) })); // too big
  hugeAnnouncement(nc, subject, 512 * 1024 * 1024);
  nc.publish(subject, encodeFrame({ k: "bc" }, { hello: "world" })); // wrong schema
  nc.publish(subject, encodeFrame({ k: "bc" }, { ...valid, data: new Int32Array(L) })); // wrong dtype
  return 6;
}

class Rogue {
  sentGather = 0;
  sentUpdate = 0;
  naiveGathers = 0;
  naiveForged = 0;
  #stop = () => {};
  #pending: Promise<void>[] = [];
  /** The latest genuine contribution of each worker seen on the wire, as sent. */
  #captured = new Map<number, Uint8Array>();

  constructor(readonly nc: NatsConnection, readonly steps: number) {}

  attach(system: System) {
    // Watches on the driver's own connection what a first-come gather would take.
    const naive = new Collectives(system.nc, 1 << 26);
    // This connection does not hear itself (noEcho): every finite contribution of the right
    // size seen here is a worker's.
    const tap = this.nc.subscribe(`actors.${system.name}.app.>`, {
      callback: (err, msg) => {
        const k = /\.delta\.(\d+)$/.exec(msg.subject)?.[1];
        if (err || k === undefined) return;
        try {
          const c = Contribution.parse(decodeFrame(msg.data).value);
          if (c.data.length === L && c.data.every(Number.isFinite)) {
            this.#captured.set(Number(k), msg.data.slice());
          }
        } catch { /* not one */ }
      },
    });
    const seen = new Set<string>();
    this.#stop = tapCalls(system, (c) => {
      if (c.method !== "step") return;
      const v = c.value as { generation: number; step: number; subject: string };
      const k = Number(/-w(\d+)$/.exec(c.actor)![1]);
      // Everything goes out at once, before anything is awaited: the worker is still computing.
      this.#strike(v, k);
      if (seen.has(v.subject)) return;
      seen.add(v.subject);
      // What a first-come gather would take at the next step, subscribed ahead of it.
      if (v.step + 1 < this.steps) {
        const next = v.subject.replace(/\.s\d+\.delta$/, `.s${v.step + 1}.delta`);
        this.#pending.push(this.#watch(naive, next));
      }
    }, this.nc);
    const stopTap = this.#stop;
    this.#stop = () => {
      stopTap();
      tap.unsubscribe();
    };
  }

  #strike(v: { generation: number; step: number; subject: string }, k: number) {
    const { generation, step, subject } = v;
    const me = { generation, step, worker: k };
    const target = `${subject}.${k}`;
    this.sentGather += garbage(this.nc, target, { ...me, data: random(L) });
    for (const data of [random(L).fill(NaN), random(L).fill(Infinity), random(L >> 1), random(L)]) {
      this.nc.publish(target, encodeFrame({ k: "bc" }, { ...me, data }));
      this.sentGather++;
    }
    const replay = this.#captured.get(k);
    if (replay && step > 0) {
      this.nc.publish(target, replay);
      this.sentGather++;
    }
    if (k === 0) {
      const update = subject.replace(/\.g\d+\.s\d+\.delta$/, ".update");
      this.sentUpdate += garbage(this.nc, update, { generation, step, data: random(L * K) });
      for (const data of [random(L * K).fill(NaN), random(L * K)]) {
        this.nc.publish(update, encodeFrame({ k: "bc" }, { generation, step, data }));
        this.sentUpdate++;
      }
    }
  }

  async #watch(naive: Collectives, subject: string) {
    const watch = await naive.gather(subject, K, { schema: Contribution, timeoutMs: 60_000 });
    // The genuine contribution is finite and of length L: anything else taken is forged.
    const parts = await watch.result.catch(() => null);
    if (!parts) return;
    this.naiveGathers++;
    if (parts.some((p) => p.data.length !== L || !p.data.every(Number.isFinite))) {
      this.naiveForged++;
    }
  }

  /** After the run (its server is gone by then: nothing is flushed). */
  async close() {
    this.#stop();
    await Promise.all(this.#pending);
    await this.nc.close();
  }
}

Deno.test("rogue messages on the gather and update subjects are refused and counted; the weights are untouched", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-rogue-" });
  let rogue: Rogue | undefined;
  try {
    await writeTinySetup(dir);
    const clean = tinyOptions(dir, { out: `${dir}/clean`, eval: null, maxSteps: STEPS });
    await runFinetune(clean, quiet);

    const o = tinyOptions(dir, { out: `${dir}/attacked`, eval: null, maxSteps: STEPS });
    let attachDone: Promise<void> = Promise.resolve();
    const [report] = await runFinetune(o, {
      ...quiet,
      onSystem: (system) => {
        attachDone = (async () => {
          const nc = await connectNats([...system.servers], {
            ...system.credentials,
            name: "rogue",
            extra: { noEcho: true },
          });
          rogue = new Rogue(nc, STEPS);
          rogue.attach(system);
        })();
      },
    });
    await attachDone;
    await rogue!.close();
    const r = rogue!;
    const expected = r.sentGather + K * r.sentUpdate;
    const disk = await readReportJson(`${o.out}/report.json`) as { rejected_messages?: number };
    console.log(
      `  rogue sent ${r.sentGather} messages on gather subjects and ${r.sentUpdate} on the ` +
        `update subject (each read by ${K} workers); refused: ${disk.rejected_messages}; a ` +
        `first-come gather took forged parts in ${r.naiveForged} of ${r.naiveGathers} steps`,
    );
    assert.equal(r.naiveGathers, STEPS - 1);
    assert.equal(r.sentGather, STEPS * K * 10 + (STEPS - 1) * K);
    assert.ok(r.naiveForged >= 1, "the forged parts arrive first: the race is real");
    // Each rogue message that reached a receiver is refused and counted; on a loaded machine a
    // few can come after their step is over (nobody listens then), so the count may fall short.
    const refused = disk.rejected_messages ?? 0;
    assert.ok(
      refused <= expected && refused >= 0.9 * expected,
      `refused ${refused} of the ${expected} rogue messages`,
    );
    assert.equal((report as { recoveries?: number }).recoveries, 0);
    assert.ok(
      await sameFile(`${clean.out}/model.safetensors`, `${o.out}/model.safetensors`),
      "the weights equal the clean run's",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
