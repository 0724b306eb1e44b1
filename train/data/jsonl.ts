/**
 * JSONL data sets: one JSON object per line with a prompt, a response and an optional task
 * label, or a conversation (`messages`: [{role, content}, …], rendered with the model's chat
 * template, train/data/chat.ts) and an optional task label (docs/architecture.md §4). Field names
 * are configurable, e.g. MetaMathQA's `query`/`response`.
 * @module
 */
import type { ChatMessage } from "./chat.ts";
import { DataFileError, EmptyDatasetError, JsonlLineError } from "./errors.ts";

/** One training or evaluation example. */
export interface Example {
  /** The prompt; for a conversation, the content of the turn before the last assistant turn. */
  prompt: string;
  /** The response; for a conversation, the last assistant turn's content (evaluation's reference). */
  response: string;
  /** The task label; "all" when the line has none. */
  task: string;
  /** The conversation of a `messages` line (absent on prompt/response lines). */
  messages?: ChatMessage[];
}

export interface JsonlOptions {
  /** Field holding the prompt (default "prompt"). */
  promptField?: string;
  /** Field holding the response (default "response"). */
  responseField?: string;
  /** Field holding the task label (default "task"); absent or null on a line means "all". */
  taskField?: string;
  /** Field holding a conversation (default "messages"); a line with it (not null) is a chat example. */
  messagesField?: string;
  /** Skip and count malformed lines instead of failing on the first one (default false). */
  skipMalformed?: boolean;
}

/** The label of examples whose line has no task field. */
export const DEFAULT_TASK = "all";

export interface Dataset {
  /** Where the examples came from (a file path or a name given by the caller). */
  source: string;
  examples: Example[];
  /** Number of malformed lines skipped (only with `skipMalformed`). */
  skipped: number;
  /** 1-based numbers of the skipped lines. */
  skippedLines: number[];
  /** 1-based line number of each example. */
  lines: number[];
}

/**
 * Parses JSONL text. Blank lines are ignored; a malformed line throws a JsonlLineError naming
 * `source` and its 1-based line number, or is skipped and counted with `skipMalformed`. No
 * usable example throws EmptyDatasetError.
 */
export function parseJsonl(text: string, source: string, opts: JsonlOptions = {}): Dataset {
  const promptField = opts.promptField ?? "prompt";
  const responseField = opts.responseField ?? "response";
  const taskField = opts.taskField ?? "task";
  const messagesField = opts.messagesField ?? "messages";
  const examples: Example[] = [];
  const lineNumbers: number[] = [];
  const skippedLines: number[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i];
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (line.trim() === "") continue;
    const parsed = parseLine(line, promptField, responseField, taskField, messagesField);
    if (typeof parsed === "string") {
      if (!opts.skipMalformed) throw new JsonlLineError(source, i + 1, parsed);
      skippedLines.push(i + 1);
    } else {
      examples.push(parsed);
      lineNumbers.push(i + 1);
    }
  }
  if (examples.length === 0) throw new EmptyDatasetError(source, skippedLines.length);
  return { source, examples, skipped: skippedLines.length, skippedLines, lines: lineNumbers };
}

/** Reads and parses a JSONL file (see parseJsonl); a missing file is a DataFileError. */
export async function loadJsonl(path: string, opts: JsonlOptions = {}): Promise<Dataset> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataFileError(path, "no such data file");
    if (e instanceof Deno.errors.IsADirectory) {
      throw new DataFileError(path, "is a directory, not a JSONL file");
    }
    throw new DataFileError(path, `cannot read: ${e instanceof Error ? e.message : String(e)}`);
  }
  return parseJsonl(text, path, opts);
}

/** The example on a line, or the reason it is malformed. */
function parseLine(
  line: string,
  promptField: string,
  responseField: string,
  taskField: string,
  messagesField: string,
): Example | string {
  let obj: unknown;
  try {
    obj = JSON.parse(line);
  } catch (e) {
    return `invalid JSON (${e instanceof Error ? e.message : String(e)})`;
  }
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
    return "not a JSON object";
  }
  const rec = obj as Record<string, unknown>;
  const task = rec[taskField] ?? DEFAULT_TASK;
  if (typeof task !== "string" || task === "") {
    return `field "${taskField}" is not a non-empty string`;
  }
  const messages = rec[messagesField];
  if (messages !== undefined && messages !== null) {
    return parseMessages(messages, messagesField, task);
  }
  const prompt = rec[promptField];
  const response = rec[responseField];
  if (prompt === undefined) return `missing field "${promptField}"`;
  if (typeof prompt !== "string") return `field "${promptField}" is not a string`;
  if (response === undefined) return `missing field "${responseField}"`;
  if (typeof response !== "string") return `field "${responseField}" is not a string`;
  return { prompt, response, task };
}

/** A conversation: a list of {role, content} with at least one assistant turn. */
function parseMessages(v: unknown, field: string, task: string): Example | string {
  if (!Array.isArray(v) || v.length === 0) return `field "${field}" is not a non-empty list`;
  const messages: ChatMessage[] = [];
  for (let i = 0; i < v.length; i++) {
    const m = v[i];
    if (typeof m !== "object" || m === null || Array.isArray(m)) {
      return `${field}[${i}] is not an object`;
    }
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== "string" || role === "") return `${field}[${i}].role is not a string`;
    if (typeof content !== "string") return `${field}[${i}].content is not a string`;
    messages.push(m as ChatMessage);
  }
  const last = messages.findLastIndex((m) => m.role === "assistant");
  if (last < 0) return `"${field}" has no assistant turn (nothing to learn)`;
  const prompt = last > 0 ? messages[last - 1].content : "";
  return { prompt, response: messages[last].content, task, messages };
}
