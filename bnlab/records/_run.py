"""One run folder: its writer, and the finished run read back whole with its one status.

summary.json is written last: a folder without a valid one is unfinished, whatever else it
holds. Everything read back is checked against everything else the folder holds, so a torn,
garbled or edited file is a damaged record (redo the run), never a wrong number downstream.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnlab import faults
from bnlab.config import Config, cell_values, changed_fields, flatten, read_yaml_mapping, validate
from bnlab.errors import BnlabError, RecordsError
from bnlab.records._encode import UnreadableRecord, csv_bytes, json_bytes, read_json, remove_temps, write_file
from bnlab.records._files import (
    CONFIG,
    CURVES,
    EPOCHS,
    ERROR,
    EVALS,
    FORMAT_VERSION,
    LAYERS,
    METRICS_CSVS,
    OPTIONAL_CSVS,
    PROBES,
    STEPS,
    SUMMARY,
    WEIGHTS,
)

FINISHED_STATUSES = ("done", "diverged", "failed")  # what summary.json stores
# A run that finished "done" but whose final train loss is above chance level (ln 10 for 10
# classes), or that recorded none, did not train: worked out when read, never stored.
DID_NOT_TRAIN = "did-not-train"
RUN_STATUSES = ("done", "diverged", "failed", DID_NOT_TRAIN)  # run_status's values
CHANCE_LOSS = math.log(10)
# Every metrics column holds a number (or nothing), except evals.csv's labels.
_TEXT_COLUMNS = frozenset({"split", "bn_stats"})
_TABLES = {"epochs": EPOCHS, "steps": STEPS, "probes": PROBES, "evals": EVALS, "layers": LAYERS}


def run_status(summary: Mapping[str, Any]) -> str:
    """The one definition of a finished run's status: done, diverged (a NaN or infinite loss),
    failed (it raised) or did-not-train (done, with a final train loss above ln 10 or none)."""
    status = summary["status"]
    if status != "done":
        return status
    loss = (summary.get("final") or {}).get("train_loss")
    return "done" if isinstance(loss, int | float) and loss <= CHANCE_LOSS else DID_NOT_TRAIN


# --- writing -------------------------------------------------------------------------------------


class RunFolder:
    """One run's folder; the writer side of the records contract."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, cfg: Config) -> None:
        """Make the folder visibly unfinished (no summary) and record the config first."""
        try:
            faults.point("before_mkdir", self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / SUMMARY).unlink(missing_ok=True)
            (self.path / ERROR).unlink(missing_ok=True)  # a failed attempt's traceback must not outlive it
            remove_temps(self.path)  # a run redone after a crash starts clean
        except OSError as err:
            raise RecordsError(f"{self.path}: cannot create the run folder: {err.strerror or err}") from None
        write_file(self.path / CONFIG, cfg.to_yaml().encode())

    def write_outputs(self, tables: Mapping[str, Iterable[Mapping[str, Any]]], curves_png: bytes,
                      weights: bytes) -> None:
        """A trained run's metrics (epochs, steps, probes, evals, and layers if it probed any: rows
        each), figure and weights."""
        for table, name in _TABLES.items():
            rows = list(tables.get(table, []))
            if rows or name not in OPTIONAL_CSVS:
                write_file(self.path / name, csv_bytes(rows))
        write_file(self.path / CURVES, curves_png)
        write_file(self.path / WEIGHTS, weights)

    def write_error(self, text: str) -> None:
        """A run that raised records its traceback instead of outputs."""
        write_file(self.path / ERROR, text.encode())

    def finish(self, summary: Mapping[str, Any]) -> None:
        write_file(self.path / SUMMARY, json_bytes({"format_version": FORMAT_VERSION, **summary}))


