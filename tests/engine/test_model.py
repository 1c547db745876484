"""The exact layer sequence for every placement x dropout order, and seed pairing."""

from __future__ import annotations

import itertools
import typing

import pytest
import torch
from torch import nn

from bnlab.config import Config, ModelConfig
from bnlab.engine.model import ACTIVATIONS, BatchNoise, build_model

L, B, A, D = nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout

EXPECTED_BLOCK = {
    ("none", "after_bn"): [L, A, D],
    ("none", "before_bn"): [L, A, D],
    ("before", "after_bn"): [L, B, A, D],
    ("before", "before_bn"): [L, D, B, A],
    ("after", "after_bn"): [L, A, B, D],
    ("after", "before_bn"): [L, A, D, B],
}


@pytest.mark.parametrize(("bn", "order"), list(EXPECTED_BLOCK))
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_layer_sequence(bn: str, order: str, dropout: float) -> None:
    cfg = ModelConfig(hidden=[8, 4], bn=bn, dropout=dropout, dropout_order=order)
    model = build_model(cfg, 12, 10, seed=0)
    block = [kind for kind in EXPECTED_BLOCK[(bn, order)] if dropout > 0 or kind is not D]
    assert [type(module) for module in model] == block * 2 + [L]
    linears = [module for module in model if isinstance(module, L)]
    # A Linear that feeds BN has no bias; the output layer always has one, and never BN after it.
    assert [linear.bias is not None for linear in linears] == [bn != "before"] * 2 + [True]
    if dropout:
        assert all(module.p == dropout for module in model if isinstance(module, D))


def test_activation_table_matches_config() -> None:
    allowed = typing.get_args(ModelConfig.model_fields["activation"].annotation)
    assert set(ACTIVATIONS) == set(allowed)


@pytest.mark.parametrize(("init", "std"), [("default", None), ("he", None), ("xavier", None), ("normal", 0.05)])
def test_same_seed_pairs_first_layer_across_placements(init: str, std: float | None) -> None:
    weights = {}
    for bn in ("none", "before", "after"):
        model = build_model(ModelConfig(hidden=[16, 8], bn=bn, init=init, init_std=std), 20, 10, seed=3)
        weights[bn] = [m.weight.detach().clone() for m in model if isinstance(m, L)]
    for bn_a, bn_b in itertools.combinations(weights, 2):
        for layer_a, layer_b in zip(weights[bn_a], weights[bn_b], strict=True):
            torch.testing.assert_close(layer_a, layer_b, rtol=0, atol=0)
    other_seed = build_model(ModelConfig(hidden=[16, 8], init=init, init_std=std), 20, 10, seed=4)
    assert not torch.equal(other_seed[0].weight, weights["after"][0])


def test_init_scales() -> None:
    he = build_model(ModelConfig(hidden=[400], init="he", bn="none"), 784, 10, seed=0)[0].weight
    assert he.std().item() == pytest.approx((2 / 784) ** 0.5, rel=0.05)
    normal = build_model(ModelConfig(hidden=[400], init="normal", init_std=0.2, bn="none"), 784, 10, seed=0)[0]
    assert normal.weight.std().item() == pytest.approx(0.2, rel=0.05)
    assert torch.count_nonzero(normal.bias) == 0


def test_dropout_only_in_the_last_block() -> None:
    cfg = ModelConfig(hidden=[8, 8, 4], bn="before", dropout=0.5, dropout_layers="last")
    kinds = [type(module) for module in build_model(cfg, 12, 10, seed=0)]
    assert kinds == [L, B, A, L, B, A, L, B, A, D, L]


