/**
 * Tokenizers: the byte tokenizer (the default for models without a `tokenizer.json`) and
 * Hugging Face `tokenizer.json` files through `@huggingface/tokenizers`.
 *
 * `encode` treats all text as plain text: the text of a special token (`<|eot_id|>`) in the data
 * is encoded as ordinary characters, never as the control token. Only chat-template text is split
 * at special tokens (`specialTokens`, train/data/chat.ts). bos and eos are added by the data
 * pipeline, following the tokenizer's own rule for bos (docs/architecture.md §3, §4).
 * @module
 */
import { DomainError } from "../core/errors.ts";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";

/** Encodes text to token ids and back. */
export interface Tokenizer {
  /** "byte" for the byte tokenizer, "hf" for a `tokenizer.json`. */
  readonly kind: "byte" | "hf";
  readonly vocabSize: number;
  /** The id put before a prompt, or null when the tokenizer adds none (docs/architecture.md §3). */
  readonly bos: number | null;
  /** The id that closes a prompt/response example. */
  readonly eos: number;
  readonly pad: number;
  /** Ids that end a generation besides config.json's: eos and the tokenizer's own `eos_token`. */
  readonly stopIds: readonly number[];
  /** The special tokens (`"special": true` added tokens) by text; chat-template text splits at them. */
  readonly specialTokens: ReadonlyMap<string, SpecialToken>;
  /** The model's chat template, or null when it has none. */
  readonly chat: ChatTemplateSource | null;
  /** Token ids of `text`, all of it plain text: no special token, added or recognised. */
  encode(text: string): number[];
  /** Text of `ids`; special tokens (bos, eos, pad and the file's special tokens) are skipped. */
  decode(ids: ArrayLike<number>): string;
}

/** A special token of a `tokenizer.json`, with the whitespace it absorbs around it. */
export interface SpecialToken {
  id: number;
  /** Whitespace before it belongs to it (HF's `lstrip`). */
  lstrip: boolean;
  /** Whitespace after it belongs to it (HF's `rstrip`). */
  rstrip: boolean;
}

/** A chat template (Jinja) and the values its special-token variables take. */
export interface ChatTemplateSource {
  template: string;
  /** The file it was read from, for messages. */
  file: string;
  /** `bos_token`, `eos_token`, `pad_token`, `unk_token` as text, those the tokenizer defines. */
  tokens: Record<string, string>;
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
  /** The byte tokenizer always puts bos first (its models are pretrained that way). */
  readonly bos = BYTE_BOS;
  readonly eos = BYTE_EOS;
  readonly pad = BYTE_PAD;
  readonly stopIds: readonly number[] = [BYTE_EOS];
  readonly specialTokens: ReadonlyMap<string, SpecialToken> = new Map();
  readonly chat = null;

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

/** The special ids of a `tokenizer.json` model (see `hfSpecialIds`). */
export interface HfSpecialIds {
  /** null: the tokenizer adds no bos. */
  bos: number | null;
  eos: number;
  pad: number;
  vocabSize: number;
  /** Further ids that end a generation (the tokenizer's `eos_token`); default none. */
  stop?: number[];
}

/** A Hugging Face `tokenizer.json`; `encode` reads all text as plain text. */
export class HfJsonTokenizer implements Tokenizer {
  readonly kind = "hf" as const;
  readonly vocabSize: number;
  readonly bos: number | null;
  readonly eos: number;
  readonly pad: number;
  readonly stopIds: readonly number[];
  readonly specialTokens: ReadonlyMap<string, SpecialToken>;
  readonly chat: ChatTemplateSource | null;
  readonly #tok: HfTokenizer;
  readonly #cleanUpSpaces: boolean;
  /** Ids decode skips: bos, eos, pad and every special token. */
  readonly #skip: Set<number>;

