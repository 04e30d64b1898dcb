#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine with no network, in one command that ends inside 10 minutes:
#   1. record the machine (nvidia-smi, versions)                     -> gpu_check.log
#   2. build: pip install --no-build-isolation --no-deps -e .         -> build.log
#   3. the whole test suite, on the GPU                               -> tests.log
#   4. the benchmark suite (bench/, pytest-benchmark)                 -> bench.json, bench.log
#   5. the markdown table and the sweep plots                         -> report.md, sweeps.png
# all into bench/results/<gpu>_<YYYY-MM-DD>_<HHMM>/ (UTC), and, when $OUT is set (the lent GPU
# machines bring back only that folder), the same files copied flat into $OUT (7 files at most).
#
# Switches (environment variables, or flags):
#   QUICK=1 | --quick    the quick sweep set (the default: it fits the 10 minutes with build and tests)
#   QUICK=0 | --full     the full sweep set (give it its own 10 minutes: SKIP_TESTS=1)
#   DEADLINE_S=570       seconds for the whole command; every step is bounded by what is left of it
#   SKIP_BUILD=1         use the package as it is (PYTHONPATH) instead of pip install -e .
#   SKIP_TESTS=1         leave the test suite out
#   PYTHON=python3
# Each step runs under `timeout`, so a hang still leaves the logs; the benchmark suite also gets a
# budget (--bench-budget) so it skips its last cases, with a reason, and writes its JSON in time.
set -uo pipefail
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
cd "$(dirname "$0")/.."

QUICK="${QUICK:-1}"
DEADLINE_S="${DEADLINE_S:-570}"
SKIP_BUILD="${SKIP_BUILD:-0}"
SKIP_TESTS="${SKIP_TESTS:-0}"
PYTHON="${PYTHON:-python3}"
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --full) QUICK=0 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --skip-tests) SKIP_TESTS=1 ;;
    *) echo "gpu-check: unknown argument $arg (known: --quick --full --skip-build --skip-tests)" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
max() { if [ "$1" -gt "$2" ]; then echo "$1"; else echo "$2"; fi; }

GPU_NAME=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)
if [ -z "$GPU_NAME" ]; then
  echo "gpu-check: torch sees no CUDA device; this command is for a GPU machine (\`make bench\` runs on a CPU)" >&2
  exit 2
fi
SLUG=$(printf '%s' "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/^nvidia[ _-]*//; s/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
RESULT_DIR="bench/results/${SLUG}_$(date -u +%Y-%m-%d_%H%M)"
mkdir -p "$RESULT_DIR"
LOG="$RESULT_DIR/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1

echo "== gpu-check: $GPU_NAME -> $RESULT_DIR (quick=$QUICK, deadline ${DEADLINE_S}s)"
echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -srm)"
nvidia-smi || echo "(nvidia-smi failed)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu \
  --format=csv || true
"$PYTHON" - <<'EOF' || true
import importlib.metadata as md, platform, torch
def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"
p = torch.cuda.get_device_properties(0)
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, triton {v('triton')}, pytest {v('pytest')}, "
      f"pytest-benchmark {v('pytest-benchmark')}, matplotlib {v('matplotlib')}, liger-kernel {v('liger-kernel')}")
