// Actor runtime benchmark: call latency next to raw NATS request/reply (TCP and WebSocket),
// calls per second (sequential, pipelined, and with thousands in flight against a full mailbox:
// flow control), and tensor throughput (one actor, broadcast to four) next to raw NATS publish
// of the same bytes, all measured in the same run.
//
//   deno task bench runtime
//
// Raw NATS counterparts run in their own processes, like the actors: this file doubles as the
// echo responder and the byte sink (`deno run bench/runtime_bench.ts --serve echo|sink ...`).
import { type NatsConnection, wsconnect } from "@nats-io/nats-core";
import {
  type ActorHandle,
  checksum32,
  connectNats,
  defineActor,
  init,
  type System,
  tensor,
  z,
} from "../internal_mod.ts";
import { percentile, type Report } from "./figure.ts";
import { defineFlags, FlagError } from "../cli/flags.ts";

const CONFIG = new URL("../deno.json", import.meta.url).pathname;
const MiB = 1024 * 1024;

/** The actor side of the benchmark. */
export const BenchActor = defineActor({
  name: "BenchActor",
  module: import.meta.url,
  init: z.object({}),
  create: () => ({
    n: 0,
    receiver: undefined as undefined | { next(t: number): Promise<unknown>; close(): void },
  }),
  methods: {
    echo: { input: tensor("u8"), output: tensor("u8"), handler: (_s, x) => x },
    inc: { input: z.undefined(), output: z.number(), handler: (s) => ++s.n },
    /** Takes a big tensor; answers with its size. */
    take: {
      input: z.object({ data: tensor("f32") }),
      output: z.number(),
      handler: (_s, x) => x.data.byteLength,
    },
    listen: {
      input: z.object({ subject: z.string() }),
      output: z.boolean(),
      handler: async (s, x, ctx) => {
        s.receiver = await ctx.collectives.subscribe(x.subject, {
          schema: z.object({ data: tensor("f32") }),
        });
        return true;
      },
    },
    received: {
      input: z.undefined(),
      output: z.number(),
      handler: async (s) => {
        const r = s.receiver!;
        const { value } = (await r.next(120_000)) as { value: { data: Float32Array } };
        r.close();
        return value.data.byteLength;
      },
    },
  },
});

function stats(samples: number[]) {
  return { p50: percentile(samples, 50), p99: percentile(samples, 99) };
}

async function timeRequests(nc: NatsConnection, subject: string, payload: Uint8Array, n: number) {
  for (let i = 0; i < Math.min(50, n); i++) await nc.request(subject, payload, { timeout: 10_000 });
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await nc.request(subject, payload, { timeout: 10_000 });
    samples.push(performance.now() - t);
  }
  return stats(samples);
}

async function timeCalls(h: ActorHandle<typeof BenchActor>, payload: Uint8Array, n: number) {
  for (let i = 0; i < Math.min(50, n); i++) await h.echo(payload);
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await h.echo(payload);
    samples.push(performance.now() - t);
  }
  return stats(samples);
}

function startHelper(mode: "echo" | "sink", url: string, creds: object, extra: string[] = []) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      `--config=${CONFIG}`,
      new URL(import.meta.url).pathname,
      "--serve",
      mode,
      "--url",
      url,
      ...extra,
    ],
    env: { BENCH_CREDS: JSON.stringify(creds) },
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const ready = (async () => {
    const r = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let s = "";
    while (!s.includes("ready")) {
      const { value, done } = await r.read();
      if (done) throw new Error(`${mode} helper exited`);
      s += value;
    }
    r.releaseLock();
  })();
  return {
    ready,
    async stop() {
      await child.stdin.close().catch(() => {});
      await child.stdout.cancel().catch(() => {});
      await child.status;
    },
  };
}

/** Publishes `bytes` in max_payload-sized messages, the way the runtime chunks, plus an end marker. */
async function rawPublish(nc: NatsConnection, subject: string, bytes: Uint8Array) {
  const size = (nc.info?.max_payload ?? MiB) - 1024;
  for (let o = 0; o < bytes.byteLength; o += size) {
    nc.publish(subject, bytes.subarray(o, Math.min(bytes.byteLength, o + size)));
  }
  await nc.flush();
}

