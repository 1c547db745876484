"""A sweep folder: the spec and resolved base, results.csv, a claim sweep's arms and invocations,
and validate_store, the records contract checked over a whole sweep folder."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnlab._atomic import temp_files
from bnlab.config import Config, cell_values, validate
from bnlab.config.spec import Sweep
from bnlab.errors import BnlabError, RecordsError
from bnlab.records._encode import UnreadableRecord, csv_bytes, json_bytes, read_json, strict_json, write_file
from bnlab.records._files import (
    ARMS,
    CONFIG,
    ERROR,
    INVOCATIONS,
    METRICS_CSVS,
    OPTIONAL_CSVS,
    RESULTS,
    SPEC,
    SUMMARY,
    SWEEP_STATE,
)
from bnlab.records._run import check_identity, read_config, read_finished, read_metrics_csv

RESULT_METRICS = ("train_loss", "train_acc", "val_acc", "test_loss", "test_acc")  # results.csv's final.* columns


@dataclass(frozen=True)
class SweepRecord:
    """sweep.json: the sweep as it last started (its base resolved, its axes and seeds)."""

    name: str
    base: Config
    axes: list[str]
    seeds: list[int]


def write_sweep_start(folder: Path, sweep: Sweep) -> None:
    """spec.yaml as given, then sweep.json: what a resumed sweep and the report read back."""
    write_file(folder / SPEC, sweep.spec_text.encode())
    write_file(folder / SWEEP_STATE, json_bytes({"name": sweep.name, "base": sweep.base.model_dump(),
                                                 "axes": list(sweep.axes), "seeds": sweep.seeds}))


def read_sweep_record(folder: Path) -> SweepRecord | None:
    """sweep.json back; None for a folder that is not a sweep; RecordsError when it is damaged."""
    path = folder / SWEEP_STATE
    try:
        state = read_json(path)
        return SweepRecord(str(state.get("name", folder.name)), validate(state["base"], str(path)),
                           list(state.get("axes", [])), list(state.get("seeds", [])))
    except FileNotFoundError:
        return None
    except UnreadableRecord:
        raise  # it may be whole: never call it damaged
    except (KeyError, TypeError, AttributeError, BnlabError):  # AttributeError: JSON that is not an object
        raise RecordsError(f"{path}: damaged; move it away to treat the folder as a new sweep") from None


def spec_path(folder: Path) -> Path | None:
    """The spec a sweep folder was last started from, to rerun it; None outside a sweep."""
    return folder / SPEC if (folder / SPEC).exists() else None


def result_row(summary: Mapping[str, Any], cfg: Config, sweep: Sweep) -> dict[str, Any]:
    """results.csv's row for one finished run: its varied fields, seed, status and final metrics."""
    # As summary.json holds it (NaN as null), so a row is the same written fresh or on resume.
    summary = strict_json(summary)
    final = summary.get("final") or {}
    return {
        "run_id": cfg.run_id(),
        **{f: v for f, v in cell_values(cfg, list(sweep.axes)).items()},
        "seed": cfg.seed,
        "status": summary.get("status"),
        **{metric: final.get(metric) for metric in RESULT_METRICS},
        "best_val_acc": (summary.get("best") or {}).get("val_acc"),
        "seconds": (summary.get("timings") or {}).get("seconds_total"),
        "engine": summary.get("engine"),
        "stack_size": summary.get("stack_size"),
        "error": summary.get("error"),
    }


def write_results(folder: Path, rows: Mapping[str, Mapping[str, Any]]) -> None:
    """results.csv, one row per run id in order; rewritten whole, atomically, as runs finish."""
    ordered = [rows[run_id] for run_id in sorted(rows)]
    write_file(folder / RESULTS, csv_bytes(ordered) if ordered else b"run_id,status\n")


MAIN_PANEL = "main"  # a claim suite's own grid and comparisons


def write_arms(folder: Path, members: Iterable[Mapping[str, Any]]) -> None:
    """arms.csv: one row per (panel, arm, cell, seed) of a claim sweep and the run that serves it;
    the cell (grid axis -> value) as JSON. Kept outside the configs, so run ids do not depend on it."""
    rows = [{"run_id": m["run_id"], "panel": m["panel"], "arm": m["arm"],
             "cell": json.dumps(m["cell"], sort_keys=True), "seed": m["seed"]} for m in members]
    write_file(folder / ARMS, csv_bytes(rows))


