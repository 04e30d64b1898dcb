"""Render benchmark results: the markdown table, sweep plots and the README's performance section.

Input: the JSON pytest-benchmark writes with ``--benchmark-json`` for the bench/ suite (each case's
numbers are in its ``extra_info``; see bench/records.py), or the JSON-lines file the suite appends
to as it goes (``--bench-jsonl``), for a run cut short before pytest-benchmark wrote its JSON.

    replab-fast bench-report bench/results/h100_2026-11-21_0930/bench.json          # table to stdout
    replab-fast bench-report RUN.json -o report.md --plots DIR                       # files
    replab-fast bench-report --readme                                                # README section

The table has one row per case and provider: median time, the p20-p80 spread, the ratio to the
best peer (this provider's median over the fastest *other* provider's median in the same case:
below 1.00 it beats every other provider), what it achieved (throughput, GB/s or TFLOP/s), its
fraction of the ceiling (the floor ``max(bytes / copy rate, FLOPs / matmul rate)`` over the
median, with the device's ceilings measured in the same run) and its peak memory.

The README section is rendered from the newest *committed* GPU result under bench/results/
(files git tracks, staged ones included) and quotes only numbers from that file; with none it
says so. matplotlib is imported only to draw plots.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

__all__ = [
    "Row",
    "BenchRun",
    "load",
    "merge",
    "ratios_to_best_peer",
    "summary_table",
    "render_markdown",
    "render_plots",
    "find_results",
    "newest_result",
    "render_readme_section",
    "update_readme",
    "add_arguments",
    "run",
    "main",
]

README_BEGIN = "<!-- perf:begin -->"
README_END = "<!-- perf:end -->"
PROVIDER_ORDER = ["eager", "compile", "torch", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "liger",
                  "replab_fast"]  # fmt: skip
SECTION_TITLES = {"device": "Device ceilings and stability", "ops": "Ops", "models": "Model baselines"}
STABILITY_LIMIT = 0.03
COPY_TOLERANCE = 0.15


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One benchmark case x provider."""

    section: str  # "device" | "ops" | "models" (or "other" for JSON not written by bench/)
    case: str  # what the providers are compared on (shape, dtype, mode in it)
    provider: str
    median_s: float
    p20_s: Optional[float]
    p80_s: Optional[float]
    info: dict[str, Any]  # the whole extra_info

    def get(self, key: str, default: Any = None) -> Any:
        value = self.info.get(key, default)
        return default if value is None else value


@dataclass
class BenchRun:
    path: Path
    rows: list[Row]
    machine: dict[str, Any]  # versions and device facts (machine_info.replab, else the first row's)
    when: Optional[_dt.datetime]  # when pytest-benchmark wrote the JSON (UTC)
    meta: dict[str, Any] = field(default_factory=dict)  # the suite's own block: skipped cases, quick, ...

    @property
    def gpu(self) -> Optional[str]:
        return self.machine.get("gpu")

    @property
    def date(self) -> str:
        return self.when.strftime("%Y-%m-%d") if self.when else "unknown date"

    @property
    def device_name(self) -> str:
        return self.gpu or f"CPU ({self.machine.get('cpu') or 'unknown'}, {self.machine.get('cpu_count', '?')} cores)"

    @property
    def ceilings(self) -> dict[str, Any]:
        c = dict(self.machine.get("ceilings") or {})
        if not c and self.rows:  # every row carries the ceilings it was divided by
            info = self.rows[0].info
            c = {"copy_gbps": info.get("ceiling_copy_gbps"), "matmul_tflops": info.get("ceiling_matmul_tflops"),
                 "matmul_dtype": info.get("ceiling_matmul_dtype")}  # fmt: skip
        return c

    def skipped(self) -> list[dict[str, str]]:
        return list(self.meta.get("skipped") or [])


_ENV_KEYS = ("device", "gpu", "torch", "triton", "cuda", "cudnn", "driver", "python", "cpu", "cpu_count",
             "torch_threads", "load_avg_1m", "capability", "sm_count", "l2_bytes", "gpu_memory_bytes")  # fmt: skip


