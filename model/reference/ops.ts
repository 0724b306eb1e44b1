/**
 * Float64 CPU forward/backward pairs of every op of the LLaMA decoder, plain loops written for
 * reading, not speed. They are the ground truth the WebGPU kernels are tested against. Tensors are
 * row-major; a batch of B sequences of length S is N = B·S rows. Every backward accumulates (+=)
 * into its gradient buffers, as in llm.c, so that a tensor used twice (tied embeddings, the
 * residual stream) sums its gradients.
 */

/** `y[N, outDim] = x[N, inDim] · Wᵀ` with `W [outDim, inDim]` (a Hugging Face linear layer). */
export function matmulForward(
  y: Float64Array,
  x: ArrayLike<number>,
  W: ArrayLike<number>,
  N: number,
  inDim: number,
  outDim: number,
): void {
  for (let t = 0; t < N; t++) {
    const xo = t * inDim;
    for (let o = 0; o < outDim; o++) {
      const wo = o * inDim;
      let sum = 0;
      for (let i = 0; i < inDim; i++) sum += x[xo + i] * W[wo + i];
      y[t * outDim + o] = sum;
    }
  }
}

/** `dx += dy · W` and `dW += dyᵀ · x`; either output may be null when not wanted. */
export function matmulBackward(
  dx: Float64Array | null,
  dW: Float64Array | null,
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  W: ArrayLike<number>,
  N: number,
  inDim: number,
  outDim: number,
): void {
  for (let t = 0; t < N; t++) {
    for (let o = 0; o < outDim; o++) {
      const g = dy[t * outDim + o];
      if (g === 0) continue;
      const wo = o * inDim;
      const xo = t * inDim;
      if (dx) { for (let i = 0; i < inDim; i++) dx[xo + i] += g * W[wo + i]; }
      if (dW) { for (let i = 0; i < inDim; i++) dW[wo + i] += g * x[xo + i]; }
    }
  }
}

/** A linear layer's bias: `y[t, :] += b` for each of the N rows of `y [N, outDim]`. */
export function biasForward(
  y: Float64Array,
  b: ArrayLike<number>,
  N: number,
  outDim: number,
): void {
  for (let t = 0; t < N; t++) {
    for (let o = 0; o < outDim; o++) y[t * outDim + o] += b[o];
  }
}

/** The bias gradient: `db[o] += Σ_t dy[t, o]`. */
export function biasBackward(
  db: Float64Array,
  dy: ArrayLike<number>,
  N: number,
  outDim: number,
): void {
  for (let t = 0; t < N; t++) {
    for (let o = 0; o < outDim; o++) db[o] += dy[t * outDim + o];
  }
}

/**
 * The adapter path of a linear layer: `y += σ · (x Aᵀ) Bᵀ` with `A [r, in]`, `B [out, r]`; also
 * keeps `xa = x Aᵀ [N, r]` for the backward. σ is the forward scale: 0 for the exact mute, γ·s for
 * a numeric mute γ, s = alpha/r for LoRA and PiSSA.
 */
export function adapterForward(
  y: Float64Array,
  xa: Float64Array,
  x: ArrayLike<number>,
  A: ArrayLike<number>,
  B: ArrayLike<number>,
  sigma: number,
  N: number,
  inDim: number,
  outDim: number,
  r: number,
): void {
  matmulForward(xa, x, A, N, inDim, r);
  if (sigma === 0) return;
  for (let t = 0; t < N; t++) {
    for (let o = 0; o < outDim; o++) {
      let sum = 0;
      for (let j = 0; j < r; j++) sum += xa[t * r + j] * B[o * r + j];
      y[t * outDim + o] += sigma * sum;
    }
  }
}

/**
 * Backward of the adapter path. The adapter gradients use the scaling s (docs/architecture.md §2):
 * `gB += s · dyᵀ (x Aᵀ)`, `gA += s · (dy B)ᵀ x`; with σ = s these are the true gradients, with
 * σ = γ·s the true gradients divided by γ, with σ = 0 the γ → 0 limit. The input gradient gets the
 * adapter's true contribution `dx += σ · (dy B) A`.
 */