async function rawThroughput(
  nc: NatsConnection,
  sinks: number,
  bytes: Uint8Array,
  subject: string,
): Promise<number> {
  const done = nc.subscribe(`${subject}.done`, { max: sinks });
  const got = (async () => {
    let n = 0;
    for await (const _ of done) if (++n === sinks) return;
  })();
  await nc.flush();
  const t = performance.now();
  await rawPublish(nc, `${subject}.data`, bytes);
  await got;
  return performance.now() - t;
}

/**
 * `callers` processes' worth of callers (systems joined by URL: each its own connection and
 * flow control), each with `perCaller` calls in flight at once to one actor whose mailbox holds
 * 1,024. Returns calls per second, the refusals along the way (each call held back and sent
 * again), and the peak resident size of this process (the callers) over its size before.
 */
async function flowSoak(system: System, node: string, callers: number, perCaller: number) {
  const server = system.server!;
  const joined: System[] = [];
  const actor = await system.spawn(BenchActor, {}, { node, mailbox: 1024 });
  try {
    for (let i = 0; i < callers; i++) {
      joined.push(await init({ nats: server.url, ...server.credentials }));
    }
    const handles = joined.map((s) => s.handle(BenchActor, actor.ref));
    await Promise.all(handles.map((h) => h.inc())); // each caller has found the actor
    const refused0 = joined.reduce((x, s) => x + s.stats.refused, 0);
    const before = Deno.memoryUsage().rss;
    let peak = before;
    const sampler = setInterval(() => peak = Math.max(peak, Deno.memoryUsage().rss), 20);
    const t0 = performance.now();
    try {
      await Promise.all(
        handles.map((h) =>
          Promise.all(
            Array.from({ length: perCaller }, () => h.inc(undefined, { timeoutMs: 120_000 })),
          )
        ),
      );
    } finally {
      clearInterval(sampler);
    }
    const seconds = (performance.now() - t0) / 1000;
    peak = Math.max(peak, Deno.memoryUsage().rss);
    const calls = callers * perCaller;
    return {
      rate: calls / seconds,
      refused: (joined.reduce((x, s) => x + s.stats.refused, 0) - refused0) / calls,
      peakMiB: peak / MiB,
      growthMiB: (peak - before) / MiB,
    };
  } finally {
    for (const s of joined) await s.shutdown();
    await system.stop(actor);
  }
}

