"""The `replab-fast` command: `models`, `demo`, `train`, `eval`, `generate`, `diagnose`, `replicate`,
`bench-report`, `diagram`, `cards` (also `python -m replab_fast`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from . import __version__
from .train.checkpoint import CheckpointError
from .models.registry import count_parameters, create_model, get_spec, list_models


def models_table() -> str:
    header = ("model", "family", "paper", "parameters", "paper's figure")
    rows = []
    for name in list_models():
        spec = get_spec(name)
        params = count_parameters(create_model(name, device="meta"))
        figure = f"{spec.paper_param_count:,}" if spec.paper_param_count else "-"
        rows.append((name, spec.family, spec.paper, f"{params:,}", figure))
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _cmd_models(args: argparse.Namespace) -> int:
    print(models_table())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, legend, run_demo, summary

    rows = run_demo(args.models or None, device=args.device, batch_size=args.batch_size, iters=args.iters)
    print(format_table(rows))
    print()
    print(legend(rows))
    print(summary(rows))
    return 0 if all(r.passed for r in rows) else 1


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def _cmd_bench_report(args: argparse.Namespace) -> int:
    from .bench_report import run

    try:
        return run(args)
    except (RuntimeError, OSError) as exc:
        print(f"replab-fast: {exc}", file=sys.stderr)
        return 2


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def config_override(text: str) -> tuple[str, object]:
    """argparse type: KEY=VALUE, the value read as a Python literal (an int, a float, a bool, None,
    a string in quotes) or else taken as a string."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a model config field), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.loop import RunOptions, train

    options = RunOptions(
        model=args.model, out=args.out or f"runs/{args.model}", data=args.data, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, grad_accum=args.grad_accum, amp=args.amp, seed=args.seed,
        fast=args.fast or args.interpret, interpret=args.interpret, compile=args.compile, resume=args.resume,
        stop_at=args.stop_at, device=args.device, strategy=args.strategy, progress=not args.no_progress,
        overrides=dict(args.config), workers=args.workers,
    )  # fmt: skip
    result = train(options)
    if result.rank == 0:
        print(json.dumps({"model": args.model, "step": result.step, "out": str(result.out), **result.metrics}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train.inference import evaluate_checkpoint

    result = evaluate_checkpoint(args.run, split=args.split, which=args.which, device=args.device)
    print(json.dumps(result))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .train.inference import generate_text

    pieces = generate_text(args.run, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed, which=args.which,
                           device=args.device)  # fmt: skip
    sys.stdout.write(args.prompt)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _cmd_replicate(args: argparse.Namespace) -> int:
    from .train.replicate import REPLICATIONS, replicate

    if args.list:
        for name, rep in REPLICATIONS.items():
            print(f"{name:24s} {rep.command()}")
        return 0
    if args.readme:
        from .train.replicate import update_readme

        print("README.md: results table " + ("updated" if update_readme(Path("README.md"), Path(args.results))
                                             else "already current"))  # fmt: skip
        return 0
    names = args.models or list(REPLICATIONS)
    unknown = [n for n in names if n not in REPLICATIONS]
    if unknown:
        raise ValueError(f"no replication for {', '.join(unknown)}; replications: {', '.join(REPLICATIONS)}")
    if args.tradeoffs_only:
        from .train.replicate import replicate_tradeoffs

        for name in names if args.models else [n for n, rep in REPLICATIONS.items() if "tradeoffs" in rep.extras]:
            print(replicate_tradeoffs(name, results_root=args.results, runs_root=args.runs, device=args.device))
        return 0
    failed = []
    for name in names:
        final = replicate(name, results_root=args.results, runs_root=args.runs, device=args.device,
                          progress=not args.no_progress)  # fmt: skip
        print(json.dumps({k: final[k] for k in ("model", "data", "metric", "value", "meets_target")}))
        if final["meets_target"] is False:
            failed.append(name)
    if failed:
        print(f"replab-fast: the target was missed by {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from .train.diagnose import DiagnoseOptions, diagnose

    options = DiagnoseOptions(model=args.model, out=args.out, data=args.data, steps=args.steps,
                              sweep_steps=args.sweep_steps, lr=args.lr, device=args.device, seed=args.seed,
                              overrides=dict(args.config))  # fmt: skip
    report = diagnose(options)
    print(report.text())
    return 0 if report.passed else 1


def _add_diagnose_command(sub) -> None:
    from .train.diagnose import DEFAULT_STEPS, SWEEP_STEPS

    p = sub.add_parser("diagnose", help="the debugging gauntlet on real data: overfit 1/10/100 examples, gradients, "
                                        "init and activation scales, a learning-rate sweep")  # fmt: skip
    p.add_argument("model", help="a registry name (replab-fast models)")
    p.add_argument("--data", help="a dataset name or path, as for train")
    p.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help="full-batch Adam steps of each overfit run")
    p.add_argument("--sweep-steps", type=positive_int, default=SWEEP_STEPS,
                   help="mini-batch steps of each learning-rate run")
    p.add_argument("--lr", type=positive_float, help="the overfit learning rate (default: the model's overfit recipe's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--config", type=config_override, action="append", default=[], metavar="KEY=VALUE",
                   help="a model config field (repeatable), e.g. --config max_seq_len=16")
    p.add_argument("--out", help="report.json and lr_sweep.png (default: runs/diagnose-MODEL)")
    p.set_defaults(func=_cmd_diagnose)


def _add_train_commands(sub) -> None:
    p = sub.add_parser("train", help="train a model by its paper's recipe on real offline data")
    p.add_argument("model", help="a registry name (replab-fast models)")
    p.add_argument("--data", help="a dataset name (digits, fashion-mnist, mnist, stdlib, stdlib-packages) or a path "
                                  "(IDX files, a text file or folder, an image folder: ROOT/<class>/* or ImageNet's "
                                  "ROOT/train/ and ROOT/val/)")
    p.add_argument("--workers", type=non_negative_int, default=0,
                   help="data loader worker processes (decoding an image folder's files; default 0: in this process)")
    p.add_argument("--steps", type=positive_int, help="the planned optimizer steps (the schedule follows them)")
    p.add_argument("--batch-size", type=positive_int, help="the global batch")
    p.add_argument("--lr", type=positive_float, help="the peak learning rate")
    p.add_argument("--grad-accum", type=positive_int, help="micro-batches per optimizer step")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast (fp16 with a GradScaler)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="accelerate(): the kernels fast on this device")
    p.add_argument("--interpret", action="store_true", help="with --fast: the Triton kernels interpreted on a CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", help="the run folder (default: runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--stop-at", type=positive_int, help="end after this step with a checkpoint (as a preempted job)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--strategy", choices=("ddp", "fsdp"),
                   help="under torchrun: DDP (every family, the default) or FSDP2 (LLaMA: blocks sharded)")
    p.add_argument("--config", type=config_override, action="append", default=[], metavar="KEY=VALUE",
                   help="a model config field for this run (repeatable), e.g. --config n_layers=4")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="the test metrics of a trained run's checkpoint, as one JSON object")
    p.add_argument("run", help="a run folder (its last checkpoint) or a checkpoint folder")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--which", choices=("last", "best"), default="last")
    p.add_argument("--device")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("replicate", help="train each paper's model to completion and write results/<model>/")
    p.add_argument("models", nargs="*", help="models to replicate (default: every replication; --list names them)")
    p.add_argument("--results", default="results", help="where results/<model>/ go")
    p.add_argument("--runs", default="runs/replicate", help="the run folders (checkpoints)")
    p.add_argument("--device")
    p.add_argument("--list", action="store_true", help="the replications and their commands")
    p.add_argument("--readme", action="store_true", help="only rewrite README.md's results table from --results")
    p.add_argument("--tradeoffs-only", action="store_true",
                   help="only measure the tradeoff table on --device (LLaMA: e.g. the GPU columns) and rewrite it")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_replicate)

    p = sub.add_parser("generate", help="text from a trained language model, printed as it is sampled")
    p.add_argument("run", help="a run folder of llama-* or lstm-lm-* (or one of its checkpoint folders)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=positive_int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=positive_int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same text")
    p.add_argument("--which", choices=("last", "best"), default="last")
    p.add_argument("--device")
    p.set_defaults(func=_cmd_generate)


