#!/usr/bin/env bash
# One run on a bare Linux x86-64 machine with an NVIDIA GPU and no internet, printing every GPU
# figure of the project (under 8 minutes):
#
#   1. matmul f32 and f16 at 1024–8192 (TFLOP/s), attention, cross-entropy
#      (deno task bench gpu --gpu-mode machine);
#   2. the kernels' correctness suite (tests/gpu_*_test.ts, the fused and split model layers,
#      the SVD on the device) on the default adapter, the GPU;
#   3. the 1B-shape model (Llama-3.2-1B, random init): HD-PiSSA steps with K = 1 and K = 2
#      workers on the one GPU, forward+backward tokens/s (bench/gpu_machine_model.ts; the 1B
#      writer is bench/support/random_model.ts of the real-sizes work);
#   4. where python3 has torch + transformers + peft and CUDA: the same model's LoRA step in
#      PyTorch eager (bench/peers/torch_lora_cuda.py), and our output folder loaded with
#      transformers, its logits compared with ours (bench/peers/hf_logits.py).
#
# A figure that cannot be measured prints "not measured: <reason>".
#
# What it carries is prepared by bench/gpu_machine_prep.sh in .gpu/ (Deno binary xz-compressed,
# a Deno cache with the npm packages, nats-server xz-compressed, the Vulkan loader .deb); without .gpu/ it uses
# the deno and nats-server on PATH. It sets VK_DRIVER_FILES to the NVIDIA ICD when one is found.
#
#   bench/gpu_machine.sh            the GPU run (sizes above)
#   bench/gpu_machine.sh --small    every section at small sizes (checks the script on lavapipe)
#   bench/gpu_machine.sh --smoke    --small with one test file of the suite (tests/gpu_machine_script_test.ts)
#
# GPU_RUN_DIR=DIR keeps the model folders and logits there (default: a temporary folder).
set -u
cd "$(dirname "$0")/.."
MODE=full
for a in "$@"; do
  case "$a" in
    --small) MODE=small ;;
    --smoke) MODE=smoke ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_machine.sh: unknown argument $a (--small, --smoke)" >&2; exit 2 ;;
  esac
done
START=$SECONDS
section() { printf '\n== %s (at %d s)\n' "$*" "$((SECONDS - START))"; }
G=$PWD/.gpu
BIN=$G/bin
mkdir -p "$BIN"

section "setup"
echo "mode: $MODE"
if [ -f "$G/deno.xz" ]; then
  # Unpacked once per deno.xz (a newer deno.xz is unpacked again).
  if [ ! -x "$BIN/deno" ] || [ "$G/deno.xz" -nt "$BIN/deno" ]; then
    xz -dc "$G/deno.xz" >"$BIN/deno.tmp" && chmod +x "$BIN/deno.tmp" && mv "$BIN/deno.tmp" "$BIN/deno"
  fi
  DENO=$BIN/deno
  echo "deno: unpacked from .gpu/deno.xz"
elif command -v deno >/dev/null; then
  DENO=$(command -v deno)
  echo "deno: from PATH ($DENO); no .gpu/deno.xz (run bench/gpu_machine_prep.sh)"
else
  echo "no deno: run bench/gpu_machine_prep.sh where deno is installed and carry .gpu/" >&2
  exit 1
fi
if [ -f "$G/deno_dir.tar.xz" ]; then
  if [ ! -d "$G/deno_dir" ] || [ "$G/deno_dir.tar.xz" -nt "$G/deno_dir" ]; then
    rm -rf "$G/deno_dir" && tar -C "$G" -xJf "$G/deno_dir.tar.xz" && touch "$G/deno_dir"
  fi
  export DENO_DIR=$G/deno_dir
  echo "deno cache: .gpu/deno_dir"
fi
if [ -f "$G/nats-server.xz" ]; then
  xz -dc "$G/nats-server.xz" >"$BIN/nats-server.tmp" && chmod +x "$BIN/nats-server.tmp" &&
    mv "$BIN/nats-server.tmp" "$BIN/nats-server"
  echo "nats-server: unpacked from .gpu/nats-server.xz"
fi
export PATH=$BIN:$PATH
command -v nats-server >/dev/null || echo "nats-server: none on PATH (the model section will fail)"
"$DENO" --version | head -1

