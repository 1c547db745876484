"""Faults during work (RELIABILITY.md scenarios 1-3, 11, 13-17, 21, 22, and a deleted data cache).

Real wherever a fault can be made real: signals, a full tmpfs, RLIMIT_FSIZE, a read-only mount,
a killed Ray worker. The fault seam (bnlab/faults.py) aims only what nothing else can aim: a
SIGKILL at the n-th write point, an I/O error at the n-th IO call. After each fault the store
passes validate_store, nothing half-written is trusted, and after the fault is gone the resumed
store equals an uninterrupted reference sweep, file by file, wall-clock fields masked.

Crashes at every write point run in forked copies of this process (`forked`): a fork needs no
fresh torch import, so the ~70 crashes cost seconds, and each is still a real SIGKILL of a
separate process that left its files on a real filesystem.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    WAIT_SECONDS,
    Holds,
    assert_no_processes_left,
    read_results,
    require,
    sweep_command,
    write_dataset,
    write_spec,
)
from typer.testing import CliRunner

from bnlab import faults
from bnlab.cli import app
from bnlab.config.spec import Sweep, load_sweep
from bnlab.errors import RecordsError
from bnlab.records import SUMMARY, finished_run, validate_store
from bnlab.runs.executors import Group, execute
from bnlab.runs.runner import Trained, write_run
from bnlab.runs.sweep import SweepOptions, plan_groups, run_sweep

# Every sweep here trains with the same workers and threads, so all give the same numbers (22).
OPTIONS = SweepOptions(workers=1)  # one worker to spawn per sweep: most of a tiny sweep's cost
CLI = ("--workers", "1")


# --- the reference and the oracle ----------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    spec: Path
    sweep: Sweep
    store: Path  # the uninterrupted sweep's folder, runs/grid
    cache: Path  # $BNLAB_CACHE, holding the tiny dataset
    groups: list[Group]
    events: list[tuple[str, int]]  # (progress event, n): each event a process of the sweep passed n times


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    """4 runs in 2 stacks (one per BN placement), reading the tiny dataset from bnlab's cache so
    that deleting the cache is a fault too; the end state every faulted sweep below must reach."""
    base = tmp_path_factory.mktemp("faults")
    cache = base / "cache"
    write_dataset(cache / "mnist")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BNLAB_CACHE", str(cache))
        spec = write_spec(base, None, lrs="[0.01, 0.05]", seeds="[0]", epochs=1, racing=True)
        sweep = load_sweep(spec)
        holds = Holds()
        holds.clear()
        log = holds.record()
        state = run_sweep(sweep, base / "reference", OPTIONS)
        passes = [tuple(line.split()) for line in log.read_text().splitlines()]
        holds.clear()
        assert state.counts == {"done": 4, "diverged": 0, "failed": 0}
        groups = plan_groups(sweep.configs, OPTIONS.stack, OPTIONS.max_stack)
        assert [len(group.configs) for group in groups] == [2, 2]
        events = [(event, passes[: index + 1].count((event, pid))) for index, (event, pid) in enumerate(passes)]
        assert {event for event, _ in events} >= {"sweep.plan", "sweep.start", "sweep.run", "sweep.end",
                                                   "train.start", "train.epoch", "train.end"}
        yield Reference(spec, sweep, base / "reference" / "grid", cache, groups, events)


def _volatile(key: str) -> bool:
    # Wall-clock time and the commit (another checkout may commit while this runs): never results.
    return "second" in key or key in ("finished_at", "git_commit")


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: "<masked>" if _volatile(key) else _mask(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mask(item) for item in value]
    return value


def digest(folder: Path) -> dict[str, Any]:
    """Every file under a final name, as comparable data: JSON and CSV parsed and masked, any
    other file (weights, figures, YAML) by its SHA-256."""
    found: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or path.name.startswith("."):
            continue
        name = path.relative_to(folder).as_posix()
        if path.suffix == ".json":
            found[name] = _mask(json.loads(path.read_text()))
        elif path.suffix == ".csv":
            found[name] = _mask(read_results(path))
        else:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def copy_without(reference: Reference, dest: Path, group: Group) -> Path:
    """The reference sweep folder as a sweep killed before `group` finished may leave it: the
    other runs finished, no folder for `group`'s runs, no results.csv (rewritten at every start)."""
    shutil.copytree(reference.store, dest, ignore=shutil.ignore_patterns(*group.run_ids, "results.csv"))
    return dest


