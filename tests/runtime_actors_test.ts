// Actor types used by the runtime tests (node processes import this module by URL), and the
// tests of `defineActor` itself: type inference and definition errors. The tests register only
// when this file is the test module being run, not when another test file imports the actors.
import assert from "node:assert/strict";
import {
  type ActorHandle,
  type ActorRef,
  checksum32,
  defineActor,
  InvalidArgumentError,
  tensor,
  z,
} from "../internal_mod.ts";

const refSchema = z.object({
  id: z.string(),
  name: z.string().optional(),
  type: z.string(),
  module: z.string().optional(),
});

function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      resolve(false);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** A counter with methods that exercise every call path. */
export const Counter = defineActor({
  name: "Counter",
  module: import.meta.url,
  init: z.object({
    start: z.number().int(),
    failInit: z.boolean().optional(),
    /** Restarts (incarnation > 0) fail, or take this long: a window to observe "restarting". */
    failOnRestart: z.boolean().optional(),
    restartDelayMs: z.number().optional(),
  }),
  create: async (input, ctx) => {
    if (input.failInit) throw new Error("constructor refused on purpose");
    if (ctx.self.inc > 0 && input.failOnRestart) throw new Error("restart refused on purpose");
    if (ctx.self.inc > 0 && input.restartDelayMs) await sleep(input.restartDelayMs, ctx.stopped);
    return { n: input.start, order: [] as number[], inc: ctx.self.inc, aborted: 0 };
  },
  methods: {
    add: {
      input: z.number(),
      output: z.number(),
      handler: (s, x) => (s.n += x),
    },
    get: { input: z.undefined(), output: z.number(), handler: (s) => s.n },
    /** Records arrival order; sleeps a little to let a queue build up. */
    record: {
      input: z.object({ i: z.number().int(), ms: z.number().optional() }),
      output: z.array(z.number()),
      handler: async (s, x, ctx) => {
        if (x.ms) await sleep(x.ms, ctx.signal);
        s.order.push(x.i);
        return s.order;
      },
    },
    /** Sleeps `ms`, honouring the call's signal; counts aborted sleeps. */
    slow: {
      input: z.object({ ms: z.number() }),
      output: z.string(),
      handler: async (s, x, ctx) => {
        const finished = await sleep(x.ms, ctx.signal);
        if (!finished) s.aborted++;
        return finished ? "finished" : "aborted";
      },
    },
    aborted: { input: z.undefined(), output: z.number(), handler: (s) => s.aborted },
    fail: {
      input: z.object({ message: z.string() }),
      output: z.number(),
      handler: (_s, x): number => {
        throw new RangeError(x.message);
      },
    },
    /** Returns a value that violates its own output schema. */
    badOutput: {
      input: z.undefined(),
      output: z.number(),
      handler: () => "not a number" as unknown as number,
    },
    whoami: {
      input: z.undefined(),
      output: z.object({ pid: z.number(), node: z.string(), inc: z.number(), id: z.string() }),
      handler: (s, _x, ctx) => ({
        pid: Deno.pid,
        node: ctx.self.node,
        inc: s.inc,
        id: ctx.self.id,
      }),
    },
  },
});

