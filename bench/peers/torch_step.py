#!/usr/bin/env python3
"""The PyTorch CPU peer of bench/model_bench.ts: the same simulated HD-PiSSA step, timed.

    python3 bench/peers/torch_step.py SPEC_JSON

SPEC_JSON (what model_bench.ts passes): {"config": {LLaMA config}, "seq", "batch", "workers",
"rank", "lr", "clip", "reps"}, and "threads", a list of thread counts to try (default: torch's
own default and the number of CPUs this process may use). One step, as model_bench.ts records
it on the WebGPU device:

  - for each of the K workers in turn: its slice (A_k, B_k) of every adapted linear (all seven
    kinds, rank r, exact mute: the forward is that of W, g_A = s (dY B)^T x and
    g_B = s dY^T (x A^T), s = 1), forward + backward of its batch / K sequences, the gradients
    clipped by their global norm, and the AdamW step of its slice written as a delta (dA, dB);
  - then the HD-PiSSA update W += c s L R (c = 1/K, L = [dB_j | B_j + dB_j], R = [A_j ; dA_j]
    over j = 1..K) of every adapted matrix, applied K times (as K workers would).

float32 on the CPU. For each thread count: a warm-up step, then the median time of `reps`
steps. Prints one JSON object: the fastest thread count's median step time and the tokens/s it
makes (batch x seq tokens per step), and every thread count's figures under "runs". (On shared
cores more threads can be much slower: OpenMP threads wait on each other when one is preempted.)
"""

import json
import math
import os
import sys
import time

try:
    import torch
except ImportError:
    print(json.dumps({"error": "PyTorch is not installed for %s" % sys.executable}))
    sys.exit(3)

