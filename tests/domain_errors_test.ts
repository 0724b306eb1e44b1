// The project's errors share one base (DomainError: the name from the class, a code per class),
// and every error the training actors declare crosses the wire as itself, fields included: one
// example of each is sent through the same encoding a reply uses and rebuilt as the caller would.
import assert from "node:assert/strict";
import { DomainError } from "../core/errors.ts";
import { Driver, TrainingError, WorkersUnavailableError } from "../actors/driver.ts";
import { GpuWorker, StepProtocolError, UpdateMissingError } from "../actors/gpu_worker.ts";
import { OutputFolderError } from "../actors/job.ts";
import { StudyError } from "../train/study/errors.ts";
import { memoryPlan, MemoryPlanError } from "../train/plan/memory.ts";
import { DashboardError } from "../dashboard/server.ts";
import { declaredWire, errorOfReply } from "../runtime/declared_errors.ts";
import { init } from "../runtime/mod.ts";
import {
  DeviceLostError,
  GpuClosedError,
  GpuError,
  GpuOutOfMemoryError,
  GpuShapeError,
  GpuValidationError,
  KernelArgumentError,
  KernelLoopBoundError,
  NoAdapterError,
} from "../gpu/errors.ts";
import {
  LlamaError,
  LlamaInputError,
  LlamaOptionsError,
  LlamaWeightError,
} from "../model/llama_errors.ts";
import { ConfigError, type LlamaConfig } from "../model/config.ts";
import { TokenizerError } from "../model/tokenizer.ts";
import { ReferenceInputError } from "../model/reference/llama.ts";
import {
  MissingShardError,
  MissingTensorError,
  SafetensorsError,
  SafetensorsFormatError,
  ShardIndexError,
  TensorShapeError,
  UnsupportedDtypeError,
} from "../model/safetensors.ts";
import {
  BatchConfigError,
  ChatTemplateError,
  DataError,
  DataFileError,
  EmptyDatasetError,
  JsonlLineError,
} from "../train/data/errors.ts";
import { FlagError } from "../train/cli/options.ts";
import { ProgressError } from "../train/cli/progress.ts";
import { ScheduleError } from "../train/optim/schedule.ts";
import { CheckpointError } from "../train/checkpoint/checkpoint.ts";
import { ContributionError } from "../train/methods/combine.ts";
import { WorkerStateError } from "../train/methods/worker.ts";
import { AdapterInitError } from "../train/methods/adapter_init.ts";
import { SvdError } from "../train/linalg/svd.ts";
import { EffectiveRankError } from "../train/report/effective_rank.ts";
import { ReportError } from "../train/report/report.ts";
import { EvaluationError } from "../train/eval/evaluate.ts";
import { EvalScoreError } from "../train/eval/score.ts";
import { TaskGenerationError } from "../train/datagen/split.ts";
import { PretrainError } from "../train/pretrain/pretrain.ts";
import { SamplingError } from "../model/sampling.ts";
import { WeightDigestError } from "../model/folder_digest.ts";
import { StoredWeightsError } from "../actors/stored_weights.ts";
import { StoredObjectError } from "../actors/stored_object.ts";
import { InferenceError } from "../infer/session.ts";
import { MethodSettingsError } from "../train/methods/method.ts";
import { UnknownMethodError } from "../train/methods/registry.ts";
import {
  AdapterExportError,
  AdapterMissingTensorError,
  AdapterModelMismatchError,
  AdapterOutputError,
  AdapterRankError,
} from "../train/export/errors.ts";

/** One instance of every exported error class of the project, with its fields set. */
const GQA_PLAN: LlamaConfig = {
  hidden_size: 8,
  intermediate_size: 16,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  vocab_size: 11,
  rms_norm_eps: 1e-5,
  rope_theta: 500,
  max_position_embeddings: 16,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  pad_token_id: 0,
};

