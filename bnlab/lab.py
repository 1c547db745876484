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
from bnlab.analysis.suites import Suite, load_suite, suite_path, suite_sweep
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
