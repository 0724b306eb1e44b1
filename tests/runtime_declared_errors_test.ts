// Errors an actor declares cross the actor boundary as their own class (with their data fields and
// their place in the hierarchy); the others arrive as RemoteError; a declared error whose payload
// does not check, or an error reply that is not one, arrives as a SchemaError. Real nats-server,
// real node processes.
import assert from "node:assert/strict";
import { DomainError } from "../core/errors.ts";
import {
  ActorDiedError,
  defineActor,
  encodeFrame,
  init,
  InvalidArgumentError,
  RemoteError,
  SchemaError,
  z,
} from "../internal_mod.ts";
import { errorOfReply } from "../runtime/declared_errors.ts";
import {
  LegacyFault,
  MissingParts,
  ProtocolFault,
  Thrower,
  ThrowerSkewed,
  ThrowerUndeclared,
} from "./support/thrower_actor.ts";

Deno.test("declared errors across processes", async (t) => {
  const system = await init({ nodes: 2 });
  try {
    const [n0, n1] = system.localNodes.map((n) => n.id);
    const a = await system.spawn(Thrower, {}, { node: n0 });
    const b = await system.spawn(Thrower, {}, { node: n1 });

    await t.step("a declared error arrives as its class, with its fields and bases", async () => {
      const e = await a.throw("fields").catch((e) => e);
      assert.ok(e instanceof MissingParts, String(e));
      assert.ok(e instanceof ProtocolFault);
      assert.ok(e instanceof DomainError);
      assert.ok(e instanceof Error);
      assert.equal(e.name, "MissingParts");
      assert.equal(e.code, "MISSING_PARTS");
      assert.equal(e.message, "step 7 lacks parts 1, 3");
      assert.equal(e.step, 7);
      assert.deepEqual(e.parts, [1, 3]);
      assert.equal(e.note, "lost with a server");
      assert.match(e.stack ?? "", /^MissingParts: step 7/);
      assert.match(e.stack ?? "", /thrower_actor\.ts/, "the stack is the thrower's");
      assert.equal(Object.prototype.toString.call(e), "[object Error]", "a real error object");

      const base = await a.throw("base").catch((e) => e);
      assert.ok(base instanceof ProtocolFault);
      assert.ok(!(base instanceof MissingParts), "a base stays a base");
      assert.equal(base.code, "PROTOCOL_FAULT");

      const legacy = await a.throw("legacy").catch((e) => e);
      assert.ok(legacy instanceof LegacyFault, "a declared class need not be a DomainError");
      assert.equal(legacy.name, "LegacyFault");
      assert.equal(legacy.message, "old style");
    });

    await t.step("through two actor hops, a declared error is still itself", async () => {
      const e = await b.relay({ target: a.ref, kind: "fields" }).catch((e) => e);
      assert.ok(e instanceof MissingParts, String(e));
      assert.equal(e.step, 7);
      const plain = await b.relay({ target: a.ref, kind: "type" }).catch((e) => e);
      assert.ok(plain instanceof RemoteError);
      assert.equal(plain.remoteName, "RemoteError", "an undeclared one stays wrapped per hop");
    });

    await t.step("undeclared errors arrive as RemoteError, never as another class", async () => {
      const sub = await a.throw("unlisted").catch((e) => e);
      assert.ok(sub instanceof RemoteError, String(sub));
      assert.ok(!(sub instanceof ProtocolFault), "an undeclared subclass is not its base");
      assert.equal(sub.remoteName, "Unlisted");
      assert.equal(sub.remoteMessage, "not on the list");

      const bug = await a.throw("type").catch((e) => e);
      assert.ok(bug instanceof RemoteError);
      assert.equal(bug.remoteName, "TypeError");
      assert.equal(bug.remoteMessage, "a plain bug");

      // A caller whose definition declares nothing gets RemoteError for every exception.
      const blind = system.handle(ThrowerUndeclared, a.ref);
      const e = await blind.throw("fields").catch((e) => e);
      assert.ok(e instanceof RemoteError);
      assert.equal(e.remoteName, "MissingParts");
      assert.equal(e.remoteMessage, "step 7 lacks parts 1, 3");
    });

    await t.step(
      "a declared error whose payload does not check arrives as SchemaError",
      async () => {
        for (
          const [kind, issue] of [
            ["unencodable", /could not be encoded/],
            ["mislabelled", /Mislabelled: step: /],
            ["undescribed", /does not describe: extra/],
          ] as const
        ) {
          const e = await a.throw(kind).catch((e) => e);
          assert.ok(e instanceof SchemaError, `${kind}: ${e}`);
          assert.equal(e.side, "error");
          assert.equal(e.where, "Thrower.throw");
          assert.match(e.issues, issue);
          assert.ok(e.cause instanceof RemoteError, "the remote error is kept as the cause");
        }
        // A caller whose class of the same name describes other fields: checked on arrival.
        const skewed = system.handle(ThrowerSkewed, a.ref);
        const e = await skewed.throw("fields").catch((e) => e);
        assert.ok(e instanceof SchemaError, String(e));
        assert.match(e.issues, /MissingParts: step: /);
        assert.equal((e.cause as RemoteError).remoteMessage, "step 7 lacks parts 1, 3");
        assert.equal(await a.throw("base").catch((e) => e.code), "PROTOCOL_FAULT", "still serving");
      },
    );

    await t.step("malformed error replies on the wire give typed errors", async () => {
      // A rogue responder on the actor's subject answers before the actor does.
      const root = system.namespace.replace(/\.app$/, "");
      const payloads: unknown[] = [];
      const sub = system.nc.subscribe(`${root}.rt.a.${a.ref.id}`, {
        callback: (_err, msg) => {
          const e = payloads.shift();
          if (msg.reply) system.nc.publish(msg.reply, encodeFrame({ k: "err", e }, null));
        },
      });
      const remote = (data: Record<string, unknown>) => ({
        code: "REMOTE",
        name: "RemoteError",
        message: "m",
        data: { remoteName: "MissingParts", remoteMessage: "m", remoteCode: "REMOTE", ...data },
      });
      const cases: [unknown, (e: unknown) => boolean][] = [
        [null, (e) => e instanceof SchemaError && e.side === "error"],
        [42, (e) => e instanceof SchemaError],
        [{ code: 7, name: "x", message: "y" }, (e) => e instanceof SchemaError],
        [{ code: "REMOTE", name: "x", message: "y", data: "z" }, (e) => e instanceof SchemaError],
        [remote({ declared: "MissingParts" }), (e) => e instanceof SchemaError],
        [remote({ declared: { type: 3, fields: {} } }), (e) => e instanceof SchemaError],
        [
          remote({ declared: { type: "MissingParts", fields: { step: "7", parts: [] } } }),
          (e) => e instanceof SchemaError && /step/.test(e.issues),
        ],
        [
          remote({
            declared: {
              type: "MissingParts",
              fields: JSON.parse('{"step":1,"parts":[],"__proto__":{"x":1}}'),
            },
          }),
          (e) => e instanceof MissingParts && !("x" in e) && !("x" in {}),
        ],
        [
          remote({ declared: { type: "NoSuchClass", fields: {} } }),
          (e) => e instanceof RemoteError && e.remoteName === "MissingParts",
        ],
        [
          remote({ declared: { type: "MissingParts", fields: { step: 1, parts: [2] } } }),
          (e) => e instanceof MissingParts && e.step === 1 && e.message === "m",
        ],
        [
          { code: "ACTOR_DIED", name: "ActorDiedError", message: "m", data: { reason: "node" } },
          (e) => e instanceof ActorDiedError,
        ],
      ];
      try {
        for (const [payload, ok] of cases) {
          payloads.push(payload);
          const e = await a.slow(400).then(() => "no error", (e) => e);
          assert.ok(ok(e), `${JSON.stringify(payload)} gave ${e}`);
        }
      } finally {
        sub.unsubscribe();
      }
      assert.equal(await a.slow(1), 1, "the caller and the actor carry on");
    });
  } finally {
    await system.shutdown();
  }
});

