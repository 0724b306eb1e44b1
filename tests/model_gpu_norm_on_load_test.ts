// The decoder layer with its RMSNorms formed in the matmuls' loads (`normOnLoad`, the default)
// against the same model writing the normalized activations (`normOnLoad: false`, the separate
// pass): the same loss and gradients, bit for bit, with full-weight and adapter gradients, the
// numeric mute, a sliding window and biases, recompute; and two [T, C] buffers fewer per layer.
import assert from "node:assert/strict";
import { LINEAR_KINDS, type LlamaConfig } from "../model/config.ts";
import { sameBits } from "../gpu/check.ts";
import {
  BIASED_WINDOWED,
  GQA_TIED,
  type OwnStepOptions,
  stepOnOwnGpu,
} from "./support/model_gpu.ts";

const S = 9;

Deno.test("gpu model: RMSNorm on load gives the bits of the written norm", async (t) => {
  const cases: [string, LlamaConfig, OwnStepOptions, [number, number]][] = [
    ["3 layers, tied, full-weight and adapter gradients", { ...GQA_TIED, num_hidden_layers: 3 }, {
      adapters: { targets: LINEAR_KINDS, rank: 2 },
      gradients: "weights",
    }, [0.5, 0.5]],
    ["numeric mute γ = 1e-16", GQA_TIED, {
      adapters: { targets: LINEAR_KINDS, rank: 2 },
      gradients: "adapters",
    }, [1e-16, 0.5]],
    ["sliding window and biases, adapter gradients, recompute", BIASED_WINDOWED, {
      adapters: { targets: ["q_proj", "v_proj", "down_proj"], rank: 2 },
      gradients: "adapters",
      recompute: true,
    }, [0.5, 0.5]],
  ];
  for (const [name, config, options, scales] of cases) {
    await t.step(name, async () => {
      const written = await stepOnOwnGpu(config, 33, S, { ...options, normOnLoad: false }, scales);
      const onLoad = await stepOnOwnGpu(config, 33, S, { ...options, normOnLoad: true }, scales);
      assert.ok(!written.resolved.normOnLoad && onLoad.resolved.normOnLoad);
      assert.ok(Number.isFinite(written.result.loss) && written.result.loss > 0);
      assert.equal(onLoad.result.loss, written.result.loss);
      let compared = 0;
      for (const key of ["gradA", "gradB", "gradW"] as const) {
        for (const [n, g] of written.result[key]) {
          assert.ok(sameBits(onLoad.result[key].get(n)!, g), `${key} ${n} differs`);
          compared++;
        }
      }
      assert.ok(compared > 0);
      // Two [T, C] buffers fewer per layer (one set with recompute), as the pool rounds them.
      const sets = options.recompute ? 1 : config.num_hidden_layers;
      const buffer = Math.ceil((3 * S * config.hidden_size * 4) / 256) * 256;
      assert.equal(written.bytes - onLoad.bytes, 2 * sets * buffer);
    });
  }
});
