// A worker's init gets the factors and the checkpoint's state by the digest the init message
// carries (actors/stored_object.ts): objects put a moment after the call (a replica catching up)
// are waited for and taken; a factors or state object that is not there under that digest once
// the window has passed is a StoredObjectError naming it, across the actor boundary, and the
// worker is left as it was. The window is the message's `waitMs`, short here (the default is 30 s).
import assert from "node:assert/strict";
import { GpuWorker } from "../actors/gpu_worker.ts";
import { StoredObjectError } from "../actors/stored_object.ts";
import { weightFileDigests } from "../model/folder_digest.ts";
import { loadModelFolder, serializeSafetensors } from "../model/safetensors.ts";
import { init } from "../runtime/mod.ts";
import { workerSettings } from "../train/cli/options.ts";
import { initOptionsOf } from "../train/methods/init.ts";
import { getMethod } from "../train/methods/registry.ts";
import { TINY_CONFIG, tinyOptions, writeTinySetup } from "./support/tiny_run.ts";

/** The window of the gets that must fail: long enough to show a wait, far below 30 s. */
const WAIT_MS = 400;

Deno.test("worker init: factors and state by digest, a late put is waited for, a wrong one is a StoredObjectError", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-stored-object-" });
  const system = await init({ nodes: 1 });
  try {
    await writeTinySetup(dir);
    const o = tinyOptions(dir, { workers: 1 });
    const folder = `${dir}/model`;
    const base = await loadModelFolder(folder);
    const method = getMethod(o.method);
    const factorBytes = serializeSafetensors(
      method.initToTensors(
        TINY_CONFIG,
        o,
        method.init(TINY_CONFIG, base.tensors, initOptionsOf(o)),
      ),
    );
    const store = await system.objects();
    const w = await system.spawn(GpuWorker, { worker: 0 });
    await w.load({
      weights: { via: "folder", folder, digests: await weightFileDigests(folder) },
      seqLen: o.seqLen,
      microBatch: o.microBatch,
      maxMicroBatches: 1,
      settings: workerSettings(o),
      updateSubject: "stored-object.update",
      updateFloats: 1,
    }, { timeoutMs: 60_000 });

    // Other bytes under the factors' name: the store's own check passes, the digest does not.
    const other = await store.put("so.factors", new TextEncoder().encode("older factors"));
    const wanted = await store.put("so.factors.real", factorBytes);
    await store.delete("so.factors.real");
    const wrong = await w.init({
      generation: 0,
      factors: { name: "so.factors", digest: wanted.digest },
      appliedStep: -1,
      waitMs: WAIT_MS,
    }).then(() => null, (e) => e);
    assert.ok(wrong instanceof StoredObjectError, String(wrong));
    assert.equal(wrong.object, "so.factors");
    assert.equal(wrong.digest, wanted.digest);
    assert.match(wrong.message, /the factors so\.factors cannot be read as it was put/);
    assert.ok(wrong.message.includes(`has digest ${other.digest}`), wrong.message);
    assert.match(wrong.message, new RegExp(`waited ${WAIT_MS} ms`));
    // Nothing was set up: the worker still refuses what needs an init.
    await assert.rejects(
      w.checksum({}),
      (e: unknown) => e instanceof Error && /is not initialised/.test(e.message),
    );

    // The right bytes put after the call started (as a replica behind the driver's put answers
    // "not found" first): the init waits for them and takes them.
    const late = w.init({
      generation: 0,
      factors: { name: "so.factors.late", digest: wanted.digest },
      appliedStep: -1,
      waitMs: 20_000,
    });
    await new Promise((r) => setTimeout(r, 300));
    const put = await store.put("so.factors.late", factorBytes);
    assert.equal(put.digest, wanted.digest);
    const out = await late;
    assert.ok(out.optimizerFloats > 0, JSON.stringify(out));

    // A restore whose state object never arrives: named in the error, after the short window.
    const lost = await w.init({
      generation: 1,
      factors: { name: "so.factors.late", digest: wanted.digest },
      state: { name: "so.state.w0", digest: "SHA-256=" + "A".repeat(43) + "=" },
      appliedStep: 3,
      waitMs: WAIT_MS,
    }).then(() => null, (e) => e);
    assert.ok(lost instanceof StoredObjectError, String(lost));
    assert.equal(lost.object, "so.state.w0");
    assert.match(lost.message, /the checkpoint's state so\.state\.w0 .*not found/);
    // The failed restore left the worker at generation 0 (its state before the call).
    await assert.rejects(
      w.apply({ generation: 1, step: 4, lr: 0, skip: true }),
      (e: unknown) =>
        e instanceof Error && /apply of generation 1, the worker is at 0/.test(e.message),
    );
  } finally {
    await system.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