# --- reading back --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinishedRun:
    """A finished run whose files all read back and agree (read_finished). The one shape every
    reader of runs uses: the sweep's resume, the claim analysis, the report, the findings."""

    folder: Path
    summary: dict[str, Any]
    config: Config

    @property
    def run_id(self) -> str:
        return self.folder.name

    @property
    def status(self) -> str:
        """run_status: done | diverged | failed | did-not-train."""
        return run_status(self.summary)

    @property
    def trained(self) -> bool:
        return self.status == "done"

    @property
    def final(self) -> dict[str, Any]:
        """The final metrics (train_loss, train_acc, val_acc, test_loss, test_acc, step); {} if it failed."""
        return self.summary.get("final") or {}

    @functools.cached_property
    def fields(self) -> dict[str, Any]:
        """dotted field -> value, exactly as the resolved config holds it."""
        return flatten(self.config.model_dump())

    def table(self, name: str) -> list[dict[str, str]]:
        """One metrics table (epochs, steps, probes, evals, layers) as rows of text, read strictly;
        an optional table the run did not write is empty."""
        path = self.folder / _TABLES[name]
        if path.name in OPTIONAL_CSVS and not path.exists():
            return []
        return read_metrics_csv(path)

    def frame(self, name: str) -> Any:
        """One metrics table as a pandas DataFrame, every column but the labels numeric."""
        import pandas as pd

        frame = pd.DataFrame(self.table(name))
        for column in frame.columns:
            if column not in _TEXT_COLUMNS:
                # astype, not pd.to_numeric: a diverged run's "nan" is a value, and to_numeric rejects it
                frame[column] = frame[column].where(frame[column] != "").astype(float)
        return frame


def read_summary(folder: Path) -> dict[str, Any]:
    """The summary of a finished run; RecordsError naming the file when it is missing or damaged."""
    path = folder / SUMMARY
    try:
        summary = read_json(path)
    except FileNotFoundError:
        raise RecordsError(f"{path}: missing (the run did not finish)") from None
    if not isinstance(summary, dict) or summary.get("status") not in FINISHED_STATUSES:
        raise RecordsError(f"{path}: damaged: no valid status")
    # Readers index into these: a garbage value must be a damaged record here, not a crash there.
    for key in ("final", "best", "timings"):
        value = summary.get(key)
        if value is not None and not (isinstance(value, dict) and all(
                item is None or isinstance(item, int | float) for item in value.values())):
            raise RecordsError(f"{path}: damaged: {key} is not a mapping of numbers")
    if not isinstance(summary.get("dataset") or {}, dict):
        raise RecordsError(f"{path}: damaged: dataset is not a mapping")
    return summary


def read_config(folder: Path) -> Config:
    path = folder / CONFIG
    return validate(read_yaml_mapping(path), str(path))


