/**
 * The dashboard without a browser: its page (self-contained, the script its policy allows), the
 * state's schema and the events stream during a short real run (`--dashboard`), the token it
 * needs beyond loopback, and the attach CLI joining a system by URL.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  DashboardError,
  DashboardModel,
  dashboardStateSchema,
  PAGE_SCRIPT,
  renderPage,
  runFinetuneWithDashboard,
  serveDashboard,
  summarize,
} from "../dashboard/mod.ts";
import { FlagError } from "../cli/flags.ts";
import { init } from "../runtime/mod.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";
import { CONFIG, newTag, TAG_ENV, waitUntil, within } from "./support/faults.ts";
import { Emitter } from "./support/emitter_actor.ts";

interface SseMessage {
  event: string;
  data: unknown;
}

/** Reads an events stream until it ends (or `signal` aborts), calling `on` per message. */
async function readSse(url: string, on: (m: SseMessage) => void, signal?: AbortSignal) {
  const res = await fetch(url, { signal });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
  const dec = new TextDecoder();
  let buf = "";
  try {
    for await (const chunk of res.body!) {
      buf += dec.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = "message";
        const data: string[] = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data.push(line.slice(6));
        }
        if (data.length) on({ event, data: JSON.parse(data.join("\n")) });
      }
    }
  } catch (e) {
    if (!signal?.aborted) throw e;
  }
}

