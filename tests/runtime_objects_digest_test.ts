// A get that names the digest it expects (runtime/objects.ts) treats a missing object, or one with
// another digest, as a replica that has not caught up: it waits for the object put after the get
// began, and fails with the typed ObjectStoreError once the window is over (a short one here).
import assert from "node:assert/strict";
import { init, ObjectStoreError } from "../runtime/mod.ts";

async function digestOf(bytes: Uint8Array): Promise<string> {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return `SHA-256=${btoa(String.fromCharCode(...h)).replaceAll("+", "-").replaceAll("/", "_")}`;
}

function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(out.subarray(i, i + 65536));
  return out;
}

/** Same bytes (the client may hand back a Buffer, which deepEqual tells from a Uint8Array). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("a get with an expected digest waits for the object, then fails typed", async () => {
  const system = await init({ nodes: 1 });
  try {
    const store = await system.objects();
    const late = randomBytes(300_000 + 5);
    const want = await digestOf(late);

    // Put shortly after the get began: the get, which found nothing at first, returns it.
    assert.equal(await store.info("late"), undefined);
    const got = store.get("late", { digest: want, waitMs: 20_000 });
    await sleep(600);
    const put = await store.put("late", late);
    assert.equal(put.digest, want);
    assert.ok(same(await got, late));
    // Without a digest the same name answers at once (present now), and a missing one fails.
    assert.ok(same(await store.get("late"), late));
    await assert.rejects(store.get("absent"), ObjectStoreError);

    // An older version under the name is not the one asked for: the get waits for the new one.
    const v1 = randomBytes(1000);
    const v2 = randomBytes(1000);
    await store.put("v", v1);
    const next = store.get("v", { digest: await digestOf(v2), waitMs: 20_000 });
    await sleep(600);
    await store.put("v", v2);
    assert.ok(same(await next, v2));

    // Never put, or never the expected bytes: the typed error once the window is over.
    await assert.rejects(
      store.get("never", { digest: want, waitMs: 300 }),
      (e: unknown) =>
        e instanceof ObjectStoreError && /never not found/.test(e.message) &&
        /waited 300 ms/.test(e.message),
    );
    await assert.rejects(
      store.get("v", { digest: want, waitMs: 300 }),
      (e: unknown) =>
        e instanceof ObjectStoreError && e.message.includes(`not ${want}`) &&
        /waited 300 ms/.test(e.message),
    );
    await assert.rejects(store.get("v", { digest: want, waitMs: -1 }), /waitMs -1/);
  } finally {
    await system.shutdown();
  }
});