def _row(entry: dict[str, Any]) -> Optional[Row]:
    info = dict(entry.get("extra_info") or {})
    stats = entry.get("stats") or {}
    median = info.get("median_s", stats.get("median"))
    if median is None:
        return None
    return Row(
        section=info.get("section") or "other",
        case=info.get("case") or entry.get("group") or entry.get("name") or "?",
        provider=info.get("provider") or entry.get("param") or entry.get("name") or "?",
        median_s=float(median),
        p20_s=info.get("p20_s"),
        p80_s=info.get("p80_s"),
        info=info,
    )


def _parse_when(text: Optional[str]) -> Optional[_dt.datetime]:
    if not text:
        return None
    try:
        when = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def load(path: str | Path) -> BenchRun:
    """Read a pytest-benchmark JSON, or the suite's JSON-lines file (one case per line); either gzipped."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted([*path.glob("*.json"), *path.glob("*.json.gz")], key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ValueError(f"{path} holds no .json file")
        path = candidates[-1]
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as fh:
            text = fh.read()
        suffix = Path(path.stem).suffix
    else:
        text = path.read_text()
        suffix = path.suffix
    if suffix == ".jsonl":
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        data: dict[str, Any] = {"benchmarks": entries, "machine_info": {}}
        when = _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from None
        if not isinstance(data, dict) or "benchmarks" not in data:
            raise ValueError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks' list)")
        when = _parse_when(data.get("datetime"))
    rows = [r for r in (_row(e) for e in data.get("benchmarks") or []) if r is not None]
    machine = dict((data.get("machine_info") or {}).get("replab") or {})
    if rows:
        for key in _ENV_KEYS:
            if machine.get(key) is None and rows[0].info.get(key) is not None:
                machine[key] = rows[0].info[key]
    return BenchRun(path=path, rows=rows, machine=machine, when=when, meta=dict(data.get("replab") or {}))


def merge(runs: Sequence[BenchRun]) -> BenchRun:
    """Several JSONs of one run folder as one (make gpu-check writes the op benchmarks to bench.json
    and the model baselines to bench-models.json): the rows of all, the machine facts of the
    first that has them, the newest time, the skipped cases of all."""
    if not runs:
        raise ValueError("merge needs at least one run")
    machine = next((r.machine for r in runs if r.machine.get("gpu") or r.machine.get("ceilings")), runs[0].machine)
    times = [r.when for r in runs if r.when is not None]
    meta = dict(runs[0].meta)
    meta["skipped"] = [s for r in runs for s in r.skipped()]
    return BenchRun(path=runs[0].path, rows=[row for r in runs for row in r.rows], machine=machine,
                    when=max(times) if times else None, meta=meta)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def fmt_time(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}" if seconds / scale < 100 else f"{seconds / scale:.0f} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def fmt_rate(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _achieved(row: Row) -> str:
    if row.info.get("throughput"):
        return f"{fmt_rate(row.info['throughput'])} {row.get('unit', 'items')}/s"
    gbps, tflops = row.info.get("gbps"), row.info.get("tflops")
    if row.get("bound") == "compute" and tflops:
        return f"{fmt_rate(tflops)} TFLOP/s"
    if gbps:
        return f"{fmt_rate(gbps)} GB/s"
    if tflops:
        return f"{fmt_rate(tflops)} TFLOP/s"
    return "-"


def _of_ceiling(row: Row) -> str:
    frac = row.info.get("frac_ceiling")
    if frac is None:
        return "-"
    bound = {"memory": "mem", "compute": "math"}.get(row.get("bound", ""), "")
    return f"{100 * frac:.1f}% {bound}".strip()


def _spread(row: Row) -> str:
    if row.p20_s is None or row.p80_s is None:
        return "n/a"
    return f"{fmt_time(row.p20_s)} – {fmt_time(row.p80_s)}"


def _peak(row: Row) -> str:
    peak = row.info.get("peak_mem_bytes")
    return fmt_bytes(peak) if peak is not None else "n/a"


def _provider_key(name: str) -> tuple[int, str]:
    return (PROVIDER_ORDER.index(name) if name in PROVIDER_ORDER else len(PROVIDER_ORDER), name)


def _cases(rows: Iterable[Row]) -> dict[str, list[Row]]:
    cases: dict[str, list[Row]] = {}
    for row in rows:
        cases.setdefault(row.case, []).append(row)
    for case_rows in cases.values():
        case_rows.sort(key=lambda r: _provider_key(r.provider))
    return cases


def ratios_to_best_peer(rows: Sequence[Row]) -> dict[tuple[str, str], Optional[float]]:
    """(case, provider) -> median / the fastest other provider's median in that case (None if alone)."""
    out: dict[tuple[str, str], Optional[float]] = {}
    for case, case_rows in _cases(rows).items():
        for row in case_rows:
            others = [r.median_s for r in case_rows if r.provider != row.provider and r.median_s > 0]
            out[(case, row.provider)] = row.median_s / min(others) if others else None
    return out


