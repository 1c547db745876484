"""Where a sweep's groups of runs execute: worker processes on this machine, or a Ray cluster.

Executors only train and hand back `Trained` records; the sweep driver alone writes the sweep
folder, so workers need no shared filesystem and a killed worker never leaves a half-written run.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from bnlab.config import Config, DataConfig
from bnlab.errors import BnlabError

OnStart = Callable[["Group"], None]
OnDone = Callable[["Group", list[Any]], None]


@dataclass(frozen=True)
class Group:
    """Runs that train together: one stacked model, or a single solo run."""

    configs: tuple[Config, ...]
    stacked: bool

    @property
    def run_ids(self) -> list[str]:
        return [cfg.run_id() for cfg in self.configs]


def failed(group: Group, error: str, trace: str | None = None) -> list[Any]:
    from bnlab.runs.runner import Trained

    dataset = {"name": group.configs[0].data.dataset}
    return [Trained(cfg, None, b"", dataset, _engine(group), len(group.configs), error, trace)
            for cfg in group.configs]


def _engine(group: Group) -> str:
    return "stacked" if group.stacked else "solo"


# --- the work itself (runs in a worker process or a Ray worker) --------------------------------

# One worker trains many runs on the same data: keep the last tensors, keyed by what shapes them.
_splits_cache: dict[tuple[Any, ...], Any] = {}


def execute(group: Group, raw: Any = None) -> list[Any]:
    """Train one group; every exception becomes `failed` records, never a dead worker."""
    try:
        from bnlab.data import load_raw
        from bnlab.data.tensors import to_splits
        from bnlab.engine.device import resolve_device
        from bnlab.engine.train import train
        from bnlab.runs.runner import trained

        first = group.configs[0]
        device = resolve_device(first.device)
        raw = raw if raw is not None else load_raw(first.data)
        key = (id(raw), first.data, str(device))
        if key not in _splits_cache:
            _splits_cache.clear()
            _splits_cache[key] = to_splits(raw, first.data, device)
        splits = _splits_cache[key]
        if group.stacked:
            from bnlab.engine.stacked import train_stack

            results = train_stack(list(group.configs), splits)
        else:
            results = [train(first, splits)]
        return [trained(cfg, result, splits, _engine(group), len(group.configs))
                for cfg, result in zip(group.configs, results, strict=True)]
    except Exception as err:  # noqa: BLE001 - a run's failure is data for its record
        return failed(group, f"{type(err).__name__}: {err}", traceback.format_exc())


# --- local worker processes --------------------------------------------------------------------


def start_method(groups: Sequence[Group], threads: int) -> str:
    """fork where it is safe, else spawn. A spawned worker imports torch and bnlab afresh, 3.5-4 s
    per worker here (an eighth of a 20-run batch-128 sweep); a forked one starts with the driver's.
    fork is unsafe on macOS (system frameworks), for a child that would use CUDA after the driver
    touched it, and for a child that runs OpenMP with more than one thread after the driver did (GNU
    libgomp's pool does not survive fork). One-thread CPU children are torch's DataLoader workers' case."""
    if not sys.platform.startswith("linux") or threads != 1:
        return "spawn"
    from bnlab.engine.device import resolve_device

    devices = {group.configs[0].device for group in groups}
    on_cpu = all(device == "cpu" or (device == "auto" and resolve_device(device).type == "cpu") for device in devices)
    return "fork" if on_cpu else "spawn"


def _die_with_driver(driver_pid: int) -> None:
    """A worker of a killed driver stops at once (Linux), instead of finishing its group for nobody
    while holding the sweep folder's lock, which a forked worker inherits."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != driver_pid:  # the driver died before prctl took effect
        os._exit(1)


def _worker_main(conn: Connection, threads: int, driver_pid: int) -> None:
    # The driver owns Ctrl-C and SIGTERM: it stops workers itself after telling the user what was
    # kept (a forked worker inherits the driver's handlers: reset them).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_driver(driver_pid)
    import torch

    torch.set_num_threads(threads)
    while True:
        group = conn.recv()
        if group is None:
            # Every result is already sent: skip the interpreter's teardown of torch and
            # matplotlib, measured at 0.5-1.8 s of the driver waiting in join() at each sweep's end.
            os._exit(0)
        conn.send(execute(group))


class _Worker:
    def __init__(self, context: Any, threads: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, threads, os.getpid()), daemon=True)
        self.process.start()
        child.close()


def _death_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"worker process killed by signal {-exitcode} ({signal.Signals(-exitcode).name})"
    return f"worker process exited with code {exitcode}"


class LocalExecutor:
    """`workers` processes with `threads` torch threads each; a worker that dies takes only its
    own group with it (recorded as failed) and is replaced."""

    def __init__(self, workers: int, threads: int) -> None:
        self.workers = workers
        self.threads = threads

    def run(self, groups: Sequence[Group], on_start: OnStart, on_done: OnDone) -> None:
        import multiprocessing

        context = multiprocessing.get_context(start_method(groups, self.threads))
        pending = deque(groups)
        pool = [_Worker(context, self.threads) for _ in range(min(self.workers, len(groups)))]
        idle = list(pool)
        busy: dict[_Worker, Group] = {}
        try:
            while pending or busy:
                while idle and pending:
                    worker, group = idle.pop(), pending.popleft()
                    worker.conn.send(group)
                    busy[worker] = group
                    on_start(group)
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for worker in [w for w in list(busy) if w.conn in ready or w.process.sentinel in ready]:
                    group = busy.pop(worker)
                    records = self._receive(worker)
                    if records is None:
                        worker.process.join()
                        records = failed(group, _death_message(worker.process.exitcode))
                        pool.remove(worker)
                        worker = _Worker(context, self.threads)
                        pool.append(worker)
                    idle.append(worker)
                    on_done(group, records)
        finally:
            self._stop(pool)

    @staticmethod
    def _receive(worker: _Worker) -> list[Any] | None:
        try:
            if worker.conn.poll():
                return worker.conn.recv()
        except (EOFError, OSError):
            pass
        return None

    @staticmethod
    def _stop(pool: list[_Worker]) -> None:
        for worker in pool:
            if worker.process.is_alive():
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        for worker in pool:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()


# --- Ray -----------------------------------------------------------------------------------------


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BnlabError(
            "--executor ray: Ray is not installed; install it with pip install \"bnlab[ray]\" "
            "or use --executor local"
        ) from None
    return ray


class RayExecutor:
    """Groups as Ray tasks. The driver loads and verifies each dataset once and puts it in Ray's
    object store, so workers never read files; results come back to the driver."""

    def __init__(self, address: str | None, threads: int, max_in_flight: int | None = None) -> None:
        self.ray = import_ray()
        self.address = address
        self.threads = threads
        self.max_in_flight = max_in_flight

    def run(self, groups: Sequence[Group], on_start: OnStart, on_done: OnDone) -> None:
        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            self._init()
        try:
            self._run(groups, on_start, on_done)
        finally:
            if started_here:
                ray.shutdown()

    def _init(self) -> None:
        ray = self.ray
        if self.address:
            try:
                ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise BnlabError(f"--address {self.address}: cannot join a Ray cluster there: {err}") from None
        else:
            # A local instance: loopback only, no usage reporting.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False)

    def _run(self, groups: Sequence[Group], on_start: OnStart, on_done: OnDone) -> None:
        from bnlab.data import load_raw

        ray = self.ray
        raw_refs: dict[DataConfig, Any] = {}
        for group in groups:
            data = group.configs[0].data
            if data not in raw_refs:
                raw_refs[data] = ray.put(load_raw(data))
        remote = ray.remote(_ray_execute).options(num_cpus=self.threads, max_retries=0)
        capacity = self.max_in_flight or max(1, int(ray.cluster_resources().get("CPU", 1) // self.threads))
        pending = deque(groups)
        in_flight: dict[Any, Group] = {}
        while pending or in_flight:
            while pending and len(in_flight) < capacity:
                group = pending.popleft()
                in_flight[remote.remote(group, raw_refs[group.configs[0].data], self.threads)] = group
                on_start(group)
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                group = in_flight.pop(ref)
                try:
                    records = ray.get(ref)
                except ray.exceptions.RayError as err:
                    records = failed(group, f"Ray task failed: {type(err).__name__}: {str(err).splitlines()[0]}")
                on_done(group, records)


def _ray_execute(group: Group, raw: Any, threads: int) -> list[Any]:
    import torch

    torch.set_num_threads(threads)
    return execute(group, raw)
