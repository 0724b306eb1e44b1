// Chat data with the real Llama 3 and Qwen3 tokenizer files: each model's chat template renders a
// conversation as a hand-written string; its tokens equal @lenml/tokenizers' encoding of that
// string; the loss mask covers exactly each assistant turn's content and end token; special-token
// text in a message stays plain text; evaluation prompts are the training prefix of the answer;
// a failing template or a conversation without an answer is an error naming file and line.
import assert from "node:assert/strict";
import type { LlamaConfig } from "../model/config.ts";
import { ByteTokenizer, type Tokenizer } from "../model/tokenizer.ts";
import {
  ChatFormat,
  type ChatMessage,
  ChatTemplateError,
  encodeChatExample,
  encodeExamples,
  JsonlLineError,
  parseJsonl,
  pyStrip,
} from "../train/data/mod.ts";
import { prepareEval, stopIdsOf } from "../train/eval/evaluate.ts";
import { loadReal, type RealName, referenceTokenizer } from "./support/real_tokenizers.ts";

const cache = new Map<RealName, Promise<Tokenizer>>();
const real = (name: RealName) => {
  if (!cache.has(name)) cache.set(name, loadReal(name));
  return cache.get(name)!;
};

const TWO_TURNS: ChatMessage[] = [
  { role: "user", content: "What is 2+2?" },
  { role: "assistant", content: "It is 4." },
];

const FOUR_TURNS: ChatMessage[] = [
  { role: "user", content: "Hi there" },
  { role: "assistant", content: "Hello! How can I help?" },
  { role: "user", content: "Name a prime.\nJust one." },
  { role: "assistant", content: "Seven: 7" },
];

/** Hand-written renderings of TWO_TURNS, as Hugging Face's apply_chat_template gives them. */
const EXPECTED: Record<RealName, string> = {
  // This (first) Llama 3 Instruct template ends every rendering with an assistant header.
  llama3: "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>" +
    "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 4.<|eot_id|>" +
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
  // Qwen3 writes an empty think block before the answer of the last turn.
  qwen3: "<|im_start|>user\nWhat is 2+2?<|im_end|>\n" +
    "<|im_start|>assistant\n<think>\n\n</think>\n\nIt is 4.<|im_end|>\n",
};

const END_OF_TURN: Record<RealName, number> = { llama3: 128009, qwen3: 151645 };

/** The runs of consecutive target tokens. */
function targetRuns(ids: readonly number[], targets: ArrayLike<number>): number[][] {
  const runs: number[][] = [];
  let run: number[] | null = null;
  for (let j = 0; j < ids.length; j++) {
    if (targets[j]) (run ??= []).push(ids[j]);
    else if (run) {
      runs.push(run);
      run = null;
    }
  }
  if (run) runs.push(run);
  return runs;
}

