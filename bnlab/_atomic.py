"""The one atomic file write: readers see the old file or the whole new one, never part of one.

Below every wing that writes (data's download cache, records' run and sweep folders, the
report): each file goes to a temporary name in its folder, is flushed and fsynced, renamed
into place, and the folder fsynced (a SIGKILL cannot catch a missing fsync, a power cut can).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bnlab import faults

TEMP_SUFFIX = ".tmp"  # temp files are .<name>.<random>.tmp, beside their target


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


def temp_files(folder: Path) -> list[Path]:
    """The temp files killed writers left anywhere under `folder`."""
    return sorted(folder.rglob(f".*{TEMP_SUFFIX}"))
