"""The Dense network built from `model:`. Knows nothing of data sources, files or training loops.

Seeds pair across arms: every Linear's weights come from a generator seeded by (seed, layer
index), and biases from a separate stream, so `bn: none` (with biases) and `bn: after` (some
without) give the same first-layer weights for the same seed. Paired statistics depend on this.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from bnlab.config import ModelConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}
# kaiming_normal_'s gain per activation (GELU is close enough to ReLU for He's argument).
_HE_NONLINEARITY = {"relu": "relu", "gelu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}

# Stream ids for stream_seed: each source of randomness has its own, so changing one (say,
# adding dropout) never shifts another (say, the batch order).
STREAM_WEIGHTS = 1
STREAM_BIAS = 2
STREAM_DATA_ORDER = 3
STREAM_DROPOUT = 4
STREAM_EVAL_ORDER = 5  # eval.bn_stats shuffled: the order of the evaluation batches


def stream_seed(seed: int, stream: int, index: int = 0) -> int:
    """An independent 63-bit seed for (run seed, stream, index), via numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def generator(seed: int, stream: int, index: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, stream, index))


def init_linear_(
    weight: torch.Tensor, bias: torch.Tensor | None, cfg: ModelConfig, layer_index: int, seed: int
) -> None:
    """Initialise one Linear in place; weight is (out, in) as in nn.Linear.

    Draws on the CPU from per-layer generators and copies, so the numbers do not depend on the
    device and a stacked model can reuse this for each of its members.
    """
    weights_rng = generator(seed, STREAM_WEIGHTS, layer_index)
    bias_rng = generator(seed, STREAM_BIAS, layer_index)
    fan_in = weight.shape[1]
    cpu_weight = torch.empty(weight.shape, dtype=weight.dtype)
    if cfg.init == "default":
        # nn.Linear.reset_parameters, with our generators.
        nn.init.kaiming_uniform_(cpu_weight, a=math.sqrt(5), generator=weights_rng)
    elif cfg.init == "he":
        nn.init.kaiming_normal_(cpu_weight, nonlinearity=_HE_NONLINEARITY[cfg.activation], generator=weights_rng)
    elif cfg.init == "xavier":
        nn.init.xavier_uniform_(cpu_weight, generator=weights_rng)
    elif cfg.init == "normal":
        assert cfg.init_std is not None  # the config validator guarantees it
        nn.init.normal_(cpu_weight, 0.0, cfg.init_std, generator=weights_rng)
    else:
        raise ValueError(f"model.init: unknown {cfg.init!r}")
    with torch.no_grad():
        weight.copy_(cpu_weight)
        if bias is not None:
            if cfg.init == "default":
                bound = 1 / math.sqrt(fan_in)
                cpu_bias = torch.empty(bias.shape, dtype=bias.dtype).uniform_(-bound, bound, generator=bias_rng)
                bias.copy_(cpu_bias)
            else:
                bias.zero_()


class GhostBatchNorm1d(nn.BatchNorm1d):
    """In training, each ghost batch of `ghost_batch` samples is normalised with its own
    statistics (and updates the running ones); in evaluation it is plain BatchNorm1d."""

    def __init__(self, width: int, ghost_batch: int, **kwargs: float) -> None:
        super().__init__(width, **kwargs)
        self.ghost_batch = ghost_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        batches_before = self.num_batches_tracked.clone()
        out = torch.cat([super(GhostBatchNorm1d, self).forward(chunk) for chunk in ghost_chunks(x, self.ghost_batch)])
        self.num_batches_tracked.copy_(batches_before + 1)  # it counts training batches, not ghost batches
        return out


def ghost_chunks(x: torch.Tensor, ghost_batch: int, dim: int = 0) -> list[torch.Tensor]:
    """Ghost batches along the batch dimension; a trailing single sample (no variance) joins the
    one before it. Shared by the solo module and the stacked engine so both split alike."""
    chunks = list(x.split(ghost_batch, dim=dim))
    if len(chunks) > 1 and chunks[-1].shape[dim] < 2:
        chunks[-2:] = [torch.cat(chunks[-2:], dim=dim)]
    return chunks


