#!/usr/bin/env bash
# The newest supported torch, as a new user gets it: a fresh virtual environment, the plain
# `pip install -e ".[test]"` (build isolation on, so pip builds the extension against the newest
# torch the registry serves within pyproject's bounds, and installs that torch to run with), then
# the convolution, swap and model tests against it. Runs in a copy of the checkout, so that the
# extension built in place here for the current environment's torch is left alone.
# `make newest-torch-check`; CI runs it after `make test`. WORKDIR keeps the venv (default: a
# temporary folder, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TESTS=${TESTS:-"tests/kernels/test_conv2d.py tests/nn/test_conv_swap.py tests/test_swap.py tests/models"}

if [ -n "${WORKDIR:-}" ]; then
  work=$WORKDIR
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
rm -rf "$work/src"
mkdir -p "$work/src"
# Tracked files plus untracked ones git does not ignore: the checkout as CI would clone it.
git ls-files -z -co --exclude-standard | tar --null -cf - -T - | tar -xf - -C "$work/src"

start=$(date +%s)
[ -x "$work/venv/bin/python" ] || "$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet -e "$work/src[test]"
echo "newest-torch-check: installed in $(( $(date +%s) - start )) s: $("$work/venv/bin/python" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)')"
cd "$work/src"
# shellcheck disable=SC2086
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider $TESTS