print(f"{p.name}: capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
      f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB, {p.total_memory / 2**30:.1f} GiB")
EOF
command -v nvcc >/dev/null && nvcc --version | tail -n 2

BUILD_RC=skipped; TESTS_RC=skipped; BENCH_RC=skipped; REPORT_RC=skipped

# 1. Build. No network here: --no-build-isolation uses the installed torch and setuptools,
# --no-deps asks the index for nothing.
if [ "$SKIP_BUILD" = 1 ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "== build: skipped (SKIP_BUILD=1); PYTHONPATH=$PWD"
else
  T=$(max 60 "$(min 300 $(( $(left) - 300 )))")
  echo "== build: pip install --no-build-isolation --no-deps -e . (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, timeout ${T}s)"
  t0=$(date +%s)
  timeout -k 10 "$T" "$PYTHON" -m pip install --no-build-isolation --no-deps --no-input -e . >"$RESULT_DIR/build.log" 2>&1
  BUILD_RC=$?
  echo "== build: rc=$BUILD_RC in $(( $(date +%s) - t0 ))s"
  tail -n 5 "$RESULT_DIR/build.log"
  if [ "$BUILD_RC" != 0 ]; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "== build failed: tests and benchmarks run from the source tree (PYTHONPATH=$PWD), without a built extension"
  fi
fi

# 2. The test suite on the GPU. It gets what is left after the benchmarks' share.
if [ "$SKIP_TESTS" = 1 ]; then
  echo "== tests: skipped (SKIP_TESTS=1)"
else
  BENCH_SHARE=$([ "$QUICK" = 1 ] && echo 330 || echo 450)
  T=$(min "${TESTS_TIMEOUT_S:-240}" $(( $(left) - BENCH_SHARE )))
  if [ "$T" -lt 30 ]; then
    echo "== tests: skipped, only $(left)s left of the deadline"
  else
    EXTRA=()
    "$PYTHON" -c "import pytest_timeout" 2>/dev/null && EXTRA+=(--timeout=150)
    echo "== tests: python -m pytest tests (timeout ${T}s)"
    t0=$(date +%s)
    timeout -k 10 "$T" "$PYTHON" -m pytest tests -q -ra -p no:cacheprovider ${EXTRA[@]+"${EXTRA[@]}"} >"$RESULT_DIR/tests.log" 2>&1
    TESTS_RC=$?
    [ "$TESTS_RC" = 124 ] && echo "== tests: stopped by the ${T}s timeout (see tests.log for how far they got)"
    echo "== tests: rc=$TESTS_RC in $(( $(date +%s) - t0 ))s"
    tail -n 15 "$RESULT_DIR/tests.log"
  fi
fi

# 3. The benchmark suite. Budget: what is left, less time to render and copy; the suite skips
# the cases that would start after its budget (compiled model cases last), then writes its JSON.
T=$(max 60 $(( $(left) - 35 )))
BUDGET=$(max 30 $(( T - 100 )))
QUICK_FLAG=(); [ "$QUICK" = 1 ] && QUICK_FLAG=(--quick)
echo "== bench: python -m pytest bench ${QUICK_FLAG[*]+"${QUICK_FLAG[*]}"} --bench-budget $BUDGET (timeout ${T}s)"
t0=$(date +%s)
timeout -k 10 "$T" "$PYTHON" -m pytest bench -ra -p no:cacheprovider ${QUICK_FLAG[@]+"${QUICK_FLAG[@]}"} --bench-budget "$BUDGET" \
  --benchmark-json="$RESULT_DIR/bench.json" --bench-jsonl="$RESULT_DIR/bench.partial.jsonl" \
  --benchmark-columns=min,median,max,rounds --benchmark-sort=name >"$RESULT_DIR/bench.log" 2>&1
BENCH_RC=$?
[ "$BENCH_RC" = 124 ] && echo "== bench: stopped by the ${T}s timeout; rendering the partial results"
echo "== bench: rc=$BENCH_RC in $(( $(date +%s) - t0 ))s"
grep -E "passed|failed|error" "$RESULT_DIR/bench.log" | tail -n 3

# 4. Render: the table and the plots, from the JSON (or the partial JSON lines of a cut-short run).
SOURCE="$RESULT_DIR/bench.json"
[ -s "$SOURCE" ] || SOURCE="$RESULT_DIR/bench.partial.jsonl"
if [ -s "$SOURCE" ]; then
  timeout -k 5 60 "$PYTHON" -m replab_fast.bench_report "$SOURCE" -o "$RESULT_DIR/report.md" --plots "$RESULT_DIR"
  REPORT_RC=$?
  [ -s "$RESULT_DIR/bench.json" ] && rm -f "$RESULT_DIR/bench.partial.jsonl"
else
  echo "== report: no benchmark results to render"
  REPORT_RC=1
fi

STATUS="build=$BUILD_RC tests=$TESTS_RC bench=$BENCH_RC report=$REPORT_RC"
echo "== gpu-check done in $(( $(date +%s) - START ))s: $STATUS"
echo "RESULT_DIR=$RESULT_DIR"
if [ -f "$RESULT_DIR/report.md" ]; then
  echo "== report.md (checks and model baselines):"
  sed -n '/^## Checks/,/^Columns:/p' "$RESULT_DIR/report.md" | grep -v '^Columns:'
  sed -n '/^## Model baselines/,/^## Skipped/p' "$RESULT_DIR/report.md" | grep -v '^## Skipped' | head -n 60
fi

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  for f in bench.json bench.partial.jsonl report.md sweeps.png bench.log tests.log build.log; do
    [ -f "$RESULT_DIR/$f" ] || continue
    if [ "$(stat -c %s "$RESULT_DIR/$f")" -gt 15000000 ]; then  # $OUT takes files up to 16 MiB
      gzip -c "$RESULT_DIR/$f" >"$OUT/$f.gz"
    else
      cp "$RESULT_DIR/$f" "$OUT/"
    fi
  done
  echo "== copied $(ls "$OUT" | wc -l) files to \$OUT; recreate them locally as $RESULT_DIR/"
  sleep 1
  cp "$LOG" "$OUT/"
fi

fail=0
for rc in "$BUILD_RC" "$TESTS_RC" "$BENCH_RC" "$REPORT_RC"; do
  case "$rc" in 0|skipped) ;; *) fail=1 ;; esac
done
exit "$fail"
