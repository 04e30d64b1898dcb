"""The benchmark suite (pytest-benchmark): `make bench`, `make gpu-check`; how it measures, and where.

What a case measures
--------------------
- **Op cases** (``bench.op_cases.bench_op``): the device time of one op, forward, backward or
  both ("full"), timed by ``replab_fast.timing.measure`` (the one timing routine of the project:
  a first call kept apart, warm-up, then CUDA-event-bracketed repetitions with rotated inputs
  and a head start, as its docstring explains). How a backward is timed without its forward:
  bench/op_cases.py.

- **Model cases** (bench/test_models.py): the steady-state time of a whole training step
  (forward, loss, backward, optimizer step) or an inference call. Here the host cost is part of
  what a user gets, so no head start and no rotation: repetitions run back to back, each between
  two CUDA events, and a host-bound model is timed as host-bound.

- **On a CPU** the same loop times each repetition with ``time.perf_counter`` (the work is
  synchronous): a first call apart, warm-up, then repetitions until ``rep_ms`` (at least
  ``min_reps``). Peak memory is "n/a" on a CPU.

Every case is recorded with its bytes, FLOPs, roofline against the device's measured ceilings
and the environment; pytest-benchmark's own statistics are computed from the measured
per-repetition times (bench/records.py says how).

Modules, one concern each (none imports another in a circle; nothing runs at import)
------------------------------------------------------------------------------------
  providers.py    the implementations a case runs side by side (Provider, PROVIDERS, require,
                  sdpa_backend, fast_drop_in)
  context.py      the session: the device it benchmarks, options, timing policies (resolve_device,
                  BenchContext)
  environment.py  versions and device facts recorded with every case (environment)
  ceilings.py     the device's copy and matmul rates and a case's roofline (measure_ceilings,
                  Ceilings, roofline, expected_copy_gbps)
  counting.py     what one call uses: peak memory, FLOPs (peak_memory, count_flops)
  records.py      a case's record for pytest-benchmark (record, SECTIONS)
  op_cases.py     op cases (bench_op, MODES)
  conftest.py     options, the ``bench_ctx`` fixture, case order, JSON metadata
  test_*.py       the cases; tune_attention.py a block-size sweep (not a benchmark of record)
"""
