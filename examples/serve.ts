// An OpenAI-compatible server for a model folder (infer/server.ts): chat completions,
// completions and models, streaming or not. Bound to loopback unless --host is given; any other
// host needs --api-key.
//
// Requests waiting while the model is busy run together as one batch (--max-batch sequences).
//
//   deno task serve --model models/base [--port 8000] [--host 0.0.0.0 --api-key KEY]
//     [--max-batch 8]
import { defineFlags } from "../cli/flags.ts";
import { serve } from "../infer/server.ts";
import { DEFAULT_MAX_BATCH, InferenceSession, WEIGHTS_DTYPE_FLAG } from "../infer/session.ts";

const FLAGS = defineFlags({
  name: "serve",
  about: "Serves a model folder over an OpenAI-compatible HTTP API.",
  usage: "deno task serve --model DIR [--host H --port P --api-key KEY --max-batch N]",
  flags: {
    model: { type: "string", default: "models/base", metavar: "DIR", help: "model folder" },
    host: { type: "string", default: "127.0.0.1", metavar: "H", help: "address to bind" },
    port: { type: "int", min: 0, max: 65535, default: 8000, help: "0 picks a free port" },
    "api-key": {
      type: "string",
      default: null,
      secret: true,
      metavar: "KEY",
      help: "required as a bearer token (needed when not bound to loopback)",
    },
    "max-batch": {
      type: "int",
      min: 1,
      default: DEFAULT_MAX_BATCH,
      metavar: "N",
      help: "waiting requests decoded together at most (1: one at a time)",
    },
    "model-id": {
      type: "string",
      default: null,
      metavar: "ID",
      defaultText: "the folder's name",
      help: "the model's name in requests",
    },
    "weights-dtype": WEIGHTS_DTYPE_FLAG,
  },
});

const { options: o } = FLAGS.main();
const apiKey = o.apiKey ?? Deno.env.get("HD_PISSA_API_KEY") ?? null;
if (!["127.0.0.1", "localhost", "::1"].includes(o.host) && apiKey === null) {
  console.error(`error: serving on ${o.host} needs an API key (--api-key or HD_PISSA_API_KEY)`);
  Deno.exit(1);
}
const session = await InferenceSession.open(o.model, {
  maxBatch: o.maxBatch,
  weightsDtype: o.weightsDtype,
});
const modelId = o.modelId ?? o.model.replace(/\/+$/, "").split("/").at(-1)!;
const server = serve(session, {
  hostname: o.host,
  port: o.port,
  apiKey,
  modelId,
  onListen: (a) => console.log(`serving ${modelId} on http://${a.hostname}:${a.port}/v1`),
});
Deno.addSignalListener("SIGINT", async () => {
  await server.shutdown();
  await session.close();
  Deno.exit(0);
});
