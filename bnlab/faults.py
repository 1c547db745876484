"""Test-only faults: crashes and I/O errors at the record writer's IO points (SQLite style), and
holds at progress events, so a test acts on a sweep, a worker or a run at a known point.

Why this exists: a SIGKILL at a random moment almost never lands in the microseconds between a
temp file's write, its fsync, its rename and its folder's fsync, yet those windows are where a
store breaks. The writer (records.atomic_write, RunFolder.start) calls `point(name, path)` just
before each IO operation, and these variables, read once at import, turn one point into a fault:

  BNLAB_TEST_CRASH_AT=<point>[:<file name>]:<n>  SIGKILL this process at the n-th matching hit
  BNLAB_TEST_IOERROR_AT=<n>[:persistent]          OSError(EIO) at the n-th hit of any point
                                                  (persistent: at that hit and every later one)
  BNLAB_TEST_RECORD_IO=<log file>                 append "<point> <path>" per hit, to count them

Unset (always, outside tests), `point` returns at its first line.

Holds. A test that kills, interrupts or races a process must not guess when it is mid-work: on a
fast machine the work is over before a sleep ends, on a slow one it has not begun. So the sweep
driver ("sweep.plan", "sweep.start", "sweep.run", "sweep.end") and the training loop in any
process ("train.start", "train.step", "train.epoch", "train.end") call `hold(name)` at each of
their progress events. With BNLAB_TEST_HOLDS=<folder> set (tests/conftest.py sets it before any
process starts, Ray's workers included), a file <folder>/<name> holding n arms a hold: the first
process to pass that event for the n-th time renames it to <name>.held-<pid> and waits until the
test deletes that file (or kills the process). The variable and the folder are read at every pass,
not at import, because Ray's workers outlive any one test. A file <folder>/events.log, when it
exists, receives "<name> <pid>" per pass, so a test can choose a random event that will happen.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections import Counter
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


# A holder that nobody releases (a test that crashed before its cleanup) goes on after this.
HOLD_LIMIT_SECONDS = 600.0
_passes: Counter[tuple[int, str]] = Counter()  # keyed by pid too: a forked worker starts from zero


def hold(name: str) -> None:
    """Called at each progress event; a no-op unless BNLAB_TEST_HOLDS is set (only in tests)."""
    folder = os.environ.get("BNLAB_TEST_HOLDS")
    if not folder:
        return
    pid = os.getpid()
    _passes[pid, name] += 1
    events = os.path.join(folder, "events.log")
    if os.path.exists(events):
        with open(events, "a") as log:
            log.write(f"{name} {pid}\n")
    request = os.path.join(folder, name)
    try:
        with open(request) as armed:
            wanted = int(armed.read() or 1)
    except (FileNotFoundError, ValueError):
        return
    held = f"{request}.held-{pid}"
    if _passes[pid, name] < wanted:
        return
    try:
        os.rename(request, held)  # atomic: of several processes at this event, one holds
    except FileNotFoundError:
        return
    deadline = time.monotonic() + HOLD_LIMIT_SECONDS
    while os.path.exists(held) and time.monotonic() < deadline:
        time.sleep(0.01)
