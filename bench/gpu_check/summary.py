"""summary.md of a `make gpu-check` folder, rendered from whatever finished; and the merged junit XML.

``render(folder)`` reads status.json (the stages and steps, written by the runner), machine.json,
smoke.json and smoke-conv.json, junit/*.xml, sanitizer/*.log, bench.json, sweep.json and
bench-models.json (or the .partial.jsonl a cut-short benchmark left), each when present: a
missing or unreadable file is a line saying so, never an exception. It runs in the orchestrating
process, so it touches no GPU: it only reads files.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

__all__ = ["render", "junit_totals", "merged_junit", "write_report"]

MAX_FAILURES = 40


def _json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else (f"{value:.3f}" if value < 10 else f"{value:.1f}")


def _stages(status: dict) -> list[str]:
    lines = ["| stage | what | state | seconds | steps |", "| --- | --- | --- | ---: | --- |"]
    build = status.get("build")
    if build:
        lines.append(f"| build | the extension, in the background | {build.get('state')} | {build.get('seconds', '-')} "
                     f"| {build.get('log') or build.get('reason', '')} |")  # fmt: skip
    steps = status.get("steps") or []
    for stage in status.get("stages") or []:
        own = [s for s in steps if s.get("stage") == stage["key"]]
        counts: dict[str, int] = {}
        for s in own:
            counts[s["state"]] = counts.get(s["state"], 0) + 1
        detail = ", ".join(f"{n} {state}" for state, n in counts.items()) or stage.get("reason", "")
        lines.append(f"| {stage['key']} | {stage['title']} | {stage.get('state')} | {stage.get('seconds', '-')} "
                     f"| {detail} |")  # fmt: skip
    problems = [s for s in steps if s.get("state") not in ("passed", "skipped")]
    if problems:
        lines += ["", "Steps that did not pass:", ""]
        lines += [f"- `{s['name']}`: {s['state']}" + (f" (rc {s['rc']})" if s.get("rc") is not None else "")
                  + (f": {s['reason']}" if s.get("reason") else "") + (f"; log `{s['log']}`" if s.get("log") else "")
                  for s in problems]  # fmt: skip
    skipped = [s for s in steps if s.get("state") == "skipped"]
    if skipped:
        lines += ["", "Skipped, with the reason:", ""]
        lines += [f"- `{s['name']}`: {s.get('reason')}" for s in skipped]
    return lines


def _machine(folder: Path) -> list[str]:
    data = _json(folder / "machine.json")
    if data is None:
        return ["machine.json: not written (stage a did not finish)."]
    env, c, tools, tf32 = data.get("environment", {}), data.get("ceilings", {}), data.get("tools", {}), data.get("tf32", {})
    smi = data.get("nvidia_smi") or {}
    lines = [f"- Device: {env.get('gpu') or 'CPU ' + str(env.get('cpu'))}"
             + (f", driver {smi.get('driver_version')}, {smi.get('memory.total')}, SM clock {smi.get('clocks.sm')} "
                f"(max {smi.get('clocks.max.sm')}), power limit {smi.get('power.limit')}" if smi else "")
             + (f", capability {env.get('capability')}, {env.get('sm_count')} SMs" if env.get("capability") else ""),
             f"- Versions: python {env.get('python')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn')}, triton {env.get('triton')}, pytest-benchmark {env.get('pytest_benchmark')}; "
             f"nvcc: {tools.get('nvcc')}; ninja {tools.get('ninja')}",
             f"- Ceilings (measured in this run): copy {c.get('copy_gbps', 0):.0f} GB/s"
             + (f" (about {c['expected_copy_gbps']:.0f} expected)" if c.get("expected_copy_gbps") else "")
             + f", {c.get('matmul_dtype')} matmul {c.get('matmul_tflops', 0):.3g} TFLOP/s {tuple(c.get('matmul_shape', ()))}",
             f"- TF32 as torch set it: cuDNN convolutions {tf32.get('cudnn_allow_tf32')}, matmuls "
             f"{tf32.get('cuda_matmul_allow_tf32')} (the conv benchmarks run float32 in true fp32, eager-tf32 beside)",
             f"- compute-sanitizer: {tools.get('compute_sanitizer_version') or tools.get('compute_sanitizer') or 'not found'}"]  # fmt: skip
    return lines


def _smoke(folder: Path) -> list[str]:
    entries = []
    for name in ("smoke.json", "smoke-conv.json"):
        data = _json(folder / name)
        if data is not None:
            entries += data.get("ops", [])
    if not entries:
        return ["smoke.json: not written."]
    lines = ["| op | shape | dtype | parity (worst error / allowed) | ours ms fwd / fwd+bwd | torch ms fwd / fwd+bwd "
             "| counterpart |", "| --- | --- | --- | --- | ---: | ---: | --- |"]  # fmt: skip
    for e in entries:
        rows = e.get("parity") or []
        worst = max(rows, key=lambda r: r["error"] / r["allowed"] if r["allowed"] else float("inf"), default=None)
        verdict = "PASS" if e.get("passed") else "FAIL"
        if worst:
            verdict += f" ({worst['tensor']}: {worst['error']:.2g} / {worst['allowed']:.2g})"
        if e.get("error"):
            verdict += f": {e['error'].splitlines()[0][:200]}"
        lines.append(f"| {e['op']} | {e.get('shape', '-')} | {e.get('dtype', '-')} | {verdict} | "
                     f"{_ms(e.get('ours_forward_ms'))} / {_ms(e.get('ours_full_ms'))} | "
                     f"{_ms(e.get('torch_forward_ms'))} / {_ms(e.get('torch_full_ms'))} | {e.get('counterpart', '-')} |")  # fmt: skip
    if entries[0].get("device") == "cpu":
        lines += ["", "On a CPU the Triton kernels run in Triton's interpreter: their times say nothing of speed."]
    return lines


def junit_totals(path: Path) -> Optional[dict[str, Any]]:
    """tests / failures / errors / skipped / time and the failing cases of one junit XML (None if unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals: dict[str, Any] = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0, "failed": []}
    for suite in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            totals[key] += int(suite.get(key, 0) or 0)
        totals["time"] += float(suite.get("time", 0) or 0)
        for case in suite.iter("testcase"):
            for bad in list(case.findall("failure")) + list(case.findall("error")):
                message = (bad.get("message") or bad.text or "").strip().splitlines()
                totals["failed"].append((f"{case.get('classname')}::{case.get('name')}", message[0] if message else ""))
    totals["passed"] = totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"]
    return totals


