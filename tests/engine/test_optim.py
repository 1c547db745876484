"""bnlab.engine.optim against torch.optim: the same updates, bitwise, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import WAIT_SECONDS
from torch import nn

from bnlab.config import TrainConfig
from bnlab.engine.train import OPTIMIZERS

CASES = [
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.003, "weight_decay": 0.01}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.05}),
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}),
    ("nesterov", {"lr": 0.05, "momentum": 0.9}),
]


def reference(kind: str, params: list[torch.Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """What bnlab used before: torch.optim, fused Adam, foreach SGD."""
    if kind in ("adam", "adamw"):
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=kind == "nesterov", foreach=True)


def trained(kind: str, settings: dict, ours: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    cfg = TrainConfig(optimizer=kind, **settings)
    optimizer = OPTIMIZERS[kind](model.parameters(), cfg) if ours else reference(kind, list(model.parameters()), cfg)
    data = torch.Generator().manual_seed(1)
    for _ in range(25):
        x, y = torch.randn(32, 20, generator=data), torch.randint(0, 4, (32,), generator=data)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(("kind", "settings"), CASES)
def test_updates_are_bitwise_torch_optims(kind: str, settings: dict) -> None:
    ours, theirs = trained(kind, settings, ours=True), trained(kind, settings, ours=False)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(ours, trained(kind, {**settings, "lr": settings["lr"] * 2},
                                                                   ours=True), strict=True))


def test_a_run_never_imports_torch_dynamo(tiny_config) -> None:
    """torch.optim would import it (seconds per worker process); a regression here is slow, not wrong."""
    code = ("import sys; from pathlib import Path; from bnlab.config import load_config; "
            "from bnlab.runs.runner import run; "
            f"run(load_config(Path({str(tiny_config)!r}), []), {str(tiny_config.parent / 'runs')!r}); "
            "print('torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr
