// One embedded system (private nats-server, two node processes) shared by the steps below:
// calls across processes, mailbox semantics, timeouts, errors, schemas, stop, tensors,
// collectives, the object store, the module allow-list, credentials, and lookups from another
// process.
import assert from "node:assert/strict";
import { connect } from "@nats-io/transport-node";
import {
  ActorDiedError,
  ActorNotFoundError,
  ActorTypeMismatchError,
  CallCancelledError,
  CallTimeoutError,
  checksum32,
  defineActor,
  init,
  MailboxFullError,
  ModuleNotAllowedError,
  ObjectStoreError,
  RemoteError,
  SchemaError,
  UnknownActorTypeError,
  z,
} from "../internal_mod.ts";
import { Closer, Counter, Relay, TensorEcho } from "./runtime_actors_test.ts";

function randomF32(n: number): Float32Array {
  const a = new Float32Array(n);
  const u = new Uint32Array(a.buffer);
  for (let i = 0; i < n; i += 16384) crypto.getRandomValues(u.subarray(i, Math.min(n, i + 16384)));
  // Random bit patterns include NaNs with payloads; keep them, they must survive bit-exactly.
  return a;
}

function randomU8(n: number): Uint8Array<ArrayBuffer> {
  const a = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(a.subarray(i, Math.min(n, i + 65536)));
  return a;
}

