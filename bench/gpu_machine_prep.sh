#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) with what bench/gpu_machine.sh needs on a bare Linux x86-64
# machine with an NVIDIA GPU and no internet; run it here, where the registries are reachable:
#
#   .gpu/deno.xz           this machine's Deno binary, xz-compressed
#   .gpu/deno_dir.tar.xz   a Deno cache (DENO_DIR) holding every npm package the run imports
#   .gpu/nats-server.xz    the nats-server binary the workers' runtime starts, xz-compressed
#   .gpu/debs/*.deb        the Vulkan loader (libvulkan1) for a machine that has only the
#                          NVIDIA driver's ICD, unpacked there without root (dpkg-deb -x)
#
#   bench/gpu_machine_prep.sh
#
# Then carry the project folder (with .gpu/; about 60 MiB) to the GPU machine and run
# bench/gpu_machine.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
G=.gpu
mkdir -p "$G/debs"

deno_bin=$(readlink -f "$(command -v deno)")
echo "deno: $deno_bin ($(deno --version | head -1)) -> $G/deno.xz"
xz -T0 -6 -c "$deno_bin" >"$G/deno.xz.tmp" && mv "$G/deno.xz.tmp" "$G/deno.xz"

nats=$(command -v nats-server || true)
if [ -z "$nats" ]; then
  for d in /usr/sbin /usr/local/bin /usr/bin; do [ -x "$d/nats-server" ] && nats="$d/nats-server"; done
fi
[ -n "$nats" ] || { echo "nats-server not found: apt-get install nats-server" >&2; exit 1; }
xz -T0 -9 -c "$nats" >"$G/nats-server.xz.tmp" && mv "$G/nats-server.xz.tmp" "$G/nats-server.xz"
rm -f "$G/nats-server"
echo "nats-server: $nats -> $G/nats-server.xz"

# A fresh DENO_DIR filled only by the entry points the run uses (npm packages included).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
DENO_DIR="$tmp/deno_dir" deno cache bench/main.ts bench/gpu_machine_model.ts runtime/node_main.ts actors/*.ts \
  tests/gpu_*_test.ts >/dev/null
tar -C "$tmp" -cJf "$G/deno_dir.tar.xz.tmp" deno_dir && mv "$G/deno_dir.tar.xz.tmp" "$G/deno_dir.tar.xz"
echo "deno cache -> $G/deno_dir.tar.xz"

(cd "$G/debs" && rm -f ./*.deb && apt-get download libvulkan1 >/dev/null)
echo "vulkan loader: $(ls "$G/debs")"
du -sh "$G"/* | sed 's/^/  /'
echo "total: $(du -cb "$G"/*.xz "$G"/debs/*.deb | tail -1 | cut -f1) bytes to carry (.gpu/bin is unpacked on the machine)"
