"""Running the plan: processes under a deadline, stopped with SIGINT, results published as they come.

Every step is its own process (its own process group), so a CUDA fault, a hang or a crash costs
that step alone. A step past its time gets SIGINT (pytest then prints its tracebacks and writes
its junit XML and benchmark JSON), and SIGKILL ``KILL_GRACE_S`` later if it is still there.

The background build starts first and runs beside the stages; a step that ``needs_build`` waits
for it (at most until its stage's time is up) and is skipped, with the reason, when it fails.

After every stage ``status.json`` and ``summary.md`` are rewritten and ``publish`` copies the
result folder's files into $OUT (each written to a temporary name, then renamed), so a command
killed at its limit still returns everything finished before it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from bench.gpu_check.plan import Plan, Stage, Step

__all__ = ["KILL_GRACE_S", "StepResult", "Orchestrator"]

KILL_GRACE_S = 20.0  # after SIGINT, how long a step may take to write its reports before SIGKILL
POLL_S = 0.25


@dataclass
class StepResult:
    name: str
    stage: str
    state: str  # "passed", "failed", "timed out", "skipped", "not reached"
    rc: Optional[int] = None
    seconds: float = 0.0
    started_at_s: Optional[float] = None  # seconds after the command started
    reason: str = ""  # why skipped / not reached / failed to start
    log: str = ""

    @classmethod
    def of(cls, step: Step, stage: Stage, state: str, reason: str = "") -> "StepResult":
        return cls(name=step.name, stage=stage.key, state=state, reason=reason, log=step.log)


def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default. A process started in the background
    by a shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt: the
    timeout's SIGINT would do nothing, and no report would be written."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class _Running:
    step: Step
    proc: subprocess.Popen
    started: float
    deadline: float
    interrupted_at: Optional[float] = None
    log_handle: object = None


@dataclass
class Orchestrator:
    plan: Plan
    result_dir: Path
    out_dir: Optional[Path] = None
    echo: Callable[[str], None] = print
    publish: Optional[Callable[[], None]] = None  # after each stage (summary, then the $OUT copy)
    started: float = field(default_factory=time.monotonic)
    results: list[StepResult] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    _build: Optional[_Running] = None
    _build_result: Optional[StepResult] = None
    _running: list[_Running] = field(default_factory=list)

    # -- time ------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.plan.deadline_s - self.elapsed()

    # -- processes -------------------------------------------------------------------------

    def _start(self, step: Step, timeout_s: float) -> _Running:
        log_path = self.result_dir / step.log
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for rel in step.outputs:
            (self.result_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        budget = str(int(max(10.0, timeout_s - step.budget_margin_s)))
        argv = [arg.replace("{budget_s}", budget).replace("{dir}", str(self.result_dir)) for arg in step.argv]
        handle = open(log_path, "w")
        handle.write(f"$ {' '.join(argv)}\n")
        handle.flush()
        env = dict(os.environ)
        env.update(step.env)
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(
            argv, cwd=self.plan.repo, env=env, stdout=handle, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_default_sigint,
        )  # fmt: skip
        now = time.monotonic()
        self.echo(f"   start {step.name} (up to {timeout_s:.0f} s) -> {step.log}")
        return _Running(step, proc, now, now + timeout_s, log_handle=handle)

    def _signal(self, run: _Running, sig: int) -> None:
        try:
            os.killpg(run.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _poll(self, run: _Running, stage: Stage) -> Optional[StepResult]:
        """The step's result once it has ended (stopping it when its time is up), else None."""
        now = time.monotonic()
        rc = run.proc.poll()
        if rc is None:
            if run.interrupted_at is None and now >= run.deadline:
                self.echo(f"   {run.step.name}: time is up ({now - run.started:.0f} s): SIGINT")
                self._signal(run, signal.SIGINT)
                run.interrupted_at = now
            elif run.interrupted_at is not None and now - run.interrupted_at > KILL_GRACE_S:
                self.echo(f"   {run.step.name}: still running {KILL_GRACE_S:.0f} s after SIGINT: SIGKILL")
                self._signal(run, signal.SIGKILL)
                run.proc.wait()
                rc = run.proc.returncode
            if rc is None:
                return None
        self._signal(run, signal.SIGKILL)  # whatever it left behind in its group
        run.log_handle.close()
        seconds = now - run.started
        if run.interrupted_at is not None:
            state = "timed out"
        else:
            state = "passed" if rc in run.step.ok_codes else "failed"
        result = StepResult(
            name=run.step.name, stage=stage.key, state=state, rc=rc, seconds=round(seconds, 1),
            started_at_s=round(run.started - self.started, 1), log=run.step.log,
        )  # fmt: skip
        self.echo(f"   {run.step.name}: {state} (rc {rc}) in {seconds:.0f} s")
        return result

    # -- the build -------------------------------------------------------------------------

    def start_build(self) -> None:
        step = self.plan.build
        if step is None:
            return
        self.echo(f"== build (background): {' '.join(step.argv)}")
        self._build = self._start(step, min(step.timeout_s, max(1.0, self.left())))

    def build_state(self) -> Optional[str]:
        """None while the build runs; "passed", "failed", "timed out" or "none" (no build step)."""
        if self.plan.build is None:
            return "none"
        if self._build_result is None and self._build is not None:
            result = self._poll(self._build, self.plan.build_stage)
            if result is not None:
                self._build_result = result
                self.results.append(result)
        return None if self._build_result is None else self._build_result.state

    def stop_build(self) -> None:
        """At the end: a build still running is stopped and recorded as timed out."""
        if self._build is not None and self._build_result is None:
            self._build.deadline = time.monotonic()
            while self.build_state() is None:
                time.sleep(POLL_S)

    # -- stages ----------------------------------------------------------------------------

    def run_stage(self, stage: Stage) -> None:
        t0 = self.elapsed()
        budget = min(stage.share_s, self.left() - self.plan.reserve_s)
        record = {"key": stage.key, "title": stage.title, "started_at_s": round(t0, 1), "budget_s": round(budget, 1)}
        self.echo(f"== {stage.key} {stage.title} (budget {max(budget, 0):.0f} s, {self.left():.0f} s left)")
        if stage.skip_reason:
            self.results += [StepResult.of(s, stage, "skipped", stage.skip_reason) for s in stage.steps]
            record.update(state="skipped", reason=stage.skip_reason)
            self.echo(f"   skipped: {stage.skip_reason}")
        elif budget < stage.min_s:
            reason = f"not reached: {max(self.left(), 0):.0f} s of the deadline left, the stage needs {stage.min_s:.0f} s"
            self.results += [StepResult.of(s, stage, "not reached", reason) for s in stage.steps]
            record.update(state="not reached", reason=reason)
            self.echo(f"   {reason}")
        else:
            self._run_steps(stage, time.monotonic() + budget)
            states = [r.state for r in self.results if r.stage == stage.key]
            record["state"] = "done" if all(s in ("passed", "skipped") for s in states) else "problems"
        record["seconds"] = round(self.elapsed() - t0, 1)
        self.stages.append(record)
        self.write_status()
        if self.publish is not None:
            self.publish()

    def _run_steps(self, stage: Stage, stage_deadline: float) -> None:
        waiting = list(stage.steps)
        running: list[_Running] = []
        while waiting or running:
            for run in list(running):
                result = self._poll(run, stage)
                if result is not None:
                    running.remove(run)
                    self.results.append(result)
            build = self.build_state()
            for step in list(waiting):
                if len(running) >= stage.parallel:
                    break
                if (step.needs_build or step.waits_for_build) and build is None:
                    if time.monotonic() >= stage_deadline:
                        waiting.remove(step)
                        self.results.append(StepResult.of(step, stage, "not reached", "the build was still running "
                                                          "when the stage's time was up"))  # fmt: skip
                    continue  # wait for the build; the steps behind it may go ahead
                waiting.remove(step)
                if step.needs_build and build not in ("passed", "none"):
                    self.results.append(StepResult.of(step, stage, "skipped", f"the build {build} (see build.log)"))
                    continue
                left = stage_deadline - time.monotonic()
                if left < 5:
                    self.results.append(StepResult.of(step, stage, "not reached", "the stage's time was up"))
                    continue
                running.append(self._start(step, min(step.timeout_s, left)))
            self._running = running
            if waiting or running:
                time.sleep(POLL_S)
        self._running = []

    def _build_status(self) -> dict:
        if self._build_result is not None:
            return asdict(self._build_result)
        if self._build is not None:
            return {"name": "build", "state": "running", "log": self._build.step.log}
        return {"name": "build", "state": "skipped", "reason": self.plan.build_skip_reason}

    def write_status(self) -> None:
        status = {
            "mode": self.plan.mode,
            "device": self.plan.device_name,
            "commit": self.plan.commit,
            "started_utc": self.plan.started_utc,
            "deadline_s": self.plan.deadline_s,
            "elapsed_s": round(self.elapsed(), 1),
            "stages": self.stages,
            "steps": [asdict(r) for r in self.results],
            "build": self._build_status(),
        }  # fmt: skip
        tmp = self.result_dir / "status.json.tmp"
        tmp.write_text(json.dumps(status, indent=1))
        os.replace(tmp, self.result_dir / "status.json")

    def abort(self) -> None:
        """Interrupted (Ctrl-C): SIGINT to every running step and the build, so they write their
        reports; SIGKILL for what is left after the grace period."""
        runs = self._running + ([self._build] if self._build is not None and self._build_result is None else [])
        for run in runs:
            self._signal(run, signal.SIGINT)
        end = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < end and any(run.proc.poll() is None for run in runs):
            time.sleep(POLL_S)
        for run in runs:
            self._signal(run, signal.SIGKILL)
        self.echo("== gpu-check interrupted: the running steps were stopped")

    def finish(self) -> int:
        """The last status and copy; 0 when every step passed or was skipped with a reason."""
        self.write_status()
        if self.publish is not None:
            self.publish()
        bad = [r for r in self.results if r.state not in ("passed", "skipped")]
        self.echo(f"== gpu-check done in {self.elapsed():.0f} s: "
                  + (f"{len(bad)} step(s) did not pass: " + ", ".join(f"{r.name} ({r.state})" for r in bad)
                     if bad else "every step passed or was skipped with its reason"))  # fmt: skip
        return 1 if bad else 0

    def run(self) -> int:
        """The build in the background, every stage in order, then ``finish``."""
        self.start_build()
        for stage in self.plan.stages:
            self.run_stage(stage)
        self.stop_build()
        return self.finish()
