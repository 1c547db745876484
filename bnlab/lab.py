"""Workflows that chain the layers: a claim suite is a sweep, then its analysis, then a report."""

from __future__ import annotations

import datetime as dt
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnlab.analysis.claims import ClaimResult, analyze
from bnlab.analysis.expansion import suite_sweep
from bnlab.analysis.suites import Suite, load_suite, suite_path
from bnlab.config.spec import Sweep
from bnlab.records import append_invocation, read_invocations, write_arms
from bnlab.runs.runner import git_commit
from bnlab.runs.sweep import Event, SweepOptions, SweepState, run_sweep, sweep_folder


@dataclass(frozen=True)
class ClaimOutcome:
    result: ClaimResult
    sweep: Sweep
    state: SweepState
    folder: Path
    report_md: Path
    report_html: Path
    wall_seconds: float
    suite: Suite


def test_claim(name: str, budget: str = "quick", overrides: Sequence[str] = (), runs_root: str | Path | None = None,
               options: SweepOptions | None = None, on_event: Event | None = None) -> ClaimOutcome:
    """Run suite `name` at `budget` as a sweep (resumable like any), judge it, write its report
    into the sweep folder."""
    from bnlab.analysis.render import write_report
    from bnlab.analysis.report import build_report
    from bnlab.engine.device import matmul_gflops

    path = suite_path(name)
    suite = load_suite(path)
    sweep, members = suite_sweep(suite, budget, overrides, path.read_text())
    folder = sweep_folder(sweep, runs_root)
    live: list[SweepState] = []  # the sweep's state, kept from its first event: what it trained, interrupted or not

    def watch(kind: str, state: SweepState, payload: Any) -> None:
        live[:] = [state]
        if on_event is not None:
            on_event(kind, state, payload)

    started = time.perf_counter()
    try:
        state = run_sweep(sweep, runs_root, options, watch)
    finally:
        wall_seconds = time.perf_counter() - started
        # Every invocation that trained counts toward the findings' wall time, an interrupted one
        # too; re-analysing finished runs adds nothing.
        trained = sum(live[0].counts.values()) if live else 0
        if trained:
            append_invocation(folder, {"wall_seconds": round(wall_seconds, 1), "runs_trained": trained,
                                       "matmul_gflops": round(matmul_gflops(), 1), "git_commit": git_commit(),
                                       "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    write_arms(folder, members)
    command = shlex.join(["bnlab", "claim", "test", name, *overrides, "--budget", budget])
    training_seconds = sum(item.get("wall_seconds") or 0 for item in read_invocations(folder))
    result = analyze(suite, sweep, folder, budget, command, training_seconds)
    markdown, html = write_report(build_report(folder, [result]), folder)
    return ClaimOutcome(result, sweep, state, folder, markdown, html, wall_seconds, suite)


def plan_claim(name: str, overrides: Sequence[str] = (), runs_root: str | Path | None = None,
               options: SweepOptions | None = None, on_event: Event | None = None) -> tuple[ClaimOutcome, dict]:
    """Run suite `name`'s pilot budget (full settings, its own seeds) and, from the spread of each
    primary comparison there, simulate the seeds the full budget needs (analysis.planning): the
    suite's `seed_plan`, to paste before the full budget is ever run."""
    from bnlab.analysis.planning import PLAN_MIN_SEEDS, seed_plan
    from bnlab.errors import RecordsError

    outcome = test_claim(name, "pilot", overrides, runs_root, options, on_event)
    planned = []
    for comparison in outcome.result.comparisons:
        if not comparison.primary:
            continue
        sd = comparison.paired.diff_sd
        if comparison.paired.n < 2 or not sd >= 0:
            raise RecordsError(f"claim {name}: pilot comparison {comparison.label!r} has {comparison.paired.n} "
                               "paired seed(s) that trained: no spread to plan from; give the pilot more seeds")
        margin = comparison.margin if comparison.margin is not None else outcome.suite.rule.margin
        plan = seed_plan(sd, margin) if sd > 0 else None
        label = comparison.label if comparison.kind == "contrast" else (
            f"{comparison.name_b} against {comparison.name_a}, {comparison.label}")
        planned.append({"label": label, "sd": float(sd) if sd > 0 else 1e-12, "margin": margin,
                        "seeds": plan.seeds if plan else PLAN_MIN_SEEDS,
                        "p_supported": round(plan.p_supported, 4) if plan else 1.0,
                        "p_not_supported": round(plan.p_not_supported, 4) if plan else 1.0})
    needed = [item["seeds"] for item in planned]
    seeds = None if None in needed else max(needed)
    return outcome, {"pilot_seeds": list(outcome.sweep.seeds), "comparisons": planned, "seeds": seeds}
