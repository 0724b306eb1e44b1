/**
 * SHA-256 digests of a model folder's weight files, so that a worker on the driver's host can read
 * the folder itself and prove it reads the bytes the driver read.
 */

import { createHash } from "node:crypto";
import { z } from "zod";
import { DomainError } from "../core/errors.ts";

/** A weight file whose bytes are not the ones announced (changed, missing, or extra). */
export class WeightDigestError extends DomainError {
  static override readonly code: string = "WEIGHT_DIGEST";
  static readonly fields: z.ZodObject = z.object({
    file: z.string(),
    expected: z.string().nullable(),
    actual: z.string().nullable(),
  });
  readonly file: string;
  /** The announced digest; null for a file that was not announced. */
  readonly expected: string | null;
  /** The digest found; null for a file that is missing. */
  readonly actual: string | null;
  constructor(message: string, file: string, expected: string | null, actual: string | null) {
    super(message);
    this.file = file;
    this.expected = expected;
    this.actual = actual;
  }
}

/** The SHA-256 (hex) of one file, read in 8 MiB pieces. */
export async function fileSha256(path: string | URL): Promise<string> {
  const hash = createHash("sha256");
  using f = await Deno.open(path, { read: true });
  const buf = new Uint8Array(8 << 20);
  for (;;) {
    const n = await f.read(buf);
    if (n === null) break;
    hash.update(buf.subarray(0, n));
  }
  return hash.digest("hex");
}

/** The digests of the `*.safetensors` files of a folder, by file name, in name order. */
export async function weightFileDigests(dir: string): Promise<Record<string, string>> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(".safetensors")) names.push(e.name);
  }
  names.sort();
  const out: Record<string, string> = {};
  for (const name of names) out[name] = await fileSha256(`${dir}/${name}`);
  return out;
}

/** Throws a WeightDigestError unless the folder's weight files are exactly `expected`. */
export async function checkWeightDigests(
  dir: string,
  expected: Readonly<Record<string, string>>,
): Promise<void> {
  let actual: Record<string, string>;
  try {
    actual = await weightFileDigests(dir);
  } catch (e) {
    throw new WeightDigestError(
      `${dir}: cannot read the model folder: ${(e as Error).message}`,
      dir,
      null,
      null,
    );
  }
  for (const [file, want] of Object.entries(expected)) {
    const got = actual[file] ?? null;
    if (got !== want) {
      throw new WeightDigestError(
        got === null
          ? `${dir}/${file}: missing (the driver read it with SHA-256 ${want})`
          : `${dir}/${file}: SHA-256 ${got}, the driver read ${want}: the file changed`,
        file,
        want,
        got,
      );
    }
  }
  for (const [file, got] of Object.entries(actual)) {
    if (!(file in expected)) {
      throw new WeightDigestError(
        `${dir}/${file}: not among the files the driver read`,
        file,
        null,
        got,
      );
    }
  }
}