export async function run(report: Report) {
  const system = await init({ nodes: 4 });
  const extra: System[] = [];
  const helpers: { stop(): Promise<void> }[] = [];
  try {
    const server = system.server!;
    const creds = server.credentials;
    const [n0, n1, n2, n3] = system.localNodes.map((n) => n.id);
    const actor = await system.spawn(BenchActor, {}, { node: n0, name: "bench" });

    // Latency: raw request/reply and actor calls, TCP.
    const echo = startHelper("echo", server.url, creds);
    helpers.push(echo);
    await echo.ready;
    const rawTcp = await connectNats(server.url, creds);
    for (const size of [64, 1024]) {
      const payload = crypto.getRandomValues(new Uint8Array(size));
      const raw = await timeRequests(rawTcp, "bench.echo", payload, 2000);
      const act = await timeCalls(actor, payload, 2000);
      const label = size === 64 ? "64 B" : "1 KiB";
      report({ name: `raw NATS request/reply ${label}, TCP, p50`, value: raw.p50, unit: "ms" });
      report({ name: `raw NATS request/reply ${label}, TCP, p99`, value: raw.p99, unit: "ms" });
      report({ name: `actor call ${label}, TCP, p50`, value: act.p50, unit: "ms" });
      report({ name: `actor call ${label}, TCP, p99`, value: act.p99, unit: "ms" });
      report({ name: `actor call / raw, ${label}, TCP, p50`, value: act.p50 / raw.p50, unit: "x" });
    }

    // Latency over WebSocket: the npm `ws` socket (Nagle off) and, for contrast, Deno's own.
    const rawWs = await connectNats(server.wsUrl!, creds);
    const wsSystem = await init({ nats: server.wsUrl, ...creds });
    extra.push(wsSystem);
    const wsActor = await wsSystem.getActor(BenchActor, "bench");
    const denoWs = await wsconnect({ servers: server.wsUrl, ...creds });
    for (const size of [64, 1024]) {
      const payload = crypto.getRandomValues(new Uint8Array(size));
      const label = size === 64 ? "64 B" : "1 KiB";
      const raw = await timeRequests(rawWs, "bench.echo", payload, 1000);
      const act = await timeCalls(wsActor, payload, 1000);
      const slow = await timeRequests(denoWs, "bench.echo", payload, 20);
      report({
        name: `raw NATS request/reply ${label}, WS (ws socket), p50`,
        value: raw.p50,
        unit: "ms",
      });
      report({ name: `actor call ${label}, WS (ws socket), p50`, value: act.p50, unit: "ms" });
      report({ name: `actor call ${label}, WS (ws socket), p99`, value: act.p99, unit: "ms" });
      report({
        name: `raw NATS request/reply ${label}, WS (Deno WebSocket), p50`,
        value: slow.p50,
        unit: "ms",
      });
    }
    await denoWs.close();
    await rawWs.close();

    // Calls per second, one caller to one actor.
    const seqN = 5000;
    for (let i = 0; i < 200; i++) await actor.inc();
    let t = performance.now();
    for (let i = 0; i < seqN; i++) await actor.inc();
    report({
      name: "actor calls/s, sequential",
      value: Math.round(seqN / ((performance.now() - t) / 1000)),
      unit: "calls/s",
    });
    const pipeN = 20_000;
    const window = 256;
    t = performance.now();
    let next = 0;
    await Promise.all(Array.from({ length: window }, async () => {
      while (next < pipeN) {
        next++;
        await actor.inc();
      }
    }));
    report({
      name: `actor calls/s, pipelined (${window} in flight)`,
      value: Math.round(pipeN / ((performance.now() - t) / 1000)),
      unit: "calls/s",
    });

    // Flow control: thousands of calls in flight against a mailbox of 1,024.
    for (const callers of [1, 10]) {
      const f = await flowSoak(system, n1, callers, 5000);
      const label = `${callers} × 5,000 calls in flight, mailbox 1,024`;
      report({ name: `actor calls/s, ${label}`, value: Math.round(f.rate), unit: "calls/s" });
      report({ name: `calls refused and sent again, ${label}`, value: 100 * f.refused, unit: "%" });
      report({ name: `callers' peak resident size, ${label}`, value: f.peakMiB, unit: "MiB" });
      report({ name: `callers' resident growth, ${label}`, value: f.growthMiB, unit: "MiB" });
    }

    // Tensor throughput: 64 MiB to one actor, next to raw publish of the same bytes.
    const data = new Float32Array(16 * MiB);
    const u = new Uint32Array(data.buffer);
    for (let i = 0; i < u.length; i += 16384) crypto.getRandomValues(u.subarray(i, i + 16384));
    const bytes = new Uint8Array(data.buffer);
    const mb = data.byteLength / 1e6;
    const median = (xs: number[]) => percentile(xs, 50);
    // The machine is shared and noisy: actor and raw runs alternate, and each figure is a median.
    const reps = 7;
    const sink = startHelper("sink", server.url, creds, [
      "--bytes",
      String(bytes.byteLength),
      "--subject",
      "bench.one",
    ]);
    helpers.push(sink);
    await sink.ready;
    await actor.take({ data }, { timeoutMs: 120_000 }); // warm-up
    await rawThroughput(rawTcp, 1, bytes, "bench.one");
    const one: number[] = [];
    const rawOneRuns: number[] = [];
    for (let i = 0; i < reps; i++) {
      t = performance.now();
      await actor.take({ data }, { timeoutMs: 120_000 });
      one.push(mb / ((performance.now() - t) / 1000));
      rawOneRuns.push(mb / ((await rawThroughput(rawTcp, 1, bytes, "bench.one")) / 1000));
    }
    await sink.stop();
    const oneActor = median(one);
    const rawOne = median(rawOneRuns);
    report({ name: "64 MiB tensor to one actor", value: oneActor, unit: "MB/s" });
    report({ name: "raw NATS publish of 64 MiB to one subscriber", value: rawOne, unit: "MB/s" });
    report({ name: "tensor to one actor / raw", value: (100 * oneActor) / rawOne, unit: "%" });

    // Broadcast to four actors (one per node), next to raw publish to four subscriber processes.
    const four = await Promise.all(
      [n0, n1, n2, n3].map((node) => system.spawn(BenchActor, {}, { node })),
    );
    const subject = `${system.namespace}.bench.broadcast`;
    const broadcastOnce = async () => {
      await Promise.all(four.map((a) => a.listen({ subject })));
      const t0 = performance.now();
      const got = Promise.all(four.map((a) => a.received(undefined, { timeoutMs: 120_000 })));
      await system.collectives.broadcast(subject, { data });
      await got;
      return performance.now() - t0;
    };
    const sinks = [0, 1, 2, 3].map(() =>
      startHelper("sink", server.url, creds, [
        "--bytes",
        String(bytes.byteLength),
        "--subject",
        "bench.four",
      ])
    );
    helpers.push(...sinks);
    await Promise.all(sinks.map((s) => s.ready));
    await broadcastOnce(); // warm-up
    await rawThroughput(rawTcp, 4, bytes, "bench.four");
    const bc: number[] = [];
    const rawFourRuns: number[] = [];
    for (let i = 0; i < reps; i++) {
      bc.push(mb / ((await broadcastOnce()) / 1000));
      rawFourRuns.push(mb / ((await rawThroughput(rawTcp, 4, bytes, "bench.four")) / 1000));
    }
    const bcast = median(bc);
    const rawFour = median(rawFourRuns);
    report({ name: "64 MiB broadcast to 4 actors (per receiver)", value: bcast, unit: "MB/s" });
    report({
      name: "raw NATS publish of 64 MiB to 4 subscribers (per receiver)",
      value: rawFour,
      unit: "MB/s",
    });
    report({ name: "broadcast to 4 actors / raw", value: (100 * bcast) / rawFour, unit: "%" });
    await rawTcp.close();
  } finally {
    await Promise.all(helpers.map((h) => h.stop()));
    for (const s of extra) await s.shutdown();
    await system.shutdown();
  }
}