def _table(rows: Sequence[Row], ratios: dict[tuple[str, str], Optional[float]]) -> list[str]:
    lines = [
        "| case | provider | median | p20 – p80 | × best peer | achieved | of ceiling | peak mem |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case, case_rows in _cases(rows).items():
        for i, row in enumerate(case_rows):
            ratio = ratios.get((case, row.provider))
            ratio_text = "-" if ratio is None else (f"**{ratio:.2f}×**" if ratio < 1 else f"{ratio:.2f}×")
            lines.append(
                f"| {case if i == 0 else ''} | {row.provider} | {fmt_time(row.median_s)} | {_spread(row)} | "
                f"{ratio_text} | {_achieved(row)} | {_of_ceiling(row)} | {_peak(row)} |"
            )
    return lines


def _versions(run: BenchRun) -> str:
    m = run.machine
    parts = [f"torch {m.get('torch', '?')}", f"triton {m.get('triton') or 'not installed'}"]
    if m.get("cuda"):
        parts.append(f"CUDA {m['cuda']}")
    if m.get("cudnn"):
        parts.append(f"cuDNN {m['cudnn']}")
    if m.get("driver"):
        parts.append(f"driver {m['driver']}")
    parts.append(f"Python {m.get('python', '?')}")
    if not m.get("gpu") and m.get("torch_threads"):
        load = f", host load average {m['load_avg_1m']} at the start" if m.get("load_avg_1m") is not None else ""
        parts.append(f"torch threads: {m['torch_threads']}{load}")
    return ", ".join(parts)


def _ceilings_line(run: BenchRun) -> str:
    c = run.ceilings
    if not c.get("copy_gbps"):
        return "Ceilings: not recorded."
    return (
        f"Ceilings measured in this run: device-to-device copy {fmt_rate(c['copy_gbps'])} GB/s (bytes read + "
        f"written); {c.get('matmul_dtype', '?')} matmul {fmt_rate(c.get('matmul_tflops'))} TFLOP/s."
    )


def acceptance_checks(run: BenchRun) -> list[str]:
    """The suite's acceptance, read off the run: copy bandwidth vs the GPU's known rate, stability."""
    if not run.gpu:
        return ["GPU verification pending: this run is on a CPU; the GPU checks (copy bandwidth within 15% of "
                "the GPU's known rate, the same case timed twice within 3%) need `make gpu-check` on a GPU."]  # fmt: skip
    lines = []
    copy_rows = [r for r in run.rows if r.case == "ceiling/copy"]
    if copy_rows:
        info = copy_rows[0].info
        expected, measured = info.get("expected_copy_gbps"), run.ceilings.get("copy_gbps")
        if expected and measured:
            rel = measured / expected - 1.0
            ok = abs(rel) <= COPY_TOLERANCE
            lines.append(f"Copy bandwidth {fmt_rate(measured)} GB/s vs about {fmt_rate(expected)} GB/s expected for "
                         f"this GPU: {rel:+.1%}, {'PASS' if ok else 'FAIL'} (within 15%).")  # fmt: skip
        else:
            lines.append(f"Copy bandwidth {fmt_rate(measured)} GB/s (no reference rate known for {run.gpu}).")
    else:
        lines.append("Copy bandwidth: no ceiling/copy case in this run.")
    stab = [r for r in run.rows if r.case.startswith("stability/")]
    for r in stab:
        diff = r.info.get("stability_diff")
        if diff is None:
            continue
        ok = diff < STABILITY_LIMIT
        lines.append(f"Same case timed twice ({r.case.removeprefix('stability/')}): medians "
                     f"{fmt_time(r.info.get('median_first_s'))} and {fmt_time(r.info.get('median_second_s'))}, "
                     f"{diff:.2%} apart, {'PASS' if ok else 'FAIL'} (< 3%).")  # fmt: skip
    if not stab:
        lines.append("Same case timed twice: no stability case in this run.")
    return lines


def render_markdown(run: BenchRun, *, title: Optional[str] = None) -> str:
    """The full report: header, checks, one table per section, the skipped cases with reasons."""
    ratios = ratios_to_best_peer(run.rows)
    meta = run.meta
    out = [f"# {title or 'Benchmark report'}: {run.device_name}, {run.date}", ""]
    out.append(f"Source: `{run.path.name}`. {_versions(run)}.")
    details = []
    if meta.get("quick") is not None:
        details.append("sweep set: " + ("quick" if meta["quick"] else "full"))
    if meta.get("elapsed_s") is not None:
        details.append(f"suite time {meta['elapsed_s']:.0f} s")
    if meta.get("budget_s"):
        details.append(f"budget {meta['budget_s']:.0f} s")
    timers = sorted({r.info.get("timer") for r in run.rows if r.info.get("timer")})
    if timers:
        details.append("timer: " + ", ".join(timers))
    if details:
        out.append("; ".join(details).capitalize() + ".")
    out += ["", _ceilings_line(run), "", "## Checks", ""]
    out += [f"- {line}" for line in acceptance_checks(run)]
    out += [
        "",
        "Columns: median and p20 – p80 of the per-repetition times; × best peer = this median over the fastest "
        "other provider's in the same case (bold: faster than all others); achieved = throughput, GB/s or "
        "TFLOP/s; of ceiling = max(bytes / copy rate, FLOPs / matmul rate) / median, with the ceilings above "
        "(mem or math: the larger term); peak mem = torch.cuda.max_memory_allocated during one repetition.",
    ]
    sections = [s for s in SECTION_TITLES if any(r.section == s for r in run.rows)]
    sections += sorted({r.section for r in run.rows} - set(SECTION_TITLES))
    for section in sections:
        rows = [r for r in run.rows if r.section == section]
        out += ["", f"## {SECTION_TITLES.get(section, section)}", ""]
        out += _table(rows, ratios)
    if not run.rows:
        out += ["", "No benchmark case ran."]
    skipped = run.skipped()
    if skipped:
        out += ["", f"## Skipped ({len(skipped)})", ""]
        by_reason: dict[str, list[str]] = {}
        for s in skipped:
            by_reason.setdefault(s.get("reason", "?"), []).append(s.get("case", "?"))
        for reason, cases in by_reason.items():
            example = cases[0].split("::")[-1]
            more = f" and {len(cases) - 1} more" if len(cases) > 1 else ""
            out.append(f"- {len(cases)} case(s), e.g. `{example}`{more}: {reason}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _metric(row: Row) -> tuple[Optional[float], str]:
    if row.info.get("throughput"):
        return row.info["throughput"], f"{row.get('unit', 'items')}/s"
    if row.info.get("gbps") and row.get("bound") != "compute":
        return row.info["gbps"], "GB/s"
    if row.info.get("tflops"):
        return row.info["tflops"], "TFLOP/s"
    return (1.0 / row.median_s if row.median_s else None), "runs/s"


def render_plots(run: BenchRun, outdir: str | Path, *, filename: str = "sweeps.png") -> list[Path]:
    """One PNG with a panel per sweep (x: the swept size, one line per provider). [] if no sweep."""
    sweeps: dict[str, list[Row]] = {}
    for row in run.rows:
        sweep = row.info.get("sweep")
        if isinstance(sweep, dict) and sweep.get("name") is not None and sweep.get("x") is not None:
            sweeps.setdefault(str(sweep["name"]), []).append(row)
    if not sweeps:
        return []
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install matplotlib (the table needs nothing)") from None

    names = sorted(sweeps)
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    for k, name in enumerate(names):
        ax = fig.add_subplot(nrows, cols, k + 1)
        rows = sweeps[name]
        ylabel = _metric(rows[0])[1]
        xs_all = []
        for prov in sorted({r.provider for r in rows}, key=_provider_key):
            pts = sorted((float(r.info["sweep"]["x"]), _metric(r)[0]) for r in rows if r.provider == prov)
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                xs_all += [x for x, _ in pts]
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=prov)
        if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 4:
            ax.set_xscale("log", base=2)
        ticks = sorted(set(xs_all))
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
        ceiling = {"GB/s": run.ceilings.get("copy_gbps"), "TFLOP/s": run.ceilings.get("matmul_tflops")}.get(ylabel)
        if ceiling:
            ax.axhline(ceiling, linestyle="--", color="gray", linewidth=1, label="ceiling (this run)")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(str(rows[0].info["sweep"].get("x_name", "x")))
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{run.device_name}, {run.date}", fontsize=10)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / filename
    fig.savefig(target, dpi=110)
    return [target]


# --------------------------------------------------------------------------------------------
# README section
# --------------------------------------------------------------------------------------------


RESULT_PATTERNS = ("*/bench.json", "*/bench.json.gz", "*/bench-*.json", "*/bench-*.json.gz")


def find_results(results_dir: str | Path, *, committed_only: bool = True) -> list[Path]:
    """Every ``*/bench.json`` and ``*/bench-*.json`` (or ``.json.gz``) under ``results_dir`` (not
    ``local/``); only git-tracked ones by default."""
    results_dir = Path(results_dir)
    found = sorted({p for pattern in RESULT_PATTERNS for p in results_dir.glob(pattern) if p.parent.name != "local"})
    if not committed_only or not found:
        return found
    try:
        proc = subprocess.run(
            ["git", "ls-files", "--full-name", "--", "."], cwd=results_dir, capture_output=True, text=True,
            timeout=30, check=True,
        )  # fmt: skip
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=results_dir, capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []  # not a git checkout: nothing can be called committed
    tracked = {(Path(top) / line).resolve() for line in proc.stdout.splitlines() if line.strip()}
    return [p for p in found if p.resolve() in tracked]


def newest_result(results_dir: str | Path, *, committed_only: bool = True) -> Optional[BenchRun]:
    """The newest GPU run among the results (by the time pytest-benchmark wrote it); the JSONs of
    one folder are one run (``merge``), bench.json first."""
    by_folder: dict[Path, list[BenchRun]] = {}
    paths = find_results(results_dir, committed_only=committed_only)
    for path in sorted(paths, key=lambda p: (p.parent, not p.name.startswith("bench.json"))):
        try:
            run = load(path)
        except (ValueError, OSError):
            continue
        if run.gpu and run.rows:
            by_folder.setdefault(path.parent, []).append(run)
    runs = [merge(folder_runs) for folder_runs in by_folder.values()]
    if not runs:
        return None
    epoch = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
    return max(runs, key=lambda r: (r.when or epoch, str(r.path)))


def _relpath(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def summary_table(run: BenchRun) -> list[str]:
    """Case x provider pivot: models in throughput, ops and ceilings in median time."""
    providers = sorted({r.provider for r in run.rows}, key=_provider_key)
    lines = ["| case | " + " | ".join(providers) + " |", "| --- |" + " ---: |" * len(providers)]
    for section in SECTION_TITLES:
        for case, case_rows in _cases([r for r in run.rows if r.section == section]).items():
            by_provider = {r.provider: r for r in case_rows}
            best = min(case_rows, key=lambda r: r.median_s)
            cells = []
            for prov in providers:
                r = by_provider.get(prov)
                if r is None:
                    cells.append("-")
                    continue
                text = f"{fmt_rate(r.info['throughput'])} {r.get('unit', 'items')}/s" if r.info.get(
                    "throughput") else fmt_time(r.median_s)
                if r.info.get("frac_ceiling") is not None and section != "models":
                    text += f" ({_pct(r.info['frac_ceiling'])})"
                cells.append(f"**{text}**" if r is best and len(case_rows) > 1 else text)
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return lines


def render_readme_section(run: Optional[BenchRun], *, repo_root: str | Path = ".") -> str:
    """The text between the README's perf markers (markers not included)."""
    if run is None:
        return (
            "No GPU benchmark result is committed yet, so this section quotes no number. "
            "GPU verification pending: `make gpu-check` on an H100 or H200 writes "
            "`bench/results/<gpu>_<date>/`; commit that folder, then `replab-fast bench-report --readme` "
            "fills this section from it.\n"
        )
    root = Path(repo_root)
    json_rel = _relpath(run.path, root)
    report = run.path.parent / "report.md"
    report_ref = f" Full table: [`{_relpath(report, root)}`]({_relpath(report, root)})." if report.exists() else ""
    lines = [
        f"Newest committed GPU result: **{run.gpu}**, {run.date} ({_versions(run)}), from "
        f"[`{json_rel}`]({json_rel}).{report_ref} Every number here is in that file; "
        "`replab-fast bench-report --readme` regenerates this section.",
        "",
        _ceilings_line(run).replace("in this run", "in that run"),
        "",
    ]
    lines += [f"- {c}" for c in acceptance_checks(run)]
    lines += ["", "Models: throughput; ops: median time per call (fraction of the ceiling); bold: fastest.", ""]
    lines += summary_table(run)
    return "\n".join(lines) + "\n"


def update_readme(readme: str | Path, results_dir: str | Path, *, committed_only: bool = True) -> bool:
    """Rewrite the README's perf section from the newest committed GPU result. True if it changed."""
    readme = Path(readme)
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < 0 or end < begin:
        raise ValueError(f"{readme} has no {README_BEGIN} ... {README_END} markers for the performance section")
    run = newest_result(results_dir, committed_only=committed_only)
    section = render_readme_section(run, repo_root=readme.parent)
    new = text[: begin + len(README_BEGIN)] + "\n" + section + text[end:]
    if new != text:
        readme.write_text(new)
    return new != text


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("path", nargs="?", help="a pytest-benchmark JSON, a .jsonl partial run, or a folder "
                        "(its newest .json)")  # fmt: skip
    parser.add_argument("-o", "--output", help="write the markdown table to this file instead of stdout")
    parser.add_argument("--plots", metavar="DIR", help="also draw the sweeps into DIR/sweeps.png (needs matplotlib)")
    parser.add_argument("--readme", nargs="?", const="README.md", metavar="README",
                        help="rewrite README's perf section (between <!-- perf:begin --> and <!-- perf:end -->) "
                        "from the newest committed GPU result")  # fmt: skip
    parser.add_argument("--results", default="bench/results", help="where --readme looks (default: bench/results)")
    parser.add_argument("--include-uncommitted", action="store_true",
                        help="--readme may use results git does not track yet")  # fmt: skip
    return parser


def run(args: argparse.Namespace) -> int:
    if args.path is None and args.readme is None:
        raise ValueError("bench-report needs a PATH to a pytest-benchmark JSON, or --readme")
    if args.path is not None:
        path = Path(args.path)
        if not path.exists():
            raise ValueError(f"no such file or folder: {path}")
        bench_run = load(path)
        table = render_markdown(bench_run)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(table)
            print(f"bench-report: wrote {args.output}")
        else:
            print(table, end="")
        if args.plots:
            written = render_plots(bench_run, args.plots)
            print(f"bench-report: wrote {', '.join(map(str, written))}" if written else "bench-report: no sweep to plot")
    if args.readme is not None:
        changed = update_readme(args.readme, args.results, committed_only=not args.include_uncommitted)
        print(f"bench-report: {args.readme} {'updated' if changed else 'unchanged'}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m replab_fast.bench_report", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"bench-report: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
