import assert from "node:assert/strict";
import { readLlamaConfig } from "../model/config.ts";
import {
  ByteTokenizer,
  HfJsonTokenizer,
  hfSpecialIds,
  loadTokenizer,
  TokenizerError,
} from "../model/tokenizer.ts";
import { requireLlamaTiny } from "./support/fixture.ts";

Deno.test("byte tokenizer: ids are UTF-8 bytes + 3, specials fixed", () => {
  const t = new ByteTokenizer();
  assert.equal(t.vocabSize, 259);
  assert.deepEqual([t.pad, t.bos, t.eos], [0, 1, 2]);
  // 'A' = 0x41 = 65, ' ' = 32, 'é' = C3 A9, '€' = E2 82 AC
  assert.deepEqual(t.encode("A é€"), [68, 35, 0xc3 + 3, 0xa9 + 3, 0xe2 + 3, 0x82 + 3, 0xac + 3]);
  assert.deepEqual(t.encode(""), []);
  assert.deepEqual(t.encode("\n"), [13]);
});

Deno.test("byte tokenizer: decode round-trips and skips special tokens", () => {
  const t = new ByteTokenizer();
  for (const s of ["hello, world", "Grüße 😀 42", "tab\tnew\nline", ""]) {
    assert.equal(t.decode(t.encode(s)), s);
    assert.equal(t.decode([1, ...t.encode(s), 2, 0, 0]), s);
  }
  assert.equal(t.decode(Int32Array.from([1, 107, 108, 2, 0])), "hi");
});

Deno.test("byte tokenizer: invalid UTF-8 and out-of-range ids decode to U+FFFD", () => {
  const t = new ByteTokenizer();
  // a lone continuation byte, then a truncated two-byte sequence at the end
  assert.equal(t.decode([0x80 + 3, 0x61 + 3, 0xc3 + 3]), "\uFFFDa\uFFFD");
  assert.equal(t.decode([0x61 + 3, 259, 0x62 + 3, -4]), "a\uFFFDb\uFFFD");
});

// GPT-2's byte-to-symbol table, written out here from its definition so that the test's
// tokenizer.json does not depend on the library under test.
function byteSymbols(): string[] {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const sym = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    sym[b] = printable.includes(b) ? String.fromCodePoint(b) : String.fromCodePoint(256 + n++);
  }
  return sym;
}

/** A byte-level BPE tokenizer.json: ids 0..255 are bytes, then five merges, then specials. */
function tinyBpeJson(): Record<string, unknown> {
  const sym = byteSymbols();
  const vocab: Record<string, number> = {};
  for (let b = 0; b < 256; b++) vocab[sym[b]] = b;
  const G = sym[32]; // the symbol of a space, 'Ġ'
  const merges = [["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"], [G, "w"]];
  merges.forEach((m, i) => (vocab[m[0] + m[1]] = 256 + i));
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  return {
    version: "1.0",
    added_tokens: [special(261, "<s>"), special(262, "</s>")],
    normalizer: null,
    pre_tokenizer: {
      type: "ByteLevel",
      add_prefix_space: false,
      trim_offsets: true,
      use_regex: true,
    },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: merges.map((m) => m.join(" ")),
    },
  };
}

