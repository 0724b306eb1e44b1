/**
 * The errors of gpu/, model/ and train/ that the training actors declare, so that they reach the
 * caller as themselves (a `DeviceLostError` on a worker is a `DeviceLostError` in the driver, and
 * then in the finetune CLI) rather than as a RemoteError. A class missing here still arrives, as a
 * RemoteError naming it.
 * @module
 */
import type { ErrorClass } from "../runtime/mod.ts";
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
import { ConfigError } from "../model/config.ts";
import { WeightDigestError } from "../model/folder_digest.ts";
import { TokenizerError } from "../model/tokenizer.ts";
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
import { MethodSettingsError } from "../train/methods/method.ts";
import { UnknownMethodError } from "../train/methods/registry.ts";
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

/** The engine's errors: no adapter, a lost device, validation, memory, shapes, use after close. */
export const GPU_ERRORS: readonly ErrorClass[] = [
  GpuError,
  NoAdapterError,
  DeviceLostError,
  GpuValidationError,
  GpuOutOfMemoryError,
  GpuShapeError,
  GpuClosedError,
  KernelArgumentError,
  KernelLoopBoundError,
];

/** The model's errors: its config, weights, files, tokenizer and inputs. */
export const MODEL_ERRORS: readonly ErrorClass[] = [
  LlamaError,
  LlamaWeightError,
  LlamaOptionsError,
  LlamaInputError,
  ConfigError,
  TokenizerError,
  SafetensorsError,
  SafetensorsFormatError,
  UnsupportedDtypeError,
  MissingTensorError,
  TensorShapeError,
  MissingShardError,
  ShardIndexError,
  WeightDigestError,
];

/** Training's errors: data, flags, schedule, checkpoints, methods, reports, evaluation. */
export const TRAIN_ERRORS: readonly ErrorClass[] = [
  DataError,
  JsonlLineError,
  DataFileError,
  EmptyDatasetError,
  BatchConfigError,
  ChatTemplateError,
  FlagError,
  ScheduleError,
  CheckpointError,
  ContributionError,
  WorkerStateError,
  AdapterInitError,
  SvdError,
  EffectiveRankError,
  ReportError,
  EvaluationError,
  EvalScoreError,
  MethodSettingsError,
  UnknownMethodError,
];

/** Every error of the layers below the actors that crosses an actor boundary as itself. */
export const DOMAIN_ERRORS: readonly ErrorClass[] = [
  ...GPU_ERRORS,
  ...MODEL_ERRORS,
  ...TRAIN_ERRORS,
];