Deno.test("errorOfReply never throws, whatever the reply's error is", () => {
  const junk: unknown[] = [
    undefined,
    null,
    0,
    "",
    [],
    {},
    { code: "REMOTE" },
    { code: "REMOTE", name: "E", message: "m", data: null },
    { code: "REMOTE", name: "E", message: "m", data: { declared: null } },
    { code: "REMOTE", name: "E", message: "m", data: { declared: { type: "MissingParts" } } },
    { code: "ACTOR_INIT", name: "E", message: "m", data: { cause: 5 } },
  ];
  for (const j of junk) {
    const e = errorOfReply(j, "a", "m", Thrower.errors, "Thrower.m");
    assert.ok(e instanceof Error, `${JSON.stringify(j)} gave ${e}`);
  }
});

Deno.test("defineActor checks the errors it is given", () => {
  const spec = { name: "E", init: z.object({}), create: () => ({}), methods: {} };
  class A extends Error {}
  const Named = { B: class extends Error {} };
  Object.defineProperty(Named.B, "name", { value: "A" });
  for (
    const errors of [
      "not a list",
      [{}],
      [() => {}],
      [ActorDiedError],
      [A, Named.B],
      [Object.assign(class C extends Error {}, { fields: { shape: {} } })],
    ]
  ) {
    assert.throws(
      () => defineActor({ ...spec, errors: errors as never }),
      InvalidArgumentError,
      JSON.stringify(String(errors)),
    );
  }
  const ok = defineActor({ ...spec, errors: [A] });
  assert.deepEqual(ok.errors, [A]);
  assert.ok(Object.isFrozen(ok.errors));
});
