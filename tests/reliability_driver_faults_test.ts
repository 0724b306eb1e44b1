/**
 * The driver's process dies: the finetune CLI (a subprocess, hosting the Driver) is SIGKILLed
 * mid-run, right after its first checkpoint. Its nats-server and worker nodes must exit with it,
 * `--resume` must finish with the weights of an uninterrupted run, and a checkpoint whose bytes
 * no longer match their digests must be refused on resume with an error naming the file.
 */
import assert from "node:assert/strict";
import { runFinetune } from "../actors/job.ts";
import { readReportJson } from "../train/report/report.ts";
import { tinyOptions, writeTinySetup } from "./support/tiny_run.ts";
import {
  CONFIG,
  FINETUNE,
  leftovers,
  newTag,
  processesWithTag,
  runCli,
  sameFile,
  TAG_ENV,
  tinyArgs,
  waitUntil,
} from "./support/faults.ts";

const STEPS = 8;
const quiet = { log: () => {}, isTty: false, progress: () => {} };

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("SIGKILL of the driver (the CLI) mid-run, then --resume: same bits; corrupt checkpoints refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hd-dkill-" });
  const tag = newTag();
  try {
    await writeTinySetup(dir);
    const clean = tinyOptions(dir, {
      out: `${dir}/clean`,
      eval: null,
      maxSteps: STEPS,
      checkpointEvery: 2,
    });
    await runFinetune(clean, quiet);

    const out = `${dir}/run`;
    const args = tinyArgs(dir, out, STEPS, ["--checkpoint-every", "2"]);
    const cli = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", `--config=${CONFIG}`, FINETUNE, ...args],
      env: { [TAG_ENV]: tag },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    let status: Deno.CommandStatus | undefined;
    cli.status.then((s) => status = s);
    await waitUntil("the first checkpoint is written", () => {
      if (status) throw new Error(`the CLI exited early (${status.code})`);
      return exists(`${out}/checkpoints/step-000001/state.json`);
    }, 120_000);
    const before = processesWithTag(tag).length;
    cli.kill("SIGKILL");
    const st = await cli.status;
    assert.equal(st.signal, "SIGKILL");
    assert.ok(!exists(`${out}/report.json`), "the run was cut short");
    assert.ok(before >= 4, `the CLI, its server, watchdog and nodes ran (${before} processes)`);
    // Fate-sharing: the server and the nodes go when their owner dies.
    const killedAt = performance.now();
    assert.deepEqual(await leftovers(tag), [], "nothing of the killed run is left running");
    console.log(
      `  ${before - 1} processes of the killed CLI exited ${
        (performance.now() - killedAt).toFixed(0)
      } ms after it`,
    );

    const resumed = await runCli([...args, "--resume", out], tag);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(resumed.stderr, /resumed from .*step-0000\d\d at step \d/);
    const report = await readReportJson(`${out}/report.json`);
    assert.deepEqual(report.steps.map((s) => s.step), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.ok(
      await sameFile(`${clean.out}/model.safetensors`, `${out}/model.safetensors`),
      "the resumed run ends on the uninterrupted run's bits",
    );

    // One flipped byte in the newest checkpoint: refused, naming the file.
    const ckpts = [...Deno.readDirSync(`${out}/checkpoints`)].map((e) => e.name)
      .filter((n) => n.startsWith("step-")).sort();
    const newest = `${out}/checkpoints/${ckpts.at(-1)}`;
    const shared = await Deno.readFile(`${newest}/shared.safetensors`);
    shared[shared.length - 3] ^= 0x10;
    await Deno.writeFile(`${newest}/shared.safetensors`, shared);
    const corrupt = await runCli([...args, "--resume", out], tag);
    assert.equal(corrupt.code, 1);
    assert.match(
      corrupt.stderr,
      /finetune: CheckpointError: .*shared\.safetensors is corrupt: its SHA-256 is [0-9a-f]+…, the checkpoint recorded [0-9a-f]+…/,
    );
    // A state.json whose recorded digest was edited is refused the same way.
    shared[shared.length - 3] ^= 0x10;
    await Deno.writeFile(`${newest}/shared.safetensors`, shared);
    const state = JSON.parse(await Deno.readTextFile(`${newest}/state.json`));
    state.files["worker-1.safetensors"] = "0".repeat(64);
    await Deno.writeTextFile(`${newest}/state.json`, JSON.stringify(state));
    const edited = await runCli([...args, "--resume", out], tag);
    assert.equal(edited.code, 1);
    assert.match(edited.stderr, /CheckpointError: .*worker-1\.safetensors is corrupt/);
    assert.deepEqual(await leftovers(tag), []);
  } finally {
    for (const p of processesWithTag(tag)) {
      try {
        Deno.kill(p, "SIGKILL");
      } catch { /* gone */ }
    }
    await Deno.remove(dir, { recursive: true });
  }
});
