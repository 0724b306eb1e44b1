// bench/gpu_machine.sh end to end in its smallest mode on the adapter at hand (lavapipe here):
// every section is printed in order, the kernels and model figures are measured, the
// correctness suite passes, the logits for the transformers comparison are written, and a part
// that cannot run says "not measured: <reason>" instead of disappearing.
import assert from "node:assert/strict";

const SCRIPT = new URL("../bench/gpu_machine.sh", import.meta.url).pathname;

Deno.test("gpu_machine.sh --smoke prints every section, measured or 'not measured: <reason>'", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpu-machine-" });
  try {
    const out = await new Deno.Command("bash", {
      args: [SCRIPT, "--smoke"],
      env: { GPU_RUN_DIR: dir },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    const err = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, `exit ${out.code}\n${text}\n${err}`);

    // The sections, in this order.
    const sections = [
      "== setup",
      "== kernels: matmul f32/f16, attention, cross-entropy (machine-small)",
      "== kernel correctness suite on the default adapter",
      "== model: HD-PiSSA steps K=1 and K=2",
      "== PyTorch eager on CUDA: the same model's LoRA step",
      "== transformers: our output folder's logits against ours",
      "== done in",
    ];
    let at = -1;
    for (const s of sections) {
      const i = text.indexOf(s);
      assert.ok(i > at, `section '${s}' missing or out of order:\n${text}`);
      at = i;
    }
    const part = (from: string, to: string) => text.slice(text.indexOf(from), text.indexOf(to));

    // Kernel figures: numbers, not notes.
    const kernels = part("== kernels", "== kernel correctness");
    for (
      const name of [
        "matmul f32 NT 256³",
        "matmul f16 NT 512³",
        "attention forward",
        "attention backward",
        "cross-entropy loss+grad",
      ]
    ) {
      const line = kernels.split("\n").find((l) => l.includes(name));
      assert.ok(line, `no '${name}' figure:\n${kernels}`);
      const value = Number(line.trim().split(/\s+/).at(-2));
      assert.ok(value > 0 && Number.isFinite(value), `'${line}' has no positive value`);
    }

    const suite = part("== kernel correctness", "== model");
    assert.match(suite, /correctness suite: PASS/, suite);
    assert.match(suite, /^ok \| \d+ passed \| 0 failed/m, suite);

    const model = part("== model", "== PyTorch");
    for (const K of [1, 2]) {
      const m = new RegExp(`hd-pissa K=${K}: step ([0-9.]+) ms \\((\\d+) tokens/s\\)`).exec(model);
      assert.ok(m && Number(m[1]) > 0 && Number(m[2]) > 0, `K=${K} step:\n${model}`);
      assert.match(model, new RegExp(`K=${K}: forward\\+backward\\+optimizer [0-9.]+ ms`));
    }
    assert.match(model, /logits: written \(16 positions\)/);
    const meta = JSON.parse(await Deno.readTextFile(`${dir}/model/logits.json`));
    const logits = new Float32Array((await Deno.readFile(`${dir}/model/logits.f32`)).buffer);
    assert.equal(logits.length, meta.shape[0] * meta.shape[1]);
    assert.ok(logits.every(Number.isFinite), "logits are finite");

    // The PyTorch parts: a result, or why not (here: no transformers/peft, no CUDA).
    for (const [from, to] of [["== PyTorch", "== transformers"], ["== transformers", "== done"]]) {
      const body = part(from, to).split("\n").slice(1).join("\n").trim();
      assert.ok(
        /^not measured: \S.+/.test(body) || /^\{.*\}/.test(body),
        `'${from}' has neither a result nor 'not measured: <reason>':\n${body}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
