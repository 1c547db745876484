"""Test-only faults at the record writer's IO points: crash and I/O-error tests, SQLite style.

Why this exists: a SIGKILL at a random moment almost never lands in the microseconds between a
temp file's write, its fsync, its rename and its folder's fsync, yet those windows are where a
store breaks. The writer (records.atomic_write, RunFolder.start) calls `point(name, path)` just
before each IO operation, and these variables, read once at import, turn one point into a fault:

  BNLAB_TEST_CRASH_AT=<point>[:<file name>]:<n>  SIGKILL this process at the n-th matching hit
  BNLAB_TEST_IOERROR_AT=<n>[:persistent]          OSError(EIO) at the n-th hit of any point
                                                  (persistent: at that hit and every later one)
  BNLAB_TEST_RECORD_IO=<log file>                 append "<point> <path>" per hit, to count them

Unset (always, outside tests), `point` returns at its first line.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# In the order atomic_write meets them; each names the state just before the next IO operation.
POINTS = ("before_mkdir", "after_mkdir", "after_tmp_create", "after_tmp_write", "before_replace",
          "after_replace_before_dir_fsync")


@dataclass
class _Plan:
    crash_point: str | None = None
    crash_file: str | None = None
    crash_at: int = 0
    ioerror_at: int = 0
    ioerror_persistent: bool = False
    record: Path | None = None
    crash_hits: int = 0
    io_hits: int = 0


_plan: _Plan | None = None


def configure(environ: Mapping[str, str] = os.environ) -> None:
    """Read the variables again (tests that set them in this process call this)."""
    global _plan
    crash, ioerror, record = (environ.get(f"BNLAB_TEST_{name}") for name in ("CRASH_AT", "IOERROR_AT", "RECORD_IO"))
    if not (crash or ioerror or record):
        _plan = None
        return
    plan = _Plan(record=Path(record) if record else None)
    if crash:
        *where, count = crash.split(":")
        if not 1 <= len(where) <= 2 or where[0] not in POINTS or not count.isdigit():
            raise ValueError(f"BNLAB_TEST_CRASH_AT={crash!r}: want <point>[:<file>]:<n>; points: {', '.join(POINTS)}")
        plan.crash_point, plan.crash_file, plan.crash_at = where[0], (where[1:] or [None])[0], int(count)
    if ioerror:
        count, _, mode = ioerror.partition(":")
        if not count.isdigit() or mode not in ("", "persistent"):
            raise ValueError(f"BNLAB_TEST_IOERROR_AT={ioerror!r}: want <n>[:persistent]")
        plan.ioerror_at, plan.ioerror_persistent = int(count), mode == "persistent"
    _plan = plan


def point(name: str, path: Path) -> None:
    """Called by the writer just before an IO operation on `path`; a no-op unless configured."""
    if _plan is None:
        return
    if _plan.record is not None:
        with _plan.record.open("a") as log:
            log.write(f"{name} {path}\n")
    if _plan.crash_point == name and _plan.crash_file in (None, path.name):
        _plan.crash_hits += 1
        if _plan.crash_hits == _plan.crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
    if _plan.ioerror_at:
        _plan.io_hits += 1
        if _plan.io_hits == _plan.ioerror_at or (_plan.ioerror_persistent and _plan.io_hits > _plan.ioerror_at):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))


configure()