/** Echoes tensors back and reports their checksums. */
export const TensorEcho = defineActor({
  name: "TensorEcho",
  module: import.meta.url,
  init: z.object({}),
  create: () => ({ calls: 0 }),
  methods: {
    echo: {
      input: z.object({ name: z.string(), data: tensor("f32"), ids: tensor("i32").optional() }),
      output: z.object({
        name: z.string(),
        data: tensor("f32"),
        ids: tensor("i32").optional(),
        sum: z.number(),
      }),
      handler: (s, x) => {
        s.calls++;
        return {
          ...x,
          sum: checksum32(new Uint8Array(x.data.buffer, x.data.byteOffset, x.data.byteLength)),
        };
      },
    },
    /** Subscribes to a broadcast subject; `received` then waits for the value. */
    listen: {
      input: z.object({ subject: z.string() }),
      output: z.boolean(),
      handler: async (s, x, ctx) => {
        const r = await ctx.collectives.subscribe(x.subject, {
          schema: z.object({ data: tensor("u8") }),
        });
        (s as { receiver?: typeof r }).receiver = r;
        return true;
      },
    },
    received: {
      input: z.object({ timeoutMs: z.number() }),
      output: z.object({ bytes: z.number(), sum: z.number() }),
      handler: async (s, x) => {
        const r = (s as {
          receiver?: { next(t: number): Promise<{ value: { data: Uint8Array } }>; close(): void };
        })
          .receiver;
        if (!r) throw new Error("listen first");
        const { value } = await r.next(x.timeoutMs);
        r.close();
        return { bytes: value.data.byteLength, sum: checksum32(value.data) };
      },
    },
    /** Publishes its part of a gather. */
    contribute: {
      input: z.object({ subject: z.string(), k: z.number().int(), values: tensor("f32") }),
      output: z.boolean(),
      handler: async (_s, x, ctx) => {
        await ctx.collectives.contribute(x.subject, x.k, { k: x.k, values: x.values });
        return true;
      },
    },
    /** Takes part in an all-gather. */
    allGather: {
      input: z.object({
        subject: z.string(),
        rank: z.number().int(),
        size: z.number().int(),
        value: z.number(),
      }),
      output: z.array(z.number()),
      handler: (_s, x, ctx) =>
        ctx.collectives.allGather(x.subject, x.rank, x.size, x.value, {
          schema: z.number(),
          timeoutMs: 20_000,
        }),
    },
  },
});

/** Calls a Counter elsewhere: a call that crosses node processes. */
export const Relay = defineActor({
  name: "Relay",
  module: import.meta.url,
  init: z.object({ target: refSchema }),
  create: (input, ctx) => ({ target: ctx.system.handle(Counter, input.target as ActorRef) }),
  methods: {
    addVia: {
      input: z.number(),
      output: z.object({ n: z.number(), relayPid: z.number() }),
      handler: async (s, x) => ({ n: await s.target.add(x), relayPid: Deno.pid }),
    },
  },
});

/** Holds a resource and says whether `close` ran (reported through a subject). */
export const Closer = defineActor({
  name: "Closer",
  module: import.meta.url,
  init: z.object({ subject: z.string() }),
  create: (input) => ({ subject: input.subject }),
  close: (s, ctx) => {
    ctx.nc.publish(s.subject, "closed");
  },
  methods: {
    ping: { input: z.undefined(), output: z.string(), handler: () => "pong" },
  },
});

if (Deno.mainModule === import.meta.url) {
  Deno.test("defineActor infers handle types from the zod schemas", () => {
    // Only the type checker runs this part: `deno test` type-checks the file.
    const typed = (h: ActorHandle<typeof Counter>) => {
      const a: Promise<number> = h.add(1);
      const b: Promise<number> = h.get();
      const c: Promise<number[]> = h.record({ i: 1 });
      // @ts-expect-error a string is not a number
      h.add("x");
      // @ts-expect-error unknown method
      h.nope();
      return [a, b, c];
    };
    assert.equal(typeof typed, "function");
    const t = (h: ActorHandle<typeof TensorEcho>) =>
      h.echo({ name: "x", data: new Float32Array(1) });
    assert.equal(typeof t, "function");
  });

  Deno.test("defineActor rejects reserved method names and bad type names", () => {
    assert.throws(
      () =>
        defineActor({
          name: "Bad",
          init: z.object({}),
          create: () => ({}),
          methods: { then: { input: z.number(), output: z.number(), handler: (_s, x) => x } },
        }),
      InvalidArgumentError,
    );
    assert.throws(
      () => defineActor({ name: "has space", init: z.object({}), create: () => ({}), methods: {} }),
      InvalidArgumentError,
    );
    assert.throws(
      () =>
        defineActor({
          name: "X",
          module: "not a url",
          init: z.object({}),
          create: () => ({}),
          methods: {},
        }),
      InvalidArgumentError,
    );
  });
}
