"""Record bytes: CSV and strict JSON out, JSON back in, and writes that fail as one named error."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bnlab._atomic import atomic_write, temp_files
from bnlab.errors import RecordsError


class UnreadableRecord(RecordsError):
    """A record that could not be read (permissions, an I/O error, a flaky mount), as opposed to
    one whose content is damaged: the run may be whole, so nothing may redo it over this."""


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
    for stale in temp_files(folder):
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


def read_json(path: Path) -> Any:
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

