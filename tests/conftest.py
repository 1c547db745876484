"""Tiny real datasets: a few hundred seeded images written as real IDX files, so the real parser
and real training steps run on CPU in seconds."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Tests never fall through to the user's cache, Debian's copy or the network by accident.
os.environ.setdefault("BNLAB_CACHE", "/nonexistent-bnlab-cache-for-tests")
os.environ["BNLAB_NO_NPM"] = "1"
os.environ["BNLAB_MIRRORS"] = "http://127.0.0.1:9/"  # the discard port: refused at once
os.environ.pop("BNLAB_DATA", None)
os.environ.pop("BNLAB_RUNS", None)
# The holds folder (bnlab/faults.py) is named before any process starts, the session's Ray
# instance included, so every process a test starts or reuses checks it.
HOLDS = Path(tempfile.mkdtemp(prefix="bnlab-holds-"))
os.environ["BNLAB_TEST_HOLDS"] = str(HOLDS)
# A wait for a held process or a lock bounds how long a test can hang; it never decides an outcome.
WAIT_SECONDS = 240

TINY_TRAIN = 400
TINY_TEST = 200


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def require(available: bool, what: str) -> None:
    """Skip a test whose outside resource is missing on a developer's machine; in CI, where
    .ci/run provides it, its absence is a failure, never a silent skip."""
    if not available:
        if in_ci():
            pytest.fail(f"{what} is missing, and CI must provide it")
        pytest.skip(f"{what} is missing here")


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """IDX: big-endian magic (0x0000, dtype 0x08 = uint8, ndim), the dims, then raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        # mtime=0 keeps the bytes, and so any hash of the .gz, identical from run to run.
        path.write_bytes(gzip.compress(payload, mtime=0))
    else:
        path.write_bytes(payload)
    return path


def make_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 images: each class lights its own block of pixels, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.int32)
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        images[index, 2 + row * 12 : 2 + row * 12 + 10, 1 + col * 5 : 1 + col * 5 + 5] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_dataset(folder: Path, compress: bool = True, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = make_images(TINY_TRAIN, seed)
    test_images, test_labels = make_images(TINY_TEST, seed + 1)
    write_idx(folder / "train-images-idx3-ubyte", train_images, compress)
    write_idx(folder / "train-labels-idx1-ubyte", train_labels, compress)
    write_idx(folder / "t10k-images-idx3-ubyte", test_images, compress)
    write_idx(folder / "t10k-labels-idx1-ubyte", test_labels, compress)
    return folder


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root in torchvision's layout: ROOT/MNIST/raw/*.gz."""
    root = tmp_path_factory.mktemp("tiny-data")
    write_dataset(root / "MNIST" / "raw")
    return root


@pytest.fixture(scope="session")
def local_ray() -> Iterator[Any]:
    """One real local Ray instance for the whole session (ray.init twice in a process fails), on
    loopback only and with no usage reporting: tests send traffic to 127.0.0.1 and nowhere else."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'bnlab[ray]')")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def tiny_config(tmp_path: Path, tiny_mnist: Path) -> Path:
    """A config that trains in about a second on the tiny dataset."""
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"""\
name: tiny
device: cpu
data: {{dataset: mnist, root: '{tiny_mnist}', val_size: 100, verify: false}}
model: {{hidden: [32, 16], bn: after}}
train: {{epochs: 2, batch_size: 32, lr: 0.01, log_every: 5}}
eval: {{batch_sizes: [50]}}
"""
    )
    return path


class Holds:
    """Arm, await and release holds at progress events (bnlab/faults.py): a test acts on a sweep,
    worker or run while it waits at a known point, however fast or slow the machine trains."""

    def arm(self, event: str, n: int = 1) -> None:
        """The first process to pass `event` for the n-th time (counted per process) waits there."""
        temp = HOLDS / f".{event}.tmp"
        temp.write_text(str(n))
        temp.rename(HOLDS / event)  # a process never reads half a request

    def wait(self, event: str, process: subprocess.Popen | None = None) -> int | None:
        """The pid of the process held at `event`; None if `process` ended without getting there."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            held = sorted(HOLDS.glob(f"{event}.held-*"))
            if held:
                return int(held[0].name.rsplit("-", 1)[1])
            if process is not None and process.poll() is not None:
                return None
            time.sleep(0.01)
        raise AssertionError(f"no process held at {event} after {WAIT_SECONDS} s")

    def release(self, event: str) -> None:
        for held in HOLDS.glob(f"{event}.held-*"):
            held.unlink()

    def record(self) -> Path:
        """Start logging every event passed, as "<event> <pid>" lines."""
        log = HOLDS / "events.log"
        log.touch()
        return log

    def clear(self) -> None:
        """Disarm every hold and let every held process go on."""
        for path in HOLDS.iterdir():
            path.unlink()


@pytest.fixture()
def holds() -> Iterator[Holds]:
    control = Holds()
    control.clear()
    yield control
    control.clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(HOLDS, ignore_errors=True)


# --- sweeps --------------------------------------------------------------------------------------

# What a much faster machine looks like to a test that acts on a sweep mid-work: each of its runs
# trains one step (BNLAB_TEST_INSTANT=1). Such a test holds the sweep at a known point first
# (conftest.Holds), so it passes however fast or slow the runs train.
INSTANT = os.environ.get("BNLAB_TEST_INSTANT", "") not in ("", "0")


def write_spec(folder: Path, data_root: Path | None, *, name: str = "grid", lrs: str = "[0.01, 0.05]",
               seeds: str = "[0, 1]", epochs: int = 2, extra_grid: str = "", base_extra: str = "",
               racing: bool = False) -> Path:
    """A small grid on the tiny dataset; `data_root` None reads it from bnlab's cache ($BNLAB_CACHE).
    `racing`: the spec of a test that acts on the sweep while it runs (see INSTANT)."""
    spec = folder / f"{name}.yaml"
    root = f"root: '{data_root}', " if data_root else ""
    length = "steps: 1" if racing and INSTANT else f"epochs: {epochs}"
    spec.write_text(f"""\
name: {name}
base:
  device: cpu
  data: {{{root}val_size: 100, verify: false}}
  model: {{hidden: [16]{base_extra}}}
  train: {{{length}, batch_size: 32, log_every: 5}}
grid:
  train.lr: {lrs}
  model.bn: [none, after]
{extra_grid}seeds: {seeds}
""")
    return spec


def read_results(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def masked(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """results.csv without the volatile columns."""
    return sorted(({k: v for k, v in row.items() if k not in ("seconds",)} for row in rows),
                  key=lambda row: row["run_id"])


def sweep_command(spec: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bnlab", "sweep", str(spec), "--runs-dir", str(runs), *extra]


def assert_no_processes_left(session: int) -> None:
    # A wait bounded by a deadline: multiprocessing's resource tracker may take a moment to see its
    # pipe close. Every process of the session must be gone before it ends.
    deadline = time.monotonic() + 60
    while (left := session_members(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []


def session_members(session: int) -> list[str]:
    return subprocess.run(["pgrep", "-s", str(session)], capture_output=True, text=True).stdout.split()
