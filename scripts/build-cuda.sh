#!/usr/bin/env bash
# Build the CUDA version of the `ralm` binary.
#
#   scripts/build-cuda.sh                 # system CUDA toolkit if `nvcc` is found, else NVIDIA's pip wheels
#   scripts/build-cuda.sh --wheels        # always use the pinned pip wheels (CUDA 13.0)
#   CUDA_COMPUTE_CAP=90 scripts/build-cuda.sh   # target GPU (default: nvidia-smi, else 90 = H100/H200)
#
# Output: target/cuda/release/ralm. At run time it needs the NVIDIA driver (libcuda.so.1) and the
# CUDA 13 libraries cuBLAS, cuRAND and NVRTC on the library path (a CUDA toolkit or PyTorch's
# nvidia-* wheels both provide them); see docs/gpu.md.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache_dir="${RALM_CACHE_DIR:-$root/.cache/ralm}/cuda"
use_wheels=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) use_wheels=1; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build-cuda.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
done
die() { echo "build-cuda.sh: error: $*" >&2; exit 1; }

# The pinned toolkit pieces: PACKAGE==VERSION SHA256 of the wheel. 13.0 matches the oldest driver
# that runs CUDA 13 (580); newer compilers emit PTX such a driver refuses.
wheels=(
  "nvidia-cuda-nvcc==13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
  "nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
  "nvidia-nvvm==13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
  "nvidia-cuda-cccl==13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
  "nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia-cuda-nvrtc==13.0.88 ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575"
  "nvidia-cublas==13.0.2.14 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c"
  "nvidia-curand==10.4.0.35 1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc"
)

# toolkit_from_wheels: download, verify and merge the wheels into one CUDA_HOME-style folder.
toolkit_from_wheels() {
  local home="$cache_dir/toolkit-13.0" dl="$cache_dir/wheels"
  if [ -x "$home/bin/nvcc" ] && [ -f "$home/lib64/stubs/libcuda.so" ]; then echo "$home"; return; fi
  local python=${PYTHON:-python3}
  "$python" -m pip --version >/dev/null 2>&1 || die "pip is needed to fetch the CUDA compiler wheels (or install a CUDA toolkit)"
  mkdir -p "$dl"
  rm -rf "$home.tmp"; mkdir -p "$home.tmp"
  local entry spec want name whl
  for entry in "${wheels[@]}"; do
    spec=${entry% *}; want=${entry#* }; name=${spec%%==*}
    whl=$(ls "$dl"/"${name//-/_}"-"${spec#*==}"-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$whl" ]; then
      echo "fetching $spec ..." >&2
      "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$dl" "$spec" \
        || die "pip could not download $spec"
      whl=$(ls "$dl"/"${name//-/_}"-"${spec#*==}"-*.whl | head -1)
    fi
    [ "$(sha256sum "$whl" | cut -d' ' -f1)" = "$want" ] || die "sha256 mismatch for $whl"
    "$python" -m zipfile -e "$whl" "$home.tmp/unzip" >/dev/null
    cp -a "$home.tmp/unzip/nvidia/cu13/." "$home.tmp/"
    rm -rf "$home.tmp/unzip"
  done
  chmod +x "$home.tmp"/bin/* "$home.tmp"/nvvm/bin/* 2>/dev/null || true
  # Link-time names for the versioned libraries, and the lib64 layout build scripts look for.
  (cd "$home.tmp/lib" && for so in *.so.*; do base=${so%%.so.*}.so; [ -e "$base" ] || ln -s "$so" "$base"; done)
  ln -s lib "$home.tmp/lib64"
  # The driver (libcuda.so.1) comes with the GPU machine; linking only needs its symbol names,
  # which a stub generated from cuda.h provides (what the toolkit's own stubs/libcuda.so is).
  mkdir -p "$home.tmp/lib/stubs"
  gcc -E -P -I"$home.tmp/include" "$home.tmp/include/cuda.h" \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u \
    | sed 's/.*/void &(void) {}/' >"$home.tmp/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home.tmp/lib/stubs/libcuda.so" "$home.tmp/lib/stubs/libcuda_stub.c"
  rm -rf "$home"; mv "$home.tmp" "$home"
  echo "$home"
}

if [ "$use_wheels" = 0 ] && command -v nvcc >/dev/null 2>&1; then
  cuda_home=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
  stubs="$cuda_home/lib64/stubs"
else
  cuda_home=$(toolkit_from_wheels)
  stubs="$cuda_home/lib/stubs"
fi
echo "CUDA toolkit: $cuda_home ($("$cuda_home/bin/nvcc" --version | grep -o 'release [0-9.]*'))" >&2

if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
  CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d . || true)
  CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
fi
export CUDA_COMPUTE_CAP CUDA_HOME="$cuda_home" CUDA_PATH="$cuda_home" NVCC="$cuda_home/bin/nvcc"
export PATH="$cuda_home/bin:$PATH"
export LIBRARY_PATH="$cuda_home/lib64:$stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "building for compute capability $CUDA_COMPUTE_CAP into target/cuda ..." >&2
cd "$root"
cargo build --release --features cuda -p ralm-cli --target-dir target/cuda
echo "built $root/target/cuda/release/ralm" >&2
