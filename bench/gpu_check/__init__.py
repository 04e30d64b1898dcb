"""`make gpu-check`: one command, under 9.5 minutes, that verifies the project on a GPU machine.

    make gpu-check                 # a CUDA machine (no network needed): python -m bench.gpu_check
    make gpu-check REHEARSAL=1     # the same orchestration on a machine without a GPU (< 15 minutes)

The stages, in order of value (plan.py has the commands, their budgets and the rehearsal's
counterparts):

  build  from the first second, in the background: setup.py build_ext --inplace, sm_90 only
         (TORCH_CUDA_ARCH_LIST=9.0), no pip, no index, no network                     build.log
  a      the machine: nvidia-smi, versions, TF32 settings, tools; the copy bandwidth
         and the bf16 matmul rate                                                      machine.json
  b      smoke: each op once at a benchmark shape against its PyTorch counterpart,
         parity-checked and timed (conv once the build is done, in stage c)            smoke.json
  c      the GPU tests only (pytest -m gpu), one process per Triton kernel file and
         one for the drop-in swaps, in parallel; conv in its own process once the
         build is done; compute-sanitizer (memcheck, racecheck) on one tiny layer per
         CUDA conv path, each its own process                                          junit/, logs/, sanitizer/
  d      the headline op benchmarks (bench/ --headline): attention forward and
         backward, causal, T = 4096, D = 64 and 128 against SDPA's flash, cuDNN and
         efficient backends; decoding at a 32k cache; RMSNorm, RoPE; conv in bf16 and
         fp32 against cuDNN (fp32 in true fp32, TF32 beside); the LSTM against cuDNN    bench.json
  e      the quick attention block-size sweep (bench/tune_attention.py)               sweep.json
  f      the model baselines (bench/test_models.py --quick)                            bench-models.json
         summary.md, rendered from whatever finished, after every stage               summary.md, report.md

Every step is a process of its own: a CUDA fault, a crash or a hang costs one step. A step over
its time gets SIGINT (pytest then prints its short tracebacks and writes its junit XML and
JSON), then SIGKILL. After every stage the folder's files are copied into $OUT: summary.md,
gpu_check.log, junit.xml (every shard's), bench.json and raw.tar.gz (the whole folder), so a
command killed at its limit still returns what it finished. The folder is
bench/results/<gpu>_<date>_<time>/ (the rehearsal's: bench/results/local/rehearsal_<date>_<time>/,
git-ignored); `tar xzf raw.tar.gz -C bench/results/` recreates it from $OUT.

Modules: plan.py (the stages, as data), runner.py (processes, deadlines, publishing),
facts.py, smoke.py, conv_paths.py (what the stages run), summary.py (summary.md, junit.xml),
__main__.py (the command line).
"""
