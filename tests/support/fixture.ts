/**
 * The PyTorch reference fixture of the tiny LLaMA model, kept in the repository under
 * tests/fixtures/llama-tiny and made by scripts/fixtures/make_llama_tiny.py (`deno task
 * fixtures`). A test that needs it fails when it is missing, naming the script; it never skips.
 */

/** The fixture folder (config.json, model.safetensors, expected.json, expected.safetensors). */
export const LLAMA_TINY = new URL("../fixtures/llama-tiny/", import.meta.url);

const FILES = ["config.json", "model.safetensors", "expected.json", "expected.safetensors"];

/** Throws, naming the script that makes it, unless every file of the fixture is there. */
export async function requireLlamaTiny(): Promise<URL> {
  const missing: string[] = [];
  for (const f of FILES) {
    try {
      await Deno.stat(new URL(f, LLAMA_TINY));
    } catch {
      missing.push(f);
    }
  }
  if (missing.length > 0) {
    throw new Error(
      `the PyTorch fixture ${LLAMA_TINY.pathname} lacks ${missing.join(", ")}; ` +
        "make it with `deno task fixtures` (scripts/fixtures/make_llama_tiny.py, needs PyTorch)",
    );
  }
  return LLAMA_TINY;
}
