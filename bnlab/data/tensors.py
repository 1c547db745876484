"""The datasets as tensors on a device: the train, validation and test splits every run trains
and evaluates on. Apart from bnlab.data (files, sources, downloads: numpy only), so that finding
and checking data needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bnlab.config import DataConfig
from bnlab.data import RawDataset, load_raw
from bnlab.errors import DataError


@dataclass(frozen=True, eq=False)
class Splits:
    """Each split one tensor on one device: training batches are index slices, not a DataLoader."""

    train_x: torch.Tensor  # (N, 784) float32, normalized
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor  # (V, 784)
    val_y: torch.Tensor
    test_x: torch.Tensor  # (T, 784)
    test_y: torch.Tensor
    sha256: dict[str, str]
    source: str



def to_splits(raw: RawDataset, cfg: DataConfig, device: str | torch.device) -> Splits:
    """Validation is the last `val_size` training images; `train_subset` the first N of the rest."""
    n_train = len(raw.train_images) - cfg.val_size
    if n_train <= 0:
        raise DataError(f"data.val_size: {cfg.val_size} leaves none of {len(raw.train_images)} to train on")
    n_used = n_train if cfg.train_subset is None else cfg.train_subset
    if n_used > n_train:
        raise DataError(
            f"data.train_subset: {n_used} is more than the {n_train} training images "
            f"left after data.val_size={cfg.val_size}"
        )
    device = torch.device(device)
    train_x, val_x, test_x = (
        _pixels(x, device) for x in (raw.train_images[:n_used], raw.train_images[n_train:], raw.test_images)
    )
    if cfg.normalize == "unit":
        pass
    elif cfg.normalize == "standard":
        # Scalar statistics of the images training sees, so val and test leak nothing into them.
        mean, std = train_x.mean(), train_x.std().clamp_min(1e-8)
        for x in (train_x, val_x, test_x):
            x.sub_(mean).div_(std)
    elif cfg.normalize == "binary":
        train_x, val_x, test_x = ((x > 0.5).float() for x in (train_x, val_x, test_x))
    else:
        raise DataError(f"data.normalize: {cfg.normalize!r}; allowed: unit, standard, binary")
    train_y, val_y, test_y = (
        torch.from_numpy(labels.astype(np.int64)).to(device)
        for labels in (raw.train_labels[:n_used], raw.train_labels[n_train:], raw.test_labels)
    )
    return Splits(train_x, train_y, val_x, val_y, test_x, test_y, dict(raw.sha256), raw.source)


def _pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    # Copy as uint8 (the arrays are read-only views) and widen on the device: 4x less to transfer.
    flat = np.array(images.reshape(len(images), 28 * 28), dtype=np.uint8)  # (N, 784)
    return torch.from_numpy(flat).to(device).float().div_(255)


def load_dataset(cfg: DataConfig, device: str | torch.device) -> Splits:
    return to_splits(load_raw(cfg), cfg, device)