export function adapterBackward(
  dx: Float64Array | null,
  gA: Float64Array,
  gB: Float64Array,
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  xa: ArrayLike<number>,
  A: ArrayLike<number>,
  B: ArrayLike<number>,
  sigma: number,
  scale: number,
  N: number,
  inDim: number,
  outDim: number,
  r: number,
): void {
  const dyB = new Float64Array(N * r);
  for (let t = 0; t < N; t++) {
    for (let o = 0; o < outDim; o++) {
      const g = dy[t * outDim + o];
      for (let j = 0; j < r; j++) {
        dyB[t * r + j] += g * B[o * r + j];
        gB[o * r + j] += scale * g * xa[t * r + j];
      }
    }
  }
  for (let t = 0; t < N; t++) {
    for (let j = 0; j < r; j++) {
      const g = dyB[t * r + j];
      for (let i = 0; i < inDim; i++) {
        gA[j * inDim + i] += scale * g * x[t * inDim + i];
        if (dx && sigma !== 0) dx[t * inDim + i] += sigma * g * A[j * inDim + i];
      }
    }
  }
}

/** `out[t] = E[ids[t]]`. */
export function embeddingForward(
  out: Float64Array,
  ids: ArrayLike<number>,
  E: ArrayLike<number>,
  N: number,
  C: number,
): void {
  for (let t = 0; t < N; t++) {
    for (let c = 0; c < C; c++) out[t * C + c] = E[ids[t] * C + c];
  }
}

/** `dE[ids[t]] += dout[t]`. */
export function embeddingBackward(
  dE: Float64Array,
  dout: ArrayLike<number>,
  ids: ArrayLike<number>,
  N: number,
  C: number,
): void {
  for (let t = 0; t < N; t++) {
    for (let c = 0; c < C; c++) dE[ids[t] * C + c] += dout[t * C + c];
  }
}

/** RMSNorm: `out = x · rstd · w`, `rstd = 1 / sqrt(mean(x²) + eps)`; keeps rstd per row. */
export function rmsnormForward(
  out: Float64Array,
  rstd: Float64Array,
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  N: number,
  C: number,
  eps: number,
): void {
  for (let t = 0; t < N; t++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[t * C + c] * x[t * C + c];
    const rs = 1 / Math.sqrt(ss / C + eps);
    rstd[t] = rs;
    for (let c = 0; c < C; c++) out[t * C + c] = x[t * C + c] * rs * w[c];
  }
}

/**
 * RMSNorm backward: with `n = x·rstd`, `dx = rstd · (dout·w − n · mean(dout·w·n))` and
 * `dw += Σ_t dout·n`.
 */
export function rmsnormBackward(
  dx: Float64Array,
  dw: Float64Array | null,
  dout: ArrayLike<number>,
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  rstd: ArrayLike<number>,
  N: number,
  C: number,
): void {
  for (let t = 0; t < N; t++) {
    const rs = rstd[t];
    let dot = 0;
    for (let c = 0; c < C; c++) dot += dout[t * C + c] * w[c] * x[t * C + c] * rs;
    const mean = dot / C;
    for (let c = 0; c < C; c++) {
      const n = x[t * C + c] * rs;
      dx[t * C + c] += rs * (dout[t * C + c] * w[c] - n * mean);
      if (dw) dw[c] += dout[t * C + c] * n;
    }
  }
}

/**
 * RoPE tables `[S, D/2]`: angle `pos · invFreq[i]`, with Hugging Face's `inv_freq`
 * (`theta^(−2i/D)`, or a scaled RoPE's) given as `invFreq` [D/2].
 */
