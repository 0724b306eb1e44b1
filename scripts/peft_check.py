#!/usr/bin/env python3
"""Checks an exported PEFT adapter against the merged model of its run, with the real libraries.

Loads the base model with transformers, applies the adapter with peft's PeftModel.from_pretrained,
and compares its logits on a few token ids with those of the run's merged model folder. Prints
the largest absolute difference (and, for scale, how far the merged model's logits are from the
base model's) and exits 1 when the difference is above --tol.

Needs PyTorch, transformers and peft (pip install torch transformers peft); they are not part of
this project's toolchain. Example:

    deno task finetune --export-adapter runs/adapter --out runs/tuned
    python3 scripts/peft_check.py --base models/base --adapter runs/adapter --merged runs/tuned

An adapter keeps the leading singular components of each ΔW only, so the difference is not zero
unless ΔW had at most the adapter's rank: export_report.json in the adapter folder says how much
of ΔW each matrix keeps. --tol should be set with that in mind (the default suits an adapter
whose rel_error is around 1e-2 or below on the shipped model).
"""

import argparse
import json
import os
import sys


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the base model folder")
    p.add_argument("--adapter", required=True, help="the adapter folder (adapter_config.json, ...)")
    p.add_argument("--merged", required=True, help="the run's folder (its merged model)")
    p.add_argument(
        "--ids",
        default="1,84,61,35,90,107,100,119,35,108,118,35,52,53,35,46,35,54,51,66,13,68,61,35",
        help="comma-separated token ids of one sequence (default: bos, then the bytes of "
        "\"Q: What is 12 + 30?\\nA: \" for the shipped byte-level model, byte b -> b + 3)",
    )
    p.add_argument("--tol", type=float, default=5e-2, help="largest absolute logit difference allowed")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    try:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        print(f"error: {e}; this check needs torch, transformers and peft", file=sys.stderr)
        return 2

    ids = [int(t) for t in args.ids.split(",") if t.strip()]
    tokens = torch.tensor([ids], dtype=torch.long)

    def load(path):
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
        return model.eval()

    with torch.no_grad():
        base_logits = load(args.base)(tokens).logits
        merged_logits = load(args.merged)(tokens).logits
        peft_model = PeftModel.from_pretrained(load(args.base), args.adapter).eval()
        adapter_logits = peft_model(tokens).logits

    diff = (adapter_logits - merged_logits).abs().max().item()
    moved = (merged_logits - base_logits).abs().max().item()
    report_path = os.path.join(args.adapter, "export_report.json")
    if os.path.exists(report_path):
        with open(report_path) as f:
            report = json.load(f)
        print(
            f"adapter rank {report.get('rank')}: energy of dW kept {report.get('energy_kept'):.6f}, "
            f"|error|/|dW| {report.get('rel_error'):.3g}"
        )
    print(f"{len(ids)} tokens; max |logits(base + adapter) - logits(merged)| = {diff:.3e}")
    print(f"for scale: max |logits(merged) - logits(base)| = {moved:.3e}")
    if not diff <= args.tol:
        print(f"FAIL: {diff:.3e} is above --tol {args.tol:g}", file=sys.stderr)
        return 1
    print(f"OK: within --tol {args.tol:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
