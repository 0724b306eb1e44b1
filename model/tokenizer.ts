/**
 * Tokenizers: the byte tokenizer (the default for models without a `tokenizer.json`) and
 * Hugging Face `tokenizer.json` files through `@huggingface/tokenizers`.
 *
 * Both encode text without special tokens; the training data adds bos/eos itself (docs/architecture.md §4),
 * so that the same code path serves every tokenizer.
 * @module
 */
import { DomainError } from "../core/errors.ts";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";

/** Encodes text to token ids and back. */
export interface Tokenizer {
  /** "byte" for the byte tokenizer, "hf" for a `tokenizer.json`. */
  readonly kind: "byte" | "hf";
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
  /** Token ids of `text`, without any special token. */
  encode(text: string): number[];
  /** Text of `ids`; special tokens (bos, eos, pad and the file's special tokens) are skipped. */
  decode(ids: ArrayLike<number>): string;
}

/** The special-token fields of a model's `config.json` that the tokenizers read. */
export interface TokenizerModelConfig {
  vocab_size?: number;
  bos_token_id?: number | null;
  eos_token_id?: number | number[] | null;
  pad_token_id?: number | null;
}

/** A tokenizer file or its configuration is missing, malformed or inconsistent. */
export class TokenizerError extends DomainError {
  static override readonly code: string = "TOKENIZER";
}

export const BYTE_PAD = 0;
export const BYTE_BOS = 1;
export const BYTE_EOS = 2;
/** Byte b has id b + BYTE_OFFSET. */
export const BYTE_OFFSET = 3;
export const BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET;

const utf8Encoder = new TextEncoder();
// fatal: false turns invalid sequences (a model can emit any bytes) into U+FFFD instead of
// throwing.
const utf8Decoder = new TextDecoder("utf-8", { fatal: false });

/** pad 0, bos 1, eos 2, UTF-8 byte b -> b + 3; 259 ids. */
export class ByteTokenizer implements Tokenizer {
  readonly kind = "byte" as const;
  readonly vocabSize = BYTE_VOCAB_SIZE;
  readonly bos = BYTE_BOS;
  readonly eos = BYTE_EOS;
  readonly pad = BYTE_PAD;

  encode(text: string): number[] {
    const bytes = utf8Encoder.encode(text);
    const ids = new Array<number>(bytes.length);
    for (let i = 0; i < bytes.length; i++) ids[i] = bytes[i] + BYTE_OFFSET;
    return ids;
  }

  /** Ids outside the byte range (a model with a padded vocabulary may emit them) become U+FFFD. */
  decode(ids: ArrayLike<number>): string {
    const bytes: number[] = [];
    let out = "";
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id === BYTE_PAD || id === BYTE_BOS || id === BYTE_EOS) continue;
      if (Number.isInteger(id) && id >= BYTE_OFFSET && id < BYTE_VOCAB_SIZE) {
        bytes.push(id - BYTE_OFFSET);
      } else {
        out += utf8Decoder.decode(Uint8Array.from(bytes)) + "\uFFFD";
        bytes.length = 0;
      }
    }
    return out + utf8Decoder.decode(Uint8Array.from(bytes));
  }
}

/** The special-token ids a `tokenizer.json` model takes from `config.json`. */
export interface HfSpecialIds {
  bos: number;
  eos: number;
  pad: number;
  vocabSize: number;
}

/** A Hugging Face `tokenizer.json`, encoding without special tokens. */
export class HfJsonTokenizer implements Tokenizer {
  readonly kind = "hf" as const;
  readonly vocabSize: number;
  readonly bos: number;
  readonly eos: number;
  readonly pad: number;
  readonly #tok: HfTokenizer;
  readonly #cleanUpSpaces: boolean;

  /**
   * `tokenizerJson` is the parsed `tokenizer.json`, `tokenizerConfig` the parsed
   * `tokenizer_config.json` (or `{}`).
   */
  constructor(tokenizerJson: unknown, tokenizerConfig: Record<string, unknown>, ids: HfSpecialIds) {
    if (!isRecord(tokenizerJson) || !isRecord(tokenizerJson.model)) {
      throw new TokenizerError("tokenizer.json has no 'model' object");
    }
    // The library requires these keys to be present, even as null; HF files may omit them.
    const json: Record<string, unknown> = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      added_tokens: [],
      ...tokenizerJson,
    };
    try {
      this.#tok = new HfTokenizer(json, tokenizerConfig);
    } catch (e) {
      throw new TokenizerError(`cannot build tokenizer from tokenizer.json: ${errorText(e)}`);
    }
    for (const [name, id] of Object.entries(ids)) {
      if (!Number.isInteger(id) || id < 0) {
        throw new TokenizerError(`${name} must be a non-negative integer, got ${id}`);
      }
    }
    for (const name of ["bos", "eos", "pad"] as const) {
      if (ids[name] >= ids.vocabSize) {
        throw new TokenizerError(
          `${name} id ${ids[name]} is outside the vocabulary (size ${ids.vocabSize})`,
        );
      }
    }
    this.vocabSize = ids.vocabSize;
    this.bos = ids.bos;
    this.eos = ids.eos;
    this.pad = ids.pad;
    // Evaluation compares decoded strings exactly; the library's default clean-up would rewrite
    // " ." as "." and so change answers, so it stays off unless the model asks for it.
    this.#cleanUpSpaces = tokenizerConfig.clean_up_tokenization_spaces === true;
  }

  encode(text: string): number[] {
    const ids = this.#tok.encode(text, { add_special_tokens: false }).ids;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new TokenizerError(
          `tokenizer.json maps part of ${JSON.stringify(text.slice(0, 40))} to id ${id}, ` +
            `outside [0, ${this.vocabSize}) (no unk token?)`,
        );
      }
    }
    return ids;
  }

  decode(ids: ArrayLike<number>): string {
    const kept: number[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id !== this.bos && id !== this.eos && id !== this.pad) kept.push(id);
    }
    if (kept.length === 0) return "";
    return this.#tok.decode(kept, {
      skip_special_tokens: true,
      clean_up_tokenization_spaces: this.#cleanUpSpaces,
    });
  }
}