export function ropeTables(
  S: number,
  invFreq: ArrayLike<number>,
): { cos: Float64Array; sin: Float64Array } {
  const half = invFreq.length;
  const cos = new Float64Array(S * half);
  const sin = new Float64Array(S * half);
  for (let p = 0; p < S; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * invFreq[i];
      cos[p * half + i] = Math.cos(angle);
      sin[p * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/**
 * RoPE in Hugging Face's rotate-half layout, for `x [B·S, nHeads·D]` at positions 0..S−1 of each
 * sequence: the pair (i, i + D/2) is rotated by the angle of frequency i:
 * `out_i = x_i cos − x_{i+D/2} sin`, `out_{i+D/2} = x_{i+D/2} cos + x_i sin`.
 */
export function ropeForward(
  out: Float64Array,
  x: ArrayLike<number>,
  cos: ArrayLike<number>,
  sin: ArrayLike<number>,
  B: number,
  S: number,
  nHeads: number,
  D: number,
): void {
  const half = D / 2;
  for (let b = 0; b < B; b++) {
    for (let p = 0; p < S; p++) {
      const row = (b * S + p) * nHeads * D;
      for (let h = 0; h < nHeads; h++) {
        const o = row + h * D;
        for (let i = 0; i < half; i++) {
          const c = cos[p * half + i];
          const s = sin[p * half + i];
          const x1 = x[o + i];
          const x2 = x[o + i + half];
          out[o + i] = x1 * c - x2 * s;
          out[o + i + half] = x2 * c + x1 * s;
        }
      }
    }
  }
}

/** RoPE backward: the transposed rotation, `dx += Rᵀ dout`. */
export function ropeBackward(
  dx: Float64Array,
  dout: ArrayLike<number>,
  cos: ArrayLike<number>,
  sin: ArrayLike<number>,
  B: number,
  S: number,
  nHeads: number,
  D: number,
): void {
  const half = D / 2;
  for (let b = 0; b < B; b++) {
    for (let p = 0; p < S; p++) {
      const row = (b * S + p) * nHeads * D;
      for (let h = 0; h < nHeads; h++) {
        const o = row + h * D;
        for (let i = 0; i < half; i++) {
          const c = cos[p * half + i];
          const s = sin[p * half + i];
          const d1 = dout[o + i];
          const d2 = dout[o + i + half];
          dx[o + i] += d1 * c + d2 * s;
          dx[o + i + half] += d2 * c - d1 * s;
        }
      }
    }
  }
}

/**
 * Causal grouped-query attention. `q [B·S, H·D]`, `k, v [B·S, KV·D]`; query head h reads key/value
 * head `floor(h / (H/KV))` (Hugging Face's `repeat_kv`). Scores are scaled by 1/sqrt(D); `att
 * [B, H, S, S]` keeps the softmax probabilities (zero above the diagonal) for the backward. With a
 * sliding `window` W, query i attends only to keys i − W < j ≤ i (Mistral; the others get
 * probability 0).
 */
export function attentionForward(
  out: Float64Array,
  att: Float64Array,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  B: number,
  S: number,
  H: number,
  KV: number,
  D: number,
  window = Infinity,
): void {
  const group = H / KV;
  const scale = 1 / Math.sqrt(D);
  const qStride = H * D;
  const kvStride = KV * D;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / group);
      for (let i = 0; i < S; i++) {
        const qo = (b * S + i) * qStride + h * D;
        const a = ((b * H + h) * S + i) * S;
        const j0 = Math.max(0, i - window + 1);
        let max = -Infinity;
        for (let j = 0; j < j0; j++) att[a + j] = 0;
        for (let j = j0; j <= i; j++) {
          const ko = (b * S + j) * kvStride + kh * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qo + d] * k[ko + d];
          att[a + j] = dot * scale;
          if (att[a + j] > max) max = att[a + j];
        }
        let sum = 0;
        for (let j = j0; j <= i; j++) {
          att[a + j] = Math.exp(att[a + j] - max);
          sum += att[a + j];
        }
        for (let j = j0; j <= i; j++) att[a + j] /= sum;
        for (let j = i + 1; j < S; j++) att[a + j] = 0;
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = j0; j <= i; j++) acc += att[a + j] * v[(b * S + j) * kvStride + kh * D + d];
          out[qo + d] = acc;
        }
      }
    }
  }
}

/**
 * Attention backward through `out = P v`, the softmax and the scaled scores:
 * `dP = dout·v`, `dS = P ⊙ (dP − Σ P dP)`, `dq += scale·dS k`, `dk += scale·dSᵀ q`, `dv += Pᵀ dout`.
 * Keys outside a sliding window have P = 0 in `att` and so take no part.
 */