  /**
   * `tokenizerJson` is the parsed `tokenizer.json`, `tokenizerConfig` the parsed
   * `tokenizer_config.json` (or `{}`).
   */
  constructor(
    tokenizerJson: unknown,
    tokenizerConfig: Record<string, unknown>,
    ids: HfSpecialIds,
    chat: ChatTemplateSource | null = null,
  ) {
    if (!isRecord(tokenizerJson) || !isRecord(tokenizerJson.model)) {
      throw new TokenizerError("tokenizer.json has no 'model' object");
    }
    const special = new Map<string, SpecialToken>();
    const added: unknown[] = [];
    for (const t of addedTokens(tokenizerJson)) {
      if (t.special) special.set(t.content, { id: t.id, lstrip: t.lstrip, rstrip: t.rstrip });
      else added.push(t.raw);
    }
    // The library splits text at every added token it is given. Special tokens are left out,
    // so that their text in the data is encoded as the plain text it is (as Hugging Face's
    // split_special_tokens=True does); chat-template text is split at them in chat.ts.
    // The library also requires these keys to be present, even as null; HF files may omit them.
    const json: Record<string, unknown> = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      ...tokenizerJson,
      added_tokens: added,
    };
    try {
      this.#tok = new HfTokenizer(json, tokenizerConfig);
    } catch (e) {
      throw new TokenizerError(`cannot build tokenizer from tokenizer.json: ${errorText(e)}`);
    }
    const { bos, eos, pad, vocabSize } = ids;
    for (const [name, id] of Object.entries({ eos, pad, vocabSize })) {
      if (!Number.isInteger(id) || id < 0) {
        throw new TokenizerError(`${name} must be a non-negative integer, got ${id}`);
      }
    }
    for (const [name, id] of [["bos", bos], ["eos", eos], ["pad", pad]] as const) {
      if (id === null) continue;
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
        throw new TokenizerError(
          `${name} id ${id} is outside the vocabulary (size ${vocabSize})`,
        );
      }
    }
    this.vocabSize = vocabSize;
    this.bos = bos;
    this.eos = eos;
    this.pad = pad;
    this.stopIds = [...new Set([eos, ...(ids.stop ?? [])])];
    this.specialTokens = special;
    this.chat = chat;
    this.#skip = new Set([eos, pad, ...[...special.values()].map((t) => t.id)]);
    if (bos !== null) this.#skip.add(bos);
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
      if (!this.#skip.has(ids[i])) kept.push(ids[i]);
    }
    if (kept.length === 0) return "";
    return this.#tok.decode(kept, {
      skip_special_tokens: true,
      clean_up_tokenization_spaces: this.#cleanUpSpaces,
    });
  }
}

/**
 * The special ids of a `tokenizer.json` model (docs/architecture.md §3):
 *
 * - bos follows the tokenizer's own rule: `add_bos_token` in `tokenizer_config.json` when it is
 *   set (true: its `bos_token`, else config.json's `bos_token_id`); otherwise what the
 *   post-processor of `tokenizer.json` puts first (a `TemplateProcessing` whose template starts
 *   with a special token, as Llama 3's adds `<|begin_of_text|>`; Bert/Roberta processing's cls);
 *   otherwise none (Qwen). config.json's `bos_token_id` alone adds nothing.
 * - eos, which closes prompt/response examples, is config.json's `eos_token_id` (the first of a
 *   list), or the tokenizer's `eos_token` when config.json has none. The tokenizer's `eos_token`
 *   also stops generation.
 * - pad is `pad_token_id`, or eos when that is null or absent.
 */
export function hfSpecialIds(
  config: TokenizerModelConfig,
  tokenizerJson: unknown,
  tokenizerConfig: Record<string, unknown> = {},
): HfSpecialIds {
  const lookup = tokenLookup(tokenizerJson);
  const eosField = config.eos_token_id;
  const configEos = Array.isArray(eosField) ? eosField[0] : eosField;
  const eosText = tokenText(tokenizerConfig.eos_token);
  const tokenizerEos = eosText === null ? undefined : lookup(eosText);
  const eos = configEos ?? tokenizerEos;
  if (eos === undefined || eos === null) {
    throw new TokenizerError(
      "config.json has no eos_token_id and tokenizer_config.json no known eos_token; " +
        "tokenizer.json models need one to close examples",
    );
  }
  const pad = config.pad_token_id ?? eos;
  const stop = tokenizerEos === undefined ? [] : [tokenizerEos];
  return {
    bos: bosOf(config, tokenizerJson, tokenizerConfig, lookup),
    eos,
    pad,
    vocabSize: config.vocab_size ?? vocabSizeOf(tokenizerJson),
    stop,
  };
}

function bosOf(
  config: TokenizerModelConfig,
  tokenizerJson: unknown,
  tokenizerConfig: Record<string, unknown>,
  lookup: (text: string) => number | undefined,
): number | null {
  const add = tokenizerConfig.add_bos_token;
  if (add === false) return null;
  if (add === true) {
    const text = tokenText(tokenizerConfig.bos_token);
    const id = (text === null ? undefined : lookup(text)) ?? config.bos_token_id;
    if (id === undefined || id === null) {
      throw new TokenizerError(
        "tokenizer_config.json sets add_bos_token but names no bos_token in the vocabulary, " +
          "and config.json has no bos_token_id",
      );
    }
    return id;
  }
  if (!isRecord(tokenizerJson)) return null;
  return postProcessorBos(tokenizerJson.post_processor, lookup);
}

