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

from bnlab import faults
from bnlab.config import Config, cell_values, changed_fields, read_yaml_mapping, validate
from bnlab.errors import BnlabError, RecordsError

FORMAT_VERSION = 1
SUMMARY = "summary.json"
CONFIG = "config.yaml"
FINISHED_STATUSES = ("done", "diverged", "failed")  # what summary.json stores
# A run that finished "done" but whose final train loss is above chance level (ln 10 for 10
# classes), or that recorded none, did not train: worked out when read, never stored.
DID_NOT_TRAIN = "did-not-train"
CHANCE_LOSS = math.log(10)
ARMS = "arms.csv"  # a claim sweep's record of which arm, grid cell and seed generated each run
DEFAULT_RUNS_DIR = "runs"
ERROR = "error.txt"  # a failed run's traceback
TEMP_SUFFIX = ".tmp"  # atomic_write's temp files are .<name>.<random>.tmp, beside their target
EPOCHS = "epochs.csv"
WEIGHTS = "model.pt"
# What a done or diverged run's summary vouches for (README's run-folder table).
METRICS_CSVS = (EPOCHS, "steps.csv", "probes.csv", "evals.csv")
# Every metrics column holds a number (or nothing), except evals.csv's labels.
_TEXT_COLUMNS = frozenset({"split", "bn_stats"})


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
    """Write `data` to `path` so that a reader sees the old file or the whole new one.
    The faults.point calls are the test seam before each IO step (bnlab/faults.py)."""
    faults.point("before_mkdir", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faults.point("after_mkdir", path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            faults.point("after_tmp_create", path)
            handle.write(data)
            handle.flush()
            faults.point("after_tmp_write", path)
            os.fsync(handle.fileno())
        faults.point("before_replace", path)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    faults.point("after_replace_before_dir_fsync", path)
    _fsync_dir(path.parent)


def write_file(path: Path, data: bytes) -> None:
    """atomic_write, with a failing disk (full, read-only, over a size limit, I/O error) as one
    RecordsError naming the file."""
    try:
        atomic_write(path, data)
    except OSError as err:
        raise RecordsError(f"{path}: cannot write: {err.strerror or err}") from None


def remove_temps(folder: Path) -> None:
    """Remove the temp files a killed writer left anywhere under `folder` (never read, only
    clutter). Only for a folder this process is about to rewrite: another writer's temp there
    would be lost, so the sweep folder is cleaned only under its lock."""
    for stale in folder.rglob(f".*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


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
        write_file(self.path / name, data)

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        self.write_bytes(name, csv_bytes(rows))

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
        self.write_text(CONFIG, cfg.to_yaml())

    def finish(self, summary: Mapping[str, Any]) -> None:
        self.write_bytes(SUMMARY, json_bytes({"format_version": FORMAT_VERSION, **summary}))


# --- reading back --------------------------------------------------------------------------------


class UnreadableRecord(RecordsError):
    """A record that could not be read (permissions, an I/O error, a flaky mount), as opposed to
    one whose content is damaged: the run may be whole, so nothing may redo it over this."""


def read_summary(folder: Path) -> dict[str, Any]:
    """The summary of a finished run; RecordsError naming the file when it is missing or damaged."""
    path = folder / SUMMARY
    try:
        summary = _read_json(path)
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


def _read_json(path: Path) -> Any:
    """A record's JSON; FileNotFoundError passes through (each caller says what missing means),
    other read failures are UnreadableRecord, bad content a damaged record, both naming the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except OSError as err:
        raise UnreadableRecord(f"{path}: cannot read: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordsError(f"{path}: damaged: {err}") from None


def run_status(summary: Mapping[str, Any]) -> str:
    """The one definition of a finished run's status: done, diverged (a NaN or infinite loss),
    failed (it raised) or did-not-train (done, with a final train loss above ln 10 or none)."""
    status = summary["status"]
    if status != "done":
        return status
    loss = (summary.get("final") or {}).get("train_loss")
    return "done" if isinstance(loss, int | float) and loss <= CHANCE_LOSS else DID_NOT_TRAIN


def write_arms(folder: Path, members: Iterable[Mapping[str, Any]]) -> None:
    """arms.csv: one row per (arm, cell, seed) of a claim sweep and the run that serves it; the
    cell (grid axis -> value) as JSON. Kept outside the configs, so run ids do not depend on it."""
    rows = [{"run_id": m["run_id"], "arm": m["arm"], "cell": json.dumps(m["cell"], sort_keys=True),
             "seed": m["seed"]} for m in members]
    write_file(folder / ARMS, csv_bytes(rows))


def read_arms(folder: Path) -> list[dict[str, Any]]:
    """arms.csv back: run_id, arm, cell (a dict), seed (an int). RecordsError naming the file."""
    path = folder / ARMS
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [{"run_id": row["run_id"], "arm": row["arm"], "cell": json.loads(row["cell"]),
                 "seed": int(row["seed"])} for row in rows]
    except FileNotFoundError:
        raise RecordsError(f"{path}: missing (not a claim sweep, or one run before arms were recorded)") from None
    except OSError as err:
        raise UnreadableRecord(f"{path}: cannot read: {err.strerror or err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise RecordsError(f"{path}: damaged: {err}") from None


INVOCATIONS = "invocations.json"  # a claim sweep's folder: each `claim test` that trained runs in it


def append_invocation(folder: Path, invocation: Mapping[str, Any]) -> None:
    """Add one invocation (its wall time, runs trained, the machine's speed) to invocations.json."""
    write_file(folder / INVOCATIONS, json_bytes([*read_invocations(folder), dict(invocation)]))


def read_invocations(folder: Path) -> list[dict[str, Any]]:
    path = folder / INVOCATIONS
    try:
        found = _read_json(path)
    except FileNotFoundError:
        return []
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        raise RecordsError(f"{path}: damaged: not a list of invocations")
    return found


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


def _check_identity(folder: Path, config: Config) -> None:
    if config.run_id() != folder.name:
        raise RecordsError(f"{folder / CONFIG}: does not match its folder: it hashes to run id {config.run_id()} "
                           "(edited after the run?)")


def _check_outputs(folder: Path, summary: dict[str, Any]) -> None:
    """The files a finished run's summary vouches for are there, whole, and agree with it."""
    if summary.get("run_id") != folder.name:
        raise RecordsError(f"{folder / SUMMARY}: run_id {summary.get('run_id')!r} does not match its folder")
    if summary["status"] == "failed":
        return  # a failed run recorded error.txt, not metrics
    tables = {name: read_metrics_csv(folder / name) for name in METRICS_CSVS}
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


def read_finished(folder: Path) -> tuple[dict[str, Any], Config]:
    """(summary, config) of a finished run whose files all read back and agree with each other;
    else a BnlabError naming the file and what is wrong (the run is damaged: redo it)."""
    config = read_config(folder)
    _check_identity(folder, config)
    summary = read_summary(folder)
    _check_outputs(folder, summary)
    return summary, config


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


class EditedConfig(RecordsError):
    """A run folder's config.yaml validates but is not the config its folder was made for."""


def finished_summary(folder: Path) -> dict[str, Any] | None:
    """The summary if `folder` holds a finished, consistent run, else None (redo it). A record
    that cannot be read at all raises UnreadableRecord: redoing would overwrite a run that may be whole."""
    try:
        return read_finished(folder)[0]
    except UnreadableRecord:
        raise
    except BnlabError:
        return None


def inspect_run(folder: Path, cfg: Any, force: bool) -> tuple[dict[str, Any] | None, str | None]:
    """What `folder` holds for `cfg`, as `bnlab run` and the sweep both decide it: (the summary of a
    finished run, None), (None, why a finished-looking run is damaged and will be redone), or (None,
    None) when nothing finished is there. Raises UnreadableRecord (the run may be whole) and, unless
    `force`, EditedConfig: neither may be overwritten."""
    try:
        return read_finished(folder)[0], None
    except UnreadableRecord:
        raise
    except BnlabError as problem:
        if not force:
            check_not_edited(folder, cfg)
        return None, str(problem) if (folder / SUMMARY).exists() else None


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
            _check_identity(folder, config)
            if not (folder / SUMMARY).exists():
                row["status"] = "unfinished"
            else:
                summary = read_summary(folder)
                _check_outputs(folder, summary)
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


# --- the store as a whole ------------------------------------------------------------------------

RESULTS = "results.csv"
RESULT_METRICS = ("train_loss", "train_acc", "val_acc", "test_loss", "test_acc")  # results.csv's final.* columns


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
                summary = finished[folder.name] = read_finished(folder)[0]
                if summary["status"] == "failed" and not (folder / ERROR).is_file():
                    problems.append(f"{folder / ERROR}: missing for a failed run")
                if summary["status"] != "failed" and (folder / ERROR).exists():
                    problems.append(f"{folder / ERROR}: left by a failed attempt beside a {summary['status']} run")
                problems += [f"{temp}: temp file in a finished run" for temp in folder.rglob(f".*{TEMP_SUFFIX}")]
            else:  # unfinished: what it holds must still be whole
                if (folder / CONFIG).exists():
                    _check_identity(folder, read_config(folder))
                for name in METRICS_CSVS:
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
