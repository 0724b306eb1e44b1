#!/usr/bin/env python3
"""The PyTorch peer of the GPU machine run: one LoRA fine-tuning step of the same model folder in
PyTorch eager on CUDA (transformers + peft), timed.

    python3 bench/peers/torch_lora_cuda.py MODEL_DIR SPEC_JSON

SPEC_JSON: {"batch", "seq", "rank", "alpha", "lr", "steps"}. LoRA of rank r on all seven linear
kinds (q, k, v, o, gate, up, down), float32 weights, AdamW, gradient clipping at 1.0, random
token ids; the first step is a warm-up, the median of the others is reported. Prints one JSON
object {"ms", "tokens_per_s", "torch", "device"}; exits 3 with {"not_measured": reason} when
torch, transformers, peft or CUDA is missing.
"""

import json
import statistics
import sys
import time

try:
    import transformers  # first: without it, fail before the slow import of torch
    import peft
    import torch
except Exception as e:  # the reason is the output
    print(json.dumps({"not_measured": f"python3 cannot import torch/transformers/peft ({e})"}))
    sys.exit(3)

if not torch.cuda.is_available():
    print(json.dumps({"not_measured": f"torch {torch.__version__} sees no CUDA device"}))
    sys.exit(3)


def main() -> None:
    model_dir, spec = sys.argv[1], json.loads(sys.argv[2])
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, torch_dtype=torch.float32
    ).cuda()
    config = peft.LoraConfig(
        r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = peft.get_peft_model(model, config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec["lr"])
    g = torch.Generator(device="cpu").manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (spec["batch"], spec["seq"]), generator=g).cuda()
    times = []
    for _ in range(spec["steps"]):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    ms = statistics.median(times[1:]) if len(times) > 1 else times[0]
    print(json.dumps({
        "ms": ms,
        "tokens_per_s": spec["batch"] * spec["seq"] / (ms / 1000),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
    }))


main()
