// The GPU model against every PyTorch float64 fixture (tests/fixtures/*-tiny: LLaMA, Llama 3 with
// llama3 RoPE scaling, Qwen2 with q/k/v biases, Mistral with a sliding window, linear scaling with
// every LLaMA bias, dynamic NTK scaling): loss, logits, adapter gradients for alpha = r and
// alpha = 2r with the fixture's own A, B (exact mute), and the full-weight gradient of every
// tensor (biases, norms and embeddings included). A missing fixture fails the test.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LINEAR_KINDS } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import { loadModelFolder, readSafetensors } from "../model/safetensors.ts";
import type { MicroBatch } from "../model/batch.ts";
import { fullTrainableDefault, weightLayout } from "../train/methods/layout.ts";
import { gpuStep, relErr, WorstError } from "./support/model_gpu.ts";
import { FIXTURE_NAMES, requireFixture } from "./support/fixture.ts";

const TOL = 1e-5;

Deno.test("gpu model matches the PyTorch fixtures", async (t) => {
  const gpu = await Gpu.open();
  try {
    for (const name of FIXTURE_NAMES) {
      await t.step(name, async () => {
        const dir = await requireFixture(name);
        const { config, tensors } = await loadModelFolder(dir);
        const expected = (await readSafetensors(new URL("expected.safetensors", dir))).tensors;
        const meta = JSON.parse(await Deno.readTextFile(new URL("expected.json", dir)));
        const get = (n: string) => {
          const x = expected.get(n);
          assert.ok(x, `${name}: expected.safetensors lacks ${n}`);
          return x.data;
        };
        const ids: number[][] = meta.input_ids;
        const mask: number[][] = meta.loss_mask;
        const S = ids[0].length;
        const rows = ids.length;
        const batch: MicroBatch = {
          ids: Int32Array.from(ids.flat()),
          targetMask: Uint8Array.from(mask.flat()),
          targets: mask.flat().filter((m, i) => m === 1 && i % S !== 0).length,
          rows,
          seqLen: S,
        };
        const r = meta.adapter.r as number;
        const line: string[] = [];

        // Adapters: the biases stay frozen (PEFT's bias="none").
        const model = await LlamaGpu.create(gpu, config, tensors, {
          maxRows: rows,
          seqLen: S,
          adapters: { targets: LINEAR_KINDS, rank: r },
          gradients: "adapters",
        });
        try {
          assert.deepEqual(model.trainableNames(), []);
          const logits = await model.logits(batch);
          const logitsErr = relErr(logits, get("logits"));
          line.push(`logits ${logitsErr.toExponential(2)}`);
          assert.ok(logitsErr < TOL, `logits rel ${logitsErr}`);
          for (const [suffix, s] of [["", 1], ["_alpha2r", 2]] as const) {
            for (const n of model.adapterNames()) {
              model.writeAdapter(n, get(`${n}.A${suffix}`), get(`${n}.B${suffix}`));
            }
            model.setAdapterScales(0, s);
            const got = await gpuStep(model, [batch]);
            const lossErr = Math.abs(got.loss - get("loss")[0]) / get("loss")[0];
            const worst = new WorstError();
            for (const n of model.adapterNames()) {
              worst.add(`g_A ${n}`, relErr(got.gradA.get(n)!, get(`${n}.grad_A${suffix}`)));
              worst.add(`g_B ${n}`, relErr(got.gradB.get(n)!, get(`${n}.grad_B${suffix}`)));
            }
            line.push(`s=${s}: loss ${lossErr.toExponential(2)}, adapters ${worst}`);
            assert.ok(lossErr < TOL, `loss ${got.loss} vs ${get("loss")[0]}`);
            assert.ok(worst.value < TOL, `${worst}`);
          }
        } finally {
          model.close();
        }

        // Full fine-tuning: every tensor has a gradient, the biases' included.
        const full = await LlamaGpu.create(gpu, config, tensors, {
          maxRows: rows,
          seqLen: S,
          gradients: "weights",
        });
        try {
          const got = await gpuStep(full, [batch]);
          const worst = new WorstError();
          const biases = new WorstError();
          const names: string[] = meta.grad_W_tensors;
          assert.deepEqual([...full.trainableNames()].sort(), [...names].sort());
          for (const n of names) {
            const e = relErr(got.gradW.get(n)!, get(`${n}.grad_W`));
            worst.add(n, e);
            if (n.endsWith(".bias")) biases.add(n, e);
          }
          const nb = names.filter((n) => n.endsWith(".bias")).length;
          line.push(`grad_W (${names.length} tensors) ${worst}`);
          if (nb > 0) line.push(`biases (${nb}) ${biases}`);
          assert.ok(worst.value < TOL, `${worst}`);
        } finally {
          full.close();
        }

        // What full fine-tuning trains by default includes the biases.
        const trained = weightLayout(config, { targets: LINEAR_KINDS, rank: r }).segments
          .map((seg) => seg.name);
        assert.deepEqual(
          trained.sort(),
          (meta.grad_W_tensors as string[]).filter((n) => fullTrainableDefault(n)).sort(),
        );
        console.log(`${name}: ${line.join("; ")}`);
      });
    }
  } finally {
    gpu.close();
  }
});
