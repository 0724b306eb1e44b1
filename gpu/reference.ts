/**
 * Float64 host implementations of every kernel, written straight from the formulas (no tiling,
 * no shared code with the WGSL), to check the kernels against. Inputs are any numeric arrays;
 * outputs are Float64Array. Shapes follow the kernels' docs.
 * @module
 */

type Arr = ArrayLike<number>;

/** C = α·op(A)·op(B) + β·C0 in the layouts of kernels/matmul.ts. */
export function matmulRef(
  layout: "NT" | "NN" | "TN",
  M: number,
  N: number,
  K: number,
  a: Arr,
  b: Arr,
  c0: Arr | null,
  alpha = 1,
  beta = 0,
): Float64Array {
  const c = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        const av = layout === "TN" ? a[k * M + m] : a[m * K + k];
        const bv = layout === "NT" ? b[n * K + k] : b[k * N + n];
        s += av * bv;
      }
      c[m * N + n] = alpha * s + (beta !== 0 && c0 ? beta * c0[m * N + n] : 0);
    }
  }
  return c;
}

export function rmsnormRef(
  x: Arr,
  w: Arr,
  T: number,
  H: number,
  eps: number,
): { y: Float64Array; rstd: Float64Array } {
  const y = new Float64Array(T * H);
  const rstd = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < H; i++) ss += x[t * H + i] ** 2;
    const r = 1 / Math.sqrt(ss / H + eps);
    rstd[t] = r;
    for (let i = 0; i < H; i++) y[t * H + i] = w[i] * x[t * H + i] * r;
  }
  return { y, rstd };
}

/** Gradients of Σ dy ⊙ rmsnorm(x, w) w.r.t. x and w. */
export function rmsnormBackwardRef(
  dy: Arr,
  x: Arr,
  w: Arr,
  T: number,
  H: number,
  eps: number,
): { dx: Float64Array; dw: Float64Array } {
  const dx = new Float64Array(T * H);
  const dw = new Float64Array(H);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < H; i++) ss += x[t * H + i] ** 2;
    const ms = ss / H + eps;
    const r = 1 / Math.sqrt(ms);
    // y_i = w_i x_i r; ∂r/∂x_j = −x_j r³ / H
    let dot = 0;
    for (let i = 0; i < H; i++) dot += dy[t * H + i] * w[i] * x[t * H + i];
    for (let j = 0; j < H; j++) {
      dx[t * H + j] = dy[t * H + j] * w[j] * r - dot * x[t * H + j] * r * r * r / H;
      dw[j] += dy[t * H + j] * x[t * H + j] * r;
    }
  }
  return { dx, dw };
}

/**
 * Rotate-half RoPE with explicit tables cos/sin [P, hd/2]; `inverse` rotates backwards (the
 * backward pass).
 */
export function ropeRef(
  x: Arr,
  positions: Arr,
  cos: Arr,
  sin: Arr,
  T: number,
  nHeads: number,
  hd: number,
  inverse = false,
): Float64Array {
  const half = hd / 2;
  const y = Float64Array.from(x);
  for (let t = 0; t < T; t++) {
    const p = positions[t];
    for (let h = 0; h < nHeads; h++) {
      const base = (t * nHeads + h) * hd;
      for (let d = 0; d < half; d++) {
        const c = cos[p * half + d];
        const s = inverse ? -sin[p * half + d] : sin[p * half + d];
        const x1 = x[base + d];
        const x2 = x[base + d + half];
        // rotate_half(x) = [−x2, x1]; y = x·cos + rotate_half(x)·sin
        y[base + d] = x1 * c + -x2 * s;
        y[base + d + half] = x2 * c + x1 * s;
      }
    }
  }
  return y;
}

export function embeddingRef(table: Arr, tokens: Arr, H: number): Float64Array {
  const y = new Float64Array(tokens.length * H);
  for (let t = 0; t < tokens.length; t++) {
    for (let i = 0; i < H; i++) y[t * H + i] = table[tokens[t] * H + i];
  }
  return y;
}

