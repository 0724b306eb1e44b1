// The flag-table machinery of cli/flags.ts, on a small table of every kind of flag, and the
// finetune table's derived parts that other code and report.json rely on.
import assert from "node:assert/strict";
import { z } from "zod";
import { defineFlags, FlagError, type OptionsOf } from "../cli/flags.ts";
import {
  FINETUNE_FLAGS,
  FinetuneOptionsSchema,
  parseFinetuneArgs,
  resolvedConfig,
  RESUME_KEYS,
  SUMMARY_KEYS,
  USAGE,
  workerSettings,
} from "../train/cli/options.ts";
import { WorkerMethodSettings } from "../actors/messages.ts";

const T = defineFlags({
  name: "tool",
  about: "A tool.",
  usage: "tool [flags]",
  groups: ["size", "other"],
  flags: {
    name: { type: "string", default: "x", metavar: "NAME", help: "a name", group: "other" },
    note: { type: "string", none: "none", default: "hello", help: "a note", group: "other" },
    steps: { type: "int", default: 10, min: 1, max: 100, help: "steps", group: "size" },
    width: { type: "int", default: 8, min: 2, help: "width", group: "size", definesRun: true },
    height: {
      type: "int",
      default: (o) => (o.width as number) * 2,
      defaultText: "2 × width",
      help: "height",
      group: "size",
      definesRun: true,
    },
    rate: { type: "number", default: 0.5, min: 0, max: 1, help: "rate", toWorkers: true },
    scale: { type: "number", default: 1, gt: 0, help: "scale", toWorkers: true },
    beta: { type: "number", default: 0.9, min: 0, lt: 1, help: "beta" },
    limit: { type: "int", default: null, min: 1, help: "limit", summary: true },
    fast: { type: "boolean", help: "go fast" },
    check: { type: "boolean", default: true, help: "check things" },
    shuffle: { type: "boolean", explicit: true, default: false, help: "shuffle" },
    mode: { type: "enum", choices: ["a", "b", "c"], default: "b", help: "mode", definesRun: true },
    parts: {
      type: "list",
      choices: ["p", "q", "r"],
      default: ["p", "r"],
      minItems: 1,
      itemName: "part",
      help: "parts",
    },
    include: { type: "list", repeat: true, separator: null, metavar: "DIR", help: "include" },
    level: {
      type: "custom",
      parse: (raw: string): "max" | number => {
        if (raw === "max") return "max";
        const x = Number(raw);
        if (!Number.isInteger(x)) throw new Error(`not a level: ${raw}`);
        return x;
      },
      schema: z.union([z.literal("max"), z.number().int()]),
      default: "max",
      metavar: "max|N",
      help: "level",
    },
    key: { type: "string", required: true, help: "the key" },
  },
  check(o, given) {
    if (o.fast && given.has("steps")) throw new FlagError("--fast sets its own steps", "fast");
  },
});

type Opts = OptionsOf<typeof T.flags>;
const K = ["--key", "k"];
const parse = (...a: string[]) => T.parse([...K, ...a]).options;

function refused(args: string[], flag: string | undefined, pattern: RegExp) {
  assert.throws(() => T.parse([...K, ...args]), (e: unknown) => {
    assert.ok(e instanceof FlagError, `expected FlagError, got ${e}`);
    assert.equal(e.flag, flag);
    assert.match(e.message, pattern);
    return true;
  });
}

// Compile-time: the options' type follows the table.
type Eq<A, B> = (<X>() => X extends A ? 1 : 2) extends (<X>() => X extends B ? 1 : 2) ? true
  : false;
const typed: [
  Eq<Opts["steps"], number>,
  Eq<Opts["limit"], number | null>,
  Eq<Opts["note"], string | null>,
  Eq<Opts["mode"], "a" | "b" | "c">,
  Eq<Opts["parts"], ("p" | "q" | "r")[]>,
  Eq<Opts["level"], "max" | number>,
  Eq<Opts["fast"], boolean>,
  Eq<Opts["key"], string>,
  Eq<Opts["height"], number>,
] = [true, true, true, true, true, true, true, true, true];

