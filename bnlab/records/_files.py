"""Every file name in a run folder and a sweep folder: the one place they are spelled."""

from __future__ import annotations

import os
from pathlib import Path

from bnlab.config import Config

FORMAT_VERSION = 1  # summary.json's format_version
DEFAULT_RUNS_DIR = "runs"

# A run folder (DESIGN.md, README's run-folder table). summary.json is written last: a folder
# without a valid one is unfinished, whatever else it holds.
SUMMARY = "summary.json"
CONFIG = "config.yaml"
ERROR = "error.txt"  # a failed run's traceback
WEIGHTS = "model.pt"
CURVES = "plots/learning_curves.png"
EPOCHS = "epochs.csv"
STEPS = "steps.csv"
PROBES = "probes.csv"
EVALS = "evals.csv"
METRICS_CSVS = (EPOCHS, STEPS, PROBES, EVALS)  # what a done or diverged run's summary vouches for
LAYERS = "layers.csv"  # per-layer probes, written only by a run that asks for one
OPTIONAL_CSVS = (LAYERS,)  # checked like the others where present; a run without them is whole

# A sweep folder: the spec as given, the resolved base and axes, one row per run, the lock.
SPEC = "spec.yaml"
SWEEP_STATE = "sweep.json"
RESULTS = "results.csv"
LOCK = ".lock"
LOCK_PID = ".lock.pid"
# A claim sweep's folder, besides: which arm, cell and seed each run serves, and each
# `claim test` that trained runs in it.
ARMS = "arms.csv"
INVOCATIONS = "invocations.json"


def runs_dir(explicit: str | Path | None = None) -> Path:
    """`--runs-dir`, else BNLAB_RUNS, else ./runs."""
    return Path(explicit or os.environ.get("BNLAB_RUNS") or DEFAULT_RUNS_DIR)


def run_folder(root: Path, cfg: Config) -> Path:
    return root / cfg.name / cfg.run_id()
