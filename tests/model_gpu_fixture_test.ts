// The GPU model against the PyTorch float64 fixture (tests/fixtures/llama-tiny: GQA 6 on 2
// heads, RoPE θ = 500): loss, logits, adapter gradients for alpha = r and alpha = 2r with the
// fixture's own A, B (exact mute), and the full-weight gradients of the adapted linears.
import assert from "node:assert/strict";
import { Gpu } from "../gpu/mod.ts";
import { LINEAR_KINDS } from "../model/config.ts";
import { LlamaGpu } from "../model/llama.ts";
import { loadModelFolder, readSafetensors } from "../model/safetensors.ts";
import type { MicroBatch } from "../model/batch.ts";
import { gpuStep, relErr, WorstError } from "./support/model_gpu.ts";
import { LLAMA_TINY as FIXTURE, requireLlamaTiny } from "./support/fixture.ts";

const TOL = 1e-5;

Deno.test("gpu model matches the PyTorch fixture", async (t) => {
  await requireLlamaTiny();
  const { config, tensors } = await loadModelFolder(FIXTURE);
  const expected = (await readSafetensors(new URL("expected.safetensors", FIXTURE))).tensors;
  const meta = JSON.parse(await Deno.readTextFile(new URL("expected.json", FIXTURE)));
  const get = (name: string) => {
    const x = expected.get(name);
    assert.ok(x, `expected.safetensors lacks ${name}`);
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
  const gpu = await Gpu.open();
  try {
    await t.step("loss, logits and adapter gradients for alpha = r and 2r", async () => {
      const model = await LlamaGpu.create(gpu, config, tensors, {
        maxRows: rows,
        seqLen: S,
        adapters: { targets: LINEAR_KINDS, rank: r },
        gradients: "adapters",
      });
      try {
        const logits = await model.logits(batch);
        const logitsErr = relErr(logits, get("logits"));
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
          console.log(
            `fixture s=${s}: loss rel ${lossErr.toExponential(2)}, logits rel ` +
              `${logitsErr.toExponential(2)}, adapter gradients worst ${worst}`,
          );
          assert.ok(lossErr < TOL, `loss ${got.loss} vs ${get("loss")[0]}`);
          assert.ok(logitsErr < TOL, `logits rel ${logitsErr}`);
          assert.ok(worst.value < TOL, `${worst}`);
        }
      } finally {
        model.close();
      }
    });

    await t.step("full-weight gradients", async () => {
      const model = await LlamaGpu.create(gpu, config, tensors, {
        maxRows: rows,
        seqLen: S,
        gradients: "weights",
      });
      try {
        const got = await gpuStep(model, [batch]);
        const worst = new WorstError();
        let compared = 0;
        for (const n of model.trainableNames()) {
          if (!expected.has(`${n}.grad_W`)) continue;
          worst.add(n, relErr(got.gradW.get(n)!, get(`${n}.grad_W`)));
          compared++;
        }
        console.log(`fixture grad_W (${compared} tensors): worst ${worst}`);
        assert.equal(compared, LINEAR_KINDS.length * config.num_hidden_layers);
        assert.ok(worst.value < TOL, `${worst}`);
      } finally {
        model.close();
      }
    });
  } finally {
    gpu.close();
  }
});