/**
 * The special ids of a `tokenizer.json` model from its `config.json`: pad is `pad_token_id`, or
 * eos when that is null or absent; a list of eos ids uses the first.
 */
export function hfSpecialIds(
  config: TokenizerModelConfig,
  fallbackVocabSize: number,
): HfSpecialIds {
  const bos = config.bos_token_id;
  const eosField = config.eos_token_id;
  const eos = Array.isArray(eosField) ? eosField[0] : eosField;
  if (bos === undefined || bos === null) {
    throw new TokenizerError("config.json has no bos_token_id, which tokenizer.json models need");
  }
  if (eos === undefined || eos === null) {
    throw new TokenizerError("config.json has no eos_token_id, which tokenizer.json models need");
  }
  const pad = config.pad_token_id ?? eos;
  return { bos, eos, pad, vocabSize: config.vocab_size ?? fallbackVocabSize };
}

/**
 * The tokenizer of a model folder: `tokenizer.json` (with `tokenizer_config.json` when present)
 * through `@huggingface/tokenizers`, else the byte tokenizer. For the byte tokenizer the ids in
 * `config` must agree with its fixed ones (pad 0, bos 1, eos 2) and the vocabulary hold 259 ids.
 */
export async function loadTokenizer(
  modelDir: string,
  config: TokenizerModelConfig,
): Promise<Tokenizer> {
  const jsonPath = `${modelDir}/tokenizer.json`;
  const jsonText = await readIfExists(jsonPath);
  if (jsonText === null) return byteTokenizerFor(config, modelDir);
  const tokenizerJson = parseJsonFile(jsonText, jsonPath);
  const configPath = `${modelDir}/tokenizer_config.json`;
  const configText = await readIfExists(configPath);
  const tokenizerConfig = configText === null ? {} : parseJsonFile(configText, configPath);
  if (!isRecord(tokenizerConfig)) {
    throw new TokenizerError(`${configPath} is not a JSON object`);
  }
  return new HfJsonTokenizer(
    tokenizerJson,
    tokenizerConfig,
    hfSpecialIds(config, vocabSizeOf(tokenizerJson)),
  );
}

/** The byte tokenizer, after checking that `config` describes a byte-level model. */
export function byteTokenizerFor(
  config: TokenizerModelConfig,
  where = "config.json",
): ByteTokenizer {
  const expect: [keyof TokenizerModelConfig, number][] = [
    ["bos_token_id", BYTE_BOS],
    ["eos_token_id", BYTE_EOS],
  ];
  for (const [field, id] of expect) {
    const v = config[field];
    if (v !== undefined && v !== null && !(v === id || (Array.isArray(v) && v[0] === id))) {
      throw new TokenizerError(
        `${where}: ${field} is ${JSON.stringify(v)} but the byte tokenizer (used when there is ` +
          `no tokenizer.json) has ${field.replace("_token_id", "")} ${id}`,
      );
    }
  }
  const pad = config.pad_token_id;
  if (pad !== undefined && pad !== null && pad !== BYTE_PAD) {
    throw new TokenizerError(
      `${where}: pad_token_id is ${pad} but the byte tokenizer has pad ${BYTE_PAD}`,
    );
  }
  if (config.vocab_size !== undefined && config.vocab_size < BYTE_VOCAB_SIZE) {
    throw new TokenizerError(
      `${where}: vocab_size ${config.vocab_size} is below the byte tokenizer's ${BYTE_VOCAB_SIZE}`,
    );
  }
  return new ByteTokenizer();
}

function vocabSizeOf(tokenizerJson: unknown): number {
  let max = -1;
  if (!isRecord(tokenizerJson)) return 0;
  const model = tokenizerJson.model;
  if (isRecord(model)) {
    const vocab = model.vocab;
    if (Array.isArray(vocab)) max = vocab.length - 1;
    else if (isRecord(vocab)) {
      for (const v of Object.values(vocab)) if (typeof v === "number" && v > max) max = v;
    }
  }
  const added = tokenizerJson.added_tokens;
  if (Array.isArray(added)) {
    for (const t of added) {
      if (isRecord(t) && typeof t.id === "number" && t.id > max) max = t.id;
    }
  }
  return max + 1;
}

async function readIfExists(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new TokenizerError(`cannot read ${path}: ${errorText(e)}`);
  }
}

function parseJsonFile(text: string, path: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(`${path} is not valid JSON: ${errorText(e)}`);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
