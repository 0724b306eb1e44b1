// Server throughput under concurrent load on the shipped byte model (models/base): 32 requests
// at once (16 tokens each, temperature 0.8, seed i), served one at a time (--max-batch 1) and
// batched (the default 8, and all 32 at once), in the same run.
//
//   deno task bench serve
import { serve } from "../infer/server.ts";
import { DEFAULT_MAX_BATCH, InferenceSession } from "../infer/session.ts";
import type { Report } from "./figure.ts";

const REQUESTS = 32;

async function load(maxBatch: number): Promise<number> {
  const session = await InferenceSession.open("models/base", { maxBatch });
  const server = serve(session, { port: 0, modelId: "base" });
  try {
    const ask = async (i: number) => {
      const r = await fetch(`http://127.0.0.1:${server.addr.port}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "base",
          prompt: `Item ${i}:`,
          max_tokens: 16,
          temperature: 0.8,
          seed: i,
        }),
      });
      return (await r.json()).usage.completion_tokens as number;
    };
    await ask(0); // warm-up: pipelines compiled
    const t0 = performance.now();
    const tokens = (await Promise.all(Array.from({ length: REQUESTS }, (_, i) => ask(i))))
      .reduce((a, b) => a + b, 0);
    return tokens / ((performance.now() - t0) / 1000);
  } finally {
    await server.shutdown();
    await session.close();
  }
}

export async function run(report: Report): Promise<void> {
  for (const maxBatch of [1, DEFAULT_MAX_BATCH, REQUESTS]) {
    report({
      name: `server, ${REQUESTS} concurrent requests, max batch ${maxBatch}`,
      value: await load(maxBatch),
      unit: "tokens/s",
    });
  }
}
