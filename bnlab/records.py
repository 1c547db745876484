"""The run folder: atomic writes, and reading runs back. Knows nothing of how runs were executed.

Every file goes to a temporary name in its folder, is flushed and fsynced, renamed into place,
and the folder fsynced (a SIGKILL cannot catch a missing fsync, a power cut can). summary.json
is written last: a folder without a valid one is unfinished, whatever else it holds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bnlab.config import Config, read_yaml_mapping, validate
from bnlab.errors import BnlabError, RecordsError

FORMAT_VERSION = 1
SUMMARY = "summary.json"
CONFIG = "config.yaml"
FINISHED_STATUSES = ("done", "diverged", "failed")
DEFAULT_RUNS_DIR = "runs"


def runs_dir(explicit: str | Path | None = None) -> Path:
    """`--runs-dir`, else BNLAB_RUNS, else ./runs."""
    return Path(explicit or os.environ.get("BNLAB_RUNS") or DEFAULT_RUNS_DIR)


def run_folder(root: Path, cfg: Config) -> Path:
    return root / cfg.name / cfg.run_id()


# --- atomic writes -------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def csv_bytes(rows: Iterable[Mapping[str, Any]]) -> bytes:
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def strict_json(value: Any) -> Any:
    """NaN and infinities become null: summary.json is strict JSON that every parser reads."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(key): strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def json_bytes(value: Any) -> bytes:
    return (json.dumps(strict_json(value), indent=2, allow_nan=False) + "\n").encode()


class RunFolder:
    """One run's folder; the writer side of the records contract."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> None:
        try:
            atomic_write(self.path / name, data)
        except OSError as err:
            raise RecordsError(f"{self.path / name}: cannot write: {err.strerror or err}") from None

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        self.write_bytes(name, csv_bytes(rows))

    def start(self, cfg: Config) -> None:
        """Make the folder visibly unfinished (no summary) and record the config first."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / SUMMARY).unlink(missing_ok=True)
        except OSError as err:
            raise RecordsError(f"{self.path}: cannot create the run folder: {err.strerror or err}") from None
        self.write_text(CONFIG, cfg.to_yaml())

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.write_bytes(SUMMARY, json_bytes({"format_version": FORMAT_VERSION, **summary}))


# --- reading back --------------------------------------------------------------------------------


def read_summary(folder: Path) -> dict[str, Any]:
    """The summary of a finished run; RecordsError naming the file when it is missing or damaged."""
    path = folder / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordsError(f"{path}: missing (the run did not finish)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordsError(f"{path}: damaged: {err}") from None
    if not isinstance(summary, dict) or summary.get("status") not in FINISHED_STATUSES:
        raise RecordsError(f"{path}: damaged: no valid status")
    return summary


def read_config(folder: Path) -> Config:
    path = folder / CONFIG
    return validate(read_yaml_mapping(path), str(path))


def finished_summary(folder: Path) -> dict[str, Any] | None:
    """The summary if `folder` holds a finished, consistent run, else None (redo it)."""
    try:
        summary = read_summary(folder)
        config = read_config(folder)
    except BnlabError:
        return None
    if config.run_id() != folder.name or summary.get("run_id") != folder.name:
        return None
    return summary


def run_folders(path: Path) -> list[Path]:
    """Every run folder at or under `path`: a folder holding a config.yaml or a summary.json."""
    if (path / CONFIG).exists() or (path / SUMMARY).exists():
        return [path]
    found = {p.parent for name in (CONFIG, SUMMARY) for p in path.rglob(name)}
    return sorted(found)


def read_runs(path: Path) -> Any:
    """One row per run folder under `path` (a pandas DataFrame): the config flattened to dotted
    columns, status (done | diverged | failed | unfinished | damaged), final metrics, seconds.
    A damaged folder is a row with its problem in `problem`, never an exception."""
    import pandas as pd

    if not path.exists():
        raise RecordsError(f"{path}: no such folder")
    rows = []
    for folder in run_folders(path):
        row: dict[str, Any] = {"path": str(folder), "run_id": folder.name}
        try:
            config = read_config(folder)
            row |= {"name": config.name, **_flatten(config.model_dump())}
            if config.run_id() != folder.name:
                raise RecordsError(f"{folder / CONFIG}: does not match its folder (run id {config.run_id()})")
            if not (folder / SUMMARY).exists():
                row["status"] = "unfinished"
            else:
                summary = read_summary(folder)
                row |= {"status": summary["status"], "seconds": (summary.get("timings") or {}).get("seconds_total"),
                        "error": summary.get("error"), "engine": summary.get("engine")}
                row |= {f"final.{key}": value for key, value in (summary.get("final") or {}).items()}
        except BnlabError as err:
            row |= {"status": "damaged", "problem": str(err)}
        rows.append(row)
    return pd.DataFrame(rows)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat
