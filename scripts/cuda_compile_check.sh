#!/usr/bin/env bash
# Compile every csrc/*.cu with nvcc for sm_80 and sm_90, and every csrc/*.cpp with the host
# compiler, warnings as errors, against the installed torch's headers: compile only (-c, objects
# thrown away), no GPU needed. Each source is compiled as C++17 and as C++20 (the standards that
# torch's builder picks across the supported torch releases), so that our own code cannot break
# one of them; a standard the installed torch's own headers refuse (torch 2.14's ATen needs
# C++20) is skipped with a message. CI runs it on a CPU machine so that a compile error fails CI
# there (`make cuda-compile-check`).
#
# The nvcc flags are the ones torch's BuildExtension gives nvcc (--expt-relaxed-constexpr, the
# __CUDA_NO_HALF*_ defines, the C++ ABI of the torch build), plus -Werror all-warnings (every
# nvcc and ptxas warning is an error) and -Wall -Werror for the host compiler. torch's and
# CUDA's headers come in through -isystem, so their own warnings are not ours. A CPU-only torch
# wheel ships c10/cuda's headers but not the CMake-generated c10/cuda/impl/cuda_cmake_macros.h
# (it only sets C10_CUDA_BUILD_SHARED_LIBS, which matters on Windows): then
# C10_CUDA_NO_CMAKE_CONFIGURE_FILE is defined. The .cu files are skipped, with a message, only
# when nvcc is absent. STANDARDS (default "17 20") and CUDA_CHECK_ARCHS (default "80 90") narrow it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ARCHS=${CUDA_CHECK_ARCHS:-"80 90"}
STANDARDS=${STANDARDS:-"17 20"}
CXX=${CXX:-g++}

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

shopt -s nullglob
cuda_sources=(csrc/*.cu)
cpp_sources=(csrc/*.cpp)

# Python's and torch's include flags, torch's C++ ABI, and the oldest C++ standard its headers accept.
read -r minimum_standard torch_flags_line <<<"$($PYTHON - <<'PY'
import os
import re
import sysconfig

import torch
from torch.utils.cpp_extension import include_paths

flags = ["-isystem", sysconfig.get_paths()["include"]]  # Python.h, for the module's init
for path in include_paths():
    flags += ["-isystem", path]
flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}")
generated = os.path.join(include_paths()[0], "c10", "cuda", "impl", "cuda_cmake_macros.h")
if not os.path.exists(generated):  # a CPU-only torch wheel
    flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
# ATen.h refuses older standards with `#if ... __cplusplus < 2017 03L / 2020 02L #error`.
aten = open(os.path.join(include_paths()[0], "ATen", "ATen.h")).read()
years = [int(y) for y in re.findall(r"__cplusplus\s*<\s*(\d{4})\d\dL", aten)]
print(max(years, default=2017) % 100, " ".join(flags))
PY
)"
read -r -a torch_flags <<<"$torch_flags_line"

standards=()
for std in $STANDARDS; do
  if [ "$std" -lt "$minimum_standard" ]; then
    echo "compile-check: C++$std SKIPPED: the installed torch $($PYTHON -c 'import torch; print(torch.__version__)')'s headers need C++$minimum_standard or later"
  else
    standards+=("$std")
  fi
done

gencode=()
for arch in $ARCHS; do
  gencode+=(-gencode "arch=compute_${arch},code=sm_${arch}")
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0

# compile LABEL COMMAND...: run one compile, report OK with its time or FAILED.
compile() {
  local label=$1 start
  shift
  start=$(date +%s)
  if "$@"; then
    echo "compile-check: OK $label ($(( $(date +%s) - start )) s)"
  else
    echo "compile-check: FAILED $label"
    status=1
  fi
}

for std in "${standards[@]}"; do
  for src in "${cpp_sources[@]}"; do
    compile "$src C++$std" "$CXX" -c "$src" -o "$out/$(basename "$src").o" -std=c++$std -O1 -fPIC -fopenmp \
      "${torch_flags[@]}" -Icsrc -Wall -Wextra -Wno-unused-parameter -Werror
  done
done

if [ ${#cuda_sources[@]} -eq 0 ]; then
  echo "compile-check: no csrc/*.cu files"
  exit $status
fi
if [ -z "$NVCC" ]; then
  echo "compile-check: .cu SKIPPED: nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin); the .cu files were not compiled"
  exit $status
fi
echo "compile-check: $($NVCC --version | tail -n 1); archs: $ARCHS"
for std in "${standards[@]}"; do
  for src in "${cuda_sources[@]}"; do
    compile "$src C++$std" "$NVCC" -c "$src" -o "$out/$(basename "$src").o" -std=c++$std -O3 --threads 0 \
      "${gencode[@]}" "${torch_flags[@]}" -Icsrc \
      --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -DREPLAB_WITH_CUDA=1 \
      -Werror all-warnings -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-Werror
  done
done
exit $status
