"""bnlab: test claims about batch normalization instead of repeating them.

Importing bnlab is cheap: torch, pandas and matplotlib load only when a function needs them.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import TYPE_CHECKING, Any

__version__ = version("bnlab")

if TYPE_CHECKING:
    from pathlib import Path

    from bnlab.config import Config
    from bnlab.runs.runner import RunOutcome


def load_config(path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    from bnlab.config import load_config as _load

    return _load(path, overrides)


def run(config: Config, **kwargs: Any) -> RunOutcome:
    """Train one config and write its run folder (see bnlab.runner.run)."""
    from bnlab.runs.runner import run as _run

    return _run(config, **kwargs)


def sweep(spec: Path, overrides: list[str] | tuple[str, ...] = (), **kwargs: Any) -> Any:
    """Run a sweep spec file; resumable (see bnlab.sweep.run_sweep for the options)."""
    from bnlab.config.spec import load_sweep
    from bnlab.runs.sweep import run_sweep

    return run_sweep(load_sweep(spec, overrides), **kwargs)


def report(path: Path, out: Path | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html for the runs under `path` (into `out`, default `path`)."""
    from bnlab.analysis.render import write_report
    from bnlab.analysis.report import build_report

    return write_report(build_report(path), out or path)
