import assert from "node:assert/strict";
import { defaultOptions, parseFinetuneArgs, resolvedConfig, USAGE } from "../train/cli/options.ts";
import { describeRecipe, isShippedModel, recipeLines } from "../train/cli/recipe.ts";
import { llamaConfigToJson } from "../model/config.ts";
import { TINY_CONFIG } from "./support/tiny_run.ts";

const SHIPPED = "shipped model's tuned default";

/** A user's model folder: only config.json, which is all the recipe reads. */
async function userModel(config = TINY_CONFIG): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "hd-recipe-" });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(llamaConfigToJson(config)));
  return dir;
}

Deno.test("the shipped model keeps its tuned defaults, whether --model names it or not", () => {
  for (const args of [[], ["--model", "models/base"], ["--model", "./models/base/"]]) {
    const { options: o, given } = parseFinetuneArgs(args);
    const c = resolvedConfig(o);
    // The values the flags defaulted to before the recipe existed.
    assert.deepEqual(
      [c.lr, c.rank, c.alpha, c.batch_size, c.epochs, c.schedule, c.warmup_ratio],
      [5e-3, 4, 4, 16, 3, "cosine", 0.03],
    );
    assert.deepEqual([c.weight_decay, c.aggregate, c.workers, c.micro_batch], [0, "mean", 4, 4]);
    assert.deepEqual({ ...c, out: "", model: "" }, {
      ...resolvedConfig(defaultOptions()),
      out: "",
      model: "",
    });
    const r = describeRecipe(o, given);
    assert.deepEqual(r.lr, { value: 5e-3, source: SHIPPED });
    assert.deepEqual(r.rank, { value: 4, source: SHIPPED });
    assert.deepEqual(r.epochs, { value: 3, source: SHIPPED });
    assert.equal(r.workers.source, "flag default");
  }
  assert.ok(isShippedModel(defaultOptions().model));
});

Deno.test("a user's model gets the published recipe for its method, with sources", async () => {
  const dir = await userModel({ ...TINY_CONFIG, hidden_size: 128, intermediate_size: 256 });
  try {
    const { options: o, given } = parseFinetuneArgs(["--model", dir]);
    assert.deepEqual(
      [o.lr, o.rank, o.alpha, o.batchSize, o.epochs, o.schedule, o.warmupRatio, o.weightDecay],
      [2e-5, 16, 16, 128, 1, "cosine", 0.03, 0],
    );
    const r = describeRecipe(o, given);
    assert.deepEqual(r.lr, {
      value: 2e-5,
      source: "HD-PiSSA paper, Table 5, 7B recipe (LLaMA models)",
    });
    assert.deepEqual(r.rank, { value: 16, source: "HD-PiSSA paper, §5.1, 16 ranks per device" });
    assert.deepEqual(r.batch_size, { value: 128, source: "HD-PiSSA paper, Table 5" });
    assert.deepEqual(r.epochs, { value: 1, source: "HD-PiSSA paper, §5.1, one epoch" });
    const lines = recipeLines(o, r);
    assert.match(lines[0], /^defaults for .* \(hd-pissa, [\d.]+M parameters\):$/);
    assert.ok(lines.includes("  lr 2e-5 (HD-PiSSA paper, Table 5, 7B recipe (LLaMA models))"));

    const lora = parseFinetuneArgs(["--model", dir, "--method", "lora"]).options;
    assert.equal(lora.lr, 2e-4);
    assert.match(describeRecipe(lora).lr.source, /QLoRA/);
    assert.equal(parseFinetuneArgs(["--model", dir, "--method", "full"]).options.lr, 2e-5);
    // K × micro-batch = 12: 128 rounds up to 132.
    assert.equal(parseFinetuneArgs(["--model", dir, "--workers", "3"]).options.batchSize, 132);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a small model's recipe rank is capped so that K·r fits its smallest matrix", async () => {
  // TINY_CONFIG: k_proj is 16 × 32, so K = 4 workers leave r ≤ 4.
  const dir = await userModel();
  try {
    const { options: o } = parseFinetuneArgs(["--model", dir]);
    assert.equal(o.rank, 4);
    assert.equal(o.alpha, 4);
    assert.match(describeRecipe(o).rank.source, /capped.*this project's rule/);
    assert.equal(parseFinetuneArgs(["--model", dir, "--method", "pissa"]).options.rank, 16);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a flag given wins over the recipe and is marked as from the flag", async () => {
  const dir = await userModel({ ...TINY_CONFIG, hidden_size: 128, intermediate_size: 256 });
  try {
    const args = ["--model", dir, "--lr", "1e-3", "--rank", "8", "--epochs", "2", "--workers", "2"];
    const { options: o, given } = parseFinetuneArgs(args);
    assert.deepEqual([o.lr, o.rank, o.alpha, o.epochs, o.workers], [1e-3, 8, 8, 2, 2]);
    const r = describeRecipe(o, given);
    assert.deepEqual(r.lr, { value: 1e-3, source: "flag" });
    assert.deepEqual(r.rank, { value: 8, source: "flag" });
    assert.deepEqual(r.workers, { value: 2, source: "flag" });
    assert.deepEqual(r.alpha, { value: 8, source: "= rank, HD-PiSSA paper, Table 5" });
    assert.equal(r.warmup_ratio.source, "HD-PiSSA paper, Table 5");
    // On the shipped model too.
    const s = parseFinetuneArgs(["--lr", "1e-2"]);
    assert.deepEqual(describeRecipe(s.options, s.given).lr, { value: 1e-2, source: "flag" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--help says that the defaults depend on the model", () => {
  assert.match(USAGE, /Defaults depend on the model/);
  assert.match(USAGE, /--lr X +peak learning rate \(default 5e-3 for the shipped model, else by/);
});
