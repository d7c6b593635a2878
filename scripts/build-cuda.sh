#!/usr/bin/env bash
# Builds the CUDA variant of warsha on a machine without a system CUDA install.
#
# Usage: scripts/build-cuda.sh [COMPUTE_CAP] [extra cargo args...]
#   COMPUTE_CAP: 75 (GTX 1650, T400/T600: Turing), 86 (RTX 30-series laptop parts),
#                89 (RTX 40-series), 90 (H100/H200). Default 90.
#
# What it does:
#   1. installs NVIDIA's pip-packaged CUDA 13.0 toolkit pieces (nvcc, headers, cudart, cuBLAS,
#      cuRAND, NVRTC) into .cuda/pip (ignored by git), unless already there;
#   2. adds libX.so link names beside the packages' versioned .so files, plus a stub
#      libcuda.so that exports every driver-API symbol cudarc's bindings name. The stub exists
#      only so the linker resolves those names; at run time the real driver's libcuda.so.1 is
#      loaded, so the binary must never be run with .cuda on LD_LIBRARY_PATH;
#   3. runs `cargo build --release --features cuda` with CUDA_COMPUTE_CAP set.
#
# The result is target/release/warsha. On the target machine it needs the NVIDIA driver
# (libcuda.so.1) and the CUDA 13 runtime libraries (libcudart.so.13, libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10), e.g. LD_LIBRARY_PATH=/usr/local/cuda/lib64.
# CUDA 13.0 is pinned on purpose: newer nvcc emits PTX that a 580-series driver rejects.
set -euo pipefail

cap="${1:-90}"
shift || true
case "$cap" in
  ''|*[!0-9]*) echo "compute capability must be a number like 75, 86 or 90, got '$cap'" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"
cuda_dir="$root/.cuda"
pip_dir="$cuda_dir/pip"
toolkit="$pip_dir/nvidia/cu13"
python="${PYTHON:-python3}"

packages=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35
)

if [ ! -x "$toolkit/bin/nvcc" ]; then
  echo "installing the CUDA 13.0 toolkit from pip into $pip_dir"
  "$python" -m pip install --quiet --target "$pip_dir" "${packages[@]}"
fi

# Link names the linker looks for (-lcudart, -lcublas, ...), pointing at the versioned files.
lib="$toolkit/lib"
for pair in cudart:libcudart.so.13 cublas:libcublas.so.13 cublasLt:libcublasLt.so.13 \
  curand:libcurand.so.10 nvrtc:libnvrtc.so.13; do
  name="${pair%%:*}"
  file="${pair#*:}"
  [ -e "$lib/$file" ] || { echo "missing $lib/$file" >&2; exit 1; }
  ln -sf "$file" "$lib/lib$name.so"
done

# Stub driver library: one dummy function per driver symbol that cudarc's bindings reference.
cudarc_src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 2>/dev/null | head -n1 || true)"
if [ -z "$cudarc_src" ]; then
  (cd "$root" && cargo fetch --quiet)
  cudarc_src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -n1)"
fi
stub_c="$cuda_dir/cuda_stub.c"
grep -oE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_src/src/driver/sys/mod.rs" \
  | sed 's/^pub unsafe fn //' | sort -u \
  | awk 'BEGIN { print "/* link-time stand-in for the NVIDIA driver library; never loaded */" }
         { printf "int %s(void) { return 999; }\n", $1 }' >"$stub_c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/libcuda.so" "$stub_c"
echo "stub libcuda.so: $(grep -c '^int ' "$stub_c") driver symbols"

export PATH="$toolkit/bin:$PATH"
export NVCC="$toolkit/bin/nvcc"
export CUDA_HOME="$toolkit"
export CUDA_PATH="$toolkit"
export CUDA_COMPUTE_CAP="$cap"
export CUDARC_CUDA_VERSION=13000
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$CARGO_BUILD_JOBS}"

cd "$root"
# CARGO_SUBCOMMAND=test with `--lib --no-run` builds the CUDA test binary the same way.
nice -n "${NICE:-5}" cargo "${CARGO_SUBCOMMAND:-build}" --release --features cuda "$@"
echo "built $root/target/release/warsha for compute capability $cap"
