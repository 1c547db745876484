"""Internal covariate shift, measured two ways (Santurkar et al. 2018): how much a layer's
gradient changes when the layers before it take their update first, on the same batch, and how
far the distribution of the input each layer sees in training drifts between probe steps."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The generators the forward pass draws from (dropout, noisy BN), to replay a step exactly."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def gradient_ics(model: nn.Sequential, optimizer: Any, x: torch.Tensor, y: torch.Tensor, step: int,
                 before_forward: tuple[torch.Tensor, torch.Tensor | None]) -> list[dict[str, Any]]:
    """Per layer i >= 2 (the first has no layers before it): G, the gradient of the loss on this
    batch with respect to W_i, as the step just computed it; G', the same gradient once W_1 to
    W_{i-1} have taken this step's optimizer update and W_i onward have not; and ||G - G'||_2
    and cos(G, G'). Call after backward, before optimizer.step(). The run itself is untouched:
    the update happens on a copy, BN's running statistics are replayed on copies, and the random
    generators are rewound to replay this step's dropout masks and noise, then restored.
    Costs one optimizer step and, per layer, a forward and backward pass."""
    device = x.device
    after_forward = rng_state(device)
    linears = [position for position, module in enumerate(model) if isinstance(module, nn.Linear)]
    current = dict(model.named_parameters())
    shadow_model, shadow_optimizer = copy.deepcopy((model, optimizer))
    for name, parameter in shadow_model.named_parameters():  # deepcopy leaves gradients behind
        parameter.grad = None if current[name].grad is None else current[name].grad.clone()
    shadow_optimizer.step()
    updated = {name: parameter.detach() for name, parameter in shadow_model.named_parameters()}
    buffers = dict(model.named_buffers())
    rows = []
    try:
        for layer, position in enumerate(linears[1:], start=2):
            mixed = {name: updated[name] if int(name.split(".")[0]) < position else parameter
                     for name, parameter in current.items()}
            mixed |= {name: buffer.clone() for name, buffer in buffers.items()}
            _set_rng_state(before_forward, device)
            loss = F.cross_entropy(functional_call(model, mixed, (x,)), y)
            weight = current[f"{position}.weight"]
            moved = torch.autograd.grad(loss, weight)[0].flatten()
            original = weight.grad.flatten()
            rows.append({"step": step, "layer": layer, "ics_l2": torch.linalg.vector_norm(original - moved).item(),
                         "ics_cos": F.cosine_similarity(original, moved, dim=0).item()})
    finally:
        _set_rng_state(after_forward, device)
    return rows


class InputDrift:
    """How far the input of each layer i >= 2 drifts between probe steps, as training sees it
    (the batch's own statistics, dropout and noisy BN's noise, on a fixed probe batch). Per unit,
    the 2-Wasserstein distance between Gaussians fitted to its values at the previous probe and
    now, sqrt(dmean^2 + dsd^2), in units of its previous sd; averaged over the units alive at the
    previous probe (sd above DEAD_SD: a dead ReLU has no scale to drift against). The run is
    untouched: BN's running statistics are updated on copies and the generators rewound."""

    DEAD_SD = 1e-6

    def __init__(self, model: nn.Sequential, probe_x: torch.Tensor) -> None:
        self.model = model
        self.probe_x = probe_x
        self.linears = [module for module in model if isinstance(module, nn.Linear)][1:]
        self.previous: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def measure(self) -> dict[int, float]:
        """Layer (2 for the second Linear, as gradient_ics counts) -> drift since the last call;
        NaN at the first."""
        device = self.probe_x.device
        before = rng_state(device)
        captured: list[torch.Tensor] = []
        handles = [linear.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0]))
                   for linear in self.linears]
        was_training = self.model.training
        try:
            self.model.train()
            state = {**dict(self.model.named_parameters()),
                     **{name: buffer.clone() for name, buffer in self.model.named_buffers()}}
            functional_call(self.model, state, (self.probe_x,))
        finally:
            self.model.train(was_training)
            for handle in handles:
                handle.remove()
            _set_rng_state(before, device)
        now = [(inputs.double().mean(0), inputs.double().std(0)) for inputs in captured]
        drift = {}
        for layer, ((mean, sd), previous) in enumerate(zip(now, self.previous or [None] * len(now), strict=True),
                                                       start=2):
            if previous is None:
                drift[layer] = float("nan")
                continue
            live = previous[1] > self.DEAD_SD
            moved = torch.sqrt((mean - previous[0]) ** 2 + (sd - previous[1]) ** 2)[live] / previous[1][live]
            drift[layer] = moved.mean().item() if len(moved) else float("nan")
        self.previous = now
        return drift