Deno.test("no flags: every default, computed ones from the resolved values", () => {
  assert.ok(typed.every((t) => t));
  const o = parse();
  assert.deepEqual(
    o,
    {
      name: "x",
      note: "hello",
      steps: 10,
      width: 8,
      height: 16,
      rate: 0.5,
      scale: 1,
      beta: 0.9,
      limit: null,
      fast: false,
      check: true,
      shuffle: false,
      mode: "b",
      parts: ["p", "r"],
      include: [],
      level: "max",
      key: "k",
    } satisfies Opts,
  );
  assert.equal(parse("--width", "5").height, 10, "a computed default reads the given value");
  assert.equal(parse("--width", "5", "--height", "3").height, 3, "given beats computed");
  const { key: _, ...rest } = o;
  assert.deepEqual(T.defaults(), rest, "defaults() leaves required flags out");
});

Deno.test("each type is parsed", () => {
  const o = parse(
    "--name=y",
    "--note",
    "none",
    "--width",
    "20",
    "--rate",
    "0",
    "--scale",
    "1e-3",
    "--limit",
    "7",
    "--fast",
    "--no-check",
    "--shuffle",
    "true",
    "--mode",
    "c",
    "--parts",
    " r, q ,",
    "--include",
    "a,b",
    "--include",
    "c",
    "--level",
    "3",
  );
  assert.equal(o.name, "y");
  assert.equal(o.note, null, "the none word means absent");
  assert.equal(o.width, 20);
  assert.equal(o.height, 40);
  assert.equal(o.rate, 0);
  assert.equal(o.scale, 1e-3);
  assert.equal(o.limit, 7);
  assert.equal(o.fast, true);
  assert.equal(o.check, false, "--no-<flag> turns a default-true switch off");
  assert.equal(o.shuffle, true);
  assert.equal(o.mode, "c");
  assert.deepEqual(o.parts, ["q", "r"], "a set of choices, in the choices' order");
  assert.deepEqual(o.include, ["a,b", "c"], "repeated, not split");
  assert.equal(o.level, 3);
  assert.deepEqual([...T.parse([...K, "--steps", "3"]).given].sort(), ["key", "steps"]);
  assert.deepEqual(Object.keys(o), Object.keys(parse()), "fields in table order");
});

Deno.test("bad values are refused with the flag named", () => {
  refused(["--steps", "ten"], "steps", /^--steps must be a number, got "ten"$/);
  refused(["--steps", "2.5"], "steps", /^--steps must be an integer in \[1, 100\], got 2\.5$/);
  refused(["--steps", "101"], "steps", /in \[1, 100\]/);
  refused(["--width", "1"], "width", /^--width must be an integer >= 2, got 1$/);
  refused(["--rate", "1.5"], "rate", /^--rate must be in \[0, 1\], got 1\.5$/);
  refused(["--rate", ""], "rate", /must be a number/);
  refused(["--scale", "0"], "scale", /^--scale must be positive, got 0$/);
  refused(["--beta", "1"], "beta", /^--beta must be in \[0, 1\), got 1$/);
  refused(["--mode", "d"], "mode", /^--mode must be one of a, b, c, got "d"$/);
  refused(["--shuffle", "yes"], "shuffle", /one of true, false/);
  refused(["--parts", "p,x"], "parts", /^--parts: unknown part "x" \(known: p, q, r\)$/);
  refused(["--parts", ","], "parts", /^--parts is empty$/);
  refused(["--level", "1.5"], "level", /^--level: not a level: 1\.5$/);
  refused(["--fast", "--steps", "3"], "fast", /own steps/);
  assert.throws(() => T.parse([]), (e) => e instanceof FlagError && e.flag === "key");
});

Deno.test("unknown flags, missing values and positionals are FlagErrors without a flag", () => {
  refused(["--stesp", "3"], undefined, /Unknown option '--stesp' \(see --help\)$/);
  refused(["--steps"], undefined, /--steps/);
  refused(["--steps", "-1"], undefined, /^[^\n]*'--steps' argument is ambiguous[^\n]*$/);
  refused(["extra"], undefined, /extra/);
  refused(["--fast=yes"], undefined, /--fast/);
  const P = defineFlags({
    name: "p",
    usage: "p [flags] NAME...",
    positionals: { metavar: "NAME...", help: "names" },
    flags: { json: { type: "boolean", help: "JSON lines" } },
  });
  assert.deepEqual(P.parse(["a", "--json", "b"]).positionals, ["a", "b"]);
  assert.match(P.usage, /^ {2}NAME\.\.\. +names$/m);
});

