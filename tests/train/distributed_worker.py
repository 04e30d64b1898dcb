"""One process of a distributed test run (launched by torchrun from test_distributed.py, or
alone for the one-process reference): a short training run that logs every step.

    python -m torch.distributed.run --nproc_per_node 2 tests/train/distributed_worker.py SPEC_JSON

SPEC_JSON: {"model", "out", "steps", "batch_size", "overrides", "strategy", "grad_accum",
"stop_at", "resume", "fail_rank", "fail_step"}; with fail_rank, that rank raises at fail_step.
"""

import json
import sys

import torch

from replab_fast.train.distributed import setup, teardown
from replab_fast.train.loop import RunOptions, Trainer


def main(spec: dict) -> None:
    torch.set_num_threads(1)
    options = RunOptions(model=spec["model"], out=spec["out"], steps=spec["steps"], batch_size=spec["batch_size"],
                         overrides=spec.get("overrides", {}), grad_accum=spec.get("grad_accum"),
                         stop_at=spec.get("stop_at"), resume=spec.get("resume", False), progress=False,
                         strategy=spec.get("strategy"))  # fmt: skip
    dist, device = setup(options.strategy, options.device, timeout_s=60)
    try:
        trainer = Trainer(options, dist)
        trainer.recipe = trainer.recipe.replace(log_every=1)
        if spec.get("fail_rank") == dist.rank:
            real_step = trainer.train_step

            def failing_step(batch):
                if trainer.step + 1 == spec["fail_step"]:
                    raise RuntimeError(f"rank {dist.rank} fails at step {trainer.step + 1} on purpose")
                return real_step(batch)

            trainer.train_step = failing_step
        trainer.run()
    finally:
        teardown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