Deno.test("tokenizer.json (BPE): known ids, round trips, specials from config.json", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(tinyBpeJson()));
    const config = { vocab_size: 263, bos_token_id: 261, eos_token_id: 262, pad_token_id: null };
    // No post-processor and no add_bos_token: the tokenizer adds no bos, whatever config.json says.
    const noBos = await loadTokenizer(dir, config);
    assert.equal(noBos.bos, null);
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      JSON.stringify({ add_bos_token: true, bos_token: "<s>", eos_token: "</s>" }),
    );
    const t = await loadTokenizer(dir, config);
    assert.equal(t.kind, "hf");
    assert.deepEqual([t.bos, t.eos, t.pad, t.vocabSize], [261, 262, 262, 263]);
    assert.deepEqual(t.stopIds, [262]);
    assert.equal(t.chat, null);
    // "hello" merges all the way; " world" is 'Ġw' then single bytes o r l d.
    assert.deepEqual(t.encode("hello"), [259]);
    assert.deepEqual(t.encode("hello world"), [259, 260, 111, 114, 108, 100]);
    assert.deepEqual(t.encode("hé"), [104, 0xc3, 0xa9]);
    // No special tokens are added by encode.
    assert.equal(t.encode("hello").includes(261), false);
    for (const s of ["hello world", "x = 3 + 4;\nprint(x)", "Grüße 😀", "  two  spaces "]) {
      assert.equal(t.decode(t.encode(s)), s);
      assert.equal(t.decode([261, ...t.encode(s), 262, 262]), s);
    }
    assert.equal(t.decode([]), "");
    assert.equal(t.decode([261, 262]), "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("tokenizer.json: explicit pad_token_id, eos list, ids outside the vocabulary refused", () => {
  const json = tinyBpeJson();
  assert.deepEqual(hfSpecialIds({ bos_token_id: 5, eos_token_id: [7, 9], vocab_size: 10 }, json), {
    bos: null,
    eos: 7,
    pad: 7,
    vocabSize: 10,
    stop: [],
  });
  // add_bos_token with no bos_token text: config.json's id; eos from tokenizer_config.json when
  // config.json has none, and the tokenizer's eos_token stops generation either way.
  assert.deepEqual(
    hfSpecialIds({ bos_token_id: 5, eos_token_id: null }, json, {
      add_bos_token: true,
      eos_token: { content: "</s>" },
    }),
    { bos: 5, eos: 262, pad: 262, vocabSize: 263, stop: [262] },
  );
  assert.equal(
    hfSpecialIds({ eos_token_id: 7 }, json, { add_bos_token: false, bos_token: "<s>" }).bos,
    null,
  );
  assert.throws(
    () => hfSpecialIds({ eos_token_id: 7 }, json, { add_bos_token: true }),
    TokenizerError,
  );
  assert.throws(() => hfSpecialIds({ eos_token_id: null }, json, {}), TokenizerError);
  // A TemplateProcessing post-processor that starts with a special token adds it as bos.
  const templated = {
    ...json,
    post_processor: {
      type: "Sequence",
      processors: [
        { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
        {
          type: "TemplateProcessing",
          single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, {
            Sequence: { id: "A", type_id: 0 },
          }],
          pair: [],
          special_tokens: { "<s>": { id: "<s>", ids: [261], tokens: ["<s>"] } },
        },
      ],
    },
  };
  assert.equal(hfSpecialIds({ eos_token_id: 262 }, templated).bos, 261);
  const t = new HfJsonTokenizer(tinyBpeJson(), {}, {
    bos: 261,
    eos: 262,
    pad: 0,
    vocabSize: 263,
  });
  assert.equal(t.pad, 0);
  assert.throws(() =>
    new HfJsonTokenizer(tinyBpeJson(), {}, {
      bos: 261,
      eos: 300,
      pad: 0,
      vocabSize: 263,
    }), TokenizerError);
  assert.throws(() =>
    new HfJsonTokenizer({ nomodel: 1 }, {}, {
      bos: 1,
      eos: 2,
      pad: 0,
      vocabSize: 3,
    }), TokenizerError);
});

Deno.test("loadTokenizer: byte tokenizer without tokenizer.json; mismatched config refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const t = await loadTokenizer(dir, { vocab_size: 259, bos_token_id: 1, eos_token_id: 2 });
    assert.equal(t.kind, "byte");
    assert.deepEqual(t.encode("ok"), [114, 110]);
    await assert.rejects(
      () => loadTokenizer(dir, { bos_token_id: 5, eos_token_id: 2 }),
      (e: unknown) => e instanceof TokenizerError && /bos_token_id/.test(e.message),
    );
    await assert.rejects(() => loadTokenizer(dir, { vocab_size: 100 }), TokenizerError);
    await assert.rejects(() => loadTokenizer(dir, { pad_token_id: 7 }), TokenizerError);
    await Deno.writeTextFile(`${dir}/tokenizer.json`, "{not json");
    await assert.rejects(
      () => loadTokenizer(dir, { bos_token_id: 1, eos_token_id: 2 }),
      (e: unknown) => e instanceof TokenizerError && /not valid JSON/.test(e.message),
    );
    await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(tinyBpeJson()));
    await assert.rejects(() => loadTokenizer(dir, { eos_token_id: null }), TokenizerError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadTokenizer: the byte-level fixture model, through its parsed config.json", async () => {
  const dir = (await requireLlamaTiny()).pathname.replace(/\/$/, "");
  const config = await readLlamaConfig(`${dir}/config.json`);
  const t = await loadTokenizer(dir, config);
  assert.equal(t.kind, "byte");
  assert.equal(t.vocabSize, config.vocab_size);
  assert.deepEqual([t.pad, t.bos, t.eos], [0, 1, 2]);
});
