"""Tiny real datasets: a few hundred seeded images written as real IDX files, so the real parser
and real training steps run on CPU in seconds."""

from __future__ import annotations

import gzip
import os
import struct
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
