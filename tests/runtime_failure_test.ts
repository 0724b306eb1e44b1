// Failures on real processes: a SIGKILLed node, restarts with a budget, supervision trees,
// fate-sharing with the process that called init(), and no process left behind.
import assert from "node:assert/strict";
import {
  ActorDiedError,
  child,
  init,
  NoNodeAvailableError,
  supervisor,
  SupervisorFailedError,
  type System,
} from "../mod.ts";
import { Counter } from "./runtime_actors_test.ts";

const CONFIG = new URL("../deno.json", import.meta.url).pathname;

/** Command lines of every process on this machine. */
async function processes(): Promise<{ pid: number; args: string }[]> {
  const out = await new Deno.Command("ps", { args: ["-eo", "pid=,args="], stdout: "piped" })
    .output();
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.trim()).map((l) => {
    const m = /^\s*(\d+)\s+(.*)$/.exec(l)!;
    return { pid: Number(m[1]), args: m[2] };
  });
}

async function waitUntil(what: string, ok: () => Promise<boolean> | boolean, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function uniqueSystem(prefix: string): string {
  return `${prefix}-${crypto.randomUUID().slice(0, 8)}`;
}

Deno.test("a SIGKILLed node: pending calls fail fast, the actor restarts elsewhere, handles survive", async () => {
  const name = uniqueSystem("kill");
  const system = await init({ system: name, nodes: 3, nodeResources: { slot: 1 } });
  try {
    const [a] = system.localNodes;
    const c = await system.spawn(
      Counter,
      { start: 5, restartDelayMs: 1500 },
      { node: a.id, resources: { slot: 1 }, name: "victim" },
    );
    assert.equal(await c.add(10), 15);
    const before = await c.whoami();
    assert.equal(before.pid, a.pid);
    const events: string[] = [];
    const off = system.on((e) => {
      if (e.type === "node_down" || e.type === "actor_down" || e.type === "actor_up") {
        events.push(e.type);
      }
    });
    // A call that would take 20 s, with the default 30 s timeout, is running when the node dies.
    const pending = c.slow({ ms: 20_000 });
    const queued = c.get();
    await new Promise((r) => setTimeout(r, 100));
    const killedAt = Date.now();
    a.kill("SIGKILL");
    const err = await pending.catch((e) => e);
    const detectedMs = Date.now() - killedAt;
    assert.ok(err instanceof ActorDiedError, `expected ActorDiedError, got ${err}`);
    assert.equal(err.reason, "node");
    await assert.rejects(queued, ActorDiedError);
    console.log(`  node death detected after ${detectedMs} ms (heartbeat 500 ms, 3 missed)`);
    // The restart's constructor takes 1.5 s: failFast calls fail at once meanwhile...
    await assert.rejects(c.get(undefined, { failFast: true }), ActorDiedError);
    // ...and ordinary calls wait for the new incarnation.
    const after = await c.whoami();
    assert.equal(after.inc, 1);
    assert.notEqual(after.pid, a.pid);
    assert.notEqual(after.node, a.id);
    assert.equal(await c.get(), 5, "the constructor ran again: state starts over");
    assert.ok(events.includes("node_down"));
    off();
    // A node with a free slot is needed: with the dead node's slot gone, a second actor that
    // needs two slots has nowhere to go.
    await assert.rejects(
      system.spawn(Counter, { start: 0 }, { resources: { slot: 2 }, placementTimeoutMs: 300 }),
      NoNodeAvailableError,
    );
  } finally {
    await system.shutdown();
  }
  const left = (await processes()).filter((p) => p.args.includes(name));
  assert.deepEqual(left, [], "no process of this system is left");
});

Deno.test("a frozen node (SIGSTOP) is replaced, and fences itself when it wakes", async () => {
  const system = await init({ nodes: 2 });
  try {
    const [a, b] = system.localNodes;
    const c = await system.spawn(Counter, { start: 0 }, { node: a.id, name: "sleeper" });
    await c.add(1);
    const pending = c.slow({ ms: 20_000 });
    const t0 = Date.now();
    Deno.kill(a.pid, "SIGSTOP");
    try {
      await assert.rejects(pending, ActorDiedError);
      console.log("  frozen node detected after", Date.now() - t0, "ms");
      const now = await c.whoami();
      assert.equal(now.inc, 1);
      assert.equal(now.node, b.id);
    } finally {
      Deno.kill(a.pid, "SIGCONT");
    }
    // Awake again, the old node heartbeats once more, but hosts nothing: its instance stopped
    // itself, and calls (which name incarnation 1) never reach it.
    await waitUntil("the woken node reports no actors", () => {
      const n = system.nodes().find((n) => n.id === a.id);
      return n !== undefined && n.actors === 0;
    });
    for (let i = 0; i < 20; i++) assert.equal((await c.whoami()).node, b.id);
    assert.equal(await c.get(), 0);
  } finally {
    await system.shutdown();
  }
});

Deno.test("supervision: one_for_one, one_for_all, budgets escalating to the parent", async (t) => {
  const system = await init({ nodes: 2 });
  const incs = async (...hs: { whoami(): Promise<{ inc: number }> }[]) =>
    await Promise.all(hs.map(async (h) => (await h.whoami()).inc));
  try {
    await t.step("spawn's own budget: restarts, then gives up", async () => {
      const c = await system.spawn(Counter, { start: 1 }, { maxRestarts: 1, withinMs: 60_000 });
      await system.kill(c);
      assert.equal((await c.whoami()).inc, 1, "restarted once");
      await system.kill(c);
      await waitUntil("the actor is gone", async () => {
        const e = await c.get(undefined, { failFast: true }).catch((e) => e);
        return e instanceof ActorDiedError && e.reason === "budget";
      });
    });

    await t.step("a restart whose constructor fails counts against the budget", async () => {
      const c = await system.spawn(Counter, { start: 1, failOnRestart: true }, { maxRestarts: 2 });
      await system.kill(c);
      const e = await c.get().catch((e) => e);
      assert.ok(e instanceof ActorDiedError, String(e));
      assert.equal(e.reason, "budget");
    });

    await t.step("one_for_one restarts only the child that died", async () => {
      const sup = await system.supervise({
        strategy: "one_for_one",
        children: {
          a: child(Counter, { start: 1 }),
          b: child(Counter, { start: 2 }),
        },
      });
      const { a, b } = sup.children;
      await a.add(10);
      await b.add(10);
      await system.kill(a);
      assert.deepEqual(await incs(a, b), [1, 0]);
      assert.equal(await a.get(), 1, "a started over");
      assert.equal(await b.get(), 12, "b kept its state");
      await sup.stop();
      await assert.rejects(a.get(), ActorDiedError);
    });

    await t.step("one_for_all restarts every child", async () => {
      const sup = await system.supervise({
        strategy: "one_for_all",
        children: {
          a: child(Counter, { start: 1 }, { node: system.localNodes[0].id }),
          b: child(Counter, { start: 2 }, { node: system.localNodes[1].id }),
        },
      });
      const { a, b } = sup.children;
      await b.add(10);
      await system.kill(a);
      await waitUntil("both restarted", async () => (await incs(a, b)).every((i) => i === 1));
      assert.equal(await b.get(), 2, "b started over too");
      await sup.stop();
    });

    await t.step(
      "past its budget a supervisor fails to its parent, which restarts it",
      async () => {
        const sup = await system.supervise({
          strategy: "one_for_one",
          maxRestarts: 5,
          children: {
            inner: supervisor({
              strategy: "one_for_all",
              maxRestarts: 1,
              withinMs: 60_000,
              children: { x: child(Counter, { start: 0 }), y: child(Counter, { start: 0 }) },
            }),
            z: child(Counter, { start: 0 }),
          },
        });
        const { x, y } = sup.children.inner.children;
        const z = sup.children.z;
        await system.kill(x); // inner's one restart: x and y restart
        await waitUntil(
          "inner restarted once",
          async () => (await incs(x, y)).every((i) => i === 1),
        );
        await system.kill(x); // inner's budget is spent: the parent restarts inner as a whole
        await waitUntil(
          "parent restarted inner",
          async () => (await incs(x, y)).every((i) => i === 2),
        );
        assert.deepEqual(await incs(z), [0], "the parent's other child was not touched");
        await sup.stop();
      },
    );

    await t.step(
      "a top-level supervisor past its budget fails, and its actors are gone",
      async () => {
        const sup = await system.supervise({
          strategy: "one_for_one",
          maxRestarts: 1,
          children: { a: child(Counter, { start: 0 }) },
        });
        const { a } = sup.children;
        await system.kill(a);
        await waitUntil("restarted", async () => (await incs(a))[0] === 1);
        await system.kill(a);
        const failure = await sup.failed;
        assert.ok(failure instanceof SupervisorFailedError);
        await assert.rejects(a.get(), ActorDiedError);
      },
    );
  } finally {
    await system.shutdown();
  }
});

Deno.test("fate-sharing: SIGKILL of the process that called init() takes its server and nodes down", async () => {
  const name = uniqueSystem("fate");
  const code = `
    import { init } from "${new URL("../mod.ts", import.meta.url).href}";
    const s = await init({ system: "${name}", nodes: 2 });
    console.log(JSON.stringify({
      server: s.server.pid, watchdog: s.server.watchdogPid, dir: s.server.dir,
      nodes: s.localNodes.map((n) => n.pid),
    }));
    await new Promise(() => {});
  `;
  const owner = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", `--config=${CONFIG}`, code],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = owner.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let line = "";
  while (!line.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    line += value;
  }
  const info = JSON.parse(line) as {
    server: number;
    watchdog: number;
    dir: string;
    nodes: number[];
  };
  const pids = [info.server, info.watchdog, ...info.nodes];
  const alive = async () => {
    const live = new Set((await processes()).map((p) => p.pid));
    return pids.filter((p) => live.has(p));
  };
  assert.deepEqual(await alive(), pids, "server, watchdog and nodes run");
  owner.kill("SIGKILL");
  await owner.status;
  await reader.cancel();
  await waitUntil(
    "every process of the dead owner exited",
    async () => (await alive()).length === 0,
  );
  const left = (await processes()).filter((p) =>
    p.args.includes(name) || p.args.includes(info.dir)
  );
  assert.deepEqual(left, []);
  await waitUntil("the server's folder is removed", () => {
    try {
      Deno.statSync(info.dir);
      return false;
    } catch {
      return true;
    }
  });
});

Deno.test("shutdown leaves no process behind", async () => {
  const name = uniqueSystem("clean");
  let system: System | undefined = await init({ system: name, nodes: 2 });
  const dir = system.server!.dir;
  const ours = async () =>
    (await processes()).filter((p) => p.args.includes(name) || p.args.includes(dir));
  assert.ok((await ours()).length >= 3, "two nodes and the server are running");
  await system.shutdown();
  system = undefined;
  assert.deepEqual(await ours(), []);
});
