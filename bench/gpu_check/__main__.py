"""`make gpu-check`: python -m bench.gpu_check [--rehearsal] [--out DIR] [--deadline S] ...

See bench/gpu_check/__init__.py for the stages and what lands where.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable, Optional

from bench.gpu_check import plan as plans
from bench.gpu_check import summary
from bench.gpu_check.runner import Orchestrator

REPO = Path(__file__).resolve().parents[2]
OUT_FILE_LIMIT = 15 * 2**20  # $OUT brings back files up to 16 MiB
OUT_FILES = ("summary.md", "gpu_check.log", "junit.xml", "bench.json", "raw.tar.gz")


def gpu_name() -> Optional[str]:
    """The first GPU's name from nvidia-smi (no CUDA context in this process), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def slug(name: str) -> str:
    name = re.sub(r"^nvidia[ _-]*", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=30)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if sha.returncode != 0:
        return "unknown (not a git checkout)"
    return sha.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _tar(folder: Path) -> bytes:
    tmp = folder.parent / f".{folder.name}.tar.gz"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def _drop_superseded_partials(folder: Path) -> None:
    """A benchmark's .partial.jsonl once its pytest-benchmark JSON is written and readable."""
    for partial in folder.glob("*.partial.jsonl"):
        full = partial.with_name(partial.name.replace(".partial.jsonl", ".json"))
        try:
            json.loads(full.read_text())
        except (OSError, ValueError):
            continue
        partial.unlink()


def publisher(folder: Path, out: Optional[Path], echo: Callable[[str], None], final: list[bool]) -> Callable[[], None]:
    """After each stage: summary.md and report.md in the folder; then, with $OUT, the copies there
    (summary.md, gpu_check.log, junit.xml of every shard, bench.json, raw.tar.gz of the folder)."""

    def publish() -> None:
        _drop_superseded_partials(folder)
        try:
            summary.write_report(folder, plots=final[0])
        except Exception as err:  # the report is worth less than the summary: say so, go on
            echo(f"   report.md not rendered: {type(err).__name__}: {err}")
        (folder / "summary.md").write_text(summary.render(folder))
        if out is None:
            return
        out.mkdir(parents=True, exist_ok=True)
        files = {"summary.md": (folder / "summary.md").read_bytes(), "gpu_check.log": (folder / "gpu_check.log").read_bytes()}
        junit = summary.merged_junit(folder)
        if junit:
            files["junit.xml"] = junit
        if (folder / "bench.json").exists():
            files["bench.json"] = (folder / "bench.json").read_bytes()
        files["raw.tar.gz"] = _tar(folder)
        for name, data in files.items():
            if len(data) > OUT_FILE_LIMIT:
                echo(f"   $OUT: {name} is {len(data) / 2**20:.0f} MiB, over the limit of what comes back; left out")
                continue
            _atomic_write(out / name, data)

    return publish


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--rehearsal", action="store_true", help="the same orchestration on a machine without a GPU")
    parser.add_argument("--reduced", action="store_true", help="a few cases per stage (the test suite's rehearsal)")
    parser.add_argument("--deadline", type=float, default=None,
                        help=f"seconds for the whole command (default {plans.GPU_DEADLINE_S:.0f} on a GPU, "
                        f"{plans.REHEARSAL_DEADLINE_S:.0f} in the rehearsal)")  # fmt: skip
    parser.add_argument("--out", default=os.environ.get("OUT") or None,
                        help="where the results are copied after each stage (default: $OUT when set)")  # fmt: skip
    parser.add_argument("--results", default=None, help="the parent of the result folder (default bench/results, "
                        "bench/results/local for the rehearsal)")  # fmt: skip
    parser.add_argument("--skip-build", action="store_true", help="use the extension as it is built")
    parser.add_argument("--parallel", type=int, default=2, help="test shards at once in the rehearsal (default 2)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    now = dt.datetime.now(dt.timezone.utc)
    stamp = now.strftime("%Y-%m-%d_%H%M")
    started = now.strftime("%Y-%m-%d %H:%M UTC")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    if args.rehearsal:
        plan = plans.rehearsal_plan(REPO, commit(), started, skip_build=args.skip_build, reduced=args.reduced,
                                    cpu_parallel=max(1, args.parallel),
                                    **({"deadline_s": args.deadline} if args.deadline else {}))  # fmt: skip
        folder = Path(args.results or REPO / "bench/results/local") / f"rehearsal_{stamp}"
    else:
        name = gpu_name()
        if name is None:
            print("gpu-check: nvidia-smi finds no GPU here. On a machine without one, `make gpu-check REHEARSAL=1` "
                  "rehearses the same stages on the CPU.", file=sys.stderr)  # fmt: skip
            return 2
        plan = plans.gpu_plan(REPO, name, commit(), started, sanitizer=shutil.which("compute-sanitizer"),
                              skip_build=args.skip_build, reduced=args.reduced,
                              **({"deadline_s": args.deadline} if args.deadline else {}))  # fmt: skip
        folder = Path(args.results or REPO / "bench/results") / f"{slug(name)}_{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "gpu_check.log", "a")

    def echo(line: str) -> None:
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    out = Path(args.out).resolve() if args.out else None
    echo(f"== gpu-check ({plan.mode}): {plan.device_name} -> {folder} (deadline {plan.deadline_s:.0f} s"
         f"{', copies into ' + str(out) if out else ''}); commit {plan.commit}")  # fmt: skip
    final = [False]
    orchestrator = Orchestrator(plan, folder, out, echo=echo, publish=publisher(folder, out, echo, final))
    try:
        orchestrator.start_build()
        for stage in plan.stages:
            orchestrator.run_stage(stage)
        orchestrator.stop_build()
        final[0] = True
        rc = orchestrator.finish()
    except KeyboardInterrupt:
        orchestrator.abort()
        rc = orchestrator.finish()
    finally:
        log.close()
    print(f"RESULT_DIR={folder}")
    if out:
        print(f"$OUT holds {', '.join(n for n in OUT_FILES if (out / n).exists())}; "
              f"`tar xzf raw.tar.gz -C bench/results/` recreates {folder.name}/")  # fmt: skip
    return rc


if __name__ == "__main__":
    sys.exit(main())