# --- processes, filesystems ----------------------------------------------------------------------


def forked(work: Callable[[], object], env: Mapping[str, str] | None = None,
           file_size_limit: int | None = None) -> tuple[int | None, str]:
    """Run `work` in a forked copy of this process, with the fault seam read from `env`.
    Returns (the signal that killed it or None, the error it raised or the text it returned)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        message, code = "", 0
        try:
            if file_size_limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
            faults.configure(env or {})
            result = work()
            message = result if isinstance(result, str) else ""
        except BaseException as err:  # noqa: BLE001 - the parent asserts on it
            message, code = f"{type(err).__name__}: {err}", 1
        finally:
            os.write(write_end, message.encode())
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    _, status = os.waitpid(pid, 0)
    return (os.WTERMSIG(status) if os.WIFSIGNALED(status) else None), message


def write_points(work: Callable[[], object], log: Path) -> list[tuple[str, str]]:
    """(point, path) of every write point `work` passes, in order: the seam's record mode."""
    assert forked(work, {"BNLAB_TEST_RECORD_IO": str(log)}) == (None, "")
    return [(name, path) for name, path in (line.split(" ", 1) for line in log.read_text().splitlines())]


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real filesystem of `size` bytes (as root): writes past it fail with ENOSPC."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True).returncode == 0
    require(mounted, "mounting a tmpfs (root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def free_bytes(where: Path) -> int:
    stats = os.statvfs(where)
    return stats.f_bavail * stats.f_frsize


# --- 2, 15, 17: every write point of a run folder --------------------------------------------------


@pytest.fixture(scope="module")
def trained(reference: Reference) -> list[Trained]:
    """The reference's first stack, trained in this process by the workers' own function."""
    records = execute(reference.groups[0])
    assert [record.status for record in records] == ["done", "done"]
    return records


@dataclass(frozen=True)
class RunWrites:
    record: Trained
    folder: Path  # written uninterrupted
    points: list[tuple[str, str]]  # every write point passed while writing it, in order


@pytest.fixture(scope="module")
def run_writes(trained: list[Trained], tmp_path_factory: pytest.TempPathFactory) -> RunWrites:
    base = tmp_path_factory.mktemp("run-writes")
    folder = base / "reference" / trained[0].config.run_id()
    points = write_points(partial(write_run, folder, trained[0]), base / "points.log")
    assert {name for name, _ in points} == set(faults.POINTS)
    return RunWrites(trained[0], folder, points)


def _summary_in_place(points: list[tuple[str, str]], index: int) -> bool:
    """Whether summary.json had been renamed into place when the writer stopped at points[index]."""
    return any(name == "after_replace_before_dir_fsync" and path.endswith(f"/{SUMMARY}")
               for name, path in points[: index + 1])


@pytest.mark.parametrize("point", faults.POINTS)
def test_a_sigkill_at_every_write_point_of_a_run_leaves_it_whole_or_visibly_unfinished(
        point: str, run_writes: RunWrites, tmp_path: Path) -> None:
    hits = [index for index, (name, _) in enumerate(run_writes.points) if name == point]
    for n, index in enumerate(hits, start=1):  # n = 1 .. last: every hit, not only the ends
        folder = tmp_path / f"hit{n}" / run_writes.folder.name
        folder.parent.mkdir()
        killed, _ = forked(partial(write_run, folder, run_writes.record), {"BNLAB_TEST_CRASH_AT": f"{point}:{n}"})
        where = (point, n, run_writes.points[index][1])
        assert killed == signal.SIGKILL, where
        assert validate_store(folder.parent) == [], where
        finished = finished_run(folder) is not None
        assert finished == _summary_in_place(run_writes.points, index), where
        if not finished:
            write_run(folder, run_writes.record)  # what a resumed sweep does with an unfinished run
        assert digest(folder) == digest(run_writes.folder), where
        assert not list(folder.rglob(".*.tmp")), where


@pytest.mark.parametrize("mode", ["", ":persistent"])
def test_an_io_error_at_every_call_fails_the_write_cleanly(mode: str, run_writes: RunWrites, tmp_path: Path) -> None:
    for n in range(1, len(run_writes.points) + 1):
        folder = tmp_path / f"call{n}" / run_writes.folder.name
        folder.parent.mkdir()
        faults.configure({"BNLAB_TEST_IOERROR_AT": f"{n}{mode}"})
        try:
            with pytest.raises(RecordsError) as raised:
                write_run(folder, run_writes.record)
        finally:
            faults.configure()
        failed_at = run_writes.points[n - 1][1].replace(str(run_writes.folder), str(folder))
        assert str(raised.value).startswith(f"{failed_at}: cannot ") and str(raised.value).endswith(
            ": Input/output error"), n
        assert validate_store(folder.parent) == [], n
        # An error at the point just after summary.json's rename finds the run already finished.
        assert (finished_run(folder) is not None) == _summary_in_place(run_writes.points, n - 1), n
        if finished_run(folder) is None:
            write_run(folder, run_writes.record)  # the retry: a plain resume
        assert digest(folder) == digest(run_writes.folder), n


def test_each_file_is_fsynced_then_renamed_then_its_folder_fsynced(
        reference: Reference, run_writes: RunWrites, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What SIGKILL tests cannot see (the OS keeps unsynced writes; a power cut does not), checked
    on the real calls: a spy records each os.fsync (by the path its fd points at) and os.replace."""
    calls: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        real_replace(src, dst)
        calls.append(("replace", os.path.realpath(src), os.path.realpath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = tmp_path / "runs" / "grid" / run_writes.folder.name
    write_run(run, run_writes.record)
    store = tmp_path / "sweep" / "grid"
    shutil.copytree(reference.store, store)
    run_sweep(reference.sweep, store.parent, OPTIONS)  # writes spec.yaml, sweep.json, results.csv
    monkeypatch.undo()

    renames = [index for index, call in enumerate(calls) if call[0] == "replace"]
    targets = [calls[index][2] for index in renames]
    written = [*(path for path in run.rglob("*") if path.is_file()),
               *(store / name for name in ("spec.yaml", "sweep.json", "results.csv"))]
    assert {os.path.realpath(path) for path in written} <= set(targets)
    for at, following in zip(renames, [*renames[1:], len(calls)], strict=True):
        _, temp, target = calls[at]
        assert ("fsync", temp) in calls[:at], f"{target}: renamed before its data was fsynced"
        assert ("fsync", os.path.dirname(target)) in calls[at + 1 : following], (
            f"{target}: its folder was not fsynced after the rename, before the next file")
    in_run = [target for target in targets if target.startswith(os.path.realpath(run) + os.sep)]
    assert in_run[-1] == os.path.realpath(run / SUMMARY)  # the run's last file: its proof of completion


# --- 2, 15: every write point of the sweep driver -------------------------------------------------


@pytest.fixture(scope="module")
def sweep_points(reference: Reference, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """The driver's write points on a finished sweep: the lock's pid file, spec.yaml, sweep.json,
    results.csv (no run is trained, so a crash costs milliseconds)."""
    base = tmp_path_factory.mktemp("sweep-points")
    shutil.copytree(reference.store, base / "grid")
    points = write_points(partial(run_sweep, reference.sweep, base, OPTIONS), base / "points.log")
    names = [Path(path).name for _, path in points]
    assert sorted(set(names)) == [".lock.pid", "results.csv", "spec.yaml", "sweep.json"]
    return [(name, path.replace(str(base), "<root>")) for name, path in points]


@pytest.mark.parametrize("point", faults.POINTS)
def test_a_sigkill_at_every_write_point_of_the_sweep_driver_resumes_to_the_reference(
        point: str, reference: Reference, sweep_points: list[tuple[str, str]], tmp_path: Path) -> None:
    hits = [path for name, path in sweep_points if name == point]
    for n, path in enumerate(hits, start=1):
        root = tmp_path / f"hit{n}"
        shutil.copytree(reference.store, root / "grid")
        killed, _ = forked(partial(run_sweep, reference.sweep, root, OPTIONS), {"BNLAB_TEST_CRASH_AT": f"{point}:{n}"})
        assert killed == signal.SIGKILL, (point, n, path)
        assert validate_store(root / "grid") == [], (point, n, path)
        again = run_sweep(reference.sweep, root, OPTIONS)
        assert (again.skipped, sum(again.counts.values())) == (4, 0)
        assert digest(root / "grid") == digest(reference.store), (point, n, path)
        assert not list(root.rglob(".*.tmp"))


def test_an_io_error_in_the_sweep_driver_is_one_line_exit_2_and_resumable(
        reference: Reference, sweep_points: list[tuple[str, str]], tmp_path: Path) -> None:
    for n, (_, path) in enumerate(sweep_points, start=1):
        root = tmp_path / f"call{n}"
        shutil.copytree(reference.store, root / "grid")
        faults.configure({"BNLAB_TEST_IOERROR_AT": str(n)})
        try:
            result = CliRunner().invoke(app, ["sweep", str(reference.spec), "--runs-dir", str(root), *CLI])
        finally:
            faults.configure()
        assert result.exit_code == 2, (n, result.output)
        assert result.stderr == f"error: {path.replace('<root>', str(root))}: cannot write: Input/output error\n"
        assert validate_store(root / "grid") == [], n
        run_sweep(reference.sweep, root, OPTIONS)
        assert digest(root / "grid") == digest(reference.store), n


# --- 1: SIGKILL of the whole sweep at random moments -----------------------------------------------


def test_random_sigkills_of_the_sweep_lose_nothing_and_redo_nothing(reference: Reference, tmp_path: Path,
                                                                     holds: Holds) -> None:
    """A random moment is a random progress event of the driver or its worker, chosen from those an
    uninterrupted sweep passes, held there and then killed: the first start always dies mid-work,
    however fast the machine; the second dies if what is left still reaches its event."""
    rng = random.Random(1)
    root = tmp_path / "runs"
    store = root / "grid"
    kept: dict[str, bytes] = {}  # run id -> summary.json, once finished
    kills = 0
    for attempt in range(1, 4):
        event, n = rng.choice(reference.events) if attempt <= 2 else (None, 0)  # then a start that runs to the end
        if event:
            holds.arm(event, n)
        process = subprocess.Popen(sweep_command(reference.spec, root, *CLI), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
        if event and holds.wait(event, process) is not None:
            os.killpg(process.pid, signal.SIGKILL)  # the driver and its worker
            kills += 1
        _, stderr = process.communicate(timeout=WAIT_SECONDS)
        holds.clear()
        assert process.returncode in (0, -signal.SIGKILL), stderr
        assert_no_processes_left(process.pid)
        assert validate_store(store) == [], attempt
        finished = {folder.name: (folder / SUMMARY).read_bytes() for folder in store.iterdir()
                    if folder.is_dir() and finished_run(folder) is not None}
        assert kept.items() <= finished.items(), attempt  # nothing lost, nothing finished twice
        kept = finished
        if process.returncode == 0:
            break
    assert kills >= 1 and process.returncode == 0
    assert digest(store) == digest(reference.store)


# --- 11, 22: two sweeps started together; the determinism gate -------------------------------------


def test_two_sweeps_started_together_one_is_refused_the_other_reproduces_the_reference(
        reference: Reference, tmp_path: Path, holds: Holds) -> None:
    """The winner is also the determinism gate, what makes "equals the reference" a test at all: an
    uninterrupted CLI sweep reproduces the in-process reference file for file (same workers,
    threads and stacks), wall clock aside."""
    root = tmp_path / "runs"
    holds.arm("sweep.plan")  # whichever takes the lock first keeps it, held, until the other is refused
    both = [subprocess.Popen(sweep_command(reference.spec, root, *CLI), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True) for _ in range(2)]
    try:
        winner_pid = holds.wait("sweep.plan")
        winner = next(process for process in both if process.pid == winner_pid)
        loser = next(process for process in both if process is not winner)
        _, refused = loser.communicate(timeout=WAIT_SECONDS)
        assert loser.returncode == 2
        assert refused == (f"error: {root / 'grid'}: another bnlab sweep (pid {winner.pid}) is "
                           "running on this folder; wait for it to finish or stop it\n")
        holds.release("sweep.plan")
        _, stderr = winner.communicate(timeout=WAIT_SECONDS)
        assert winner.returncode == 0, stderr
    finally:
        for process in both:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert validate_store(root / "grid") == []
    assert digest(root / "grid") == digest(reference.store)


# --- 13, 14, 16: a full disk, a file size limit, a read-only disk ------------------------------------


def test_a_full_disk_stops_the_sweep_naming_the_file_and_loses_nothing(reference: Reference, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        store = copy_without(reference, disk / "grid", reference.groups[1])
        kept = digest(store)
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (free_bytes(disk) - 48 * 1024))  # room for a few small files, not a run
        process = subprocess.Popen(sweep_command(reference.spec, disk, *CLI), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        _, stderr = process.communicate(timeout=WAIT_SECONDS)
        assert process.returncode == 2, stderr
        assert "Traceback" not in stderr
        assert re.fullmatch(rf"error: {re.escape(str(store))}/\w+/[\w/.]+: cannot write: No space left on device",
                            stderr.splitlines()[-1]), stderr
        assert_no_processes_left(process.pid)
        assert validate_store(store) == []
        assert {name: value for name, value in digest(store).items() if name in kept} == kept  # old files intact
        filler.unlink()  # free the space, then resume
        run_sweep(reference.sweep, disk, OPTIONS)
        assert digest(store) == digest(reference.store)
        assert not list(store.rglob(".*.tmp"))


def test_a_full_disk_while_writing_a_run_leaves_no_partial_file(run_writes: RunWrites, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "64k") as disk:
        folder = disk / "grid" / run_writes.folder.name
        with pytest.raises(RecordsError) as raised:
            write_run(folder, run_writes.record)
        assert re.fullmatch(rf"{re.escape(str(folder))}/[\w/.]+: cannot write: No space left on device",
                            str(raised.value))
        assert validate_store(folder.parent) == []
        assert not Path(str(raised.value).split(":")[0]).exists()  # the file that did not fit
        assert finished_run(folder) is None
        remount(disk, "size=2m")  # a bigger disk: the retry finishes
        write_run(folder, run_writes.record)
        assert digest(folder) == digest(run_writes.folder)


def test_a_file_size_limit_fails_the_write_naming_the_file(reference: Reference, run_writes: RunWrites,
                                                          tmp_path: Path) -> None:
    # CPython ignores SIGXFSZ, so a write past RLIMIT_FSIZE raises EFBIG after a partial write.
    # The limit is set in a forked child (like Popen's preexec_fn, without a fresh torch import).
    store = tmp_path / "runs" / "grid"
    shutil.copytree(reference.store, store)
    small, large = ((store / name).stat().st_size for name in ("spec.yaml", "sweep.json"))
    limit = (small + large) // 2  # the pid file and spec.yaml fit; sweep.json does not
    assert small < limit < large

    def sweep() -> str:
        result = CliRunner().invoke(app, ["sweep", str(reference.spec), "--runs-dir", str(store.parent), *CLI])
        return f"exit {result.exit_code}: {result.stderr}"

    assert forked(sweep, file_size_limit=limit) == (
        None, f"exit 2: error: {store / 'sweep.json'}: cannot write: File too large\n")
    assert validate_store(store) == [] and not list(store.rglob(".*.tmp"))
    assert digest(store) == digest(reference.store)  # the old sweep.json stands

    # A run's big files (figure, weights) past the limit, in a child process under it.
    folder = tmp_path / "run" / run_writes.folder.name
    killed, message = forked(partial(write_run, folder, run_writes.record), file_size_limit=20_000)
    assert killed is None
    match = re.fullmatch(rf"RecordsError: ({re.escape(str(folder))}/[\w/.]+): cannot write: File too large", message)
    assert match, message
    assert not Path(match[1]).exists() and validate_store(folder.parent) == []
    write_run(folder, run_writes.record)
    assert digest(folder) == digest(run_writes.folder)


def test_a_read_only_disk_is_refused_before_anything_trains(reference: Reference, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        remount(disk, "ro")
        result = CliRunner().invoke(app, ["sweep", str(reference.spec), "--runs-dir", str(disk), *CLI])
        assert result.exit_code == 2
        assert result.stderr == f"error: {disk / 'grid'}: cannot create the sweep folder: Read-only file system\n"

        remount(disk, "rw")
        store = copy_without(reference, disk / "grid", reference.groups[1])
        kept = digest(store)
        remount(disk, "ro")  # an existing sweep whose disk went read-only
        result = CliRunner().invoke(app, ["sweep", str(reference.spec), "--runs-dir", str(disk), *CLI])
        assert result.exit_code == 2
        assert result.stderr == f"error: {store / '.lock'}: cannot lock the sweep folder: Read-only file system\n"
        assert validate_store(store) == [] and digest(store) == kept


# --- the data cache deleted between two sweeps ------------------------------------------------------


def test_a_deleted_data_cache_refuses_the_next_sweep_before_it_writes(reference: Reference, tmp_path: Path) -> None:
    store = copy_without(reference, tmp_path / "runs" / "grid", reference.groups[1])
    kept = digest(store)
    shutil.rmtree(reference.cache / "mnist")
    try:
        result = CliRunner().invoke(app, ["sweep", str(reference.spec), "--runs-dir", str(store.parent), *CLI])
    finally:
        write_dataset(reference.cache / "mnist")  # the same bytes: the files are seeded, gzip without mtime
    assert result.exit_code == 2
    assert result.stderr.startswith("error: mnist: no copy found and the download failed (train-images-idx3-ubyte, ")
    assert len(result.stderr.splitlines()) == 1
    assert digest(store) == kept and validate_store(store) == []  # nothing written, nothing recorded failed
    run_sweep(reference.sweep, store.parent, OPTIONS)
    assert digest(store) == digest(reference.store)


# --- 3, 21: a killed Ray worker --------------------------------------------------------------------


def test_a_killed_ray_worker_fails_only_its_group(reference: Reference, tmp_path: Path, local_ray: Any,
                                                 holds: Holds) -> None:
    killed: list[int] = []

    def kill_the_held_task() -> None:
        pid = holds.wait("train.start")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    holds.arm("train.start")  # the first Ray task to start training holds there
    watcher = threading.Thread(target=kill_the_held_task, daemon=True)
    watcher.start()
    on_ray = SweepOptions(executor="ray", workers=OPTIONS.workers)
    state = run_sweep(reference.sweep, tmp_path / "runs", on_ray)
    watcher.join(timeout=WAIT_SECONDS)
    assert len(killed) == 1
    assert state.counts == {"done": 2, "diverged": 0, "failed": 2}  # the killed stack, both its runs
    assert len(state.failures) == 2
    assert all(error.startswith("Ray task failed: WorkerCrashedError: ") for error in state.failures.values())
    store = tmp_path / "runs" / "grid"
    assert validate_store(store) == []
    again = run_sweep(reference.sweep, tmp_path / "runs",
                      SweepOptions(executor="ray", workers=OPTIONS.workers, retry_failed=True))
    assert (again.skipped, again.counts["done"]) == (2, 2)
    assert digest(store) == digest(reference.store)
