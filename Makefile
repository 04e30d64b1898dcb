# replab_fast: `make demo` (the main job) and `make test` (the suite) each install what they need.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Used only when no torch is installed: a CPU build, without the GBs of CUDA packages.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=

.PHONY: help torch ninja install install-test demo test data docs cuda-compile-check newest-torch-check

help:
	@echo "make demo   install, then run every model family reference vs fast (replab-fast demo)"
	@echo "make test   install with the test extras, then run the test suite"
	@echo "make docs   the model cards' diagrams and generated sections (docs/models/), the README's list of cards"
	@echo "make data   Fashion-MNIST: Debian's dataset-fashion-mnist (root + apt), else a checked download into ~/.cache"
	@echo "make cuda-compile-check  compile every csrc source as C++17 and C++20 (.cu: nvcc, sm_80 and sm_90), warnings as errors (no GPU needed)"
	@echo "make newest-torch-check  a fresh venv, the plain pip install -e . (newest torch), conv/swap/model tests"
	@echo "make bench  the benchmark suite (CPU: model baselines; GPU: everything) -> bench/results/local/"
	@echo "make gpu-check  on a CUDA machine, < 9.5 min: build, smoke, GPU tests, benchmarks -> bench/results/<gpu>_<date>_<time>/ (and \$$OUT)"
	@echo "make gpu-check REHEARSAL=1  the same orchestration on a machine without a GPU, < 15 min"
	@echo "make replicate  train every paper's model to completion -> results/<model>/ (MODELS=... narrows it)"
	@echo "make gpu-tradeoffs  on a CUDA machine: LLaMA's tradeoff table's GPU columns -> results/llama-cpu/ (and \$$OUT)"

# Keep the user's torch. With none: a local CPU wheel if pip can see one (--no-index keeps
# find-links), else the CPU wheel index; then the wheel's own dependencies from the registry.
torch:
	@$(PYTHON) -c "import torch" 2>/dev/null && echo "torch: using the installed $$($(PYTHON) -c 'import torch; print(torch.__version__)')" || { \
	  $(PIP) install --no-index --no-deps "torch==$(TORCH_VERSION)" || \
	  $(PIP) install --no-deps --index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)"; \
	  $(PIP) install "torch==$(TORCH_VERSION)"; }

# The C++/CUDA extension (csrc/) builds with ninja; without it (and no network to get it)
# torch's builder falls back to a slower serial build, and says so.
ninja:
	@command -v ninja >/dev/null 2>&1 || $(PIP) install ninja || echo "ninja: not found and not installable; the extension builds without it (slower)"

install: torch ninja
	$(PIP) install --no-build-isolation -e .

install-test: torch ninja
	$(PIP) install --no-build-isolation -e ".[test]"

# Every csrc source compiled (-c only) as C++17 and as C++20, the .cu files with nvcc for sm_80
# and sm_90, warnings as errors, against the installed torch's headers: a compile error fails CI
# on a machine without a GPU.
cuda-compile-check: torch
	PYTHON=$(PYTHON) bash scripts/cuda_compile_check.sh

# The plain `pip install -e ".[test]"` in a fresh venv (the newest supported torch, downloaded:
# several GB), then the conv, swap and model tests against it (scripts/newest_torch_check.sh).
newest-torch-check:
	PYTHON=$(PYTHON) bash scripts/newest_torch_check.sh

# Fashion-MNIST for the image models (replab_fast/data/mnist.py looks it up): as root with apt,
# Debian's package (into /usr/share/datasets/fashion-mnist/; nothing to do when it is installed);
# otherwise the four files from the official mirrors, SHA-256 checked, into the user cache.
data:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then echo "data: dataset-fashion-mnist is installed"; \
	  else apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; fi; \
	else \
	  echo "data: no apt-get as root here; downloading Fashion-MNIST into the user cache"; \
	  $(PYTHON) -m replab_fast.data.download fashion-mnist; \
	fi

# The model cards (docs/models/<model>.md): the diagram of every model with a card, drawn from its
# module, then every card's generated sections and the README's list of cards. The package runs
# from this checkout; nothing is installed.
docs:
	$(PYTHON) -m replab_fast.cli diagram --out docs/models
	$(PYTHON) -m replab_fast.cli cards

demo: install
	$(PYTHON) -m replab_fast.cli demo

test: install-test
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# Benchmarks (bench/, pytest-benchmark; see bench/__init__.py for the method).
# `make bench`: any machine; writes bench/results/local/bench_<date>.json and .md, git-ignored (a
#   CPU or ad-hoc run is never a committed result). On a CPU it runs the model baselines and skips
#   the GPU cases with a reason. Extra pytest arguments: BENCH_ARGS="--quick -k llama".
# `make gpu-check`: on a CUDA machine with no network, one command under 9.5 minutes (bench/gpu_check/):
#   the extension built in the background, the machine's facts and ceilings, a smoke run of every
#   op, the GPU tests sharded into processes, compute-sanitizer on the conv paths, the headline
#   benchmarks, the attention sweep, the model baselines -> bench/results/<gpu>_<date>_<time>/,
#   copied into $OUT after each stage when it is set. REHEARSAL=1: the same orchestration on a
#   machine without a GPU (installs the test extras first). GPU_CHECK_ARGS="--deadline 400" etc.
BENCH_OUT ?= bench/results/local
BENCH_ARGS ?=
REHEARSAL ?=
GPU_CHECK_ARGS ?=

.PHONY: bench gpu-check gpu-tradeoffs replicate

# Every replication that fits a CPU, trained to completion: results/<model>/ (commit them; the
# checkpoints stay in runs/replicate/). MODELS="lenet5-classic lenet5-modern" narrows it.
MODELS ?=
replicate: install
	$(PYTHON) -m replab_fast.cli replicate $(MODELS)

bench: install-test
	@mkdir -p $(BENCH_OUT)
	@json=$(BENCH_OUT)/bench_$$(date -u +%Y-%m-%d_%H%M%S).json; \
	$(PYTHON) -m pytest bench -p no:cacheprovider --benchmark-json=$$json $(BENCH_ARGS); status=$$?; \
	if [ -s $$json ]; then \
	  $(PYTHON) -m replab_fast.cli bench-report $$json -o $${json%.json}.md && echo "bench: wrote $$json"; \
	fi; exit $$status

gpu-check: $(if $(filter 1,$(REHEARSAL)),install-test)
	$(PYTHON) -m bench.gpu_check $(if $(filter 1,$(REHEARSAL)),--rehearsal) $(GPU_CHECK_ARGS)

# The GPU columns of LLaMA's tradeoff table (four runs of 12 steps; torch.compile and the Triton
# kernels compile in each one's first step): results/llama-cpu/tradeoffs-cuda.json and
# tradeoffs.md, copied into $OUT when it is set (a lent GPU machine brings back only that folder).
gpu-tradeoffs:
	$(PYTHON) -m replab_fast.cli replicate llama-cpu --tradeoffs-only --device cuda
	@if [ -n "$$OUT" ]; then mkdir -p "$$OUT" && cp results/llama-cpu/tradeoffs-cuda.json results/llama-cpu/tradeoffs.md "$$OUT/"; fi
