// Interactive chat with a model folder: the model's chat template (or, without one, a plain
// "User:/Assistant:" format), the conversation kept, replies streamed. Commands: /reset (a new
// conversation, the system prompt kept), /system TEXT (set the system prompt and reset), /quit.
//
//   deno task chat --model DIR [--max-new-tokens N --temperature T --seed S]
import { defineFlags } from "../cli/flags.ts";
import { GREEDY, type SamplingParams } from "../model/sampling.ts";
import { InferenceSession, WEIGHTS_DTYPE_FLAG } from "../infer/session.ts";
import type { ChatMessage } from "../train/data/chat.ts";

const FLAGS = defineFlags({
  name: "chat",
  about: "Chats with a model folder in the terminal (/reset, /system TEXT, /quit).",
  usage: "deno task chat --model DIR [flags]",
  flags: {
    model: { type: "string", default: "models/base", metavar: "DIR", help: "model folder" },
    "max-new-tokens": { type: "int", min: 1, default: null, help: "per reply" },
    temperature: { type: "number", min: 0, default: null, help: "0 is greedy" },
    seed: { type: "int", min: 0, default: 0, help: "seed of the sampler" },
    "weights-dtype": WEIGHTS_DTYPE_FLAG,
  },
});

const { options: o } = FLAGS.main();
const session = await InferenceSession.open(o.model, { weightsDtype: o.weightsDtype });
const enc = new TextEncoder();
const out = (s: string) => Deno.stdout.writeSync(enc.encode(s));
const d = session.defaults;
const t = o.temperature ?? (d.doSample ? d.temperature : 0);
const params: SamplingParams = t === 0
  ? { ...GREEDY, repetitionPenalty: d.repetitionPenalty }
  : { ...d, doSample: true, temperature: t };
console.log(
  session.chat !== null
    ? `chat template: ${session.chat.file}`
    : 'no chat template in this model: a plain "User:/Assistant:" format',
);
let system: string | null = null;
let history: ChatMessage[] = [];
let turn = 0;
out("> ");
async function* stdinLines(): AsyncGenerator<string> {
  let buf = "";
  for await (const part of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
    buf += part;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
  if (buf !== "") yield buf;
}
for await (const line of stdinLines()) {
  const text = line.trim();
  if (text === "/quit") break;
  if (text === "/reset") {
    history = [];
    console.log("(conversation reset)");
  } else if (text.startsWith("/system")) {
    system = text.slice("/system".length).trim() || null;
    history = [];
    console.log(system === null ? "(system prompt cleared)" : "(system prompt set)");
  } else if (text !== "") {
    history.push({ role: "user", content: text });
    const messages = system === null ? history : [{ role: "system", content: system }, ...history];
    const ids = session.chatIds(messages);
    const room = session.contextLength - ids.length;
    if (room < 1) {
      console.log("(the conversation is longer than the context: /reset)");
      history.pop();
    } else {
      const [g] = await session.generate([ids], {
        params,
        seed: o.seed + turn++,
        maxNewTokens: Math.min(room, o.maxNewTokens ?? d.maxNewTokens ?? 256),
        stop: session.chatStops,
      }, (_, delta) => out(delta));
      out("\n");
      history.push({ role: "assistant", content: g.text });
    }
  }
  out("> ");
}
await session.close();