const SAMPLES: DomainError[] = [
  new MemoryPlanError(
    "the run does not fit",
    memoryPlan({
      config: GQA_PLAN,
      method: "lora",
      workers: 1,
      rank: 1,
      targets: ["q_proj"],
      microBatch: 1,
      maxMicroBatches: 1,
      seqLen: 1,
    }),
  ),
  new GpuError("engine"),
  new NoAdapterError("no adapter"),
  new DeviceLostError("destroyed", "device lost"),
  new GpuValidationError("validation"),
  new GpuOutOfMemoryError("oom"),
  new GpuShapeError("shape"),
  new GpuClosedError("closed"),
  new KernelArgumentError("matmul", "x", "dtype", "x is i32, the kernel reads f32"),
  new KernelLoopBoundError("cross_entropy", 70000, 65535, "over the loop bound"),
  new StudyError("study folder holds another study"),
  new LlamaError("llama"),
  new LlamaWeightError("model.norm.weight", "bad weight"),
  new LlamaOptionsError("options"),
  new LlamaInputError("input"),
  new ConfigError("bad config", "hidden_size"),
  new ConfigError("bad config"),
  new ConfigError("contradicts", "attention_bias", "model.layers.0.self_attn.q_proj.bias"),
  new TokenizerError("tokenizer"),
  new ReferenceInputError("reference"),
  new SafetensorsError("bad file", "m.safetensors"),
  new SafetensorsFormatError("truncated", "m.safetensors", "lm_head.weight"),
  new UnsupportedDtypeError("dtype", "m.safetensors", "lm_head.weight", "F64"),
  new MissingTensorError("missing", "m.safetensors", "lm_head.weight"),
  new TensorShapeError("shape", "m.safetensors", "lm_head.weight", [2, 3], [3, 2]),
  new MissingShardError("no shard", "model-00002-of-00002.safetensors", "model.norm.weight"),
  new ShardIndexError("not listed", "model-00001-of-00002.safetensors", "lm_head.weight"),
  new DataError("data"),
  new JsonlLineError("d.jsonl", 3, "not an object"),
  new DataFileError("d.jsonl", "no such file"),
  new EmptyDatasetError("d.jsonl", 2),
  new ChatTemplateError("d.jsonl:3: the chat template failed", "tokenizer_config.json"),
  new BatchConfigError("batch"),
  new FlagError("bad flag", "rank"),
  new FlagError("bad flags"),
  new ProgressError("progress"),
  new ScheduleError("schedule"),
  new CheckpointError("checkpoint"),
  new WeightDigestError("changed", "model.safetensors", "ab", "cd"),
  new StoredWeightsError("changed", "job.weights.g0.c3", [
    "model.layers.1.mlp.down_proj.weight",
    "model.norm.weight",
  ]),
  new StoredWeightsError("no manifest", "job.weights.g0", []),
  new StoredObjectError(
    "the factors job.factors cannot be read as it was put: not found",
    "job.factors",
    "SHA-256=" + "A".repeat(43) + "=",
  ),
  new ContributionError(1, "nonfinite", "NaN"),
  new WorkerStateError("state"),
  new AdapterInitError("rank too large", "q_proj"),
  new SvdError("svd"),
  new EffectiveRankError("rank"),
  new ReportError("bad report", "steps.0.loss"),
  new EvaluationError("eval"),
  new EvalScoreError("score"),
  new TaskGenerationError("tasks"),
  new PretrainError("pretrain"),
  new SamplingError("temperature must be a positive number, got 0"),
  new InferenceError(
    "the prompt is longer than the context",
    "context_length_exceeded",
    "messages",
  ),
  new MethodSettingsError("hd-pissa", "K·r too large", "rank"),
  new UnknownMethodError("dora"),
  new StepProtocolError("protocol"),
  new UpdateMissingError(4, 5000),
  new TrainingError("training"),
  new WorkersUnavailableError([1], { gpu: 1 }, "no node had room for 15 s"),
  new OutputFolderError("out"),
  new AdapterExportError("export"),
  new AdapterModelMismatchError("different configs", "hidden_size"),
  new AdapterMissingTensorError("missing", "runs/x", "model.norm.weight"),
  new AdapterRankError("rank 40 too large"),
  new AdapterOutputError("not empty"),
  new DashboardError("no token"),
];

