#!/usr/bin/env python3
"""Loads our output folder with transformers and compares its logits with ours.

    python3 bench/peers/hf_logits.py OUT_DIR

OUT_DIR is bench/gpu_machine_model.ts's --out: logits.json names the model folder, the token ids
and the shape [S, V] of logits.f32 (our logits, float32, little-endian). Prints one JSON object:
the largest absolute difference, that over the largest |logit|, and whether the argmax of every
position agrees. Runs on CUDA when there is one, else on the CPU. Exits 3, with the reason on
stdout as {"not_measured": ...}, when torch or transformers is missing.
"""

import json
import sys

try:
    import transformers  # first: without it, fail before the slow import of torch
    import numpy as np
    import torch
except Exception as e:  # the reason is the output
    print(json.dumps({"not_measured": f"python3 cannot import torch/transformers/numpy ({e})"}))
    sys.exit(3)


def main() -> None:
    out = sys.argv[1]
    meta = json.load(open(f"{out}/logits.json"))
    S, V = meta["shape"]
    ours = np.fromfile(f"{out}/logits.f32", dtype="<f4").reshape(S, V)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        meta["model"], torch_dtype=torch.float32
    ).to(device)
    model.eval()
    ids = torch.tensor([meta["ids"]], dtype=torch.long, device=device)
    with torch.no_grad():
        theirs = model(ids).logits[0].float().cpu().numpy()
    diff = float(np.abs(theirs - ours).max())
    scale = float(np.abs(theirs).max())
    print(json.dumps({
        "device": device,
        "transformers": transformers.__version__,
        "max_abs_diff": diff,
        "max_abs_diff_over_max_logit": diff / max(scale, 1e-30),
        "argmax_agree": bool((theirs.argmax(-1) == ours.argmax(-1)).all()),
    }))


main()