def read_arms(folder: Path) -> list[dict[str, Any]]:
    """arms.csv back: run_id, panel, arm, cell (a dict), seed (an int). RecordsError naming the
    file. A sweep recorded before panels existed has one panel, `main`."""
    path = folder / ARMS
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [{"run_id": row["run_id"], "panel": row.get("panel") or MAIN_PANEL, "arm": row["arm"],
                 "cell": json.loads(row["cell"]),
                 "seed": int(row["seed"])} for row in rows]
    except FileNotFoundError:
        raise RecordsError(f"{path}: missing (not a claim sweep, or one run before arms were recorded)") from None
    except OSError as err:
        raise UnreadableRecord(f"{path}: cannot read: {err.strerror or err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise RecordsError(f"{path}: damaged: {err}") from None


def arms_path(folder: Path) -> Path:
    """Where a claim sweep records its arms, for messages about them."""
    return folder / ARMS


def append_invocation(folder: Path, invocation: Mapping[str, Any]) -> None:
    """Add one invocation (its wall time, runs trained, the machine's speed) to invocations.json."""
    write_file(folder / INVOCATIONS, json_bytes([*read_invocations(folder), dict(invocation)]))


def read_invocations(folder: Path) -> list[dict[str, Any]]:
    path = folder / INVOCATIONS
    try:
        found = read_json(path)
    except FileNotFoundError:
        return []
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        raise RecordsError(f"{path}: damaged: not a list of invocations")
    return found


def validate_store(sweep_dir: Path) -> list[str]:
    """Every way a sweep folder breaks the records contract, one line each; [] when it holds.

    The contract, whatever killed or starved the writer: each run folder is either finished and
    whole (a summary.json that reads back and agrees with its config.yaml and metrics, and no
    temp file beside it) or visibly unfinished (no summary.json); every file under a final name
    is whole (no zero-length file, no torn CSV or config), so no temp file was ever promoted; and
    each results.csv row agrees with the summary of a finished run. Temp files in an unfinished
    folder are allowed: nothing reads them, and a resume removes them."""
    if not sweep_dir.is_dir():
        return [f"{sweep_dir}: no such folder"]
    problems: list[str] = []
    finished: dict[str, dict[str, Any]] = {}
    for path in sorted(sweep_dir.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.stat().st_size == 0:
            problems.append(f"{path}: empty")
    for folder in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        try:
            if (folder / SUMMARY).exists():
                summary = finished[folder.name] = read_finished(folder).summary
                if summary["status"] == "failed" and not (folder / ERROR).is_file():
                    problems.append(f"{folder / ERROR}: missing for a failed run")
                if summary["status"] != "failed" and (folder / ERROR).exists():
                    problems.append(f"{folder / ERROR}: left by a failed attempt beside a {summary['status']} run")
                problems += [f"{temp}: temp file in a finished run" for temp in temp_files(folder)]
            else:  # unfinished: what it holds must still be whole
                if (folder / CONFIG).exists():
                    check_identity(folder, read_config(folder))
                for name in (*METRICS_CSVS, *OPTIONAL_CSVS):
                    if (folder / name).exists():
                        read_metrics_csv(folder / name)
        except BnlabError as err:
            problems.append(str(err))
    if (sweep_dir / RESULTS).exists():
        problems += _results_problems(sweep_dir / RESULTS, finished)
    return problems


def _results_problems(path: Path, finished: Mapping[str, Mapping[str, Any]]) -> list[str]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle, strict=True))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return [f"{path}: cannot read: {err}"]
    problems, seen = [], set()
    for line, row in enumerate(rows, start=2):
        run_id = row.get("run_id")
        where = f"{path}: line {line}: run {run_id}"
        if run_id in seen:
            problems.append(f"{where}: listed twice")
        seen.add(run_id)
        summary = finished.get(run_id or "")
        if summary is None:
            problems.append(f"{where}: not a finished run folder")
            continue
        if row.get("status") != summary["status"]:
            problems.append(f"{where}: status {row.get('status')!r}, its summary.json says {summary['status']!r}")
        final = summary.get("final") or {}
        for metric in RESULT_METRICS:
            value = final.get(metric)
            if metric in row and row[metric] != ("" if value is None else str(value)):
                problems.append(f"{where}: {metric} {row[metric]!r}, its summary.json says {value!r}")
    return problems