# The Vulkan loader: the system's, or the carried .deb unpacked without root.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
  if ls "$G"/debs/*.deb >/dev/null 2>&1; then
    for d in "$G"/debs/*.deb; do dpkg-deb -x "$d" "$G/root"; done
    export LD_LIBRARY_PATH=$G/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    echo "vulkan loader: unpacked from .gpu/debs"
  else
    echo "vulkan loader: none on the system and no .gpu/debs (WebGPU will find no adapter)"
  fi
else
  echo "vulkan loader: the system's"
fi
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
  /etc/vulkan/icd.d/nvidia_icd.json; do
  if [ -f "$icd" ]; then
    export VK_DRIVER_FILES=$icd
    echo "VK_DRIVER_FILES=$icd"
    break
  fi
done
[ -n "${VK_DRIVER_FILES:-}" ] || echo "no NVIDIA Vulkan ICD found: the default adapter is whatever Vulkan offers (lavapipe on a CPU-only machine)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
  echo "nvidia-smi: not present"
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
RUN=${GPU_RUN_DIR:-$(mktemp -d -t gpu-machine-XXXXXX)}
mkdir -p "$RUN"
echo "run folder: $RUN"

if [ "$MODE" = full ]; then GPU_MODE=machine; else GPU_MODE=machine-small; fi
section "kernels: matmul f32/f16, attention, cross-entropy ($GPU_MODE)"
timeout 180 "$DENO" run -A bench/main.ts --gpu-mode "$GPU_MODE" gpu >"$RUN/kernels.log" 2>&1
rc=$?
grep -v '^$' "$RUN/kernels.log"
[ $rc -eq 0 ] || echo "kernels: the bench failed or ran out of time (exit $rc)"

section "kernel correctness suite on the default adapter"
if [ "$MODE" = smoke ]; then
  TESTS=(tests/gpu_loop_bound_test.ts)
else
  TESTS=()
  for f in tests/gpu_*_test.ts; do
    [ "$f" = tests/gpu_machine_script_test.ts ] || TESTS+=("$f")
  done
  # The model-level fusions (the norm on load is the GPU default, written on lavapipe), split
  # linears and the randomized SVD's passes on the device.
  TESTS+=(tests/model_gpu_norm_on_load_test.ts tests/model_gpu_split_linear_test.ts tests/svd_gpu_test.ts)
fi
echo "files: ${TESTS[*]}"
timeout 300 "$DENO" test -A "${TESTS[@]}" >"$RUN/tests.log" 2>&1
rc=$?
sed -i 's/\x1b\[[0-9;]*m//g' "$RUN/tests.log"
grep -E '^(ok|FAILED) \|' "$RUN/tests.log" | tail -1
grep -E ' \.\.\. FAILED|^error' "$RUN/tests.log" | head -20
if [ $rc -eq 0 ]; then echo "correctness suite: PASS"; else echo "correctness suite: FAIL (exit $rc; log $RUN/tests.log)"; fi

section "model: HD-PiSSA steps K=1 and K=2, forward+backward tokens/s"
if [ "$MODE" = full ]; then
  MODEL_ARGS=(--shape 1b --workers 1,2 --steps 3 --seq-len 256 --batch-size 8)
  SPEC='{"batch": 8, "seq": 256, "rank": 4, "alpha": 4, "lr": 1e-4, "steps": 4}'
else
  MODEL_ARGS=(--shape tiny --workers 1,2 --steps 2 --seq-len 32 --batch-size 4)
  SPEC='{"batch": 4, "seq": 32, "rank": 4, "alpha": 4, "lr": 1e-4, "steps": 3}'
fi
timeout 300 "$DENO" run -A bench/gpu_machine_model.ts "${MODEL_ARGS[@]}" --out "$RUN/model" \
  >"$RUN/model.log" 2>"$RUN/model.err"
rc=$?
cat "$RUN/model.log"
[ $rc -eq 0 ] || { echo "model: failed (exit $rc):"; tail -5 "$RUN/model.err"; }

PY=${TORCH_PYTHON:-}
if [ -z "$PY" ]; then
  for p in /usr/bin/python3 python3; do command -v "$p" >/dev/null && { PY=$p; break; }; done
fi
# Prints a peer's JSON, or "not measured: <reason>" from its {"not_measured"} or its failure.
peer() {
  local out rc
  out=$(timeout 300 "$PY" "$@" 2>"$RUN/peer.err")
  rc=$?
  if [ $rc -eq 0 ]; then
    echo "$out"
  elif echo "$out" | grep -q not_measured; then
    echo "not measured: $(echo "$out" | sed -E 's/.*"not_measured": "(.*)"}.*/\1/')"
  else
    echo "not measured: $* failed (exit $rc): $(tail -1 "$RUN/peer.err")"
  fi
}

section "PyTorch eager on CUDA: the same model's LoRA step"
if [ -z "$PY" ]; then
  echo "not measured: no python3"
elif [ ! -f "$RUN/model/base/config.json" ]; then
  echo "not measured: no model folder (the model section did not write one)"
else
  res=$(peer bench/peers/torch_lora_cuda.py "$RUN/model/base" "$SPEC")
  echo "$res"
  ours=$(grep -o 'K=1: step [0-9.]* ms' "$RUN/model.log" | grep -o '[0-9.]* ms' | cut -d' ' -f1)
  theirs=$(echo "$res" | grep -o '"ms": [0-9.]*' | cut -d' ' -f2)
  if [ -n "$ours" ] && [ -n "$theirs" ]; then
    echo "step time ours (HD-PiSSA K=1) / PyTorch LoRA: $(awk "BEGIN {printf \"%.2f\", $ours / $theirs}")x"
  fi
fi

section "transformers: our output folder's logits against ours"
if [ -z "$PY" ]; then
  echo "not measured: no python3"
elif [ ! -f "$RUN/model/logits.json" ]; then
  echo "not measured: no logits (the model section did not write them)"
else
  peer bench/peers/hf_logits.py "$RUN/model"
fi

section "done in $((SECONDS - START)) s"