Deno.test("the page is self-contained and runs only its own script", () => {
  const page = renderPage();
  // It parses (the browser test runs it).
  new Function(PAGE_SCRIPT);
  assert.ok(page.includes(`<script>${PAGE_SCRIPT}</script>`));
  assert.ok(!/https?:\/\//.test(page), "nothing from elsewhere");
  assert.ok(!/\b(src|href)=/.test(page), "no external resources");
});

Deno.test("summary: ETA, tokens/s and the phase split from the latest steps", () => {
  const step = (i: number) => ({
    step: i,
    loss: 2 - i / 10,
    lr: 1e-3,
    ms: 200,
    bytes_sent: 100,
    bytes_received: 400,
    tokens: 1000,
    compute_ms: 150,
    comm_ms: 20,
    update_ms: 30,
  });
  const s = summarize([0, 1, 2, 3].map(step), 10);
  assert.equal(s.step, 4);
  assert.equal(s.etaMs, 6 * 200);
  assert.equal(s.tokensPerSec, 5000);
  assert.equal(s.computeMs, 150);
  assert.equal(s.loss, 2 - 0.3);
  assert.equal(summarize([], null).etaMs, null);
});

Deno.test("the model follows a run's events: rollbacks drop steps, a new run becomes current", async () => {
  const system = await init({});
  const model = new DashboardModel(system);
  try {
    const rec = (step: number, loss: number) => ({
      step,
      loss,
      lr: 1e-3,
      ms: 10,
      bytes_sent: 1,
      bytes_received: 2,
      tokens: 64,
      compute_ms: 5,
      comm_ms: 1,
      update_ms: 2,
      rejected: 0,
    });
    const run = (job: string) => ({
      job,
      method: "lora",
      total_steps: 6,
      next_step: 0,
      generation: 0,
      workers: 2,
      devices: ["cpu"],
      config: { rank: 4 },
      started_at: new Date().toISOString(),
      resumed: false,
      steps: [],
    });
    const step = (job: string, s: number, loss: number, generation = 0) =>
      system.emit("train.step", { job, total_steps: 6, generation, record: rec(s, loss) });
    system.emit("train.run", run("a"));
    for (let s = 0; s < 5; s++) step("a", s, 5 - s / 10);
    system.emit("train.rollback", { job: "a", generation: 1, next_step: 3, cause: "x" });
    step("a", 3, 1, 1);
    step("a", 4, 1, 1);
    system.emit("train.step", { job: "a", record: { step: "bad" } });
    system.emit("train.eval", { job: "a", phase: "after", score: { overall: 0.5, tasks: {} } });
    await waitUntil("the events arrived", () => !!model.snapshot().training?.evals.after);
    let st = dashboardStateSchema.parse(model.snapshot());
    assert.deepEqual(st.training!.steps.map((r) => [r.step, r.loss]), [
      [0, 5],
      [1, 4.9],
      [2, 4.8],
      [3, 1],
      [4, 1],
    ]);
    assert.equal(st.training!.generation, 1);
    assert.equal(st.training!.rollbacks.length, 1);
    assert.equal(st.training!.summary.step, 5);
    assert.equal(model.malformed, 1);
    assert.ok(!st.events.some((e) => e.kind === "train.step"), "steps are not in the events");
    system.emit("train.run", run("b"));
    step("b", 0, 3);
    await waitUntil("run b is current", () => model.snapshot().training?.job === "b");
    st = dashboardStateSchema.parse(model.snapshot({ steps: false }));
    assert.deepEqual(st.training!.steps, []);
    assert.equal(st.training!.summary.step, 1);
    assert.deepEqual(st.earlier.map((r) => [r.job, r.steps]), [["a", 5]]);
  } finally {
    model.close();
    await system.shutdown();
  }
});

Deno.test("--dashboard: the state's schema and the events stream during a short real run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-dash-api-" });
  try {
    await writeTinySetup(dir);
    const steps = 6;
    const o = tinyOptions(dir, {
      maxSteps: steps,
      dashboard: { hostname: "127.0.0.1", port: 0 },
    });
    const messages: SseMessage[] = [];
    let reading: Promise<void> | undefined;
    let midRun: Promise<unknown> | undefined;
    let url = "";
    const [report] = await within(
      runFinetuneWithDashboard(o, {
        isTty: false,
        progress: () => {},
        log: (line) => {
          const m = /^dashboard: (http:\S+)/.exec(line);
          if (!m) return;
          url = m[1];
          reading = readSse(`${url}api/events`, (msg) => {
            messages.push(msg);
            // The state, once steps are under way.
            const d = msg.data as { kind?: string; data?: { record?: { step: number } } };
            if (!midRun && d.kind === "train.step" && d.data?.record?.step === 2) {
              midRun = fetch(`${url}api/state`).then((r) => r.json());
            }
          });
        },
      }),
      120_000,
      "the run",
    );
    assert.ok(url, "the job printed the dashboard's address");
    // The stream ends when the dashboard closes with the job.
    await within(reading!, 10_000, "the end of the stream");
    assert.equal(report.steps.length, steps);

    assert.equal(messages[0].event, "hello");
    const hello = dashboardStateSchema.parse(messages[0].data);
    assert.equal(hello.version, 1);
    const state = dashboardStateSchema.parse(await midRun);
    assert.ok(state.training, "a run in the state");
    assert.ok(state.training.steps.length >= 3, `steps so far: ${state.training.steps.length}`);
    assert.equal(state.training.totalSteps, steps);
    assert.equal(state.training.method, "hd-pissa");
    assert.ok(state.training.evals.before, "the evaluation before");
    const types = state.cluster.actors.filter((a) => a.state === "up").map((a) => a.type).sort();
    assert.deepEqual(types, ["Driver", "GpuWorker", "GpuWorker"]);
    assert.ok(state.cluster.nodes.length >= 3, "this process and the two workers' nodes");

    const records = messages.filter((m) => m.event === "event").map((m) =>
      m.data as { type: string; kind?: string; data: Record<string, unknown> }
    );
    const stepsSeen = records.filter((r) => r.kind === "train.step")
      .map((r) => (r.data.record as { step: number }).step);
    assert.deepEqual(stepsSeen, [...Array(steps).keys()], "every step, once, in order");
    const kinds = new Set(records.map((r) => r.kind));
    for (const k of ["train.run", "train.eval", "train.finished", "train.log"]) {
      assert.ok(kinds.has(k), `a ${k} event`);
    }
    const finished = records.find((r) => r.kind === "train.finished")!;
    const spectra = finished.data.spectra as Record<string, number[]>;
    assert.ok(Object.keys(spectra).length > 0, "the spectra at the end");
    assert.deepEqual(Object.keys(spectra), Object.keys(report.spectra ?? {}));
    assert.ok(records.some((r) => r.type === "actor_up"), "actors coming up");
    assert.ok(messages.some((m) => m.event === "state"), "periodic states");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("beyond loopback the dashboard needs a token; on loopback only loopback names", async () => {
  const system = await init({});
  const token = "a-token-of-test-2718";
  try {
    await assert.rejects(
      serveDashboard(system, { hostname: "0.0.0.0", port: 0 }),
      (e) => e instanceof DashboardError && /token/.test(e.message),
    );
    const dash = await serveDashboard(system, { hostname: "0.0.0.0", port: 0, token });
    try {
      const at = `http://127.0.0.1:${dash.port}`;
      for (const path of ["/", "/api/state", "/api/events"]) {
        const r = await fetch(`${at}${path}`);
        await r.body?.cancel();
        assert.equal(r.status, 401, path);
        assert.match(r.headers.get("www-authenticate") ?? "", /^Bearer/);
      }
      const wrong = await fetch(`${at}/api/state?token=nope-${token}`);
      await wrong.body?.cancel();
      assert.equal(wrong.status, 401);
      const byQuery = await fetch(`${at}/api/state?token=${token}`);
      assert.equal(byQuery.status, 200);
      const state = dashboardStateSchema.parse(await byQuery.json());
      assert.equal(state.cluster.node, system.nodeId);
      const byHeader = await fetch(`${at}/`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(byHeader.status, 200);
      const page = await byHeader.text();
      const csp = byHeader.headers.get("content-security-policy") ?? "";
      const hash = createHash("sha256").update(PAGE_SCRIPT).digest("base64");
      assert.ok(csp.includes(`'sha256-${hash}'`), "the policy allows the page's script");
      assert.ok(page.includes("HD-PiSSA dashboard"));
      const post = await fetch(`${at}/api/state?token=${token}`, { method: "POST" });
      await post.body?.cancel();
      assert.equal(post.status, 405, "read-only");
    } finally {
      await dash.close();
    }

    // Loopback without a token: a request under another name (DNS rebinding) is refused.
    const local = await serveDashboard(system, { hostname: "127.0.0.1", port: 0 });
    try {
      const ok = await fetch(`http://127.0.0.1:${local.port}/api/state`);
      assert.equal(ok.status, 200);
      await ok.body?.cancel();
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: local.port });
      await conn.write(
        new TextEncoder().encode(
          `GET /api/state HTTP/1.1\r\nHost: evil.example:${local.port}\r\nConnection: close\r\n\r\n`,
        ),
      );
      const reply = new TextDecoder().decode(await new Response(conn.readable).bytes());
      assert.match(reply, /^HTTP\/1\.1 403/);
    } finally {
      await local.close();
    }
  } finally {
    await system.shutdown();
  }
});

