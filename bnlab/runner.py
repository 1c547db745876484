"""One run end to end: check, load, train, record. The library call behind `bnlab run`.

Everything that can refuse (the device, the data) is checked before the run folder exists, and
the folder is written only after training, so a bad input or an interrupted run leaves runs/
as it was.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import bnlab
from bnlab.config import Config
from bnlab.data import Splits, load_dataset
from bnlab.plots import learning_curves_png
from bnlab.records import RunFolder, finished_summary, run_folder, runs_dir
from bnlab.train import OnEvent, RunResult, resolve_device, train


@dataclass(frozen=True)
class RunOutcome:
    folder: Path
    summary: dict[str, Any]
    skipped: bool  # an identical finished run was already there


@functools.cache
def git_commit() -> str | None:
    """The commit of bnlab's own source, with a `+dirty` mark; None outside a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    import numpy

    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": numpy.__version__, "bnlab": bnlab.__version__},
        "git_commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
    }


def build_summary(cfg: Config, result: RunResult, splits: Splits, engine: str = "solo",
                  stack_size: int = 1) -> dict[str, Any]:
    return {
        "name": cfg.name,
        "run_id": cfg.run_id(),
        "status": result.status,
        "seed": cfg.seed,
        "final": result.final,
        "best": result.best,
        "diverged_step": result.diverged_step,
        "timings": result.timings,
        "engine": engine,
        "stack_size": stack_size,
        "device": result.device,
        "dataset": {"name": cfg.data.dataset, "source": splits.source, "sha256": splits.sha256,
                    "verified": cfg.data.verify},
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **provenance(),
    }


def write_run(folder: Path, cfg: Config, result: RunResult, summary: dict[str, Any]) -> None:
    """The run folder of DESIGN.md; summary.json last."""
    records = RunFolder(folder)
    records.start(cfg)
    records.write_csv("epochs.csv", result.epochs)
    records.write_csv("steps.csv", result.steps)
    records.write_csv("probes.csv", result.probes)
    records.write_csv("evals.csv", result.evals)
    records.write_bytes("plots/learning_curves.png",
                        learning_curves_png(result.epochs, result.steps, f"{cfg.name} {cfg.run_id()}"))
    weights = io.BytesIO()
    torch.save(result.state_dict, weights)
    records.write_bytes("model.pt", weights.getvalue())
    records.finish(summary)


def run(cfg: Config, runs_root: str | Path | None = None, force: bool = False,
        on_event: OnEvent | None = None) -> RunOutcome:
    """Train `cfg` and write runs/<name>/<run id>/; an identical finished run is kept unless `force`."""
    device = resolve_device(cfg.device)
    folder = run_folder(runs_dir(runs_root), cfg)
    existing = finished_summary(folder)
    if existing is not None and not force:
        return RunOutcome(folder, existing, skipped=True)
    splits = load_dataset(cfg.data, device)
    result = train(cfg, splits, on_event)
    summary = build_summary(cfg, result, splits)
    write_run(folder, cfg, result, summary)
    return RunOutcome(folder, summary, skipped=False)