export function embeddingBackwardRef(dy: Arr, tokens: Arr, V: number, H: number): Float64Array {
  const d = new Float64Array(V * H);
  for (let t = 0; t < tokens.length; t++) {
    for (let i = 0; i < H; i++) d[tokens[t] * H + i] += dy[t * H + i];
  }
  return d;
}

export interface AttnDims {
  B: number;
  S: number;
  nH: number;
  nKV: number;
  hd: number;
  /** Sliding window W: query i sees keys j with i − W < j ≤ i. Absent: full causal. */
  window?: number;
}

/** The first key position query position i sees. */
function firstKey(i: number, window?: number): number {
  return window === undefined ? 0 : Math.max(0, i - window + 1);
}

/** Causal GQA attention (banded with a window); also returns the row logsumexp [B·S, nH]. */
export function attentionRef(
  q: Arr,
  k: Arr,
  v: Arr,
  d: AttnDims,
): { out: Float64Array; lse: Float64Array } {
  const { B, S, nH, nKV, hd } = d;
  const out = new Float64Array(B * S * nH * hd);
  const lse = new Float64Array(B * S * nH);
  const scale = 1 / Math.sqrt(hd);
  const g = nH / nKV;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < nH; h++) {
      const kh = Math.floor(h / g);
      for (let i = 0; i < S; i++) {
        const qo = ((b * S + i) * nH + h) * hd;
        const j0 = firstKey(i, d.window);
        const sc = new Float64Array(i + 1).fill(-Infinity);
        for (let j = j0; j <= i; j++) {
          const ko = ((b * S + j) * nKV + kh) * hd;
          let s = 0;
          for (let e = 0; e < hd; e++) s += q[qo + e] * k[ko + e];
          sc[j] = s * scale;
        }
        const m = Math.max(...sc);
        let l = 0;
        for (let j = j0; j <= i; j++) l += Math.exp(sc[j] - m);
        lse[(b * S + i) * nH + h] = m + Math.log(l);
        for (let j = j0; j <= i; j++) {
          const p = Math.exp(sc[j] - m) / l;
          const vo = ((b * S + j) * nKV + kh) * hd;
          for (let e = 0; e < hd; e++) out[qo + e] += p * v[vo + e];
        }
      }
    }
  }
  return { out, lse };
}

/** Gradients of Σ dout ⊙ attention(q, k, v) w.r.t. q, k, v, from the softmax definition. */
export function attentionBackwardRef(
  dout: Arr,
  q: Arr,
  k: Arr,
  v: Arr,
  d: AttnDims,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const { B, S, nH, nKV, hd } = d;
  const dq = new Float64Array(B * S * nH * hd);
  const dk = new Float64Array(B * S * nKV * hd);
  const dv = new Float64Array(B * S * nKV * hd);
  const scale = 1 / Math.sqrt(hd);
  const g = nH / nKV;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < nH; h++) {
      const kh = Math.floor(h / g);
      for (let i = 0; i < S; i++) {
        const qo = ((b * S + i) * nH + h) * hd;
        const ko = (j: number) => ((b * S + j) * nKV + kh) * hd;
        const j0 = firstKey(i, d.window);
        const sc = new Float64Array(i + 1).fill(-Infinity);
        for (let j = j0; j <= i; j++) {
          let s = 0;
          for (let e = 0; e < hd; e++) s += q[qo + e] * k[ko(j) + e];
          sc[j] = s * scale;
        }
        const m = Math.max(...sc);
        let l = 0;
        for (let j = j0; j <= i; j++) l += Math.exp(sc[j] - m);
        const p = sc.map((s) => Math.exp(s - m) / l);
        // out_i = Σ_j p_j v_j;  dp_j = dout_i·v_j;  ds_j = p_j (dp_j − Σ_l p_l dp_l)
        const dp = new Float64Array(i + 1);
        let pdp = 0;
        for (let j = j0; j <= i; j++) {
          let s = 0;
          for (let e = 0; e < hd; e++) s += dout[qo + e] * v[ko(j) + e];
          dp[j] = s;
          pdp += p[j] * s;
        }
        for (let j = j0; j <= i; j++) {
          const ds = p[j] * (dp[j] - pdp) * scale;
          for (let e = 0; e < hd; e++) {
            dv[ko(j) + e] += p[j] * dout[qo + e];
            dq[qo + e] += ds * k[ko(j) + e];
            dk[ko(j) + e] += ds * q[qo + e];
          }
        }
      }
    }
  }
  return { dq, dk, dv };
}

