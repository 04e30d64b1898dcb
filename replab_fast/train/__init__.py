"""Training, evaluation and generation from checkpoints: one loop for every model family.

- ``loop.py``: ``train(RunOptions(...))``, the loop (steps, evaluation, logging, checkpoints, exact resume);
- ``recipes.py``: each paper's defaults; ``schedule.py``: learning-rate schedules;
- ``tasks.py``: a model's data (``replab_fast.data``) as the loop takes it; ``sampler.py``: the
  resumable data position;
- ``metrics.py``: each paper's metric; ``logs.py``: metrics.jsonl and the curves;
- ``checkpoint.py``: atomic safetensors checkpoints; ``inference.py``: eval and generate from one;
- ``distributed.py``: torchrun, DDP for every family, FSDP2 for LLaMA, full checkpoints.
- ``diagnose.py``: ``replab-fast diagnose``, the debugging gauntlet on real data (its checks in
  ``gauntlet.py``, each model's documented initialization in ``init_rules.py``, the report in
  ``diagnose_report.py``).

Importing this package imports none of them.
"""
