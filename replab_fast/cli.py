"""The `replab-fast` command: `models`, `demo`, `bench-report` (also `python -m replab_fast`)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from . import __version__
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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _cmd_bench_report(args: argparse.Namespace) -> int:
    from .bench_report import run

    try:
        return run(args)
    except (RuntimeError, OSError) as exc:
        print(f"replab-fast: {exc}", file=sys.stderr)
        return 2


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

    from .bench_report import add_arguments as add_bench_report_arguments

    p = sub.add_parser("bench-report", help="render a benchmark JSON as a markdown table (plots, README section)")
    add_bench_report_arguments(p)
    p.set_defaults(func=_cmd_bench_report)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError) as exc:
        print(f"replab-fast: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