Deno.test("finetune refuses a dashboard beyond loopback without a token, before anything", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-dash-token-" });
  const saved = Deno.env.get("HD_DASHBOARD_TOKEN");
  Deno.env.delete("HD_DASHBOARD_TOKEN");
  try {
    const o = tinyOptions(dir, { dashboard: { hostname: "0.0.0.0", port: 0 } });
    await assert.rejects(
      runFinetuneWithDashboard(o, { log: () => {} }),
      (e) => e instanceof FlagError && e.flag === "dashboard-token",
    );
    await assert.rejects(Deno.stat(o.out), Deno.errors.NotFound, "nothing was created");
    const cli = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        `--config=${CONFIG}`,
        new URL("../examples/finetune.ts", import.meta.url).pathname,
        "--dashboard",
        "0.0.0.0:0",
        "--out",
        `${dir}/cli`,
      ],
      env: { [TAG_ENV]: newTag() },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(cli.code, 2);
    assert.match(new TextDecoder().decode(cli.stderr), /^finetune: .*--dashboard-token/);
  } finally {
    if (saved !== undefined) Deno.env.set("HD_DASHBOARD_TOKEN", saved);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task dashboard joins a system by URL and serves what its processes publish", async () => {
  const owner = await init({ nodes: 1 });
  const tag = newTag();
  const cli = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      `--config=${CONFIG}`,
      new URL("../examples/dashboard.ts", import.meta.url).pathname,
      "--nats",
      owner.servers.join(","),
      "--listen",
      "127.0.0.1:0",
    ],
    env: {
      NATS_USER: owner.credentials.user!,
      NATS_PASSWORD: owner.credentials.pass!,
      [TAG_ENV]: tag,
    },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const err: string[] = [];
  const reading = (async () => {
    const dec = new TextDecoder();
    for await (const c of cli.stderr) err.push(dec.decode(c));
  })();
  try {
    await waitUntil("the dashboard's address", () => /http:\/\/\S+/.test(err.join("")), 30_000);
    const url = /(http:\/\/\S+)/.exec(err.join(""))![1];
    const em = await owner.spawn(Emitter, {}, { name: "emitter" });
    await waitUntil("the emitter shows", async () => {
      const s = await (await fetch(`${url}api/state`)).json();
      return s.cluster.actors.some((a: { id: string; state: string }) =>
        a.id === "emitter" && a.state === "up"
      );
    }, 10_000);
    await em.emit([{ kind: "app.hello", data: { n: 1 } }]);
    let state = dashboardStateSchema.parse(await (await fetch(`${url}api/state`)).json());
    await waitUntil("the event shows", async () => {
      state = dashboardStateSchema.parse(await (await fetch(`${url}api/state`)).json());
      return state.events.some((e) => e.kind === "app.hello" && e.source === "emitter");
    }, 5000);
    assert.ok(state.cluster.node.startsWith("dashboard-"), "it is a process of its own");
    await waitUntil("every process shows, by its heartbeat", async () => {
      const s = dashboardStateSchema.parse(await (await fetch(`${url}api/state`)).json());
      const ids = s.cluster.nodes.map((n) => n.id);
      return ids.includes(owner.nodeId) && ids.includes(owner.localNodes[0].id);
    }, 5000);
  } finally {
    try {
      cli.kill("SIGTERM");
    } catch { /* exited */ }
    const status = await cli.status;
    await reading;
    await owner.shutdown();
    assert.equal(status.code, 0, err.join(""));
  }
});