LINEAR_KINDS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class MutedAdapterLinear(torch.autograd.Function):
    """y = x W^T; the adapter (A [r, in], B [out, r]) only receives its gradients."""

    @staticmethod
    def forward(ctx, x, W, A, B, s):
        ctx.save_for_backward(x, W, A, B)
        ctx.s = s
        return x @ W.t()

    @staticmethod
    def backward(ctx, dy):
        x, W, A, B = ctx.saved_tensors
        x2 = x.reshape(-1, x.shape[-1])
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dy @ W
        gA = ctx.s * ((dy2 @ B).t() @ x2)
        gB = ctx.s * (dy2.t() @ (x2 @ A.t()))
        return dx, None, gA, gB, None


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Model:
    def __init__(self, cfg, gen):
        self.cfg = cfg
        C, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
        H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.D = D = cfg.get("head_dim") or C // H

        def normal(out, inn):
            return torch.randn(out, inn, generator=gen) / math.sqrt(inn)

        self.embed = normal(V, C)
        self.head = self.embed if cfg.get("tie_word_embeddings") else normal(V, C)
        self.norm = torch.ones(C)
        self.layers = []
        shapes = {"q_proj": (H * D, C), "k_proj": (KV * D, C), "v_proj": (KV * D, C),
                  "o_proj": (C, H * D), "gate_proj": (I, C), "up_proj": (I, C),
                  "down_proj": (C, I)}
        for _ in range(cfg["num_hidden_layers"]):
            layer = {"ln1": torch.ones(C), "ln2": torch.ones(C)}
            for kind in LINEAR_KINDS:
                layer[kind] = normal(*shapes[kind])
            self.layers.append(layer)

    def linears(self):
        return [(i, kind, layer[kind]) for i, layer in enumerate(self.layers)
                for kind in LINEAR_KINDS]

    def loss(self, ids, mask, adapters, s):
        """Mean cross-entropy of the targets; adapters[(layer, kind)] = (A, B) leaf tensors."""
        cfg = self.cfg
        Bsz, S = ids.shape
        H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], self.D
        eps = cfg["rms_norm_eps"]
        inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
        freqs = torch.outer(torch.arange(S, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        causal = torch.ones(S, S, dtype=torch.bool).triu(1)

        def lin(i, kind, x):
            A, B = adapters[(i, kind)]
            return MutedAdapterLinear.apply(x, self.layers[i][kind], A, B, s)

        h = self.embed[ids]
        for i, layer in enumerate(self.layers):
            x = rms_norm(h, layer["ln1"], eps)
            q = lin(i, "q_proj", x).view(Bsz, S, H, D).transpose(1, 2)
            k = lin(i, "k_proj", x).view(Bsz, S, KV, D).transpose(1, 2)
            v = lin(i, "v_proj", x).view(Bsz, S, KV, D).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(H // KV, dim=1)
            v = v.repeat_interleave(H // KV, dim=1)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            att = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1) @ v
            h = h + lin(i, "o_proj", att.transpose(1, 2).reshape(Bsz, S, H * D))
            x = rms_norm(h, layer["ln2"], eps)
            g = lin(i, "gate_proj", x)
            u = lin(i, "up_proj", x)
            h = h + lin(i, "down_proj", torch.nn.functional.silu(g) * u)
        logits = rms_norm(h, self.norm, eps) @ self.head.t()
        V = logits.shape[-1]
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none")
        m = mask[:, 1:].reshape(-1).to(ce.dtype)
        return (ce * m).sum() / m.sum()


def batch_of(gen, rows, seq):
    """Random bytes after a bos; the second half of each row is the loss targets."""
    ids = 3 + torch.randint(0, 256, (rows, seq), generator=gen)
    ids[:, 0] = 1
    mask = torch.zeros(rows, seq, dtype=torch.int64)
    mask[:, seq // 2:] = 1
    return ids, mask


def main(argv):
    spec = json.loads(argv[0])
    cfg = spec["config"]
    seq, batch, K, r = spec["seq"], spec["batch"], spec["workers"], spec["rank"]
    lr, clip, reps = spec["lr"], spec["clip"], spec["reps"]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    s, c = 1.0, 1.0 / K
    torch.set_grad_enabled(True)
    gen = torch.Generator().manual_seed(17)
    model = Model(cfg, gen)
    linears = model.linears()

    slices = []
    for _ in range(K):
        per = {}
        for i, kind, W in linears:
            out, inn = W.shape
            per[(i, kind)] = {
                "A": torch.randn(r, inn, generator=gen) * 0.05,
                "B": torch.randn(out, r, generator=gen) * 0.05,
                "dA": torch.zeros(r, inn), "dB": torch.zeros(out, r),
                "mA": torch.zeros(r, inn), "vA": torch.zeros(r, inn),
                "mB": torch.zeros(out, r), "vB": torch.zeros(out, r),
            }
        slices.append(per)
    shards = [batch_of(gen, batch // K, seq) for _ in range(K)]
    state = {"step": 0, "loss": float("nan")}

    def adamw_delta(grad, m, v, delta, t):
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = v.sqrt() / math.sqrt(1 - beta2 ** t) + eps
        delta.copy_(m / denom).mul_(-lr / (1 - beta1 ** t))

    def worker_step(k):
        per = slices[k]
        adapters = {key: (p["A"].clone().requires_grad_(True), p["B"].clone().requires_grad_(True))
                    for key, p in per.items()}
        ids, mask = shards[k]
        loss = model.loss(ids, mask, adapters, s)
        loss.backward()
        grads = [g for A, B in adapters.values() for g in (A.grad, B.grad)]
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        if norm > clip:
            for g in grads:
                g.mul_(clip / norm)
        for key, p in per.items():
            A, B = adapters[key]
            adamw_delta(A.grad, p["mA"], p["vA"], p["dA"], state["step"])
            adamw_delta(B.grad, p["mB"], p["vB"], p["dB"], state["step"])
        value = loss.item()
        if not math.isfinite(value):
            raise SystemExit("worker loss is not finite")
        state["loss"] = value

    def update():
        with torch.no_grad():
            for _ in range(K):
                for i, kind, W in linears:
                    ps = [slices[j][(i, kind)] for j in range(K)]
                    L = torch.cat([t for p in ps for t in (p["dB"], p["B"] + p["dB"])], dim=1)
                    R = torch.cat([t for p in ps for t in (p["A"], p["dA"])], dim=0)
                    W.addmm_(L, R, alpha=c * s)

    def hd_step():
        state["step"] += 1
        for k in range(K):
            worker_step(k)
        update()

    runs = []
    for threads in spec.get("threads") or sorted({torch.get_num_threads(),
                                                  len(os.sched_getaffinity(0))}):
        torch.set_num_threads(threads)
        hd_step()  # warm-up
        ms = []
        for _ in range(reps):
            t0 = time.perf_counter()
            hd_step()
            ms.append((time.perf_counter() - t0) * 1e3)
        median = sorted(ms)[(len(ms) - 1) // 2]  # nearest rank, as bench/figure.ts percentile(50)
        runs.append({"threads": threads, "ms": median, "ms_samples": ms})
    best = min(runs, key=lambda x: x["ms"])
    print(json.dumps({
        "torch": torch.__version__,
        "dtype": "float32",
        "tokens": batch * seq,
        "threads": best["threads"],
        "ms": best["ms"],
        "tokens_per_s": batch * seq / best["ms"] * 1e3,
        "runs": runs,
        "loss": state["loss"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
