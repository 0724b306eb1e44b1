/**
 * Chat data (docs/architecture.md §4): a conversation rendered with the model's own chat template
 * (Jinja, through `@huggingface/jinja`), its tokens, and the loss mask on the assistant turns.
 *
 * Tokens: the rendered text is split at the special tokens the template wrote (`<|eot_id|>`,
 * `<|im_start|>`, …), which become their ids; everything between them, message contents
 * included, is encoded as plain text. The text of a special token inside a message is plain text
 * too: contents are rendered with such text replaced by placeholders, and put back after the
 * split, so that only the template's own special tokens are control tokens.
 *
 * Mask, per assistant turn i: the conversation before it is rendered with
 * `add_generation_prompt: true`; that text must begin the whole conversation's text. The targets
 * are the tokens from the start of the turn's content (found after that prefix) up to and
 * including the first special token after it, the turn's end (`<|eot_id|>`, `<|im_end|>`). What
 * a template writes between the generation prompt and the content (Qwen3's empty
 * `<think>\n\n</think>\n\n`) is context, not target, and belongs to the prompt at evaluation.
 * @module
 */
import { Environment, Template } from "@huggingface/jinja";
import type { SpecialToken, Tokenizer } from "../../model/tokenizer.ts";
import { ChatTemplateError } from "./errors.ts";

/** One turn of a conversation; fields besides role and content are passed to the template. */
export interface ChatMessage {
  role: string;
  content: string;
  [field: string]: unknown;
}

/** A conversation's tokens and which of them are targets. */
export interface EncodedConversation {
  ids: number[];
  /** 1 on the tokens of every assistant turn's content and its end token. */
  targets: Uint8Array;
}

interface Piece {
  /** Start and end in the placeholder text. */
  start: number;
  end: number;
  /** A special token written by the template, or null for text. */
  special: number | null;
  /** The placeholder text of a text piece (after lstrip/rstrip of neighbouring specials). */
  raw: string;
  /** Index of the piece's first token. */
  first: number;
  ids: number[];
}

interface Rendered {
  /** Text with each special-token text of a content replaced by a placeholder. */
  text: string;
  pieces: Piece[];
  ids: number[];
  restore: (raw: string) => string;
}

/** Turns of one conversation with the range of tokens each assistant turn's targets cover. */
interface Turns {
  rendered: Rendered;
  /** [first target, end) per assistant turn, in order. */
  spans: [number, number][];
}

const PRIVATE_USE_FIRST = 0xe000;
const PRIVATE_USE_LAST = 0xf8ff;

/** A model's chat template, ready to render and tokenize conversations. */
export class ChatFormat {
  /** Where the template came from (tokenizer_config.json or chat_template.jinja). */
  readonly file: string;
  readonly #tok: Tokenizer;
  readonly #template: Template;
  readonly #source: string;
  readonly #vars: Record<string, string>;
  /** Special-token texts, longest first, so that the longest match wins. */
  readonly #specials: [string, SpecialToken][];
  #endIds: number[] | undefined;

  /** The chat format of `tok`'s chat template; a ChatTemplateError when it has none. */
  static of(tok: Tokenizer, where = "the model folder"): ChatFormat {
    if (tok.chat === null) {
      throw new ChatTemplateError(
        `${where} has no chat template (no chat_template in tokenizer_config.json, no ` +
          `chat_template.jinja${tok.kind === "byte" ? ", and no tokenizer.json" : ""})`,
        where,
      );
    }
    return new ChatFormat(tok);
  }

  private constructor(tok: Tokenizer) {
    const chat = tok.chat!;
    patchStripArguments();
    this.file = chat.file;
    this.#tok = tok;
    this.#source = chat.template;
    this.#vars = chat.tokens;
    this.#specials = [...tok.specialTokens].sort((a, b) => b[0].length - a[0].length);
    try {
      this.#template = new Template(chat.template);
    } catch (e) {
      throw new ChatTemplateError(
        `${chat.file}: the chat template does not parse: ${text(e)}`,
        chat.file,
      );
    }
  }