def test_ghost_batch_norm_normalises_each_ghost_batch() -> None:
    from bnlab.engine.model import GhostBatchNorm1d

    model = build_model(ModelConfig(hidden=[6], bn="before", ghost_batch=4), 5, 10, seed=0)
    ghost = model[1]
    assert isinstance(ghost, GhostBatchNorm1d)
    x = torch.randn(9, 6) * 3 + 1  # ghost batches of 4, 4 and a single sample joined to the last: 4, 5
    out = ghost.train()(x)
    for chunk in (out[:4], out[4:]):
        torch.testing.assert_close(chunk.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    reference = nn.BatchNorm1d(6).train()
    assert not torch.allclose(reference(x), out, atol=1e-3)  # not the whole batch's statistics


LN, NOISE = nn.LayerNorm, BatchNoise


@pytest.mark.parametrize(("bn", "order"), [key for key in EXPECTED_BLOCK if key[0] != "none"])
@pytest.mark.parametrize(("norm", "noise"), [("layer", 0.0), ("batch", 0.5)])
def test_layer_norm_and_noise_take_batch_norms_place(bn: str, order: str, norm: str, noise: float) -> None:
    """LayerNorm where BN would be; the noise right after BN, so dropout orders keep their meaning."""
    cfg = ModelConfig(hidden=[8, 4], bn=bn, dropout=0.3, dropout_order=order, norm=norm, bn_noise=noise)
    in_place = {B: [LN] if norm == "layer" else [B, NOISE]}
    block = [kind for expected in EXPECTED_BLOCK[(bn, order)] for kind in in_place.get(expected, [expected])]
    assert [type(module) for module in build_model(cfg, 12, 10, seed=0)] == block * 2 + [L]


def test_noise_is_redrawn_every_step_within_its_ranges_and_off_in_evaluation() -> None:
    """On zeros the output is the shift alone, on ones the multiplier plus the shift: each step's
    draws have means within the documented ranges, spreads within theirs, and change from step
    to step; in evaluation the module is the identity."""
    scale = 0.8
    noise = BatchNoise(scale).train()
    zeros, ones = torch.zeros(4000, 16, dtype=torch.float64), torch.ones(4000, 16, dtype=torch.float64)
    means, spreads = [], []
    for step in range(50):
        torch.manual_seed(step)
        shift = noise(zeros)
        torch.manual_seed(step)  # the same draws again, now on ones
        multiplier = noise(ones) - shift
        means.append(shift.mean().item())
        spreads.append(shift.std().item())
        assert -scale - 0.05 < shift.mean() < scale + 0.05 and shift.std() < scale + 0.05
        assert 1 - scale / 2 - 0.05 < multiplier.mean() < 1 + scale / 2 + 0.05 and multiplier.std() < scale / 2 + 0.05
    assert len({round(mean, 6) for mean in means}) == 50  # a new distribution every step
    assert min(means) < -scale / 3 and max(means) > scale / 3 and max(spreads) > scale / 3
    x = torch.randn(8, 16)
    assert torch.equal(noise.eval()(x), x)


def test_new_options_keep_the_run_ids_of_configs_that_do_not_use_them() -> None:
    """Ids computed before model.norm and model.bn_noise existed (commit 120e56f): folders recorded
    then are found, not redone."""
    assert Config().run_id() == "fb9fd9c094e8"
    assert Config(model={"bn": "none", "dropout": 0.3}, train={"lr": 0.1}).run_id() == "420fe42691a9"
    assert Config(model={"norm": "batch", "bn_noise": 0.0}).run_id() == Config().run_id()
    assert len({Config(model={"norm": "layer"}).run_id(), Config(model={"bn_noise": 0.5}).run_id(),
                Config().run_id()}) == 3


@pytest.mark.parametrize(("fields", "message"), [
    ({"bn": "none", "norm": "layer"}, "norm: layer needs a place for it"),
    ({"bn": "none", "bn_noise": 0.5}, "bn_noise: only used with model.bn before or after"),
    ({"norm": "layer", "bn_noise": 0.5}, "bn_noise: only used with model.norm batch"),
    ({"norm": "layer", "ghost_batch": 8}, "ghost_batch: only used with model.norm batch"),
])
def test_options_that_need_batch_norm_say_so(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)
