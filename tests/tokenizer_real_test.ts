// The real Llama 3 and Qwen3 tokenizer files through our loader: token ids against an
// independent implementation (@lenml/tokenizers) on text with spaces, digits, accents, emoji,
// newlines and code; special-token text in data encoded as plain text; the bos rule of each
// tokenizer; eos, pad and the stop ids.
import assert from "node:assert/strict";
import type { LlamaConfig } from "../model/config.ts";
import type { Tokenizer } from "../model/tokenizer.ts";
import { promptIds } from "../train/data/encode.ts";
import { stopIdsOf } from "../train/eval/evaluate.ts";
import {
  LLAMA3_BOS_POST_PROCESSOR,
  loadReal,
  type RealName,
  referenceTokenizer,
} from "./support/real_tokenizers.ts";

const TEXTS = [
  "Hello world",
  "  leading and  double  spaces, trailing ",
  "digits 0 7 42 1234567 3.14159 -2e10 1,000,000",
  "Accents: café, naïve, Ångström, Straße, Đorđe, ñandú, e\u0301 (combining)",
  "Emoji 😀👍🏽 👨‍👩‍👧 🇫🇷 and CJK 你好，世界 and العربية",
  "line one\nline two\r\n\n\ttabbed\n\n\n",
  "def f(x):\n    return {'k': [x ** 2, x // 3]}  # comment\n\nprint(f(12))\n",
  "for (let i = 0; i < n; i++) { s += a[i] ?? 0; }",
  '<p class="x">a &amp; b</p> https://example.com/a?b=c#d',
  "",
];

/** Special-token text as data: each must be plain text, never its control token. */
const SPECIAL_TEXT = "Say <|eot_id|> then <|im_end|>, <|begin_of_text|> and <|endoftext|>.";

const cache = new Map<RealName, Promise<Tokenizer>>();
const real = (name: RealName) => {
  if (!cache.has(name)) cache.set(name, loadReal(name));
  return cache.get(name)!;
};

for (const name of ["llama3", "qwen3"] as const) {
  Deno.test(`${name}: token ids equal @lenml/tokenizers' on varied text`, async () => {
    const tok = await real(name);
    const ref = await referenceTokenizer(name);
    for (const text of TEXTS) {
      const ids = tok.encode(text);
      assert.deepEqual(ids, ref.encode(text, { add_special_tokens: false }), JSON.stringify(text));
      // Decoding as the reference does: Llama 3's file asks for clean_up_tokenization_spaces
      // ("a[i] ??" comes back as "a[i]??") and Qwen3 normalizes to NFC.
      const back = ids.length === 0 ? "" : ref.decode(ids, { skip_special_tokens: true });
      assert.equal(tok.decode(ids), back);
    }
    // A longer mixed document, to cover merges across many pre-tokens.
    const doc = TEXTS.join("\n").repeat(5);
    assert.deepEqual(tok.encode(doc), ref.encode(doc, { add_special_tokens: false }));
  });

  Deno.test(`${name}: special-token text in data is plain text, not the control token`, async () => {
    const tok = await real(name);
    const specials = new Set([...tok.specialTokens.values()].map((t) => t.id));
    const ids = tok.encode(SPECIAL_TEXT);
    assert.ok(ids.every((id) => !specials.has(id)), `no special id in ${ids}`);
    // The reference without its special tokens reads the text as plain text too.
    const plain = await referenceTokenizer(name, { withoutSpecial: true });
    assert.deepEqual(ids, plain.encode(SPECIAL_TEXT, { add_special_tokens: false }));
    assert.equal(tok.decode(ids), SPECIAL_TEXT);
    // Whereas the file's own splitting would have made control tokens of it.
    const ref = await referenceTokenizer(name);
    const split = ref.encode(SPECIAL_TEXT, { add_special_tokens: false });
    assert.ok(split.some((id: number) => specials.has(id)));
  });
}

Deno.test("llama3: the packaged file adds no bos (ByteLevel post-processor); Meta's current one does", async () => {
  // The package ships the first Llama 3 release's tokenizer.json, whose post-processor is
  // ByteLevel only: Hugging Face adds no bos with it, and neither do we.
  const tok = await real("llama3");
  const ref = await referenceTokenizer("llama3");
  assert.equal(tok.bos, null);
  assert.deepEqual(promptIds(tok, "Hi there"), ref.encode("Hi there"));
  // With the TemplateProcessing post-processor of Meta's current file, <|begin_of_text|> first.
  const withBos = await loadReal("llama3", ({ json }) => {
    json.post_processor = LLAMA3_BOS_POST_PROCESSOR;
  });
  const refBos = await referenceTokenizer("llama3", {
    edit: (json) => (json.post_processor = LLAMA3_BOS_POST_PROCESSOR),
  });
  assert.equal(withBos.bos, 128000);
  assert.deepEqual(promptIds(withBos, "Hi there"), refBos.encode("Hi there"));
  assert.equal(refBos.encode("Hi there")[0], 128000);
  // add_bos_token in tokenizer_config.json decides when set.
  const forced = await loadReal("llama3", ({ config }) => (config.add_bos_token = true));
  assert.equal(forced.bos, 128000);
  const off = await loadReal("llama3", ({ json, config }) => {
    json.post_processor = LLAMA3_BOS_POST_PROCESSOR;
    config.add_bos_token = false;
  });
  assert.equal(off.bos, null);
});

Deno.test("qwen3: no bos (add_bos_token false, no template post-processor), whatever config.json says", async () => {
  const tok = await real("qwen3");
  const ref = await referenceTokenizer("qwen3");
  assert.equal(tok.bos, null);
  assert.deepEqual(promptIds(tok, "Hi there"), ref.encode("Hi there"));
});

Deno.test("eos, pad and stop ids of both real tokenizers", async () => {
  const llama = await real("llama3");
  // config.json's first eos closes examples; pad is eos (no pad_token_id); the tokenizer's
  // eos_token (<|end_of_text|>) stops generation too.
  assert.deepEqual([llama.eos, llama.pad], [128001, 128001]);
  assert.deepEqual(llama.stopIds, [128001]);
  const qwen = await real("qwen3");
  assert.deepEqual([qwen.eos, qwen.pad], [151645, 151645]);
  assert.deepEqual(qwen.stopIds, [151645]);
  // A config.json without eos_token_id: the tokenizer's eos_token closes examples.
  const qwenNoEos = await loadReal("qwen3", undefined, { eos_token_id: null });
  assert.equal(qwenNoEos.eos, 151645);

  // Every listed eos id stops generation (model/generate.ts stops at any id of the list).
  const config = (eos: number | number[]) =>
    ({
      eos_token_id: Array.isArray(eos) ? eos[0] : eos,
      eos_token_ids: Array.isArray(eos) ? eos : undefined,
    }) as LlamaConfig;
  assert.deepEqual(stopIdsOf(config([128001, 128009]), llama), [128001, 128009]);
  assert.deepEqual(stopIdsOf(config(128009), llama), [128009, 128001]);
  // Qwen3-Base's config.json ends with <|endoftext|>; the tokenizer's <|im_end|> stops too.
  assert.deepEqual(stopIdsOf(config(151643), qwen), [151643, 151645]);
});
