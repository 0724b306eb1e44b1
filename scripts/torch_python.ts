/**
 * Finds a Python interpreter that can import PyTorch, for the scripts that need one (the test
 * fixture generator, the PyTorch peer of the model bench). `TORCH_PYTHON` names one explicitly;
 * otherwise /usr/bin/python3 (where Debian's python3-torch installs) and then `python3` on the
 * PATH are tried.
 */

/** The command that installs PyTorch for the system Python on Debian/Ubuntu. */
export const TORCH_INSTALL = "apt-get install -y python3-torch";

export type TorchPython =
  | { ok: true; python: string; torch: string }
  | { ok: false; reason: string };

/** The first candidate Python whose `import torch` works, or why there is none. */
export async function findTorchPython(): Promise<TorchPython> {
  const named = Deno.env.get("TORCH_PYTHON");
  const candidates = named ? [named] : ["/usr/bin/python3", "python3"];
  const tried: string[] = [];
  for (const python of candidates) {
    let out: Deno.CommandOutput;
    try {
      out = await new Deno.Command(python, {
        args: ["-c", "import torch; print(torch.__version__)"],
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch (e) {
      tried.push(`${python}: ${e instanceof Deno.errors.NotFound ? "not found" : String(e)}`);
      continue;
    }
    if (out.success) {
      return { ok: true, python, torch: new TextDecoder().decode(out.stdout).trim() };
    }
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").pop() ?? "";
    tried.push(`${python}: ${err || `exit ${out.code}`}`);
  }
  return {
    ok: false,
    reason: `PyTorch is not installed (${tried.join("; ")}); install it with ` +
      `\`${TORCH_INSTALL}\` (Debian/Ubuntu) or \`pip install torch\`, or name a python ` +
      "that has it in TORCH_PYTHON",
  };
}
