/**
 * Checkpoints under faults: a process writing checkpoints in a loop is SIGKILLed at random
 * moments (mid-file, mid-rename, mid-prune, while replacing a checkpoint of the same step, as
 * after a rollback: every trial's writer starts again at step 0); whatever it leaves behind,
 * every folder taken as a checkpoint is complete and verified, the latest is never older than
 * the last one reported done, and the next write clears the half-written leftovers.
 */
import assert from "node:assert/strict";
import {
  CheckpointError,
  latestCheckpoint,
  listCheckpoints,
  readCheckpoint,
  writeCheckpoint,
} from "../train/checkpoint/checkpoint.ts";
import { BatchPlan } from "../train/data/batching.ts";
import { CONFIG } from "./support/faults.ts";

const CHECKPOINT = new URL("../train/checkpoint/checkpoint.ts", import.meta.url).href;

// Writes checkpoints from step args[1] on, of three 3 MiB random files each, printing each step
// done.
const WRITER = `
import { writeCheckpoint } from "${CHECKPOINT}";
const root = Deno.args[0];
const file = () => {
  const b = new Uint8Array(3 * 1024 * 1024);
  for (let o = 0; o < b.length; o += 65536) crypto.getRandomValues(b.subarray(o, o + 65536));
  return b;
};
const enc = new TextEncoder();
for (let step = Number(Deno.args[1]); ; step++) {
  const files = new Map([["shared.safetensors", file()], ["worker-0.safetensors", file()],
    ["worker-1.safetensors", file()]]);
  await writeCheckpoint(root, { applied_step: step, generation: 0, method: "hd-pissa", workers: 2,
    cursor: { epoch: 0, index: 0 }, seed: 1, config: {}, steps: [] }, files);
  Deno.stdout.writeSync(enc.encode(step + "\\n"));
}
`;

Deno.test("a checkpoint writer killed at random moments never leaves a partial checkpoint as the latest (nor half-deletes one it replaces)", async () => {
  const root = await Deno.makeTempDir({ prefix: "hd-ckpt-" });
  try {
    let partials = 0;
    let latestStep = 0;
    for (let trial = 0; trial < 8; trial++) {
      // Each writer starts one step below the latest checkpoint: it first replaces that one, as
      // a run does after rolling back to an older checkpoint.
      const start = Math.max(0, latestStep - 1);
      const child = new Deno.Command(Deno.execPath(), {
        args: ["eval", "--quiet", `--config=${CONFIG}`, WRITER, root, String(start)],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let text = "";
      let lastDone = -1;
      // Let it finish a first checkpoint, then kill it at a random moment of a later one.
      while (!text.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        text += value;
      }
      await new Promise((r) => setTimeout(r, Math.random() * 150));
      child.kill("SIGKILL");
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += value;
      }
      await child.status;
      for (const l of text.split("\n")) if (/^\d+$/.test(l)) lastDone = Math.max(lastDone, +l);
      assert.ok(lastDone >= 0);

      const names = [...Deno.readDirSync(root)].map((e) => e.name);
      if (names.some((n) => n.startsWith(".tmp-") || n.startsWith(".old-"))) partials++;
      for (const d of await listCheckpoints(root)) await readCheckpoint(d); // complete, verified
      const latest = await latestCheckpoint(root);
      assert.ok(latest, "a checkpoint is there");
      assert.ok(
        latest.state.applied_step >= lastDone,
        `latest ${latest.state.applied_step}, last reported done ${lastDone}`,
      );
      latestStep = latest.state.applied_step;
    }
    console.log(`  ${partials} of 8 kills left a half-written folder behind (never listed)`);

    // The next write removes half-written folders.
    await Deno.mkdir(`${root}/.tmp-99-deadbeef`);
    await Deno.writeFile(`${root}/.tmp-99-deadbeef/shared.safetensors`, new Uint8Array(10));
    const latest = (await latestCheckpoint(root))!;
    await writeCheckpoint(
      root,
      { ...latest.state, applied_step: latest.state.applied_step + 1 },
      new Map([["shared.safetensors", new Uint8Array([1, 2, 3])]]),
    );
    assert.deepEqual([...Deno.readDirSync(root)].filter((e) => e.name.startsWith(".")), []);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a checkpoint folder that lost a file or its state is refused with a clear error", async () => {
  const root = await Deno.makeTempDir({ prefix: "hd-ckpt-" });
  try {
    const state = {
      applied_step: 3,
      generation: 0,
      method: "hd-pissa",
      workers: 1,
      cursor: new BatchPlan({
        numExamples: 8,
        batchSize: 4,
        workers: 1,
        microBatch: 4,
        epochs: 1,
        shuffle: false,
        seed: 1,
      })
        .cursor(1),
      seed: 1,
      config: {},
      steps: [],
    };
    const dir = await writeCheckpoint(root, state, new Map([["a.bin", new Uint8Array([5, 6])]]));
    await Deno.remove(`${dir}/a.bin`);
    await assert.rejects(latestCheckpoint(root), (e: Error) => {
      assert.ok(e instanceof CheckpointError);
      assert.match(e.message, /step-000003\/a\.bin: /);
      return true;
    });
    await Deno.remove(`${dir}/state.json`);
    await assert.rejects(latestCheckpoint(root), /step-000003\/state\.json: /);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