  /** The template's text for `messages`, as Hugging Face's `apply_chat_template` renders it. */
  render(messages: readonly ChatMessage[], addGenerationPrompt: boolean): string {
    try {
      return this.#template.render({
        ...this.#vars,
        messages: messages.map((m) => ({ ...m })),
        add_generation_prompt: addGenerationPrompt,
      });
    } catch (e) {
      throw new ChatTemplateError(`${this.file}: the chat template failed: ${text(e)}`, this.file);
    }
  }

  /** The tokens of a conversation and the targets: every assistant turn's content + end token. */
  encode(messages: readonly ChatMessage[]): EncodedConversation {
    const { rendered, spans } = this.#turns(messages);
    const targets = new Uint8Array(rendered.ids.length);
    for (const [a, b] of spans) targets.fill(1, a, b);
    return { ids: rendered.ids, targets };
  }

  /**
   * The ids a generation of the next assistant turn starts from: exactly the tokens that the
   * conversation `messages` + an assistant answer has before the answer's content (the
   * generation prompt, and whatever the template puts before an answer).
   */
  promptIds(messages: readonly ChatMessage[]): number[] {
    const mark = this.#unusedChar(messages, 1);
    const { rendered, spans } = this.#turns([...messages, { role: "assistant", content: mark }]);
    return rendered.ids.slice(0, spans[spans.length - 1][0]);
  }

  /** The special ids that close an assistant turn (for stop ids); empty when none is found. */
  endOfTurnIds(): number[] {
    if (this.#endIds === undefined) {
      try {
        const mark = this.#unusedChar([], 1);
        const conv: ChatMessage[] = [
          { role: "user", content: "?" },
          { role: "assistant", content: mark },
        ];
        const { rendered, spans } = this.#turns(conv);
        this.#endIds = [rendered.ids[spans[0][1] - 1]];
      } catch {
        this.#endIds = [];
      }
    }
    return this.#endIds;
  }

  #turns(messages: readonly ChatMessage[]): Turns {
    const assistant = messages.flatMap((m, i) => (m.role === "assistant" ? [i] : []));
    if (assistant.length === 0) {
      throw new ChatTemplateError("the conversation has no assistant turn", this.file);
    }
    const { masked, restore } = this.#mask(messages);
    const rendered = this.#tokenize(this.render(masked, false), restore);
    const spans: [number, number][] = assistant.map((i, n) => {
      const prefix = this.render(masked.slice(0, i), true);
      if (!rendered.text.startsWith(prefix)) {
        throw new ChatTemplateError(
          `${this.file}: the conversation up to assistant turn ${n + 1} with ` +
            "add_generation_prompt does not render as the start of the whole conversation, " +
            "so its answer cannot be located",
          this.file,
        );
      }
      return this.#answerSpan(rendered, prefix.length, masked[i].content);
    });
    return { rendered, spans };
  }

  /** [first, end) token range of the answer whose content follows the text position `from`. */
  #answerSpan(r: Rendered, from: number, content: string): [number, number] {
    const end = r.pieces.find((p) => p.special !== null && p.start >= from);
    if (end === undefined) {
      throw new ChatTemplateError(
        `${this.file}: no special token follows an assistant turn, so its end cannot be marked`,
        this.file,
      );
    }
    // The content as written, else trimmed (Llama 3's template trims it); empty: only the end.
    let start = content.trim() === "" ? end.start : from;
    for (const needle of [content, content.trim()]) {
      if (needle.trim() === "") break;
      const k = r.text.indexOf(needle, from);
      if (k >= 0 && k + needle.length <= end.start) {
        start = k;
        break;
      }
    }
    // Not found: the template rewrote the content (Qwen3 moves <think>…</think> out of it), and
    // the targets start right after the generation prompt.
    return [this.#tokenAt(r, start), end.first + 1];
  }

  /** Index of the token that holds the character at text position `pos`. */
  #tokenAt(r: Rendered, pos: number): number {
    for (const p of r.pieces) {
      if (pos >= p.end) continue;
      if (p.special !== null || pos <= p.start) return p.first;
      // The tokens of the piece's text before pos, compared with the piece's own: where they
      // part, the token holding pos begins (a token across pos counts as a target).
      const before = this.#tok.encode(r.restore(p.raw.slice(0, pos - p.start)));
      let n = 0;
      while (n < before.length && n < p.ids.length && before[n] === p.ids[n]) n++;
      return p.first + n;
    }
    return r.ids.length;
  }

  /** Contents with every special-token text replaced by a placeholder, and how to undo it. */
  #mask(messages: readonly ChatMessage[]): {
    masked: ChatMessage[];
    restore: (raw: string) => string;
  } {
    const hits = messages.some((m) => this.#specials.some(([t]) => m.content.includes(t)));
    if (!hits) return { masked: messages.map((m) => ({ ...m })), restore: (s) => s };
    const p = this.#unusedChar(messages, 0);
    const texts: string[] = [];
    const masked = messages.map((m) => {
      let out = "";
      for (let i = 0; i < m.content.length;) {
        const t = this.#specialAt(m.content, i);
        if (t === null) {
          out += m.content[i++];
          continue;
        }
        let k = texts.indexOf(t[0]);
        if (k < 0) k = texts.push(t[0]) - 1;
        out += `${p}${k}${p}`;
        i += t[0].length;
      }
      return { ...m, content: out };
    });
    const re = new RegExp(`${p}(\\d+)${p}`, "gu");
    return { masked, restore: (s) => s.replace(re, (_, k) => texts[Number(k)]) };
  }

  /** Splits rendered text at the template's special tokens and encodes the text between. */
  #tokenize(textIn: string, restore: (raw: string) => string): Rendered {
    const pieces: Piece[] = [];
    let textStart = 0;
    const flushText = (end: number) => {
      if (end > textStart) {
        pieces.push({
          start: textStart,
          end,
          special: null,
          raw: textIn.slice(textStart, end),
          first: 0,
          ids: [],
        });
      }
    };
    for (let i = 0; i < textIn.length;) {
      const t = this.#specialAt(textIn, i);
      if (t === null) {
        i++;
        continue;
      }
      flushText(i);
      const [content, tok] = t;
      pieces.push({
        start: i,
        end: i + content.length,
        special: tok.id,
        raw: "",
        first: 0,
        ids: [],
      });
      i += content.length;
      textStart = i;
    }
    flushText(textIn.length);
    // lstrip/rstrip: whitespace beside such a special token belongs to it.
    pieces.forEach((p, k) => {
      if (p.special === null) return;
      const tok = this.#specials.find(([, s]) => s.id === p.special)![1];
      const prev = pieces[k - 1];
      const next = pieces[k + 1];
      if (tok.lstrip && prev?.special === null) {
        prev.raw = prev.raw.trimEnd();
        prev.end = prev.start + prev.raw.length;
      }
      if (tok.rstrip && next?.special === null) {
        const kept = next.raw.trimStart();
        next.start += next.raw.length - kept.length;
        next.raw = kept;
      }
    });
    const ids: number[] = [];
    for (const p of pieces) {
      p.first = ids.length;
      p.ids = p.special === null ? this.#tok.encode(restore(p.raw)) : [p.special];
      ids.push(...p.ids);
    }
    return { text: textIn, pieces, ids, restore };
  }

  /** The special token whose text starts at `s[i]` (the longest), or null. */
  #specialAt(s: string, i: number): [string, SpecialToken] | null {
    for (const t of this.#specials) if (s.startsWith(t[0], i)) return t;
    return null;
  }

  /** A private-use character found neither in the template nor in any message. */
  #unusedChar(messages: readonly ChatMessage[], skip: number): string {
    let skipped = 0;
    for (let c = PRIVATE_USE_FIRST; c <= PRIVATE_USE_LAST; c++) {
      const ch = String.fromCharCode(c);
      if (this.#source.includes(ch) || messages.some((m) => m.content.includes(ch))) continue;
      if (skipped++ < skip) continue;
      return ch;
    }
    throw new ChatTemplateError("the messages use every private-use character", this.file);
  }
}

