"""Probes of a network's insides: percentiles of a few fixed units' input to each nonlinearity
on a fixed batch of training images, over training (Ioffe & Szegedy 2015, Fig. 1), and each
BatchNorm's variance shift between training and test (Li et al. 2019)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnlab.engine.model import ACTIVATIONS

PROBE_SAMPLES = 1000  # fixed training images whose pre-activations show the distribution drift
PROBE_UNITS = 3  # units per hidden layer, spread across its width
PROBE_PERCENTILES = (0.15, 0.50, 0.85)
# Probe at most about this many log steps per run: a probe is a forward pass of PROBE_SAMPLES
# images, and at every log step of a batch-32 run that was a fifth of all its arithmetic.
PROBE_POINTS = 25


class PreActivationProbe:
    """Percentiles of the input to each hidden nonlinearity, for a few fixed units, on a fixed
    probe batch: Ioffe & Szegedy's Fig. 1 picture of internal covariate shift."""

    def __init__(self, model: nn.Sequential, probe_x: torch.Tensor) -> None:
        self.model = model
        self.probe_x = probe_x
        self.activations = [module for module in model if isinstance(module, tuple(_activation_types()))]
        self.quantiles = torch.tensor(PROBE_PERCENTILES, device=probe_x.device)

    @torch.no_grad()
    def record(self, step: int) -> list[dict[str, Any]]:
        captured: list[torch.Tensor] = []
        handles = [
            act.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0]))
            for act in self.activations
        ]
        try:
            was_training = self.model.training
            self.model.eval()
            self.model(self.probe_x)
            self.model.train(was_training)
        finally:
            for handle in handles:
                handle.remove()
        rows = []
        for layer, pre_activation in enumerate(captured, start=1):  # (P, width)
            units = _probe_units(pre_activation.shape[1])
            values = torch.quantile(pre_activation[:, units].float(), self.quantiles, dim=0).cpu()  # (3, U)
            for column, unit in enumerate(units):
                p15, p50, p85 = (float(v) for v in values[:, column])
                rows.append({"step": step, "layer": layer, "unit": unit, "p15": p15, "p50": p50, "p85": p85})
        return rows


def _activation_types() -> list[type[nn.Module]]:
    return list(ACTIVATIONS.values())


def _probe_units(width: int) -> list[int]:
    count = min(PROBE_UNITS, width)
    return sorted({round(i * (width - 1) / max(count - 1, 1)) for i in range(count)})


@torch.no_grad()
def variance_shift(model: nn.Sequential, x: torch.Tensor, step: int) -> list[dict[str, Any]]:
    """Per BatchNorm layer (1 for the first hidden layer's): the mean over its live units of the
    running variance divided by the variance of its input over `x` in eval mode (dropout off),
    the largest shift of any live unit either way, max(r, 1/r), and how many units were live.
    1 is no shift; dropout before BN trains the running variance on inflated inputs, so its ratio
    exceeds 1 (Li et al. 2019)."""
    norms = [module for module in model if isinstance(module, nn.BatchNorm1d)]
    captured: list[torch.Tensor] = []
    handles = [norm.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0])) for norm in norms]
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    rows = []
    for layer, (norm, inputs) in enumerate(zip(norms, captured, strict=True), start=1):  # inputs: (N, width)
        test_var, running_var = inputs.double().var(0), norm.running_var.double()
        # A unit whose variance is below BN's eps (a dead ReLU feeding BN: all zeros) is normalised
        # by eps, not by either variance: its ratio says nothing, and would be 1e30.
        live = (test_var > norm.eps) & (running_var > norm.eps)
        ratio = running_var[live] / test_var[live]
        either_way = torch.maximum(ratio, 1 / ratio)
        rows.append({"step": step, "layer": layer, "units": int(live.sum()),
                     "variance_shift": ratio.mean().item() if len(ratio) else float("nan"),
                     "variance_shift_max": either_way.max().item() if len(ratio) else float("nan")})
    return rows