Deno.test("--help: the defaults, nothing checked", () => {
  const p = T.parse(["--help"]);
  assert.equal(p.help, true);
  assert.equal(p.options.steps, 10);
});

Deno.test("the usage lists every flag once, in its group, with its default", () => {
  const u = T.usage;
  assert.match(u, /^A tool\.\n\nusage: tool \[flags\]\n/);
  const lines = u.split("\n");
  for (const n of T.names) {
    const shown = T.spec(n).type === "boolean" && T.spec(n).default === true ? `no-${n}` : n;
    const at = lines.flatMap((l, i) => new RegExp(`^ {2}--${shown}(?![\\w-])`).test(l) ? [i] : []);
    assert.equal(at.length, 1, `--${shown} listed ${at.length} times`);
    // The flag's text runs to the next flag's line.
    let end = at[0] + 1;
    while (end < lines.length && lines[end].startsWith("   ")) end++;
    const text = lines.slice(at[0], end).join(" ").replace(/\s+/g, " ");
    const d = T.spec(n).default;
    const want = n === "height"
      ? "(default 2 × width)"
      : n === "parts"
      ? "(default p,r)"
      : n === "shuffle"
      ? "(default false)"
      : typeof d === "string" || typeof d === "number"
      ? `(default ${d})`
      : null;
    if (want) assert.ok(text.includes(want), `--${n}: ${text} lacks ${want}`);
  }
  assert.match(u, /^ {2}--key VALUE +the key \(required\)$/m);
  assert.match(u, /^ {2}--include DIR +include \(repeatable\)$/m);
  assert.ok(u.indexOf("\nsize\n") < u.indexOf("\nother\n"), "groups in the declared order");
  assert.ok(u.indexOf("--rate") < u.indexOf("\nsize\n"), "ungrouped flags first");
  assert.match(u, /^ {2}--help +this text$/m);
  assert.ok(lines.every((l) => l.length <= 100), "lines fit 100 columns");
  // Help texts start in one column.
  const cols = new Set(lines.flatMap((l) => {
    const m = l.match(/^ {2}--\S+(?: \S+)? {2,}(?=\S)/);
    return m ? [m[0].length] : [];
  }));
  assert.deepEqual([...cols], [25]);
});

Deno.test("the zod schema accepts the defaults and refuses a bad value", () => {
  const o = parse();
  assert.deepEqual(T.schema.parse(o), o);
  for (
    const bad of [
      { steps: 0 },
      { steps: 1.5 },
      { scale: 0 },
      { beta: 1 },
      { mode: "d" },
      { parts: [] },
      { parts: ["x"] },
      { level: 1.5 },
      { note: 3 },
      { name: null },
      { fast: undefined },
    ]
  ) {
    assert.equal(T.schema.safeParse({ ...o, ...bad }).success, false, JSON.stringify(bad));
  }
  assert.equal(T.schema.safeParse({ ...o, note: null, limit: null }).success, true);
});

Deno.test("marked subsets: run-defining flags, worker flags and their schema, config names", () => {
  assert.deepEqual(T.marked("definesRun"), ["width", "height", "mode"]);
  assert.deepEqual(T.marked("summary"), ["limit"]);
  const o = parse("--scale", "2");
  const w = T.pick(o, "toWorkers");
  assert.deepEqual(w, { rate: 0.5, scale: 2 });
  const ws = T.markedSchema("toWorkers");
  assert.deepEqual(ws.parse(w), w);
  assert.equal(ws.safeParse({ ...w, scale: -1 }).success, false);
  const c = T.config(o);
  assert.deepEqual(Object.keys(c), T.names.map((n) => n.replace(/-/g, "_")));
});

Deno.test("a table refuses a flag named help or not in kebab-case", () => {
  for (const n of ["help", "Steps", "max_steps", "-x"]) {
    assert.throws(() =>
      defineFlags({
        name: "bad",
        usage: "bad",
        flags: { [n]: { type: "boolean", help: "" } },
      }), new RegExp(`bad flag name "${n}"`));
  }
});

// ---------------------------------------------------------------------------------------------
// The finetune table