def _cmd_diagram(args: argparse.Namespace) -> int:
    from .cards import card_models
    from .diagram import render, trace

    names = args.models or card_models(args.out)
    if not names:
        raise ValueError(f"no models named and no model card in {args.out}")
    for name in names:
        path = render(trace(name, device=args.device), Path(args.out) / f"{name}.png")
        print(f"diagram: {path} ({path.stat().st_size // 1024} KB)")
    return 0


def _cmd_cards(args: argparse.Namespace) -> int:
    from .cards import run

    changed = run(args.models, Path(args.root), init=args.init, readme=not args.no_readme)
    print("\n".join(f"cards: {path} updated" for path in changed) or "cards: every card is up to date")
    return 0


def _add_docs_commands(sub) -> None:
    p = sub.add_parser("diagram", help="draw models' architecture diagrams from the modules (PNG)")
    p.add_argument("models", nargs="*", help="registry names (default: every model with a card in --out)")
    p.add_argument("--out", default="docs/models", help="the folder of the pictures (default: docs/models)")
    p.add_argument("--device", choices=("cpu", "meta"),
                   help="meta: shapes and counts only, no memory (the default above 100M parameters: llama-7b, -13b)")
    p.set_defaults(func=_cmd_diagram)

    p = sub.add_parser("cards", help="regenerate the model cards' generated sections and the README's list")
    p.add_argument("models", nargs="*", help="registry names (default: every card in ROOT/docs/models)")
    p.add_argument("--root", default=".", help="the repository root (default: the current folder)")
    p.add_argument("--init", action="store_true", help="write the skeleton of each named card that is missing")
    p.add_argument("--no-readme", action="store_true", help="leave README.md's list of cards alone")
    p.set_defaults(func=_cmd_cards)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="replab-fast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"replab_fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="every model with its parameter count and the paper's figure")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("demo", help="each model family: reference vs fast kernels, forward and backward")
    p.add_argument("models", nargs="*", help="registry names (default: one small preset per family)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--iters", type=positive_int, default=5,
                   help="timed repetitions per model and round, at least (median and p20-p80 reported)")
    p.set_defaults(func=_cmd_demo)

    _add_train_commands(sub)
    _add_diagnose_command(sub)
    _add_docs_commands(sub)

    from .bench_report import add_arguments as add_bench_report_arguments

    p = sub.add_parser("bench-report", help="render a benchmark JSON as a markdown table (plots, README section)")
    add_bench_report_arguments(p)
    p.set_defaults(func=_cmd_bench_report)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError, CheckpointError) as exc:
        print(f"replab-fast: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
