import assert from "node:assert/strict";
import { isLoopback } from "../cli/listen.ts";
import {
  defaultOptions,
  FINETUNE_FLAGS,
  FlagError,
  parseFinetuneArgs,
  resolvedConfig,
} from "../train/cli/options.ts";
import { validateOptionsForModel } from "../train/cli/model_checks.ts";
import { parseLlamaConfig } from "../model/config.ts";

const parse = (a: string[]) => parseFinetuneArgs(a).options;

function flagError(args: string[], flag: string | undefined, pattern: RegExp) {
  assert.throws(() => parse(args), (e: unknown) => {
    assert.ok(e instanceof FlagError, `expected FlagError, got ${e}`);
    assert.equal(e.flag, flag);
    assert.match(e.message, pattern);
    return true;
  });
}

Deno.test("no flags resolve to the documented defaults", () => {
  const o = parse([]);
  const d = defaultOptions();
  assert.equal(o.method, "hd-pissa");
  assert.equal(o.workers, 4);
  assert.equal(o.alpha, o.rank);
  assert.equal(o.mute, "exact");
  assert.match(o.out, /^runs\/\d{8}-\d{6}-hd-pissa$/);
  assert.ok(o.model.endsWith("/models/base"));
  assert.deepEqual({ ...o, out: "" }, { ...d, out: "" });
});

Deno.test("flags are parsed and typed", () => {
  const o = parse([
    "--method=lora",
    "--workers",
    "2",
    "--rank",
    "8",
    "--targets",
    "down_proj,q_proj",
    "--mute",
    "1e-16",
    "--shuffle",
    "false",
    "--max-steps",
    "7",
    "--batch-size",
    "8",
    "--micro-batch",
    "2",
    "--eval",
    "none",
    "--out",
    "/tmp/x",
  ]);
  assert.equal(o.method, "lora");
  assert.equal(o.workers, 2);
  assert.equal(o.rank, 8);
  assert.equal(o.alpha, 8, "alpha follows rank unless given");
  assert.deepEqual(o.targets, ["q_proj", "down_proj"], "targets keep model order");
  assert.equal(o.mute, 1e-16);
  assert.equal(o.shuffle, false);
  assert.equal(o.maxSteps, 7);
  assert.equal(o.eval, null);
  const c = resolvedConfig(o);
  assert.equal(c.batch_size, 8);
  assert.equal(c.micro_batch, 2);
  assert.equal(c.max_steps, 7);
  assert.equal(c.seed, 42);
  assert.ok(Object.keys(c).every((k) => !k.includes("-") && k === k.toLowerCase()));
});

Deno.test("bad flags are refused with the flag named", () => {
  flagError(["--method", "dora"], "method", /one of hd-pissa, pissa, lora, full/);
  flagError(["--workers", "0"], "workers", /integer >= 1/);
  flagError(["--rank", "2.5"], "rank", /integer/);
  flagError(["--lr", "abc"], "lr", /number/);
  flagError(["--targets", "q_proj,wq"], "targets", /unknown layer "wq"/);
  flagError(["--mute", "0"], "mute", /\[1e-38, 1\]/);
  flagError(["--shuffle", "yes"], "shuffle", /true, false/);
  flagError(["--nats", "localhost:4222"], "nats", /URL/);
  flagError(["--sync", "loose"], "sync", /auto, exact, tolerant/);
  flagError(
    ["--batch-size", "12", "--workers", "4", "--micro-batch", "2"],
    "batch-size",
    /4 × 2 = 8/,
  );
  flagError(["--frobnicate"], undefined, /frobnicate/);
  flagError(["--resume", "a", "--out", "b"], "resume", /own folder/);
});

Deno.test("model-dependent checks: K·r against every adapted matrix, seq-len", () => {
  const config = parseLlamaConfig({
    hidden_size: 16,
    intermediate_size: 40,
    num_hidden_layers: 1,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 259,
    max_position_embeddings: 64,
  });
  // k_proj is [8, 16]: K·r = 4·2 fits, 4·3 does not.
  validateOptionsForModel(parse(["--workers", "4", "--rank", "2", "--batch-size", "16"]), config);
  assert.throws(
    () => validateOptionsForModel(parse(["--rank", "3", "--batch-size", "16"]), config),
    (e: unknown) => e instanceof FlagError && /k_proj.*\[8, 16\].*at most 8/.test(e.message),
  );
  // PiSSA needs only r ≤ 8; full needs nothing.
  validateOptionsForModel(parse(["--method", "pissa", "--rank", "8"]), config);
  validateOptionsForModel(parse(["--method", "full", "--rank", "64"]), config);
  assert.throws(
    () => validateOptionsForModel(parse(["--seq-len", "65", "--method", "full"]), config),
    (e: unknown) => e instanceof FlagError && e.flag === "seq-len",
  );
});

Deno.test("--dashboard takes [HOST:]PORT; the token is kept out of config and messages", () => {
  assert.deepEqual(parse(["--dashboard", "8080"]).dashboard, { hostname: "127.0.0.1", port: 8080 });
  assert.deepEqual(parse(["--dashboard", "0.0.0.0:0"]).dashboard, { hostname: "0.0.0.0", port: 0 });
  assert.deepEqual(parse(["--dashboard", "[::1]:9"]).dashboard, { hostname: "::1", port: 9 });
  assert.equal(parse([]).dashboard, null);
  flagError(["--dashboard", "host:"], "dashboard", /PORT or HOST:PORT/);
  flagError(["--dashboard", "70000"], "dashboard", /PORT or HOST:PORT/);
  const o = parse(["--dashboard", "0.0.0.0:8080", "--dashboard-token", "s3cret"]);
  assert.equal(o.dashboardToken, "s3cret");
  assert.equal(resolvedConfig(o).dashboard_token, "(hidden)");
  assert.equal(resolvedConfig(parse([])).dashboard_token, null);
  assert.equal(FINETUNE_FLAGS.redact(o).dashboardToken, null);
  assert.ok(!JSON.stringify(resolvedConfig(o)).includes("s3cret"));
});

Deno.test("loopback hosts", () => {
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]", "LOCALHOST"]) {
    assert.ok(isLoopback(h), h);
  }
  for (const h of ["0.0.0.0", "::", "10.0.0.1", "example.com", "128.0.0.1"]) {
    assert.ok(!isLoopback(h), h);
  }
});