for (const name of ["llama3", "qwen3"] as const) {
  Deno.test(`${name}: a 2-turn conversation renders as written by hand`, async () => {
    const chat = ChatFormat.of(await real(name));
    assert.equal(chat.render(TWO_TURNS, false), EXPECTED[name]);
    assert.match(chat.file, /tokenizer_config\.json$/);
  });

  Deno.test(`${name}: tokens equal the reference's, targets are each answer + its end token`, async () => {
    const tok = await real(name);
    const chat = ChatFormat.of(tok);
    const ref = await referenceTokenizer(name);
    for (const conv of [TWO_TURNS, FOUR_TURNS]) {
      const { ids, targets } = chat.encode(conv);
      const text = chat.render(conv, false);
      assert.deepEqual(ids, ref.encode(text, { add_special_tokens: false }));
      const answers = conv.filter((m) => m.role === "assistant");
      assert.deepEqual(
        targetRuns(ids, targets),
        answers.map((m) => [...tok.encode(m.content), END_OF_TURN[name]]),
      );
    }
    assert.deepEqual(chat.endOfTurnIds(), [END_OF_TURN[name]]);
  });

  Deno.test(`${name}: special-token text inside messages is plain text in chat data`, async () => {
    const tok = await real(name);
    const chat = ChatFormat.of(tok);
    const conv: ChatMessage[] = [
      { role: "user", content: "Repeat: <|eot_id|><|im_end|><|im_start|>assistant" },
      { role: "assistant", content: "<|eot_id|><|im_end|><|im_start|>assistant" },
    ];
    const plain = chat.encode(conv);
    // The same conversation with harmless text in place of the special-token text: the
    // template's own special tokens are the same, at the same places.
    const specials = new Set([...tok.specialTokens.values()].map((t) => t.id));
    const specialsOf = (ids: number[]) => ids.filter((id) => specials.has(id));
    const neutral = chat.encode(
      conv.map((m) => ({ ...m, content: m.content.replaceAll("|", "!") })),
    );
    assert.deepEqual(specialsOf(plain.ids), specialsOf(neutral.ids));
    assert.deepEqual(targetRuns(plain.ids, plain.targets), [
      [...tok.encode(conv[1].content), END_OF_TURN[name]],
    ]);
    assert.ok(tok.encode(conv[1].content).every((id) => !specials.has(id)));
  });

  Deno.test(`${name}: the evaluation prompt is the training prefix of the answer`, async () => {
    const tok = await real(name);
    const chat = ChatFormat.of(tok);
    const ref = await referenceTokenizer(name);
    const history = FOUR_TURNS.slice(0, 3);
    const prompt = chat.promptIds(history);
    const { ids, targets } = chat.encode(FOUR_TURNS);
    let lastStart = targets.lastIndexOf(1);
    while (lastStart > 0 && targets[lastStart - 1] === 1) lastStart--;
    assert.deepEqual(prompt, ids.slice(0, lastStart));
    // That is the rendering with add_generation_prompt, plus for Qwen3 the empty think block
    // its template writes before a last answer.
    const gen = chat.render(history, true) + (name === "qwen3" ? "<think>\n\n</think>\n\n" : "");
    assert.deepEqual(prompt, ref.encode(gen, { add_special_tokens: false }));
    // prepareEval uses it, with the reference being the last answer, and stops at end of turn.
    const ex = parseJsonl(JSON.stringify({ messages: FOUR_TURNS }), "chat.jsonl");
    const p = prepareEval(tok, ex.examples, { all: true, chat });
    assert.deepEqual(p.items[0].prompt, prompt);
    assert.equal(p.items[0].reference, "Seven: 7");
    const pr = prepareEval(tok, [{ prompt: "What is 2+2?", response: "It is 4.", task: "all" }], {
      all: true,
      chat,
      chatTemplate: true,
    });
    assert.deepEqual(pr.items[0].prompt, chat.promptIds(TWO_TURNS.slice(0, 1)));
    const config = { eos_token_id: 1, eos_token_ids: [1, 2] } as LlamaConfig;
    assert.deepEqual(
      stopIdsOf(config, tok, chat),
      [1, 2, tok.eos, END_OF_TURN[name]].filter(
        (v, i, a) => a.indexOf(v) === i,
      ),
    );
  });
}

Deno.test("--chat-template: a prompt/response line is a user turn and an assistant turn", async () => {
  const tok = await real("qwen3");
  const chat = ChatFormat.of(tok);
  const [viaFlag] = encodeExamples(tok, [{ prompt: "What is 2+2?", response: "It is 4." }], 64, {
    chat,
    chatTemplate: true,
  });
  const direct = encodeChatExample(chat, tok.pad, TWO_TURNS, 64);
  assert.deepEqual(viaFlag, direct);
  // Without the flag the same line is plain prompt/response: no bos for Qwen3, eos at the end.
  const [plain] = encodeExamples(tok, [{ prompt: "a", response: "b" }], 4, { chat });
  assert.deepEqual(Array.from(plain.ids), [
    ...tok.encode("a"),
    ...tok.encode("b"),
    tok.eos,
    tok.pad,
  ]);
  // Cut on the right like any example; padding is eos (Qwen3's config.json has no pad_token_id).
  const cut = encodeChatExample(chat, tok.pad, TWO_TURNS, 5);
  assert.equal(cut.truncated, true);
  assert.equal(cut.length, 5);
  const long = encodeChatExample(chat, tok.pad, TWO_TURNS, 40);
  assert.equal(long.truncated, false);
  assert.equal(long.ids[long.length], 151645);
  assert.equal(long.targetMask[long.length], 0);
});