/**
 * Decoding: row r = b·Tn + t of q attends to cache rows b·maxLen + 0..positions[r] (with a
 * window W, only those after positions[r] − W).
 */
export function attentionDecodeRef(
  q: Arr,
  kCache: Arr,
  vCache: Arr,
  positions: Arr,
  d: {
    B: number;
    Tn: number;
    maxLen: number;
    nH: number;
    nKV: number;
    hd: number;
    window?: number;
  },
): Float64Array {
  const { B, Tn, maxLen, nH, nKV, hd } = d;
  const out = new Float64Array(B * Tn * nH * hd);
  const scale = 1 / Math.sqrt(hd);
  for (let r = 0; r < B * Tn; r++) {
    const b = Math.floor(r / Tn);
    for (let h = 0; h < nH; h++) {
      const kh = Math.floor(h / (nH / nKV));
      const qo = (r * nH + h) * hd;
      const n = positions[r] + 1;
      const j0 = firstKey(positions[r], d.window);
      const sc = new Float64Array(n).fill(-Infinity);
      for (let j = j0; j < n; j++) {
        const ko = ((b * maxLen + j) * nKV + kh) * hd;
        let s = 0;
        for (let e = 0; e < hd; e++) s += q[qo + e] * kCache[ko + e];
        sc[j] = s * scale;
      }
      const m = Math.max(...sc);
      let l = 0;
      for (let j = j0; j < n; j++) l += Math.exp(sc[j] - m);
      for (let j = j0; j < n; j++) {
        const ko = ((b * maxLen + j) * nKV + kh) * hd;
        for (let e = 0; e < hd; e++) out[qo + e] += (Math.exp(sc[j] - m) / l) * vCache[ko + e];
      }
    }
  }
  return out;
}

/** `y + b` with b [N] added to every row of y [T, N]. */
export function biasRef(y: Arr, b: Arr, N: number): Float64Array {
  return Float64Array.from({ length: y.length }, (_, i) => y[i] + b[i % N]);
}

/** The bias gradient: column sums of dy [T, N]. */
export function biasGradRef(dy: Arr, N: number): Float64Array {
  const db = new Float64Array(N);
  for (let i = 0; i < dy.length; i++) db[i % N] += dy[i];
  return db;
}

const sigmoid = (g: number) => 1 / (1 + Math.exp(-g));

export function swigluRef(g: Arr, u: Arr): Float64Array {
  return Float64Array.from({ length: g.length }, (_, i) => g[i] * sigmoid(g[i]) * u[i]);
}

export function swigluBackwardRef(dh: Arr, g: Arr, u: Arr): { dg: Float64Array; du: Float64Array } {
  const n = g.length;
  const dg = new Float64Array(n);
  const du = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const s = sigmoid(g[i]);
    // d/dg [g σ(g)] = σ + g σ (1 − σ)
    dg[i] = dh[i] * u[i] * (s + g[i] * s * (1 - s));
    du[i] = dh[i] * g[i] * s;
  }
  return { dg, du };
}

