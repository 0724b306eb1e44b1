#!/usr/bin/env python3
"""The PyTorch CPU peer of bench/svd_bench.ts: torch.svd_lowrank, which PEFT's `pissa_niter_N`
init calls (torch.svd_lowrank(W, r, niter=N): a sketch of r columns, no oversampling), timed and
checked on matrices with a known spectrum.

    python3 bench/peers/torch_svd.py SPEC_JSON

SPEC_JSON: {"shapes": [[m, n], ...], "ranks": [r, ...], "niter": N, "spectrum": [s_0, ...],
"seed": S, "oversample": o, "threads": T} (T: torch.set_num_threads; absent or 0 keeps torch's
default, which is 1 with this Debian build on this machine). For every shape, a float32 W = U diag(s) V^T with random orthonormal
U, V (QR of Gaussian matrices in float64; the same recipe as svd_check.ts's knownSpectrumMatrix,
but torch's own generator, so not the same matrix as the TypeScript side). For every rank, two
runs: q = r (what PEFT does) and q = r + oversample (the sketch width of the project's randomized
SVD). Each is timed once (after one untimed warm-up of the smallest call) and compared with the
known factors in float64: max |U^T U - I| and |V^T V - I|, the largest relative error of the top r
singular values, and the sine of the largest principal angle between the computed and true top-r
left and right subspaces.

Prints one JSON object: {"threads": torch.get_num_threads(), "torch": version, "runs": [{"m",
"n", "rank", "q", "ms", "orthonormality", "sigma_rel_error", "sin_angle"}]}.
"""

import json
import sys
import time

try:
    import torch
except ImportError:
    print(json.dumps({"error": "PyTorch is not installed for %s" % sys.executable}))
    sys.exit(3)


def known_spectrum(m, n, s, gen):
    k = len(s)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    W = (U * torch.tensor(s, dtype=torch.float64)) @ V.t()
    return W.float(), U, V, torch.tensor(s, dtype=torch.float64)


def sin_largest_angle(A, B):
    """A, B [len, k] with orthonormal columns."""
    cos = torch.linalg.svdvals(A.t() @ B)
    c = min(1.0, float(cos[-1]))
    return max(0.0, 1.0 - c * c) ** 0.5


def gram_deviation(X):
    G = X.t() @ X
    return float((G - torch.eye(G.shape[0], dtype=G.dtype)).abs().max())


def main():
    spec = json.loads(sys.argv[1])
    niter = spec["niter"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    gen = torch.Generator().manual_seed(spec["seed"])
    runs = []
    # The first call of svd_lowrank pays one-time costs (thread pool, allocator): not timed.
    torch.svd_lowrank(torch.randn(64, 64, generator=gen), q=4, niter=niter)
    for m, n in spec["shapes"]:
        W, Ut, Vt, s = known_spectrum(m, n, spec["spectrum"], gen)
        for rank in spec["ranks"]:
            for q in (rank, rank + spec["oversample"]):
                torch.manual_seed(spec["seed"])
                t0 = time.perf_counter()
                U, S, V = torch.svd_lowrank(W, q=q, niter=niter)
                ms = (time.perf_counter() - t0) * 1000
                U = U[:, :rank].double()
                V = V[:, :rank].double()
                S = S[:rank].double()
                runs.append({
                    "m": m,
                    "n": n,
                    "rank": rank,
                    "q": q,
                    "ms": ms,
                    "orthonormality": max(gram_deviation(U), gram_deviation(V)),
                    "sigma_rel_error": float(((S - s[:rank]).abs() / s[:rank]).max()),
                    "sin_angle": max(
                        sin_largest_angle(U, Ut[:, :rank]), sin_largest_angle(V, Vt[:, :rank])
                    ),
                })
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__,
                      "runs": runs}))


main()
