"""Every run folder under a path, as one table: what `bnlab ls` and the report start from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnlab.config import flatten
from bnlab.errors import BnlabError, RecordsError
from bnlab.records._files import CONFIG, SUMMARY
from bnlab.records._run import check_identity, check_outputs, read_config, read_summary, run_status


def run_folders(path: Path) -> list[Path]:
    """Every run folder at or under `path`: a folder holding a config.yaml or a summary.json."""
    if (path / CONFIG).exists() or (path / SUMMARY).exists():
        return [path]
    found = {p.parent for name in (CONFIG, SUMMARY) for p in path.rglob(name)}
    return sorted(found)


def read_runs(path: Path) -> Any:
    """One row per run folder under `path` (a pandas DataFrame): the config flattened to dotted
    columns, status (records.run_status's, or unfinished | damaged), final metrics, seconds.
    A damaged folder is a row with its problem in `problem`, never an exception."""
    import pandas as pd

    if not path.exists():
        raise RecordsError(f"{path}: no such folder")
    rows = []
    for folder in run_folders(path):
        row: dict[str, Any] = {"path": str(folder), "run_id": folder.name}
        try:
            config = read_config(folder)
            row |= {"name": config.name, **flatten(config.model_dump())}
            check_identity(folder, config)
            if not (folder / SUMMARY).exists():
                row["status"] = "unfinished"
            else:
                summary = read_summary(folder)
                check_outputs(folder, summary)
                row |= {"status": run_status(summary),
                        "seconds": (summary.get("timings") or {}).get("seconds_total"),
                        "error": summary.get("error"), "engine": summary.get("engine")}
                row |= {f"final.{key}": value for key, value in (summary.get("final") or {}).items()}
        except BnlabError as err:
            row |= {"status": "damaged", "problem": str(err)}
        rows.append(row)
    return pd.DataFrame(rows)