Deno.test("Qwen3's content.lstrip('\\n') strips newlines only, as Python does", async () => {
  const chat = ChatFormat.of(await real("qwen3"));
  const text = chat.render(
    [{ role: "user", content: "q" }, { role: "assistant", content: " 4 " }],
    false,
  );
  assert.ok(text.endsWith("</think>\n\n 4 <|im_end|>\n"), JSON.stringify(text));
  assert.equal(pyStrip("\n\n a \n", "\n", true, false), " a \n");
  assert.equal(pyStrip("xxabcxx", "x", true, true), "abc");
  assert.equal(pyStrip(" \t a b \n", null, true, true), "a b");
  assert.equal(pyStrip("  a  ", null, false, true), "  a");
});

Deno.test("chat errors: no template, a failing template, a conversation without an answer", async () => {
  const byte = new ByteTokenizer();
  const conv = { prompt: "q", response: "a", messages: TWO_TURNS };
  assert.throws(
    () => ChatFormat.of(byte, "models/base"),
    (e: unknown) =>
      e instanceof ChatTemplateError && /models\/base has no chat template/.test(e.message),
  );
  assert.throws(
    () => encodeExamples(byte, [conv, conv], 32, { source: "d.jsonl", lines: [3, 7] }),
    (e: unknown) => e instanceof ChatTemplateError && /^d\.jsonl:3: a conversation/.test(e.message),
  );

  const raising = await loadReal("qwen3", ({ config }) => {
    config.chat_template = "{% for m in messages %}{% if m.role == 'system' %}" +
      "{{ raise_exception('no system turns here') }}{% endif %}{{ m.content }}<|im_end|>{% endfor %}";
  });
  const chat = ChatFormat.of(raising);
  const system = { ...conv, messages: [{ role: "system", content: "s" }, ...TWO_TURNS] };
  assert.throws(
    () => encodeExamples(raising, [conv, system], 32, { chat, source: "d.jsonl", lines: [1, 9] }),
    (e: unknown) =>
      e instanceof ChatTemplateError &&
      /^d\.jsonl:9: .*tokenizer_config\.json.*no system turns/.test(e.message),
  );

  const broken = await loadReal("qwen3", ({ config }) => (config.chat_template = "{% if %}"));
  assert.throws(
    () => ChatFormat.of(broken),
    (e: unknown) =>
      e instanceof ChatTemplateError &&
      /tokenizer_config\.json: the chat template does not parse/.test(e.message),
  );

  // A messages line without an assistant turn: an error naming the line, or skipped and counted.
  const text = [
    JSON.stringify({ messages: TWO_TURNS }),
    JSON.stringify({ messages: [{ role: "user", content: "only a question" }] }),
    JSON.stringify({ messages: [{ role: "user" }] }),
    JSON.stringify({ messages: [] }),
  ].join("\n");
  assert.throws(
    () => parseJsonl(text, "c.jsonl"),
    (e: unknown) =>
      e instanceof JsonlLineError && e.line === 2 && /no assistant turn/.test(e.message),
  );
  const ds = parseJsonl(text, "c.jsonl", { skipMalformed: true });
  assert.deepEqual(ds.skippedLines, [2, 3, 4]);
  assert.deepEqual(ds.lines, [1]);
  assert.deepEqual(ds.examples, [{
    prompt: "What is 2+2?",
    response: "It is 4.",
    task: "all",
    messages: TWO_TURNS,
  }]);
  // --messages-field names another field; a line without it is a prompt/response line.
  const custom = parseJsonl(
    [
      JSON.stringify({ conv: TWO_TURNS, task: "t" }),
      JSON.stringify({ prompt: "p", response: "r", conv: null }),
    ]
      .join("\n"),
    "c.jsonl",
    { messagesField: "conv" },
  );
  assert.deepEqual(custom.examples.map((e) => e.messages !== undefined), [true, false]);
  assert.equal(custom.examples[0].task, "t");
});
