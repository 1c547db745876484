"""Running a sweep: plan groups, skip finished runs, execute, write each run as it comes back.

The sweep folder runs/<name>/ holds the spec as given (spec.yaml), the resolved base
(sweep.json), one run folder per run, and results.csv. Only this driver writes there, under a
file lock: a second sweep on the same folder is refused, and a lock left by a killed sweep is
released by the operating system with its process.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnlab import faults
from bnlab.config import Config, cell_values, changed_fields
from bnlab.config.spec import Sweep
from bnlab.errors import BnlabError, ConfigError, RecordsError
from bnlab.records import (
    LOCK,
    LOCK_PID,
    inspect_run,
    read_sweep_record,
    remove_temps,
    result_row,
    runs_dir,
    write_file,
    write_results,
    write_sweep_start,
)
from bnlab.runs.executors import Group, LocalExecutor, RayExecutor, import_ray

DEFAULT_MAX_STACK = 10
MIN_STACK = 4  # a bucket is split for parallelism only into stacks at least this big
MIN_STACKS = 2


class SweepLocked(BnlabError):
    """Another sweep holds the folder."""


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class SweepOptions:
    executor: str = "local"  # local | ray
    workers: int | None = None  # None: chosen for this machine (see plan_workers)
    address: str | None = None
    stack: str = "auto"  # auto | off
    max_stack: int = DEFAULT_MAX_STACK
    retry_failed: bool = False
    force: bool = False  # redo runs whose config.yaml was edited (records.check_not_edited)


@dataclass
class SweepState:
    """What the driver knows while a sweep runs; the progress views read it."""

    sweep: Sweep
    total: int
    counts: dict[str, int] = field(default_factory=lambda: {"done": 0, "diverged": 0, "failed": 0})
    skipped: int = 0
    running: set[str] = field(default_factory=set)
    status: dict[str, str] = field(default_factory=dict)  # run id -> done | diverged | failed | running
    failures: dict[str, str] = field(default_factory=dict)  # run id -> error
    damaged: dict[str, str] = field(default_factory=dict)  # run id -> why its finished-looking folder is redone
    seconds_per_run: list[float] = field(default_factory=list)


Event = Callable[[str, SweepState, Any], None]


# --- planning ------------------------------------------------------------------------------------


def plan_groups(configs: Sequence[Config], stack: str, max_stack: int) -> list[Group]:
    """Deterministic groups, a function of the spec alone (never of what is finished or of the
    worker count), so a resumed sweep trains every run in the same company: the same numbers.

    Runs that can share a stack are ordered by (lr, weight decay, momentum, run id), so a stack
    holds few distinct optimizer groups (each costs 5-10% per step), and cut into near-equal
    stacks of at most `max_stack`; a bucket of 8 or more makes at least 2 stacks, so both cores
    of a small machine get one."""
    ordered = sorted(configs, key=Config.run_id)
    if stack == "off" or max_stack <= 1:
        return [Group((cfg,), stacked=False) for cfg in ordered]
    if stack != "auto":
        raise ConfigError(f"--stack: {stack!r} is not allowed; allowed: auto, off")
    from bnlab.engine.compatible import stack_key, stackable

    buckets: dict[Any, list[Config]] = {}
    groups = [Group((cfg,), stacked=False) for cfg in ordered if not stackable(cfg)]
    for cfg in ordered:
        if stackable(cfg):
            buckets.setdefault(stack_key(cfg), []).append(cfg)
    for members in buckets.values():
        members.sort(key=lambda c: (c.train.lr, c.train.weight_decay, c.train.momentum, c.run_id()))
        count = max(math.ceil(len(members) / max_stack), min(len(members) // MIN_STACK, MIN_STACKS))
        size = math.ceil(len(members) / count)
        for start in range(0, len(members), size):
            chunk = tuple(members[start : start + size])
            groups.append(Group(chunk, stacked=len(chunk) > 1))
    return sorted(groups, key=lambda group: group.run_ids[0])


def plan_workers(options: SweepOptions) -> tuple[int, int]:
    """(worker processes, torch threads each): one single-threaded process per core, measured
    faster here than one process with a thread per core, with stacks or without (docs/stacked.md:
    two threads of one process also collapse when another process holds a core)."""
    cores = os.cpu_count() or 1
    workers = max(1, options.workers) if options.workers is not None else cores
    return workers, max(1, cores // workers)


def estimate_seconds(cfg: Config, n_train: int = 55000) -> float:
    """A rough solo-run time for --dry-run: per-step overhead plus matmul work at a modest
    CPU rate (measured on a 2-core laptop-class machine; a guide, not a promise)."""
    widths = [784, *cfg.model.hidden, 10]
    flops_per_sample = 6 * sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    steps = cfg.train.steps or math.ceil((n_train if cfg.data.train_subset is None else cfg.data.train_subset)
                                         / cfg.train.batch_size) * cfg.train.epochs
    return steps * (0.0012 + cfg.train.batch_size * flops_per_sample / 25e9)


# --- the sweep folder ------------------------------------------------------------------------------


def sweep_folder(sweep: Sweep, root: str | Path | None) -> Path:
    return runs_dir(root) / sweep.name


def check_base_unchanged(folder: Path, sweep: Sweep) -> None:
    """Refuse a changed `base` for an existing sweep: its finished runs would no longer be
    comparable with the new ones. Grid axes (old or new) may change freely."""
    record = read_sweep_record(folder)
    if record is None:
        return
    old_base, old_axes = record.base, set(record.axes)
    changed = [name for name in changed_fields(old_base, sweep.base)
               if name not in old_axes and name not in sweep.axes]
    if changed:
        first = changed[0]
        old_value, new_value = (cell_values(cfg, [first])[first] for cfg in (old_base, sweep.base))
        more = f" (and {', '.join(changed[1:])})" if len(changed) > 1 else ""
        raise ConfigError(
            f"{folder}: base field {first} changed ({old_value!r} -> {new_value!r}){more} since this sweep "
            "started; keep it, or give the spec a new name: to start a new sweep"
        )


class _Lock:
    """filelock's lock (an OS-level flock, so a SIGKILLed holder releases it), plus the pid of
    the holder for the message."""

    def __init__(self, folder: Path) -> None:
        from filelock import FileLock

        self.folder = folder
        self.lock = FileLock(folder / LOCK)
        self.pid_file = folder / LOCK_PID

    def __enter__(self) -> _Lock:
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise SweepLocked(f"{self.folder}: another bnlab sweep (pid {self._holder()}) is running on this "
                              "folder; wait for it to finish or stop it") from None
        except OSError as err:  # a read-only or full filesystem: the sweep could write nothing there
            raise RecordsError(f"{self.lock.lock_file}: cannot lock the sweep folder: {err.strerror or err}") from None
        try:
            write_file(self.pid_file, str(os.getpid()).encode())  # atomic: a reader never sees half a pid
        except RecordsError:
            self.lock.release()
            raise
        return self

    def _holder(self) -> str:
        """The holder writes its pid just after it takes the lock, so a sweep started at the same
        moment can look before it is there, or see the pid a killed holder left: wait for the pid
        of a live process, up to 10 s on a loaded machine, usually milliseconds."""
        for _ in range(400):
            try:
                pid = int(self.pid_file.read_text())
                os.kill(pid, 0)
                return str(pid)
            except (ProcessLookupError, FileNotFoundError, ValueError):
                time.sleep(0.025)
            except OSError:  # alive but another user's, or a pid file this user cannot read
                break
        return "unknown"

    def __exit__(self, *exc: object) -> None:
        self.pid_file.unlink(missing_ok=True)
        self.lock.release()


# --- running -------------------------------------------------------------------------------------


def existing_runs(sweep: Sweep, folder: Path, options: SweepOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """What is already in the sweep folder: (summaries of the finished runs to keep, by run id;
    why each finished-looking but damaged run will be redone). Raises before anything is
    written for an edited config.yaml (unless --force) and for a record that cannot be read (the
    run may be whole). The sweep and --dry-run both ask here, so the plan is what will run."""
    finished: dict[str, Any] = {}
    damaged: dict[str, str] = {}
    for cfg in sweep.configs:
        summary, damage = inspect_run(folder / cfg.run_id(), cfg, options.force)
        if damage is not None:
            damaged[cfg.run_id()] = damage
        if summary is not None and not (options.retry_failed and summary.status == "failed"):
            finished[cfg.run_id()] = summary.summary
    return finished, damaged


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def run_sweep(sweep: Sweep, root: str | Path | None = None, options: SweepOptions | None = None,
              on_event: Event | None = None) -> SweepState:
    """Run every unfinished run of `sweep`; returns the final state. Raises Interrupted on
    SIGINT/SIGTERM after stopping workers (finished runs are kept)."""
    from bnlab.data import locate
    from bnlab.engine.device import resolve_device
    from bnlab.runs.runner import write_run

    options = options or SweepOptions()
    notify = on_event or (lambda kind, state, payload: None)

    def emit(kind: str, state: SweepState, payload: Any) -> None:
        faults.hold(f"sweep.{kind}")
        notify(kind, state, payload)

    for device in {cfg.device for cfg in sweep.configs}:
        resolve_device(device)  # a missing device is bad input: refuse before anything runs
    if options.executor not in ("local", "ray"):
        raise ConfigError(f"--executor: {options.executor!r} is not allowed; allowed: local, ray")
    if options.executor == "ray":
        import_ray()  # says how to install it, before anything is planned or written
    folder = sweep_folder(sweep, root)
    check_base_unchanged(folder, sweep)
    groups = plan_groups(sweep.configs, options.stack, options.max_stack)
    workers, threads = plan_workers(options)
    executor = (RayExecutor(options.address, threads) if options.executor == "ray"
                else LocalExecutor(workers, threads))

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RecordsError(f"{folder}: cannot create the sweep folder: {err.strerror or err}") from None
    with _Lock(folder):
        check_base_unchanged(folder, sweep)
        state = SweepState(sweep, total=len(sweep.configs))
        rows: dict[str, dict[str, Any]] = {}
        finished, state.damaged = existing_runs(sweep, folder, options)
        for cfg in sweep.configs:
            if cfg.run_id() in finished:
                rows[cfg.run_id()] = result_row(finished[cfg.run_id()], cfg, sweep)
                state.status[cfg.run_id()] = finished[cfg.run_id()]["status"]
                state.skipped += 1
        todo = [group for group in groups if any(run_id not in finished for run_id in group.run_ids)]
        for data in {group.configs[0].data for group in todo}:
            # Once here, not in every worker: a dataset that went missing (a cleared cache, an
            # unmounted data.root) refuses the sweep before it writes, instead of failing each run.
            locate(data)
        remove_temps(folder)  # left by a killed sweep; under the lock no other writer is in flight
        write_sweep_start(folder, sweep)
        write_results(folder, rows)
        emit("plan", state, {"groups": todo, "workers": workers, "threads": threads})

        def on_start(group: Group) -> None:
            state.running |= {run_id for run_id in group.run_ids if run_id not in finished}
            for run_id in state.running:
                state.status[run_id] = "running"
            emit("start", state, group)

        def on_done(group: Group, records: list[Any]) -> None:
            recorded = []
            for record in records:
                run_id = record.config.run_id()
                if run_id in finished:
                    continue  # trained again only as a member of its stack; its record stands
                summary = write_run(folder / run_id, record)
                recorded.append(summary)
                finished[run_id] = summary
                rows[run_id] = result_row(summary, record.config, sweep)
                state.running.discard(run_id)
                state.status[run_id] = summary["status"]
                state.counts[summary["status"]] += 1
                if summary["status"] == "failed":
                    state.failures[run_id] = summary.get("error") or ""
                if record.result is not None:
                    state.seconds_per_run.append(record.result.timings["seconds_total"] / record.stack_size)
            # results.csv first: a sweep stopped at a "run" event (Ctrl-C in a progress redraw)
            # has already listed every run it announces.
            write_results(folder, rows)
            for summary in recorded:
                emit("run", state, summary)

        previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            executor.run(todo, on_start, on_done)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    emit("end", state, None)
    return state


def describe_plan(sweep: Sweep, root: str | Path | None, options: SweepOptions) -> str:
    """What --dry-run prints: counts, what varies, the stack plan, the executor, a time estimate."""
    groups = plan_groups(sweep.configs, options.stack, options.max_stack)
    folder = sweep_folder(sweep, root)
    finished, damaged = existing_runs(sweep, folder, options)
    todo = [group for group in groups if any(run_id not in finished for run_id in group.run_ids)]
    workers, threads = plan_workers(options)
    cells = len(sweep.configs) // len(sweep.seeds)
    lines = [f"sweep {sweep.name}: {len(sweep.configs)} runs ({cells} cell(s) x {len(sweep.seeds)} seed(s)); "
             f"{len(finished)} already finished, {len(sweep.configs) - len(finished)} to run, in {folder}"]
    lines += [f"  redo damaged {run_id}: {problem}" for run_id, problem in sorted(damaged.items())]
    lines += [f"  varies {axis}: {values}" for axis, values in sweep.axes.items()]
    lines.append(f"  seeds: {sweep.seeds}")
    sizes = sorted((len(group.configs) for group in todo), reverse=True)
    stacked = sum(size for size in sizes if size > 1)
    lines.append(f"  groups to train: {len(todo)} ({stacked} run(s) in {sum(s > 1 for s in sizes)} stack(s) of "
                 f"sizes {[s for s in sizes if s > 1]}, {sum(s == 1 for s in sizes)} solo)")
    for group in todo:
        lines.append(f"    {'stack' if group.stacked else 'solo '} {len(group.configs):2d}: {' '.join(group.run_ids)}")
    # A stack of K costs about K/1.4 solo runs on a small CPU (docs/stacked.md); a guide only.
    seconds = sum(estimate_seconds(group.configs[0]) * (len(group.configs) / 1.4 if group.stacked else 1)
                  for group in todo) / workers
    where = f"Ray ({options.address or 'a local instance'})" if options.executor == "ray" else "local"
    lines.append(f"  executor: {where}, {workers} worker(s) x {threads} thread(s); estimate ~{seconds / 60:.1f} min")
    return "\n".join(lines)
