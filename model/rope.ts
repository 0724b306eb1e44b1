/**
 * RoPE's inverse frequencies for a config, computed on the host the way Hugging Face computes
 * them (`modeling_rope_utils.py`): in float32, operation by operation, so that the cos/sin
 * tables the kernels read agree with transformers' to within an ulp. Each step below is one
 * float32 tensor operation of transformers, emulated by rounding the float64 result to f32
 * (exact for +, −, ·, /; `pow` differs from PyTorch's only in its last bit).
 * @module
 */
import { headDim, type LlamaConfig } from "./config.ts";

const f = Math.fround;

/** `1 / base^(2i/d)` for i < d/2, as `1.0 / (base ** (arange(0, d, 2).float() / d))`. */
function defaultInvFreq(base: number, dim: number): Float32Array {
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) out[i] = f(1 / f(Math.pow(f(base), f((2 * i) / dim))));
  return out;
}

/**
 * Whether dynamic NTK scaling changes the frequencies of a sequence of `seqLen` positions (it
 * does only past `max_position_embeddings`).
 */
export function dynamicRopeEngaged(config: LlamaConfig, seqLen: number): boolean {
  return config.rope_scaling?.rope_type === "dynamic" && seqLen > config.max_position_embeddings;
}

/**
 * The inverse frequencies [head_dim / 2] (f32 values) of a forward over positions
 * 0..seqLen−1, i.e. Hugging Face's `seq_len = max(position_ids) + 1`, which only dynamic
 * scaling reads. Attention factors are 1 for every scaling supported.
 */
export function ropeInvFreq(config: LlamaConfig, seqLen: number): Float32Array {
  const dim = headDim(config);
  const theta = config.rope_theta;
  const rs = config.rope_scaling;
  if (!rs) return defaultInvFreq(theta, dim);
  switch (rs.rope_type) {
    case "linear": {
      const inv = defaultInvFreq(theta, dim);
      for (let i = 0; i < inv.length; i++) inv[i] = f(inv[i] / f(rs.factor));
      return inv;
    }
    case "dynamic": {
      const max = config.max_position_embeddings;
      if (seqLen <= max) return defaultInvFreq(theta, dim);
      // base · ((factor·seq_len / max) − (factor − 1)) ^ (dim / (dim − 2)), seq_len a tensor.
      let s = f(f(rs.factor) * f(seqLen));
      s = f(s / f(max));
      s = f(s - f(rs.factor - 1));
      s = f(Math.pow(s, dim / (dim - 2))); // PyTorch keeps a Python float exponent in double
      return defaultInvFreq(f(f(theta) * s), dim);
    }
    case "llama3": {
      const inv = defaultInvFreq(theta, dim);
      const old = rs.original_max_position_embeddings!;
      const low = rs.low_freq_factor!;
      const high = rs.high_freq_factor!;
      const lowWavelen = f(old / low);
      const highWavelen = f(old / high);
      const out = new Float32Array(inv.length);
      for (let i = 0; i < inv.length; i++) {
        // 2π / inv_freq is reciprocal(inv_freq) · 2π in PyTorch.
        const wavelen = f(f(1 / inv[i]) * f(2 * Math.PI));
        const scaled = wavelen > lowWavelen ? f(inv[i] / f(rs.factor)) : inv[i];
        if (wavelen < highWavelen || wavelen > lowWavelen) {
          out[i] = scaled;
          continue;
        }
        let smooth = f(f(1 / wavelen) * f(old));
        smooth = f(smooth - f(low));
        smooth = f(smooth / f(high - low));
        const a = f(f(f(1 - smooth) * scaled) / f(rs.factor));
        out[i] = f(a + f(smooth * scaled));
      }
      return out;
    }
  }
}
