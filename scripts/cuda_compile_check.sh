#!/usr/bin/env bash
# Compile every csrc/*.cu with nvcc for sm_80 and sm_90, warnings as errors, against the installed
# torch's headers: compile only (-c, objects thrown away), no GPU needed. CI runs it on a CPU
# machine so that a CUDA compile error fails CI there (`make cuda-compile-check`).
#
# The flags are the ones torch's BuildExtension gives nvcc (C++17, --expt-relaxed-constexpr, the
# __CUDA_NO_HALF*_ defines, the C++ ABI of the torch build), plus -Werror all-warnings (every nvcc
# and ptxas warning is an error) and -Wall -Werror for the host compiler. torch's and CUDA's
# headers come in through -isystem, so their own warnings are not ours. A CPU-only torch wheel
# ships c10/cuda's headers but not the CMake-generated c10/cuda/impl/cuda_cmake_macros.h (it only
# sets C10_CUDA_BUILD_SHARED_LIBS, which matters on Windows): then C10_CUDA_NO_CMAKE_CONFIGURE_FILE
# is defined. Skipped, with a message, only when nvcc is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ARCHS=${CUDA_CHECK_ARCHS:-"80 90"}

NVCC=${NVCC:-}
if [ -z "$NVCC" ]; then
  if command -v nvcc >/dev/null 2>&1; then
    NVCC=$(command -v nvcc)
  elif [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    NVCC=$CUDA_HOME/bin/nvcc
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    NVCC=/usr/local/cuda/bin/nvcc
  fi
fi
if [ -z "$NVCC" ]; then
  echo "cuda-compile-check: SKIPPED: nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin); the .cu files were not compiled"
  exit 0
fi

shopt -s nullglob
sources=(csrc/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
  echo "cuda-compile-check: no csrc/*.cu files"
  exit 0
fi

read -r -a torch_flags <<<"$($PYTHON - <<'PY'
import torch
from torch.utils.cpp_extension import include_paths
flags = []
for path in include_paths():
    flags += ["-isystem", path]
flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}")
import os
generated = os.path.join(include_paths()[0], "c10", "cuda", "impl", "cuda_cmake_macros.h")
if not os.path.exists(generated):  # a CPU-only torch wheel
    flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
print(" ".join(flags))
PY
)"

gencode=()
for arch in $ARCHS; do
  gencode+=(-gencode "arch=compute_${arch},code=sm_${arch}")
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "cuda-compile-check: $($NVCC --version | tail -n 1); archs: $ARCHS"
status=0
for src in "${sources[@]}"; do
  start=$(date +%s)
  if "$NVCC" -c "$src" -o "$out/$(basename "$src").o" -std=c++17 -O3 --threads 0 \
      "${gencode[@]}" "${torch_flags[@]}" -Icsrc \
      --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -DREPLAB_WITH_CUDA=1 \
      -Werror all-warnings -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-Werror; then
    echo "cuda-compile-check: OK $src ($(( $(date +%s) - start )) s)"
  else
    echo "cuda-compile-check: FAILED $src"
    status=1
  fi
done
exit $status
