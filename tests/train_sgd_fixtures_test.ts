/**
 * One SGD step of every method on K = 2 GPU workers in one process, against PyTorch's float64
 * result stored in every fixture (tests/fixtures/<variant>-tiny/sgd_step.safetensors,
 * made by scripts/fixtures/make_llama_tiny.py): the merged weights after the step. The workers
 * start from the fixture's own factors (singular vectors' signs are arbitrary, LoRA's A random),
 * and worker k takes rows k, k + K, ... of the fixture's batch as one micro-batch.
 */
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { adaptableLinears, LINEAR_KINDS } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import { type HostTensor, loadModelFolder, readSafetensors } from "../model/safetensors.ts";
import type { MicroBatch } from "../model/batch.ts";
import { getMethod } from "../train/methods/registry.ts";
import type { MethodInit } from "../train/methods/init.ts";
import type { WorkerMethod, WorkerMethodConfig } from "../train/methods/worker.ts";
import { FIXTURE_NAMES, type FixtureName, requireFixture } from "./support/fixture.ts";

const FAMILIES: readonly FixtureName[] = FIXTURE_NAMES;
const METHODS = ["hd-pissa", "pissa", "lora", "full"] as const;
const TOL = 1e-4;

function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / den);
}

function rms(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * a[i];
  return Math.sqrt(s);
}

/** W − s·B·A in float64, rounded to f32, as the fixture forms PiSSA's residual. */
function residual(W: HostTensor, A: Float32Array, B: Float32Array, r: number, s: number) {
  const [out, inDim] = W.shape;
  const res = new Float32Array(out * inDim);
  for (let o = 0; o < out; o++) {
    for (let c = 0; c < inDim; c++) {
      let ba = 0;
      for (let j = 0; j < r; j++) ba += B[o * r + j] * A[j * inDim + c];
      res[o * inDim + c] = W.data[o * inDim + c] - s * ba;
    }
  }
  return res;
}

Deno.test("one SGD step of every method on K = 2 workers matches the PyTorch fixtures", async (t) => {
  const gpu = await Gpu.open();
  const lines: string[] = [];
  try {
    for (const family of FAMILIES) {
      const dir = await requireFixture(family);
      const { config, tensors: weights } = await loadModelFolder(dir);
      const meta = JSON.parse(await Deno.readTextFile(new URL("expected.json", dir)));
      const sgd = meta.sgd_step;
      assert.ok(sgd, `${family}: expected.json has no sgd_step; rerun the fixture script`);
      const fx = (await readSafetensors(new URL("sgd_step.safetensors", dir))).tensors;
      const get = (n: string) => {
        const x = fx.get(n);
        assert.ok(x, `${family}: sgd_step.safetensors lacks ${n}`);
        return x.data;
      };
      const K: number = sgd.K, r: number = sgd.r, lr: number = sgd.lr;
      const s = sgd.alpha / r;
      const ids: number[][] = meta.input_ids;
      const mask: number[][] = meta.loss_mask;
      const S = ids[0].length;
      const shards: MicroBatch[][] = [];
      for (let k = 0; k < K; k++) {
        const rows = ids.map((_, i) => i).filter((i) => i % K === k);
        const m = rows.flatMap((i) => mask[i]);
        shards.push([{
          ids: Int32Array.from(rows.flatMap((i) => ids[i])),
          targetMask: Uint8Array.from(m),
          targets: m.filter((v, i) => v === 1 && i % S !== 0).length,
          rows: rows.length,
          seqLen: S,
        }]);
      }
      const linears = adaptableLinears(config).map((l) => l.name);

      for (const name of METHODS) {
        await t.step(`${family}, ${name}`, async () => {
          const method = getMethod(name);
          const cfg: WorkerMethodConfig = {
            method: name,
            workers: K,
            rank: r,
            alpha: sgd.alpha,
            targets: [...LINEAR_KINDS],
            mute: "exact",
            aggregate: "mean",
            optimizer: "sgd",
            weightDecay: 0,
            clip: 0,
          };
          // The fixture's factors, not our own SVD or random draw.
          const init: MethodInit = { factors: new Map(), residuals: new Map() };
          for (const n of linears) {
            const slice = (k: number) => ({ A: get(`${n}.hd_A${k}`), B: get(`${n}.hd_B${k}`) });
            if (name === "hd-pissa") {
              init.factors.set(n, Array.from({ length: K }, (_, k) => slice(k)));
            } else if (name === "pissa") {
              const { A, B } = slice(0);
              init.factors.set(n, [{ A, B }]);
              init.residuals.set(n, residual(weights.get(n)!, A, B, r, s));
            } else if (name === "lora") {
              const A = get(`${n}.lora_A`);
              init.factors.set(n, [{ A, B: new Float32Array(weights.get(n)!.shape[0] * r) }]);
            }
          }
          const models: LlamaGpu[] = [];
          try {
            const workers: WorkerMethod[] = [];
            for (let k = 0; k < K; k++) {
              const model = await LlamaGpu.create(gpu, config, weights, {
                maxRows: Math.max(...shards.map((sh) => sh[0].rows)),
                seqLen: S,
                maxMicroBatches: 1,
                ...method.modelOptions(cfg),
              });
              models.push(model);
              workers.push(method.createWorker(model, cfg, k, init));
            }
            const steps = [];
            for (let k = 0; k < K; k++) steps.push(await workers[k].step(shards[k], lr));
            const update = method.combine(steps.map((st) => st.contribution));
            for (const w of workers) await w.apply(update, lr);
            for (const w of workers) await w.merge();
            const after = await Promise.all(models.map((m) => m.readWeights()));

            const losses: number[] = sgd.losses[name];
            steps.forEach((st, k) => {
              const e = Math.abs(st.loss - losses[k]) / losses[k];
              assert.ok(e < 1e-5, `worker ${k} loss ${st.loss} vs ${losses[k]}`);
            });
            let worst = 0, worstName = "";
            for (const [n, w0] of weights) {
              const got = after[0].get(n)!.data;
              for (let k = 1; k < K; k++) {
                assert.deepEqual(after[k].get(n)!.data, got, `${n}: worker ${k} ≠ worker 0`);
              }
              const ref = fx.get(`${n}.delta_${name}`)?.data;
              if (ref === undefined) {
                assert.deepEqual(got, w0.data, `${n} must not change`);
                continue;
              }
              const dGot = got.map((v, i) => v - w0.data[i]);
              // W + ΔW is rounded to f32: half an ulp of W per entry on top of the tolerance.
              const rounding = 2 ** -24 * rms(w0.data) / rms(ref);
              const e = relErr(dGot, ref);
              assert.ok(
                e < TOL + 2 * rounding,
                `${n}: relative error of ΔW ${e.toExponential(2)} (rounding ${
                  rounding.toExponential(2)
                })`,
              );
              if (e > worst) [worst, worstName] = [e, n];
            }
            lines.push(
              `${family} ${name}: worst relative error of ΔW ${worst.toExponential(2)} ` +
                `(${worstName})`,
            );
          } finally {
            for (const m of models) m.close();
          }
        });
      }
    }
  } finally {
    gpu.close();
    console.log(lines.join("\n"));
  }
});