def read_metrics_csv(path: Path) -> list[dict[str, str]]:
    """A metrics CSV read strictly: RecordsError naming the path and line for a torn last line, a
    row with the wrong number of fields, or a value that is not a number. Atomic writes leave none
    of these, so each means the file was damaged after the run wrote it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecordsError(f"{path}: missing") from None
    except OSError as err:
        raise UnreadableRecord(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordsError(f"{path}: not UTF-8 text (byte {err.start})") from None
    if not text.endswith("\n"):  # csv_bytes ends every line, the header of an empty table too
        raise RecordsError(f"{path}: line {text.count(chr(10)) + 1}: torn (the file ends mid-line)")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = []
    try:
        header = next(reader)
        for fields in reader:
            where = f"{path}: line {reader.line_num}"
            if len(fields) != len(header):
                raise RecordsError(f"{where}: {len(fields)} field(s), the header has {len(header)}")
            row = dict(zip(header, fields, strict=True))
            for column, value in row.items():
                if value and column not in _TEXT_COLUMNS and not _is_number(value):
                    raise RecordsError(f"{where}: {column}: {_short(value)} is not a number")
            rows.append(row)
    except csv.Error as err:
        raise RecordsError(f"{path}: line {reader.line_num}: {err}") from None
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)  # nan and inf included: a diverged run records them
    except ValueError:
        return False
    return True


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


def check_identity(folder: Path, config: Config) -> None:
    if config.run_id() != folder.name:
        raise RecordsError(f"{folder / CONFIG}: does not match its folder: it hashes to run id {config.run_id()} "
                           "(edited after the run?)")


def check_outputs(folder: Path, summary: dict[str, Any]) -> None:
    """The files a finished run's summary vouches for are there, whole, and agree with it."""
    if summary.get("run_id") != folder.name:
        raise RecordsError(f"{folder / SUMMARY}: run_id {summary.get('run_id')!r} does not match its folder")
    if summary["status"] == "failed":
        return  # a failed run recorded error.txt, not metrics
    tables = {name: read_metrics_csv(folder / name) for name in METRICS_CSVS}
    for name in OPTIONAL_CSVS:
        if (folder / name).exists():
            read_metrics_csv(folder / name)
    if not (folder / WEIGHTS).is_file() or (folder / WEIGHTS).stat().st_size == 0:
        raise RecordsError(f"{folder / WEIGHTS}: missing or empty")
    if summary["status"] == "done":
        # A cut at a line boundary parses cleanly: the last epoch must still be the one summarised.
        epochs = tables[EPOCHS]
        last_step = epochs[-1].get("step") if epochs else None
        final_step = (summary.get("final") or {}).get("step")
        if not last_step or (final_step is not None and float(last_step) != final_step):
            raise RecordsError(f"{folder / EPOCHS}: ends at step {last_step or '(none)'}, summary.json says "
                               f"{final_step}: rows are missing")


def read_finished(folder: Path) -> FinishedRun:
    """The finished run in `folder`, its files all read back and agreeing with each other; else a
    BnlabError naming the file and what is wrong (the run is damaged: redo it)."""
    config = read_config(folder)
    check_identity(folder, config)
    summary = read_summary(folder)
    check_outputs(folder, summary)
    return FinishedRun(folder, summary, config)


class EditedConfig(RecordsError):
    """A run folder's config.yaml validates but is not the config its folder was made for."""


def check_not_edited(folder: Path, expected: Config) -> None:
    """Refuse to redo a run whose config.yaml a person changed: unlike a torn or garbled file, a
    config that validates but is not the one its folder was made for is someone's edit, and
    redoing the run would overwrite it. A missing or damaged config.yaml is not an edit."""
    try:
        found = read_config(folder)
    except BnlabError:
        return
    if found.run_id() == expected.run_id():
        return
    changed = changed_fields(expected, found)  # never empty: the run id hashes every field but the name
    first = changed[0]
    was, now = (cell_values(cfg, [first])[first] for cfg in (expected, found))
    more = f" and {len(changed) - 1} more field(s)" if len(changed) > 1 else ""
    raise EditedConfig(f"{folder / CONFIG}: edited after the run ({first}: {was!r} -> {now!r}{more}), so it no "
                       "longer matches its folder; move the folder away, or pass --force to redo the run there")


def finished_run(folder: Path) -> FinishedRun | None:
    """The finished run if `folder` holds a finished, consistent one, else None (redo it). A record
    that cannot be read at all raises UnreadableRecord: redoing would overwrite a run that may be whole."""
    try:
        return read_finished(folder)
    except UnreadableRecord:
        raise
    except BnlabError:
        return None


def inspect_run(folder: Path, cfg: Config, force: bool) -> tuple[FinishedRun | None, str | None]:
    """What `folder` holds for `cfg`, as `bnlab run` and the sweep both decide it: (the finished
    run, None), (None, why a finished-looking run is damaged and will be redone), or (None, None)
    when nothing finished is there. Raises UnreadableRecord (the run may be whole) and, unless
    `force`, EditedConfig: neither may be overwritten."""
    try:
        return read_finished(folder), None
    except UnreadableRecord:
        raise
    except BnlabError as problem:
        if not force:
            check_not_edited(folder, cfg)
        return None, str(problem) if (folder / SUMMARY).exists() else None