Deno.test("every project error is a DomainError named after its class, with a code of its own", () => {
  const codes = new Map<string, string>();
  for (const e of SAMPLES) {
    const cls = e.constructor as typeof DomainError;
    assert.ok(e instanceof DomainError);
    assert.equal(e.name, cls.name);
    assert.ok(Object.hasOwn(cls, "code"), `${cls.name} declares its code`);
    assert.match(e.code, /^[A-Z][A-Z0-9_]*$/);
    const other = codes.get(e.code);
    assert.ok(other === undefined || other === cls.name, `${cls.name} and ${other}: ${e.code}`);
    codes.set(e.code, cls.name);
  }
  assert.equal(new UpdateMissingError(1, 2).code, "UPDATE_MISSING");
  assert.ok(new UpdateMissingError(1, 2) instanceof StepProtocolError);
});

Deno.test("every error class in the project's own folders has a sample above", async () => {
  const sampled = new Set(SAMPLES.map((e) => e.constructor.name));
  const missing: string[] = [];
  const root = new URL("../", import.meta.url);
  const walk = async (dir: URL): Promise<void> => {
    for await (const e of Deno.readDir(dir)) {
      const u = new URL(e.name + (e.isDirectory ? "/" : ""), dir);
      if (e.isDirectory) await walk(u);
      else if (e.name.endsWith(".ts")) {
        const src = await Deno.readTextFile(u);
        for (const m of src.matchAll(/^export class (\w+) extends \w+/gm)) {
          if (/Error$/.test(m[1]) && m[1] !== "DomainError" && !sampled.has(m[1])) {
            missing.push(`${e.name}: ${m[1]}`);
          }
        }
      }
    }
  };
  for (
    const d of ["core", "cli", "gpu", "model", "train", "actors", "infer", "dashboard", "examples"]
  ) {
    await walk(new URL(`${d}/`, root));
  }
  assert.deepEqual(missing, []);
});

Deno.test("every error the actors declare crosses the wire as itself, fields included", () => {
  const declared = new Set<unknown>(Driver.errors);
  for (const c of GpuWorker.errors ?? []) {
    assert.ok(declared.has(c), `the Driver passes on the worker's ${c.name}`);
  }
  assert.ok(declared.has(TrainingError));
  const sampled = new Set(SAMPLES.map((e) => e.constructor));
  for (const c of declared) {
    assert.ok(sampled.has(c as typeof DomainError), `a sample of ${(c as { name: string }).name}`);
  }
  for (const e of SAMPLES.filter((e) => declared.has(e.constructor))) {
    const w = {
      code: "REMOTE",
      name: "RemoteError",
      message: e.message,
      data: {
        remoteName: e.name,
        remoteMessage: e.message,
        remoteStack: e.stack,
        remoteCode: "REMOTE",
        declared: declaredWire(e, Driver.errors),
      },
    };
    const back = errorOfReply(JSON.parse(JSON.stringify(w)), "d", "step", Driver.errors);
    assert.equal(back.constructor, e.constructor, `${e.name}: ${back}`);
    assert.equal(back.message, e.message);
    assert.equal((back as DomainError).code, e.code);
    assert.deepEqual({ ...back }, { ...e }, `${e.name} keeps its fields`);
  }
});

Deno.test("a GpuWorker's protocol error reaches its caller as a StepProtocolError", async () => {
  const system = await init({ nodes: 1 });
  try {
    const w = await system.spawn(GpuWorker, { worker: 3 });
    const e = await w.merge({}).catch((e) => e);
    assert.ok(e instanceof StepProtocolError, String(e));
    assert.equal(e.code, "STEP_PROTOCOL");
    assert.match(e.message, /worker 3 is not initialised/);
    assert.match(e.stack ?? "", /gpu_worker\.ts/, "with the worker's stack");
  } finally {
    await system.shutdown();
  }
});