/** The id a `tokenizer.json` post-processor puts before a single sequence, if any. */
function postProcessorBos(
  pp: unknown,
  lookup: (text: string) => number | undefined,
): number | null {
  if (!isRecord(pp)) return null;
  if (pp.type === "Sequence" && Array.isArray(pp.processors)) {
    for (const p of pp.processors) {
      const id = postProcessorBos(p, lookup);
      if (id !== null) return id;
    }
    return null;
  }
  if (pp.type === "TemplateProcessing" && Array.isArray(pp.single)) {
    const first = pp.single[0];
    if (!isRecord(first) || !isRecord(first.SpecialToken)) return null;
    const name = first.SpecialToken.id;
    if (typeof name !== "string") return null;
    const entry = isRecord(pp.special_tokens) ? pp.special_tokens[name] : undefined;
    const listed = isRecord(entry) && Array.isArray(entry.ids) ? entry.ids[0] : undefined;
    const id = typeof listed === "number" ? listed : lookup(name);
    if (id === undefined) {
      throw new TokenizerError(
        `tokenizer.json: the post-processor starts with ${JSON.stringify(name)}, which has no id`,
      );
    }
    return id;
  }
  if ((pp.type === "BertProcessing" || pp.type === "RobertaProcessing") && Array.isArray(pp.cls)) {
    const id = pp.cls[1];
    return typeof id === "number" ? id : null;
  }
  return null;
}

/** A token's text from a `tokenizer_config.json` field: a string or `{content: string}`. */
function tokenText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (isRecord(v) && typeof v.content === "string") return v.content;
  return null;
}

interface AddedTokenEntry {
  id: number;
  content: string;
  special: boolean;
  lstrip: boolean;
  rstrip: boolean;
  raw: unknown;
}

function addedTokens(tokenizerJson: Record<string, unknown>): AddedTokenEntry[] {
  const out: AddedTokenEntry[] = [];
  const list = tokenizerJson.added_tokens;
  if (!Array.isArray(list)) return out;
  for (const t of list) {
    if (!isRecord(t) || typeof t.id !== "number" || typeof t.content !== "string") {
      throw new TokenizerError(`tokenizer.json: malformed added token ${JSON.stringify(t)}`);
    }
    out.push({
      id: t.id,
      content: t.content,
      special: t.special === true,
      lstrip: t.lstrip === true,
      rstrip: t.rstrip === true,
      raw: t,
    });
  }
  return out;
}

/** Id of a token's text: an added token, else the model's vocabulary. */
function tokenLookup(tokenizerJson: unknown): (text: string) => number | undefined {
  const ids = new Map<string, number>();
  if (isRecord(tokenizerJson)) {
    const model = tokenizerJson.model;
    if (isRecord(model) && isRecord(model.vocab)) {
      for (const [k, v] of Object.entries(model.vocab)) if (typeof v === "number") ids.set(k, v);
    }
    for (const t of addedTokens(tokenizerJson)) ids.set(t.content, t.id);
  }
  return (text) => ids.get(text);
}

/** The chat template of a model folder: `tokenizer_config.json`'s, else `chat_template.jinja`. */
async function chatTemplateOf(
  modelDir: string,
  tokenizerConfig: Record<string, unknown>,
  configPath: string,
): Promise<ChatTemplateSource | null> {
  const tokens: Record<string, string> = {};
  for (const name of ["bos_token", "eos_token", "pad_token", "unk_token"]) {
    const text = tokenText(tokenizerConfig[name]);
    if (text !== null) tokens[name] = text;
  }
  const field = tokenizerConfig.chat_template;
  if (typeof field === "string") return { template: field, file: configPath, tokens };
  if (Array.isArray(field)) {
    // Several named templates: the one named "default" is the chat template.
    const named = field.find((t) => isRecord(t) && t.name === "default");
    if (isRecord(named) && typeof named.template === "string") {
      return { template: named.template, file: configPath, tokens };
    }
    throw new TokenizerError(`${configPath}: chat_template is a list without a "default" one`);
  }
  if (field !== undefined && field !== null) {
    throw new TokenizerError(`${configPath}: chat_template is not a string`);
  }
  const jinjaPath = `${modelDir}/chat_template.jinja`;
  const text = await readIfExists(jinjaPath);
  return text === null ? null : { template: text, file: jinjaPath, tokens };
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
    hfSpecialIds(config, tokenizerJson, tokenizerConfig),
    await chatTemplateOf(modelDir, tokenizerConfig, configPath),
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