function text(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

interface JinjaValue {
  type: string;
  value: unknown;
}
type JinjaCtor = new (v: unknown) => JinjaValue;

const patched = new WeakSet<Map<string, unknown>>();
let stripPatched = false;

/**
 * `@huggingface/jinja` ignores the argument of `strip`, `lstrip` and `rstrip` (it always strips
 * whitespace); Python, which Hugging Face renders templates with, strips the given characters.
 * Qwen3's template calls `content.lstrip('\n')`, so a content starting with a space would render
 * differently. This wraps the three methods of the library's string value with Python's meaning.
 */
function patchStripArguments(): void {
  if (stripPatched) return;
  stripPatched = true;
  const sample = new Environment().set("s", "") as unknown as JinjaValue;
  const proto = Object.getPrototypeOf(sample) as object;
  const desc = Object.getOwnPropertyDescriptor(proto, "builtins");
  const original = desc?.get;
  if (original === undefined) return;
  const StringValue = sample.constructor as JinjaCtor;
  const strip0 = (original.call(sample) as Map<string, JinjaValue>).get("strip");
  if (strip0 === undefined) return;
  const FunctionValue = strip0.constructor as JinjaCtor;
  Object.defineProperty(proto, "builtins", {
    configurable: true,
    get(this: JinjaValue) {
      const map = original.call(this) as Map<string, unknown>;
      if (patched.has(map)) return map;
      patched.add(map);
      const s = String(this.value);
      for (
        const [name, start, end] of [
          ["strip", true, true],
          ["lstrip", true, false],
          ["rstrip", false, true],
        ] as const
      ) {
        map.set(
          name,
          new FunctionValue((args: JinjaValue[]) => {
            const a = args[0];
            const chars = a?.type === "StringValue" ? String(a.value) : null;
            return new StringValue(pyStrip(s, chars, start, end));
          }),
        );
      }
      return map;
    },
  });
}

/** Python's str.strip/lstrip/rstrip: `chars` null strips whitespace. */
export function pyStrip(s: string, chars: string | null, start: boolean, end: boolean): string {
  const cs = chars === null ? null : new Set(chars);
  const drop = (c: string) => (cs === null ? /\s/u.test(c) : cs.has(c));
  const cps = [...s];
  let a = 0;
  let b = cps.length;
  if (start) { while (a < b && drop(cps[a])) a++; }
  if (end) { while (b > a && drop(cps[b - 1])) b--; }
  return cps.slice(a, b).join("");
}