class BatchNoise(nn.Module):
    """Noisy BN's noise, placed right after a BatchNorm (inspired by Santurkar et al. 2018, who
    perturb each activation of each sample with noise of non-zero mean and non-unit variance
    whose distribution changes every step; their exact distribution is not verified here).

    In training, every step: a shift mean in [-c, c), a shift spread in [0, c), a scale mean in
    [1 - c/2, 1 + c/2) and a scale spread in [0, c/2), drawn uniformly; then for every activation
    of every sample, y <- y * N(scale mean, scale spread^2) + N(shift mean, shift spread^2).
    Draws come from the global generator (the run's dropout stream, seeded by the training loop),
    in the order: the four parameters, the (B, H) shift draws, the (B, H) scale draws. In
    evaluation it is the identity."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H)
        if not self.training:
            return x
        multiplier, shift = noise_draws(tuple(x.shape), self.scale, x.dtype, x.device, None)
        return torch.addcmul(shift, x, multiplier)


def noise_draws(shape: tuple[int, ...], scale: float, dtype: torch.dtype, device: torch.device,
                rng: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(multiplier, shift), each of `shape` (B, H): BatchNoise's draws for one step and layer.
    Shared by the solo module and the stacked engine, so both draw alike from a member's stream."""
    u = torch.rand(4, dtype=dtype, device=device, generator=rng)
    shift_mean, shift_spread = scale * (2 * u[0] - 1), scale * u[1]
    scale_mean, scale_spread = 1 + scale * (u[2] - 0.5), scale * u[3] / 2
    shift = torch.randn(shape, dtype=dtype, device=device, generator=rng).mul_(shift_spread).add_(shift_mean)
    multiplier = torch.randn(shape, dtype=dtype, device=device, generator=rng).mul_(scale_spread).add_(scale_mean)
    return multiplier, shift


def hidden_block(cfg: ModelConfig, n_in: int, width: int, last: bool = False) -> list[nn.Module]:
    """One hidden layer's modules in order; the placement table lives here and only here."""
    # A Linear whose output is normalised next has no bias: the norm's beta subsumes it.
    feeds_bn = cfg.bn == "before"
    linear = nn.Linear(n_in, width, bias=not feeds_bn)
    activation = ACTIVATIONS[cfg.activation]()
    norm: list[nn.Module]
    if cfg.norm == "layer":
        norm = [nn.LayerNorm(width, eps=cfg.bn_eps)]
    elif cfg.ghost_batch is None:
        norm = [nn.BatchNorm1d(width, eps=cfg.bn_eps, momentum=cfg.bn_momentum)]
    else:
        norm = [GhostBatchNorm1d(width, cfg.ghost_batch, eps=cfg.bn_eps, momentum=cfg.bn_momentum)]
    if cfg.bn_noise > 0:
        norm.append(BatchNoise(cfg.bn_noise))
    with_dropout = cfg.dropout > 0 and (cfg.dropout_layers == "all" or last)
    dropout = [nn.Dropout(cfg.dropout)] if with_dropout else []
    if cfg.bn == "none":
        return [linear, activation, *dropout]
    if cfg.bn == "before":
        if cfg.dropout_order == "before_bn":
            return [linear, *dropout, *norm, activation]
        return [linear, *norm, activation, *dropout]
    if cfg.bn == "after":
        if cfg.dropout_order == "before_bn":
            return [linear, activation, *dropout, *norm]
        return [linear, activation, *norm, *dropout]
    raise ValueError(f"model.bn: unknown {cfg.bn!r}")


def build_model(cfg: ModelConfig, n_inputs: int, n_classes: int, seed: int) -> nn.Sequential:
    """Dense stack: hidden blocks, then a plain Linear to the logits (no BN on the output)."""
    modules: list[nn.Module] = []
    n_in = n_inputs
    for index, width in enumerate(cfg.hidden):
        modules += hidden_block(cfg, n_in, width, last=index == len(cfg.hidden) - 1)
        n_in = width
    modules.append(nn.Linear(n_in, n_classes))
    linears = [module for module in modules if isinstance(module, nn.Linear)]
    for layer_index, linear in enumerate(linears):
        init_linear_(linear.weight, linear.bias, cfg, layer_index, seed)
    return nn.Sequential(*modules)
