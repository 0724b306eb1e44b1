/**
 * The dashboard in a real headless browser (Debian's chromium, over the DevTools protocol) during
 * a short real run: the step counter advances, the loss chart gets points, and a worker whose
 * node is SIGKILLed mid-run shows as a death and then as a restart; the page runs without an
 * error (exceptions, console errors, Content-Security-Policy refusals). Screenshots are kept in
 * runs/dashboard-test/ (git-ignored); their paths are printed.
 */
import assert from "node:assert/strict";
import { runOne, startSystem } from "../actors/job.ts";
import { type Dashboard, serveDashboard } from "../dashboard/mod.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";
import { nodeOf, tapCalls, within } from "./support/faults.ts";
import { Browser } from "./support/browser.ts";

const STEPS = 16;
const ARTIFACTS = new URL("../runs/dashboard-test/", import.meta.url).pathname;

interface Seen {
  type: string;
  kind?: string;
  actor?: string;
  inc?: string;
}

const EVENTS = `[...document.querySelectorAll("#events li")].reverse().map((li) => ({
  type: li.dataset.type, kind: li.dataset.kind, actor: li.dataset.actor, inc: li.dataset.inc }))`;

Deno.test("the dashboard in a headless browser: steps, loss, a worker's death and restart", async () => {
  const browser = await Browser.launch();
  const dir = await Deno.makeTempDir({ prefix: "hd-dash-browser-" });
  await writeTinySetup(dir);
  const o = tinyOptions(dir, { maxSteps: STEPS, checkpointEvery: 4, checksumEvery: 4 });
  await Deno.mkdir(o.out, { recursive: true });
  await Deno.mkdir(ARTIFACTS, { recursive: true });
  const system = await startSystem(o);
  let dashboard: Dashboard | undefined;
  let stopTap = () => {};
  try {
    dashboard = await serveDashboard(system, { hostname: "127.0.0.1", port: 0 });
    const page = await browser.open(dashboard.url, 1280, 900);
    await page.waitFor(
      "the page is live",
      `document.querySelector("#conn")?.dataset.state === "live"`,
    );
    // Once the page has shown a few steps, worker 1's node is killed as its next step arrives.
    const counters: string[] = [];
    let killedAt = -1;
    stopTap = tapCalls(system, (c) => {
      if (killedAt >= 0 || c.method !== "step" || !c.actor.endsWith("-w1")) return;
      const step = (c.value as { step: number }).step;
      if (step < 5 || step > STEPS - 4 || counters.length < 2) return;
      const node = nodeOf(system, c.actor);
      if (!node) return;
      killedAt = step;
      node.kill("SIGKILL");
    });
    const quiet = { log: () => {}, isTty: false, progress: () => {} };
    const run = runOne(system, o, quiet);
    let settled = false;
    run.then(() => settled = true, () => settled = true);
    let live = false;
    while (!settled) {
      const v = await page.evaluate<string>(`document.querySelector("#step").textContent`);
      if (counters.at(-1) !== v) counters.push(v);
      // A picture mid-run, a few steps after the restart.
      if (!live && killedAt >= 0 && Number(v.split(" / ")[0]) >= killedAt + 4) {
        const seen = await page.evaluate<Seen[]>(EVENTS);
        if (seen.some((e) => e.type === "actor_up" && e.inc === "1")) {
          live = true;
          // At 0.75 scale: the picture the README shows.
          await Deno.writeFile(`${ARTIFACTS}dashboard-live.png`, await page.screenshot(0.75));
          console.log(`  screenshot: ${ARTIFACTS}dashboard-live.png`);
        }
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const report = await within(run, 120_000, "the run");

    // The counter advanced through the run, to the end.
    const done = counters.map((c) => Number(c.split(" / ")[0])).filter(Number.isFinite);
    assert.ok(new Set(done).size >= 4, `the step counter advanced: ${counters.join(", ")}`);
    await page.waitFor(
      "the last step",
      `document.querySelector("#step").textContent === "${STEPS} / ${STEPS}"`,
    );
    // The loss chart has a point per step (the steps after the rollback replaced).
    const points = await page.evaluate<string>(
      `document.querySelector("#loss-chart svg").dataset.points`,
    );
    assert.equal(Number(points), STEPS);
    // The worker's death, then its restart, as events and in the actors table.
    assert.ok(killedAt >= 5, "worker 1's node was killed mid-run, once the page showed steps");
    assert.equal((report as { recoveries?: number }).recoveries, 1);
    const seen = await page.evaluate<Seen[]>(EVENTS);
    const death = seen.findIndex((e) => e.type === "actor_down" && e.actor?.endsWith("-w1"));
    const restart = seen.findIndex((e) =>
      e.type === "actor_up" && e.actor?.endsWith("-w1") && e.inc === "1"
    );
    assert.ok(death >= 0, `a death in the events: ${JSON.stringify(seen)}`);
    assert.ok(restart > death, "then a restart");
    assert.ok(seen.some((e) => e.kind === "train.rollback"), "and the rollback");
    const w1 = await page.evaluate<{ inc?: string }>(
      `({ ...document.querySelector('#actors tr[data-actor$="-w1"]')?.dataset })`,
    );
    assert.equal(w1.inc, "1", "the actors table counts the restart");
    // The end of the run: evaluation and spectra.
    await page.waitFor("the spectra", `!!document.querySelector("#spectra svg")`);
    assert.ok(await page.evaluate<boolean>(`!!document.querySelector("#eval-table")`));
    await Deno.writeFile(`${ARTIFACTS}dashboard-end.png`, await page.screenshot());
    console.log(`  screenshot: ${ARTIFACTS}dashboard-end.png`);
    assert.deepEqual(page.errors, [], "the page ran without errors");
  } finally {
    stopTap();
    await dashboard?.close();
    await system.shutdown();
    await browser.close();
    await Deno.remove(dir, { recursive: true });
  }
});
