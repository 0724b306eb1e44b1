/**
 * The PyTorch reference fixtures of tiny Hugging Face models, kept in the repository under
 * tests/fixtures/<name>-tiny and made by scripts/fixtures/make_llama_tiny.py (`deno task
 * fixtures`, `--variant NAME` for the others). A test that needs one fails when it is missing,
 * naming the script; it never skips.
 */

/** The fixture folder (config.json, model.safetensors, expected.json, expected.safetensors). */
export const LLAMA_TINY = new URL("../fixtures/llama-tiny/", import.meta.url);

/**
 * Every fixture, by the script's variant name, with what it exercises: LLaMA (GQA, RoPE θ 500),
 * Llama 3 (tied, llama3 RoPE scaling, two eos ids), Qwen2 (q/k/v biases, tied), Mistral (sliding
 * window 5 over 16 positions, head_dim 12 ≠ hidden/heads), linear RoPE scaling with every LLaMA
 * bias, dynamic NTK scaling in effect (16 positions over max_position_embeddings 12).
 */
export const FIXTURES = {
  "llama": LLAMA_TINY,
  "llama3": new URL("../fixtures/llama3-tiny/", import.meta.url),
  "qwen2": new URL("../fixtures/qwen2-tiny/", import.meta.url),
  "mistral": new URL("../fixtures/mistral-tiny/", import.meta.url),
  "llama-linear": new URL("../fixtures/llama-linear-tiny/", import.meta.url),
  "llama-dynamic": new URL("../fixtures/llama-dynamic-tiny/", import.meta.url),
} as const;
export type FixtureName = keyof typeof FIXTURES;
export const FIXTURE_NAMES = Object.keys(FIXTURES) as FixtureName[];

const FILES = ["config.json", "model.safetensors", "expected.json", "expected.safetensors"];

/** Throws, naming the script that makes it, unless every file of the fixture is there. */
export async function requireFixture(name: FixtureName): Promise<URL> {
  const dir = FIXTURES[name];
  const missing: string[] = [];
  for (const f of FILES) {
    try {
      await Deno.stat(new URL(f, dir));
    } catch {
      missing.push(f);
    }
  }
  if (missing.length > 0) {
    const how = name === "llama" ? "" : ` -- --variant ${name}`;
    throw new Error(
      `the PyTorch fixture ${dir.pathname} lacks ${missing.join(", ")}; ` +
        `make it with \`deno task fixtures${how}\` (scripts/fixtures/make_llama_tiny.py, ` +
        "needs PyTorch)",
    );
  }
  return dir;
}

/** The LLaMA fixture (see `requireFixture`). */
export function requireLlamaTiny(): Promise<URL> {
  return requireFixture("llama");
}