def _interrupted_at(log: Path) -> Optional[str]:
    """Where pytest was when SIGINT stopped it (its "path:line: KeyboardInterrupt" line)."""
    try:
        found = re.findall(r"^(\S+:\d+): KeyboardInterrupt$", log.read_text(errors="replace"), flags=re.M)
    except OSError:
        return None
    return f"`{found[-1]}`" if found else None


def _tests(folder: Path, status: dict) -> list[str]:
    shard_steps = [s for s in status.get("steps") or [] if s["name"].startswith("tests/")]
    if not shard_steps:
        return ["No test shard ran."]
    lines = ["| shard | passed | failed | errors | skipped | seconds | state |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    failures = []
    for step in shard_steps:
        shard = step["name"].removeprefix("tests/")
        t = junit_totals(folder / "junit" / f"{shard}.xml")
        if t is None:
            lines.append(f"| {shard} | - | - | - | - | {step.get('seconds', '-')} | {step['state']}: no junit XML "
                         f"({step.get('reason') or 'see ' + step.get('log', '')}) |")  # fmt: skip
            continue
        where = _interrupted_at(folder / step.get("log", "")) if step["state"] == "timed out" else None
        lines.append(f"| {shard} | {t['passed']} | {t['failures']} | {t['errors']} | {t['skipped']} | "
                     f"{step.get('seconds', '-')} | {step['state']}{' in ' + where if where else ''} |")  # fmt: skip
        failures += t["failed"]
    if failures:
        lines += ["", f"Failures and errors ({len(failures)}; short tracebacks in junit/ and logs/):", ""]
        lines += [f"- `{name}`: {message[:300]}" for name, message in failures[:MAX_FAILURES]]
        if len(failures) > MAX_FAILURES:
            lines.append(f"- ... and {len(failures) - MAX_FAILURES} more")
    return lines


def _sanitizer(folder: Path, status: dict) -> list[str]:
    steps = [s for s in status.get("steps") or [] if s["name"].startswith("sanitizer/")]
    if not steps:
        machine = _json(folder / "machine.json") or {}
        found = (machine.get("tools") or {}).get("compute_sanitizer")
        if machine.get("device") == "cpu":
            return ["Not run: compute-sanitizer checks CUDA kernels, and this run has no GPU."]
        return ["Not run: " + ("no compute-sanitizer on this machine." if not found else "no step reached it.")]
    lines = ["| tool | conv path | state | summary |", "| --- | --- | --- | --- |"]
    for step in steps:
        _, tool, path = step["name"].split("/", 2)
        try:
            text = (folder / step["log"]).read_text(errors="replace")
        except OSError:
            text = ""
        found = re.findall(r"(?:ERROR|RACECHECK) SUMMARY:[^\n]*", text)
        note = found[-1] if found else (step.get("reason") or "no summary line in the log")
        if "Device not supported" in text:
            note = "compute-sanitizer refused the device (Device not supported)"
        lines.append(f"| {tool} | {path} | {step['state']} | {note} |")
    return lines


def _bench(folder: Path, name: str) -> tuple[list[str], Any]:
    from replab_fast import bench_report

    path = folder / name
    partial = folder / name.replace(".json", ".partial.jsonl")
    source = path if path.exists() else partial if partial.exists() else None
    if source is None:
        return [f"{name}: not written."], None
    try:
        run = bench_report.load(source)
    except (ValueError, OSError) as err:
        return [f"{source.name}: unreadable ({err})."], None
    lines = [f"From `{source.name}`" + (" (partial: the run was cut short)" if source == partial else "") + "."]
    if run.rows:
        lines += ["", "Models: throughput; ops: median time (fraction of the ceiling); bold: fastest.", ""]
        lines += bench_report.summary_table(run)
    else:
        lines.append("No case was measured.")
    skipped = run.skipped()
    if skipped:
        reasons: dict[str, int] = {}
        for s in skipped:
            reasons[s.get("reason", "?")] = reasons.get(s.get("reason", "?"), 0) + 1
        lines += ["", f"Skipped ({len(skipped)}):", ""] + [f"- {n} x {reason}" for reason, n in reasons.items()]
    return lines, run


def _sweep(folder: Path) -> list[str]:
    data = _json(folder / "sweep.json")
    if data is None:
        return ["sweep.json: not written."]
    rows = data.get("rows") or []
    lines = [f"{len(rows)} measurements" + ("" if data.get("complete") else " (stopped at its budget)") + "."]
    for mode in ("forward", "backward"):
        ours = [r for r in rows if r.get("mode") == mode and r.get("provider") == "replab_fast"]
        sdpa = [r for r in rows if r.get("mode") == mode and r.get("provider") == "sdpa-flash"]
        if ours:
            best = max(ours, key=lambda r: r["tflops"])
            ref = f"; sdpa-flash {sdpa[0]['tflops']:.0f} TFLOP/s" if sdpa else ""
            lines.append(f"- {mode}, T={best['T']} D={best['D']}: best {best['tflops']:.0f} TFLOP/s with "
                         f"{best.get('config')}{ref}")  # fmt: skip
    decode = [r for r in rows if r.get("mode") == "decode"]
    for B in sorted({r["B"] for r in decode}):
        best = max((r for r in decode if r["B"] == B), key=lambda r: r["gbps"])
        lines.append(f"- decode B={B} S={best['S']}: best {best['gbps']:.0f} GB/s with {best['splits']} splits")
    return lines


def write_report(folder: Path, plots: bool = False) -> Optional[Path]:
    """report.md (and with ``plots`` sweeps.png) from the folder's benchmark JSONs, merged."""
    from replab_fast import bench_report

    runs = []
    for name in ("bench.json", "bench-models.json"):
        source = folder / name
        if not source.exists():
            source = folder / name.replace(".json", ".partial.jsonl")
        if source.exists():
            try:
                runs.append(bench_report.load(source))
            except (ValueError, OSError):
                continue
    if not runs:
        return None
    run = bench_report.merge(runs)
    out = folder / "report.md"
    out.write_text(bench_report.render_markdown(run, title="gpu-check benchmarks"))
    if plots:
        try:
            bench_report.render_plots(run, folder)
        except Exception as err:  # a missing matplotlib costs the plot, not the report
            (folder / "report.md").write_text(out.read_text() + f"\nNo plots: {type(err).__name__}: {err}\n")
    return out


def render(folder: Path) -> str:
    folder = Path(folder)
    status = _json(folder / "status.json") or {}
    rehearsal = status.get("mode") == "rehearsal"
    out = [f"# gpu-check: {status.get('device', '?')}, {status.get('started_utc', '?')}", ""]
    out.append(f"Commit {status.get('commit', '?')}; deadline {status.get('deadline_s', '?')} s; "
               f"{status.get('elapsed_s', '?')} s elapsed when this was written.")  # fmt: skip
    if rehearsal:
        out += ["", "**A CPU rehearsal**: the same orchestration on a machine without a GPU. The CUDA stages ran "
                "their CPU counterparts (the same test files' CPU cases, the benchmarks on the CPU) or are recorded "
                "as skipped; no number here is a GPU number."]  # fmt: skip
    out += ["", "## Stages", ""] + _stages(status)
    out += ["", "## a. Machine", ""] + _machine(folder)
    out += ["", "## b. Smoke: each op once against its PyTorch counterpart", ""] + _smoke(folder)
    out += ["", "## c. Tests", ""] + _tests(folder, status)
    out += ["", "### compute-sanitizer on the CUDA conv paths", ""] + _sanitizer(folder, status)
    out += ["", "## d. Headline op benchmarks", ""] + _bench(folder, "bench.json")[0]
    out += ["", "## e. Attention block-size sweep (quick)", ""]
    sweep_step = next((s for s in status.get("steps") or [] if s["name"].startswith("sweep/")), None)
    out += [f"Skipped: {sweep_step['reason']}"] if sweep_step and sweep_step["state"] == "skipped" else _sweep(folder)
    out += ["", "## f. Model baselines", ""] + _bench(folder, "bench-models.json")[0]
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    out += ["", "## Files", "", ", ".join(f"`{f}`" for f in files)]
    return "\n".join(out) + "\n"


def merged_junit(folder: Path) -> Optional[bytes]:
    """Every shard's junit XML as one ``<testsuites>``, each ``<testsuite>`` named after its shard."""
    merged = ET.Element("testsuites")
    for path in sorted((folder / "junit").glob("*.xml")):
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        for suite in [root] if root.tag == "testsuite" else list(root.iter("testsuite")):
            suite.set("name", path.stem)
            merged.append(suite)
    return ET.tostring(merged, encoding="utf-8", xml_declaration=True) if len(merged) else None