/** The flags of the raw NATS counterparts, which the benchmark starts as helper processes. */
const SERVE_FLAGS = defineFlags({
  name: "runtime_bench",
  about: "A raw NATS counterpart of the runtime benchmark (the benchmark starts these itself).",
  usage: "deno run -A bench/runtime_bench.ts --serve echo|sink --url URL [flags]",
  flags: {
    serve: {
      type: "enum",
      choices: ["echo", "sink"],
      required: true,
      help: "answer requests on bench.echo, or take bytes on <subject>.data",
    },
    url: { type: "string", required: true, metavar: "URL", help: "the NATS server" },
    bytes: { type: "int", min: 1, default: null, help: "sink: bytes of one transfer" },
    subject: { type: "string", default: null, metavar: "SUBJECT", help: "sink: subject prefix" },
  },
  check(o) {
    if (o.serve === "sink" && (o.bytes === null || o.subject === null)) {
      throw new FlagError("--serve sink needs --bytes and --subject", "serve");
    }
  },
});

/** Raw NATS counterparts: an echo responder, or a sink that reports when it has all the bytes. */
async function serve() {
  const { options: o } = SERVE_FLAGS.main();
  const nc = await connectNats(o.url, JSON.parse(Deno.env.get("BENCH_CREDS") ?? "{}"));
  if (o.serve === "echo") {
    nc.subscribe("bench.echo", {
      callback: (_e, m) => {
        m.respond(m.data);
      },
    });
  } else {
    const want = o.bytes!;
    let got = 0;
    let sum = 0;
    nc.subscribe(`${o.subject}.data`, {
      callback: (_e, m) => {
        // Touch the bytes as a receiver would (the actor side checks every byte too).
        sum ^= checksum32(m.data);
        got += m.data.byteLength;
        if (got >= want) {
          got = 0;
          nc.publish(`${o.subject}.done`, String(sum));
        }
      },
    });
  }
  await nc.flush();
  console.log("ready");
  const buf = new Uint8Array(64);
  while ((await Deno.stdin.read(buf)) !== null) { /* until the bench closes our stdin */ }
  await nc.close();
}

if (import.meta.main) await serve();
