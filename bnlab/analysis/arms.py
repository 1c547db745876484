"""A claim sweep read back by arm: each (panel, arm, grid cell, seed) with the finished run that serves
it, as arms.csv records it, and the per-run values the decision rules compare."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnlab.analysis.suites import cell_label, serves
from bnlab.config.spec import Sweep
from bnlab.errors import RecordsError
from bnlab.records import MAIN_PANEL, FinishedRun, arms_path, finished_run, read_arms


@dataclass(frozen=True)
class ArmRun:
    """One (panel, arm, grid cell, seed) of a claim sweep and the run that serves it, as arms.csv
    records it: the analysis selects by this record, never by matching config fields."""

    arm: str
    cell: dict[str, Any]  # grid axis -> value
    seed: int
    run: FinishedRun
    panel: str = MAIN_PANEL

    def at(self, where: dict[str, Any]) -> bool:
        return serves(self.cell, where)


def read_arm_runs(folder: Path, sweep: Sweep) -> list[ArmRun]:
    """Every member of the claim sweep in `folder` with its finished run. RecordsError naming the
    run when a member's run is not part of `sweep` or has not finished."""
    run_ids = {cfg.run_id() for cfg in sweep.configs}
    runs: dict[str, FinishedRun] = {}
    members = []
    for row in read_arms(folder):
        panel = "" if row["panel"] == MAIN_PANEL else f"panel {row['panel']}, "
        run_id, where = row["run_id"], f"{panel}arm {row['arm']}, {cell_label(row['cell'])}, seed {row['seed']}"
        if run_id not in run_ids:
            raise RecordsError(f"{arms_path(folder)}: {where}: run {run_id} is not a run of this suite's sweep")
        if run_id not in runs:
            run = finished_run(folder / run_id)
            if run is None:
                raise RecordsError(f"{folder / run_id}: {where}: the run has not finished")
            runs[run_id] = run
        members.append(ArmRun(row["arm"], row["cell"], row["seed"], runs[run_id], row["panel"]))
    return members


def metric_value(run: FinishedRun, metric: str) -> float:
    """A run's value of `metric`; NaN for a run that did not train (diverged, failed, or a final
    train loss above chance). Such runs are counted as failures beside the comparison and their
    seeds dropped from it, never scored as chance-level accuracy inside a t-test."""
    if not run.trained:
        return math.nan
    if metric == "gap":  # generalization gap: train accuracy minus test accuracy
        return run.final["train_acc"] - run.final["test_acc"]
    if metric.startswith(("eval:", "disagree:")):  # <kind>:<bn_stats>:<batch size or 'all'>, from evals.csv
        return _eval_metric(run, metric)
    kind = metric.split(":")[0]
    if kind in LAYER_METRICS:
        return _layer_metric(run, metric)
    if kind in CHECKPOINT_METRICS and ":" in metric:
        return CHECKPOINT_METRICS[kind](run, *metric.split(":")[1:])
    return run.final.get(metric, math.nan)


def _steps(run: FinishedRun, target: str) -> float:
    return steps_to(run, float(target))


def _log_steps(run: FinishedRun, target: str) -> float:
    return math.log(max(steps_to(run, float(target)), 1.0))


def _auc(run: FinishedRun, steps: str) -> float:
    """The area under the validation-accuracy curve over the first `steps` steps, per step: the
    mean of val_acc at the evaluation checkpoints up to there (eval.every_steps apart)."""
    values = [float(row["val_acc"]) for row in run.table("steps") if row.get("val_acc") and
              int(row["step"]) <= int(steps)]
    return sum(values) / len(values) if values else math.nan


def _matched(run: FinishedRun, column: str, loss: str) -> float:
    """`column` at the first checkpoint whose eval-mode train loss is at most `loss` (a matched
    training loss); `gap` is train_eval_acc - test_acc there. NaN when the run never got there."""
    for row in run.table("steps"):
        if row.get("train_eval_loss") and float(row["train_eval_loss"]) <= float(loss):
            if column == "gap":
                return float(row["train_eval_acc"]) - float(row["test_acc"])
            return float(row[column])
    return math.nan


# steps.csv checkpoint metrics (docs/claims.md): steps:<target>, log_steps:<target>,
# auc:<steps>, matched:<column or gap>:<train loss>.
CHECKPOINT_METRICS = {"steps": _steps, "log_steps": _log_steps, "auc": _auc, "matched": _matched}


# layers.csv columns (docs/probes.md): <column> is its mean over every layer and probe step,
# <column>:<layer> over one layer's probe steps; a run that recorded none has NaN.
LAYER_METRICS = ("drift", "ics_l2", "ics_cos", "variance_shift", "variance_shift_max")


def _layer_metric(run: FinishedRun, metric: str) -> float:
    column, _, layer = metric.partition(":")
    values = [float(row[column]) for row in run.table("layers")
              if row.get(column) not in (None, "") and (not layer or row["layer"] == layer)]
    finite = [value for value in values if math.isfinite(value)]
    return sum(finite) / len(finite) if finite else math.nan


def _eval_metric(run: FinishedRun, metric: str) -> float:
    """eval: the test accuracy of an evals.csv row; disagree: its share of predictions that differ
    from the running-statistics ones."""
    kind, mode, size = metric.split(":")
    for row in run.table("evals"):
        if row["split"] == "test" and row["bn_stats"] == mode and (row["batch_size"] or "all") == size:
            value = row["acc" if kind == "eval" else "disagree"]
            return float(value) if value else math.nan
    return math.nan


def steps_to(run: FinishedRun, target: float) -> float:
    """First logged step whose validation accuracy reaches `target`; censored at the run's last
    step (reported as such) when it never does; NaN for a run that did not train."""
    return first_reach(run, target)[0]


def first_reach(run: FinishedRun, target: float) -> tuple[float, bool]:
    """(steps_to, whether the target was reached at all), from one read of steps.csv."""
    if not run.trained:
        return math.nan, False
    last = 0
    for row in run.table("steps"):
        last = int(row["step"])
        if row.get("val_acc") and float(row["val_acc"]) >= target:
            return float(last), True
    return float(last), False