function sameBits(a: ArrayBufferView, b: ArrayBufferView): boolean {
  if (a.byteLength !== b.byteLength) return false;
  const x = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const y = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** The same actor type as Counter, with looser schemas: a caller that skips validation. */
const LooseCounter = defineActor({
  name: "Counter",
  module: Counter.module,
  init: z.unknown(),
  create: () => ({}),
  methods: { add: { input: z.unknown(), output: z.unknown(), handler: () => 0 } },
});

/** Defined here without a module URL: only this process can host it. */
const LocalProbe = defineActor({
  name: "LocalProbe",
  init: z.object({ counter: z.string() }),
  create: (input, ctx) => ({ counter: input.counter, system: ctx.system }),
  methods: {
    probe: {
      input: z.undefined(),
      output: z.object({ pid: z.number(), namespace: z.string(), viaCounter: z.number() }),
      handler: async (s, _x, ctx) => {
        const c = await s.system.getActor(Counter, s.counter);
        return { pid: Deno.pid, namespace: ctx.namespace, viaCounter: await c.add(100) };
      },
    },
  },
});

Deno.test("an embedded system with two node processes", async (t) => {
  const system = await init({ nodes: 2 });
  try {
    const nodes = system.localNodes.map((n) => n.id);
    assert.equal(nodes.length, 2);
    assert.ok(system.server, "an embedded server was started");

    await t.step("a call crosses two node processes", async () => {
      const c = await system.spawn(Counter, { start: 5 }, { node: nodes[0], name: "crossing" });
      const r = await system.spawn(Relay, { target: c.ref }, { node: nodes[1] });
      const who = await c.whoami();
      const out = await r.addVia(7);
      assert.equal(out.n, 12);
      assert.notEqual(out.relayPid, who.pid);
      assert.notEqual(who.pid, Deno.pid);
      assert.equal(who.node, nodes[0]);
      assert.equal(await c.get(), 12);
      await system.stop(r);
    });

    await t.step("calls run one at a time in arrival order", async () => {
      const c = await system.spawn(Counter, { start: 0 });
      const calls = Array.from({ length: 20 }, (_, i) => c.record({ i, ms: i % 3 === 0 ? 5 : 0 }));
      const results = await Promise.all(calls);
      assert.deepEqual(results[19], Array.from({ length: 20 }, (_, i) => i));
      await system.stop(c);
    });

    await t.step(
      "a full mailbox rejects failFast calls at once with MailboxFullError",
      async () => {
        const c = await system.spawn(Counter, { start: 0 }, { mailbox: 3 });
        const busy = c.slow({ ms: 1500 });
        await new Promise((r) => setTimeout(r, 300)); // let it start running
        const settled = await Promise.allSettled(
          Array.from({ length: 8 }, (_, i) => c.record({ i }, { failFast: true })),
        );
        const full = settled.filter((s) => s.status === "rejected");
        const ok = settled.filter((s) => s.status === "fulfilled");
        assert.equal(ok.length, 3, "exactly the mailbox's capacity was queued");
        assert.equal(full.length, 5);
        for (const f of full) {
          assert.ok((f as PromiseRejectedResult).reason instanceof MailboxFullError);
        }
        assert.equal(await busy, "finished");
        await system.stop(c);
      },
    );

    await t.step("timeouts: a running call is aborted, a queued one is dropped", async () => {
      const c = await system.spawn(Counter, { start: 0 });
      await assert.rejects(c.slow({ ms: 20_000 }, { timeoutMs: 300 }), CallTimeoutError);
      assert.equal(await c.aborted(), 1, "the handler's signal was aborted at the deadline");
      const long = c.slow({ ms: 600 });
      await assert.rejects(c.record({ i: 99 }, { timeoutMs: 150 }), CallTimeoutError);
      assert.equal(await long, "finished");
      assert.deepEqual(await c.record({ i: 1 }), [1], "the timed-out queued call never ran");
      const ac = new AbortController();
      const cancelled = c.slow({ ms: 20_000 }, { signal: ac.signal });
      setTimeout(() => ac.abort(), 300); // once it runs
      await assert.rejects(cancelled, CallCancelledError);
      assert.equal(await c.aborted(), 2, "cancellation reached the running handler");
      await system.stop(c);
    });

    await t.step(
      "an actor's exception arrives as RemoteError with the remote name, message, stack",
      async () => {
        const c = await system.spawn(Counter, { start: 0 });
        const err = await c.fail({ message: "boom 42" }).catch((e) => e);
        assert.ok(err instanceof RemoteError);
        assert.equal(err.remoteName, "RangeError");
        assert.equal(err.remoteMessage, "boom 42");
        assert.match(err.remoteStack ?? "", /runtime_actors_test\.ts/);
        assert.equal(await c.add(1), 1, "the actor survives its exception");
        await system.stop(c);
      },
    );

    await t.step("schema violations on input and output, on both sides", async () => {
      const c = await system.spawn(Counter, { start: 0 });
      const local = await c.add("seven" as unknown as number).catch((e) => e);
      assert.ok(local instanceof SchemaError);
      assert.equal(local.side, "input");
      assert.equal(local.remote, false);
      const loose = system.handle(LooseCounter, c.ref);
      const remote = await loose.add("seven").catch((e) => e);
      assert.ok(remote instanceof SchemaError, String(remote));
      assert.equal(remote.side, "input");
      assert.equal(remote.remote, true);
      const out = await c.badOutput().catch((e) => e);
      assert.ok(out instanceof SchemaError);
      assert.equal(out.side, "output");
      assert.equal(out.remote, true);
      await assert.rejects(system.spawn(Counter, { start: "x" } as never), SchemaError);
      await system.stop(c);
    });

    await t.step("stopping an actor fails its pending calls and runs close", async () => {
      const subject = `${system.namespace}.closer`;
      const closed = new Promise<string>((resolve) => {
        const sub = system.nc.subscribe(subject, {
          callback: (_e, m) => {
            sub.unsubscribe();
            resolve(m.string());
          },
        });
      });
      await system.nc.flush();
      const k = await system.spawn(Closer, { subject });
      assert.equal(await k.ping(), "pong");
      const c = await system.spawn(Counter, { start: 0 });
      const running = c.slow({ ms: 20_000 });
      await new Promise((r) => setTimeout(r, 100));
      const queued = [c.get(), c.get(), c.record({ i: 1 })];
      const outcomes = Promise.allSettled([running, ...queued]);
      await system.stop(c, { graceMs: 200 });
      for (const o of await outcomes) {
        assert.equal(o.status, "rejected");
        assert.ok((o as PromiseRejectedResult).reason instanceof ActorDiedError);
      }
      await assert.rejects(c.get(), ActorDiedError);
      await system.stop(k);
      assert.equal(await closed, "closed");
    });

    await t.step("a 64 MiB tensor round-trips bit-exactly (chunked both ways)", async () => {
      const e = await system.spawn(TensorEcho, {}, { node: nodes[1] });
      const data = randomF32(16 * 1024 * 1024);
      const ids = new Int32Array([3, -1, 2 ** 31 - 1]);
      const sent = system.stats.bytesSent;
      const out = await e.echo({ name: "w", data, ids }, { timeoutMs: 120_000 });
      assert.ok(system.stats.bytesSent - sent >= data.byteLength, "the bytes went over NATS");
      assert.equal(out.data.length, data.length);
      assert.ok(sameBits(out.data, data), "64 MiB came back bit-exact");
      assert.ok(sameBits(out.ids!, ids));
      assert.equal(out.sum, checksum32(new Uint8Array(data.buffer)));
      await system.stop(e);
    });

    await t.step("collectives: gather, broadcast (chunked), all-gather", async () => {
      const actors = await Promise.all(
        [0, 1, 2].map((k) => system.spawn(TensorEcho, {}, { node: nodes[k % 2] })),
      );
      const parts = actors.map(() => randomF32(1000));
      const subject = `${system.namespace}.step.1.delta`;
      const g = await system.collectives.gather(subject, 3, { timeoutMs: 20_000 });
      await Promise.all(actors.map((a, k) => a.contribute({ subject, k, values: parts[k] })));
      const got = (await g.result) as { k: number; values: Float32Array }[];
      got.forEach((p, k) => {
        assert.equal(p.k, k);
        assert.ok(sameBits(p.values, parts[k]));
      });

      const bsubject = `${system.namespace}.step.1.update`;
      await Promise.all(actors.map((a) => a.listen({ subject: bsubject })));
      const blob = randomU8(20 * 1024 * 1024); // above the server's 8 MiB max_payload
      const n = await system.collectives.broadcast(bsubject, { data: blob });
      assert.ok(n > blob.byteLength);
      const recv = await Promise.all(actors.map((a) => a.received({ timeoutMs: 30_000 })));
      for (const r of recv) {
        assert.equal(r.bytes, blob.byteLength);
        assert.equal(r.sum, checksum32(blob));
      }

      const agSubject = `${system.namespace}.ag.1`;
      const values = [11, 22, 33];
      const all = await Promise.all(
        actors.map((a, rank) =>
          a.allGather({ subject: agSubject, rank, size: 3, value: values[rank] })
        ),
      );
      for (const r of all) assert.deepEqual(r, values);
      await Promise.all(actors.map((a) => system.stop(a)));
    });

    await t.step("object store: put, get bit-exact, digest, list, delete", async () => {
      const store = await system.objects();
      const blob = randomU8(3 * 1024 * 1024 + 17);
      const entry = await store.put("base/weights.bin", blob);
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", blob));
      const b64 = btoa(String.fromCharCode(...digest)).replaceAll("+", "-").replaceAll("/", "_");
      assert.equal(entry.digest, `SHA-256=${b64}`);
      assert.equal(entry.size, blob.byteLength);
      assert.ok(sameBits(await store.get("base/weights.bin"), blob));
      assert.deepEqual((await store.list()).map((e) => e.name), ["base/weights.bin"]);
      assert.equal(await store.delete("base/weights.bin"), true);
      assert.deepEqual(await store.list(), []);
      await assert.rejects(store.get("base/weights.bin"), ObjectStoreError);
    });

    await t.step(
      "actor types load only from the allow-list; unknown types are typed errors",
      async () => {
        const outside = await Deno.makeTempFile({ suffix: ".ts" });
        try {
          await Deno.writeTextFile(outside, "globalThis.__ran = true; export const x = 1;\n");
          const Outside = defineActor({
            name: "Outside",
            module: new URL(`file://${outside}`).href,
            init: z.object({}),
            create: () => ({}),
            methods: {},
          });
          const err = await system.spawn(Outside, {}, { node: nodes[0] }).catch((e) => e);
          assert.ok(err instanceof ModuleNotAllowedError, String(err));
          assert.equal(err.module, Outside.module);
        } finally {
          await Deno.remove(outside);
        }
        const Missing = defineActor({
          name: "NoSuchActor",
          module: Counter.module,
          init: z.object({}),
          create: () => ({}),
          methods: {},
        });
        await assert.rejects(system.spawn(Missing, {}, { node: nodes[1] }), UnknownActorTypeError);
      },
    );

    await t.step(
      "the embedded server refuses clients without the generated credentials",
      async () => {
        await assert.rejects(connect({ servers: system.server!.url, reconnect: false }));
        await assert.rejects(
          connect({ servers: system.server!.url, user: "x", pass: "y", reconnect: false }),
        );
        const ok = await connect({ servers: system.server!.url, ...system.server!.credentials });
        await ok.close();
      },
    );

    await t.step("a named actor is found from a second process", async () => {
      const c = await system.spawn(Counter, { start: 41 }, { name: "shared" });
      const code = `
        import { init } from "${new URL("../mod.ts", import.meta.url).href}";
        import { Counter } from "${new URL("./runtime_actors_test.ts", import.meta.url).href}";
        const creds = JSON.parse(Deno.env.get("CREDS"));
        const s = await init({ nats: Deno.env.get("URL"), system: "default", ...creds });
        const h = await s.getActor(Counter, "shared");
        const who = await h.whoami();
        console.log(JSON.stringify({ n: await h.add(1), pid: Deno.pid, actorPid: who.pid }));
        await s.shutdown();
      `;
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "eval",
          "--quiet",
          `--config=${new URL("../deno.json", import.meta.url).pathname}`,
          code,
        ],
        env: { URL: system.servers[0], CREDS: JSON.stringify(system.credentials) },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout).trim();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      const r = JSON.parse(text.split("\n").pop()!);
      assert.equal(r.n, 42);
      assert.notEqual(r.pid, Deno.pid);
      assert.notEqual(r.pid, r.actorPid);
      assert.equal(await c.get(), 42);
      await assert.rejects(
        system.getActor(Counter, "nobody", { timeoutMs: 300 }),
        ActorNotFoundError,
      );
      await assert.rejects(system.getActor(TensorEcho, "shared"), ActorTypeMismatchError);
      await system.stop(c);
    });

    await t.step("this process hosts actors too, with a context to reach others", async () => {
      const c = await system.spawn(Counter, { start: 1 }, { name: "target" });
      const p = await system.spawn(LocalProbe, { counter: "target" });
      const r = await p.probe();
      assert.equal(r.pid, Deno.pid);
      assert.equal(r.namespace, system.namespace);
      assert.equal(r.viaCounter, 101);
      await system.stop(p);
      await system.stop(c);
    });
  } finally {
    await system.shutdown();
  }
});