/** Weighted cross-entropy per position, its sum, and the gradient w.r.t. the logits. */
export function crossEntropyRef(
  logits: Arr,
  targets: Arr,
  weights: Arr,
  T: number,
  V: number,
): { losses: Float64Array; loss: number; dlogits: Float64Array } {
  const losses = new Float64Array(T);
  const dlogits = new Float64Array(T * V);
  let loss = 0;
  for (let t = 0; t < T; t++) {
    const w = weights[t];
    if (w === 0) continue;
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, logits[t * V + v]);
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(logits[t * V + v] - m);
    const lse = m + Math.log(s);
    losses[t] = w * (lse - logits[t * V + targets[t]]);
    loss += losses[t];
    for (let v = 0; v < V; v++) {
      dlogits[t * V + v] = w * (Math.exp(logits[t * V + v] - lse) - (v === targets[t] ? 1 : 0));
    }
  }
  return { losses, loss, dlogits };
}

/** One AdamW step: new moments and the signed step Δ (p is not changed). */
export function adamwRef(
  p: Arr,
  g: Arr,
  m: Arr,
  v: Arr,
  h: {
    lr: number;
    step: number;
    beta1?: number;
    beta2?: number;
    eps?: number;
    weightDecay?: number;
  },
): { m: Float64Array; v: Float64Array; delta: Float64Array } {
  const b1 = h.beta1 ?? 0.9;
  const b2 = h.beta2 ?? 0.999;
  const eps = h.eps ?? 1e-8;
  const wd = h.weightDecay ?? 0;
  const n = p.length;
  const m2 = new Float64Array(n);
  const v2 = new Float64Array(n);
  const delta = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    m2[i] = b1 * m[i] + (1 - b1) * g[i];
    v2[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    const mh = m2[i] / (1 - b1 ** h.step);
    const vh = v2[i] / (1 - b2 ** h.step);
    delta[i] = -h.lr * (mh / (Math.sqrt(vh) + eps)) - h.lr * wd * p[i];
  }
  return { m: m2, v: v2, delta };
}

export function sgdRef(p: Arr, g: Arr, h: { lr: number; weightDecay?: number }): Float64Array {
  const wd = h.weightDecay ?? 0;
  return Float64Array.from({ length: p.length }, (_, i) => -h.lr * g[i] - h.lr * wd * p[i]);
}

/**
 * W + c·s·Σ_j ((B_j+ΔB_j)(A_j+ΔA_j) − B_j A_j), computed pair by pair (not through the packed
 * L·R product the kernel uses).
 */
export function hdPissaRef(
  W: Arr,
  pairs: { A: Arr; B: Arr; dA: Arr; dB: Arr }[],
  out: number,
  inn: number,
  r: number,
  c: number,
  s: number,
): Float64Array {
  const res = Float64Array.from(W);
  for (const q of pairs) {
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inn; i++) {
        let full = 0;
        let base = 0;
        for (let k = 0; k < r; k++) {
          full += (q.B[o * r + k] + q.dB[o * r + k]) * (q.A[k * inn + i] + q.dA[k * inn + i]);
          base += q.B[o * r + k] * q.A[k * inn + i];
        }
        res[o * inn + i] += c * s * (full - base);
      }
    }
  }
  return res;
}

/**
 * The fused linear of kernels/matmul_fused.ts: y [T, N] = rmsnorm(x, gamma)·Wᵀ + R (R may be
 * null), with x [T, F], gamma [F], W [N, F]; and x̂ = rmsnorm(x, gamma) for the backward.
 */
export function normLinearRef(
  x: Arr,
  gamma: Arr,
  W: Arr,
  R: Arr | null,
  T: number,
  F: number,
  N: number,
  eps: number,
): { y: Float64Array; xn: Float64Array } {
  const xn = rmsnormRef(x, gamma, T, F, eps).y;
  const y = matmulRef("NT", T, N, F, xn, W, null);
  if (R) { for (let i = 0; i < T * N; i++) y[i] += R[i]; }
  return { y, xn };
}