/** report.json's `config` keys: a contract with whatever reads the reports. */
const CONFIG_KEYS = [
  "model",
  "data",
  "eval",
  "prompt_field",
  "response_field",
  "task_field",
  "skip_malformed",
  "messages_field",
  "chat_template",
  "method",
  "compare",
  "workers",
  "rank",
  "alpha",
  "targets",
  "mute",
  "mute_rescale",
  "slice_scale",
  "aggregate",
  "optimizer",
  "lr",
  "weight_decay",
  "schedule",
  "warmup_ratio",
  "clip",
  "batch_size",
  "micro_batch",
  "seq_len",
  "recompute",
  "weights_dtype",
  "epochs",
  "max_steps",
  "seed",
  "shuffle",
  "svd",
  "svd_niter",
  "svd_threads",
  "svd_device",
  "nats",
  "store_replicas",
  "out",
  "overwrite",
  "save_dtype",
  "max_shard_size",
  "export_adapter",
  "checkpoint_every",
  "checksum_every",
  "device",
  "sync",
  "load_via",
  "resume",
  "eval_per_task",
  "eval_all",
  "max_new_tokens",
  "on_nonfinite",
  "dashboard",
  "dashboard_token",
];

Deno.test("finetune: report.json's config keys and the resume keys are as before", () => {
  const o = parseFinetuneArgs([]).options;
  assert.deepEqual(Object.keys(resolvedConfig(o)), CONFIG_KEYS);
  assert.deepEqual([...RESUME_KEYS].sort(), [
    "aggregate",
    "alpha",
    "batch_size",
    "chat_template",
    "clip",
    "data",
    "epochs",
    "lr",
    "max_steps",
    "method",
    "micro_batch",
    "model",
    "mute",
    "mute_rescale",
    "optimizer",
    "rank",
    "schedule",
    "seed",
    "seq_len",
    "shuffle",
    "slice_scale",
    "targets",
    "warmup_ratio",
    "weight_decay",
    "weights_dtype",
    "workers",
  ]);
  assert.deepEqual(
    RESUME_KEYS,
    FINETUNE_FLAGS.names.filter((n) => FINETUNE_FLAGS.spec(n).definesRun === true)
      .map((n) => n.replace(/-/g, "_")),
  );
  assert.ok(SUMMARY_KEYS.every((k) => CONFIG_KEYS.includes(k)));
});

Deno.test("finetune: the worker settings are the flags marked toWorkers, and pass the schema", () => {
  const o = parseFinetuneArgs(["--weight-decay", "0.1", "--mute", "1e-16"]).options;
  const w = workerSettings(o);
  assert.deepEqual(Object.keys(w), [
    "method",
    "workers",
    "rank",
    "alpha",
    "targets",
    "mute",
    "muteRescale",
    "sliceScale",
    "aggregate",
    "optimizer",
    "weightDecay",
    "clip",
    "recompute",
    "weightsDtype",
    "device",
  ]);
  assert.equal(w.weightDecay, 0.1);
  assert.deepEqual(WorkerMethodSettings.parse(w), w);
  assert.equal(WorkerMethodSettings.safeParse({ ...w, rank: 0 }).success, false);
  assert.deepEqual(FinetuneOptionsSchema.parse(o), o);
  assert.equal(FinetuneOptionsSchema.safeParse({ ...o, out: "" }).success, false);
  assert.equal(FinetuneOptionsSchema.safeParse({ ...o, method: "dora" }).success, false);
});

Deno.test("finetune: --out follows --resume and --compare; USAGE names every flag", () => {
  assert.equal(parseFinetuneArgs(["--resume", "runs/a"]).options.out, "runs/a");
  assert.equal(parseFinetuneArgs(["--resume", "runs/a", "--out", "runs/a"]).options.out, "runs/a");
  assert.match(parseFinetuneArgs(["--compare"]).options.out, /-compare$/);
  assert.throws(
    () => parseFinetuneArgs(["--compare", "--resume", "runs/a"]),
    (e) => e instanceof FlagError && e.flag === "compare",
  );
  assert.equal(parseFinetuneArgs(["--export-adapter", "a"]).options.exportAdapter, "a");
  assert.throws(
    () => parseFinetuneArgs(["--out", "runs/a", "--export-adapter", "runs/a/"]),
    (e) => e instanceof FlagError && e.flag === "export-adapter",
  );
  for (const n of FINETUNE_FLAGS.names) assert.match(USAGE, new RegExp(`^ {2}--${n}\\b`, "m"));
});
