"""Which device a run trains on, and how fast this machine multiplies matrices."""

from __future__ import annotations

import time

import torch

from bnlab.errors import ConfigError


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 speed on the CPU: a size^3 matmul, timed after a warm-up. Findings
    record it beside their wall times, so times from different machines can be compared."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist here."""
    has_mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    available = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["mps"] if has_mps else [])
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            what = "no CUDA device is available" if count == 0 else f"only {count} CUDA device(s)"
            raise ConfigError(f"device: {name!r} requested but {what}; allowed here: {', '.join(available)}")
    elif name == "mps" and not has_mps:
        raise ConfigError(f"device: 'mps' requested but MPS is not available; allowed here: {', '.join(available)}")
    return torch.device(name)
