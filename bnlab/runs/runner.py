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
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from bnlab.config import Config
from bnlab.data.tensors import Splits, load_dataset
from bnlab.engine.device import resolve_device
from bnlab.engine.train import OnEvent, RunResult, train
from bnlab.records import RunFolder, inspect_run, run_folder, runs_dir
from bnlab.runs.curves import learning_curves_png


@dataclass(frozen=True)
class RunOutcome:
    folder: Path
    summary: dict[str, Any]
    skipped: bool  # an identical finished run was already there
    redid_damaged: str | None = None  # what was wrong with the record this run replaced


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


def provenance(torch_threads: int) -> dict[str, Any]:
    import numpy

    return {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": numpy.__version__, "bnlab": version("bnlab")},
        "git_commit": git_commit(),
        "torch_threads": torch_threads,
    }


@dataclass
class Trained:
    """What an executor hands back for one run: everything the run folder needs, picklable, no
    tensors (weights travel as torch.save bytes, so pipes and Ray move plain bytes)."""

    config: Config
    result: RunResult | None  # None when the run raised
    weights: bytes
    dataset: dict[str, Any]
    engine: str = "solo"
    stack_size: int = 1
    error: str | None = None
    traceback: str | None = None
    # Rendered where the run trained: in a sweep, workers draw in parallel instead of the driver
    # drawing every run's figure one after another at the end.
    curves_png: bytes = b""
    # Counted where the record is made, so a sweep's runs show their worker's threads, not the driver's.
    torch_threads: int = field(default_factory=torch.get_num_threads)

    @property
    def status(self) -> str:
        return "failed" if self.result is None else self.result.status


def dataset_info(cfg: Config, splits: Splits) -> dict[str, Any]:
    return {"name": cfg.data.dataset, "source": splits.source, "sha256": splits.sha256, "verified": cfg.data.verify}


def weights_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def trained(cfg: Config, result: RunResult, splits: Splits, engine: str = "solo", stack_size: int = 1) -> Trained:
    weights = weights_bytes(result.state_dict)
    result.state_dict = {}
    curves = learning_curves_png(result.epochs, result.steps, f"{cfg.name} {cfg.run_id()}")
    return Trained(cfg, result, weights, dataset_info(cfg, splits), engine, stack_size, curves_png=curves)


def build_summary(run: Trained) -> dict[str, Any]:
    cfg, result = run.config, run.result
    outcome: dict[str, Any] = {"status": run.status}
    if result is not None:
        outcome |= {"final": result.final, "best": result.best, "diverged_step": result.diverged_step,
                    "timings": result.timings, "device": result.device}
    else:
        outcome |= {"error": run.error}
    return {
        "name": cfg.name,
        "run_id": cfg.run_id(),
        "seed": cfg.seed,
        **outcome,
        "engine": run.engine,
        "stack_size": run.stack_size,
        "dataset": run.dataset,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **provenance(run.torch_threads),
    }


def write_run(folder: Path, run: Trained) -> dict[str, Any]:
    """The run folder of DESIGN.md, summary.json last; a failed run gets error.txt instead of
    metrics. Returns the summary."""
    cfg, result = run.config, run.result
    records = RunFolder(folder)
    records.start(cfg)
    if result is None:
        records.write_error(run.traceback or run.error or "failed, with no message")
    else:
        tables = {"epochs": result.epochs, "steps": result.steps, "probes": result.probes, "evals": result.evals,
                  "layers": result.layers}
        records.write_outputs(tables, run.curves_png, run.weights)
    summary = build_summary(run)
    records.finish(summary)
    return summary


def run(cfg: Config, runs_root: str | Path | None = None, force: bool = False,
        on_event: OnEvent | None = None) -> RunOutcome:
    """Train `cfg` and write runs/<name>/<run id>/; an identical finished run is kept unless `force`."""
    device = resolve_device(cfg.device)
    folder = run_folder(runs_dir(runs_root), cfg)
    existing, damage = inspect_run(folder, cfg, force)
    if existing is not None and not force:
        return RunOutcome(folder, existing.summary, skipped=True)
    splits = load_dataset(cfg.data, device)
    summary = write_run(folder, trained(cfg, train(cfg, splits, on_event), splits))
    return RunOutcome(folder, summary, skipped=False, redid_damaged=damage)