export function attentionBackward(
  dq: Float64Array,
  dk: Float64Array,
  dv: Float64Array,
  dout: ArrayLike<number>,
  att: ArrayLike<number>,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  B: number,
  S: number,
  H: number,
  KV: number,
  D: number,
): void {
  const group = H / KV;
  const scale = 1 / Math.sqrt(D);
  const qStride = H * D;
  const kvStride = KV * D;
  const dP = new Float64Array(S);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / group);
      for (let i = 0; i < S; i++) {
        const qo = (b * S + i) * qStride + h * D;
        const a = ((b * H + h) * S + i) * S;
        let pdp = 0;
        for (let j = 0; j <= i; j++) {
          const vo = (b * S + j) * kvStride + kh * D;
          let dot = 0;
          for (let d = 0; d < D; d++) {
            dot += dout[qo + d] * v[vo + d];
            dv[vo + d] += att[a + j] * dout[qo + d];
          }
          dP[j] = dot;
          pdp += att[a + j] * dot;
        }
        for (let j = 0; j <= i; j++) {
          const dS = att[a + j] * (dP[j] - pdp) * scale;
          const ko = (b * S + j) * kvStride + kh * D;
          for (let d = 0; d < D; d++) {
            dq[qo + d] += dS * k[ko + d];
            dk[ko + d] += dS * q[qo + d];
          }
        }
      }
    }
  }
}

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/** SwiGLU: `out = silu(gate) · up`, `silu(g) = g · sigmoid(g)`. */
export function swigluForward(
  out: Float64Array,
  gate: ArrayLike<number>,
  up: ArrayLike<number>,
  n: number,
): void {
  for (let i = 0; i < n; i++) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

/** SwiGLU backward: `silu'(g) = σ(g) · (1 + g · (1 − σ(g)))`. */
export function swigluBackward(
  dgate: Float64Array,
  dup: Float64Array,
  dout: ArrayLike<number>,
  gate: ArrayLike<number>,
  up: ArrayLike<number>,
  n: number,
): void {
  for (let i = 0; i < n; i++) {
    const s = sigmoid(gate[i]);
    dgate[i] += dout[i] * up[i] * s * (1 + gate[i] * (1 - s));
    dup[i] += dout[i] * gate[i] * s;
  }
}

/** `out = a + b` (the residual stream). */
export function residualForward(
  out: Float64Array,
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  n: number,
): void {
  for (let i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/** `da += dout`, `db += dout`. */
export function residualBackward(
  da: Float64Array,
  db: Float64Array,
  dout: ArrayLike<number>,
  n: number,
): void {
  for (let i = 0; i < n; i++) {
    da[i] += dout[i];
    db[i] += dout[i];
  }
}

/**
 * Softmax cross-entropy per row: `losses[t] = −log softmax(logits[t])[targets[t]]`, or 0 where
 * `targets[t] < 0` (no target). Keeps the probabilities for the backward.
 */
export function crossEntropyForward(
  losses: Float64Array,
  probs: Float64Array,
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  N: number,
  V: number,
): void {
  for (let t = 0; t < N; t++) {
    const o = t * V;
    let max = -Infinity;
    for (let v = 0; v < V; v++) if (logits[o + v] > max) max = logits[o + v];
    let sum = 0;
    for (let v = 0; v < V; v++) {
      probs[o + v] = Math.exp(logits[o + v] - max);
      sum += probs[o + v];
    }
    for (let v = 0; v < V; v++) probs[o + v] /= sum;
    const y = targets[t];
    losses[t] = y < 0 ? 0 : -(logits[o + y] - max - Math.log(sum));
  }
}

/** `dlogits[t] += weight · (probs[t] − onehot(targets[t]))` for rows with a target. */
export function crossEntropyBackward(
  dlogits: Float64Array,
  probs: ArrayLike<number>,
  targets: ArrayLike<number>,
  weight: number,
  N: number,
  V: number,
): void {
  for (let t = 0; t < N; t++) {
    const y = targets[t];
    if (y < 0) continue;
    const o = t * V;
    for (let v = 0; v < V; v++) dlogits[o + v] += weight * (probs[o + v] - (v === y ? 1 : 0));
  }
}
