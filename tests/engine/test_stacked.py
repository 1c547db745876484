"""The stacked engine against the solo engine as its oracle: in float64, K runs trained as one
stack and the same K runs trained alone agree in every logged loss, in their weights and running
statistics, and in eval-mode outputs, for every BN placement, optimizer and dropout order."""

from __future__ import annotations

import dataclasses
import io
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from bnlab.config import Config, load_config
from bnlab.data.tensors import Splits, load_dataset
from bnlab.engine.compatible import stack_key
from bnlab.engine.model import build_model
from bnlab.engine.stacked import train_stack
from bnlab.engine.train import OPTIMIZERS, RunResult, train

TOLERANCE = 1e-6
STEPS = 100  # 10 epochs of the tiny dataset at batch 32

# Per member: (seed, overrides). Learning rates differ within each stack, and two members share
# a param group (lr, weight decay, momentum) while the third has its own.
MEMBERS: dict[str, list[tuple[int, list[str]]]] = {
    "sgd": [(0, ["train.lr=0.05", "train.momentum=0.9"]), (1, ["train.lr=0.02"]),
            (2, ["train.lr=0.05", "train.momentum=0.9"])],
    "nesterov": [(0, ["train.lr=0.05", "train.momentum=0.9"]), (1, ["train.lr=0.02", "train.momentum=0.5"]),
                 (2, ["train.lr=0.05", "train.momentum=0.9"])],
    "adam": [(0, ["train.lr=0.01"]), (1, ["train.lr=0.003", "train.weight_decay=1e-3"]), (2, ["train.lr=0.01"])],
    "adamw": [(0, ["train.lr=0.01", "train.weight_decay=0.01"]), (1, ["train.lr=0.003", "train.weight_decay=0.1"]),
              (2, ["train.lr=0.01", "train.weight_decay=0.01"])],
}
BN_MOMENTA = [0.1, 0.01, 0.3]  # per member too: each keeps its own running averages


def configs(tiny_config: Path, optimizer: str, extra: list[str], per_member: tuple[str, ...] = ("", "", "")
            ) -> list[Config]:
    common = [f"train.optimizer={optimizer}", f"train.steps={STEPS}", "train.log_every=1", "eval.every_steps=7",
              "eval.bn_stats=[running, batch]", "eval.batch_sizes=[16]", *extra]
    return [load_config(tiny_config, [*common, f"seed={seed}", f"model.bn_momentum={momentum}", *overrides,
                                      *([own] if own else [])])
            for (seed, overrides), momentum, own in zip(MEMBERS[optimizer], BN_MOMENTA, per_member, strict=True)]


def float64(splits: Splits) -> Splits:
    return dataclasses.replace(splits, train_x=splits.train_x.double(), val_x=splits.val_x.double(),
                               test_x=splits.test_x.double())


def column(rows: list[dict[str, Any]], key: str) -> torch.Tensor:
    """NaN where a row lacks the key: steps rows of eval.every_steps carry accuracies only."""
    return torch.tensor([row.get(key, math.nan) for row in rows], dtype=torch.float64)


def assert_same_run(stacked: RunResult, solo: RunResult, cfg: Config, splits: Splits) -> None:
    # A diverging run's numbers grow to 1e100 and beyond before they overflow: compare those relatively.
    rtol = TOLERANCE if solo.status == "diverged" else 0

    def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
        torch.testing.assert_close(ours, theirs, rtol=rtol, atol=TOLERANCE, equal_nan=True)

    assert (stacked.status, stacked.diverged_step) == (solo.status, solo.diverged_step)
    assert [row["step"] for row in stacked.steps] == [row["step"] for row in solo.steps]
    for key in ("train_loss", "train_acc", "grad_norm", "val_acc", "test_acc"):
        close(column(stacked.steps, key), column(solo.steps, key))
    assert [row["epoch"] for row in stacked.epochs] == [row["epoch"] for row in solo.epochs]
    for key in ("train_loss", "val_loss", "test_loss", "val_acc", "test_acc", "lr"):
        close(column(stacked.epochs, key), column(solo.epochs, key))
    close(column(stacked.evals, "loss"), column(solo.evals, "loss"))
    assert [(row["step"], row["layer"], row["unit"]) for row in stacked.probes] == [
        (row["step"], row["layer"], row["unit"]) for row in solo.probes]
    for key in ("p15", "p50", "p85"):
        close(column(stacked.probes, key), column(solo.probes, key))
    # Weights, BN's running statistics and its step counter.
    assert stacked.state_dict.keys() == solo.state_dict.keys()
    for name, tensor in solo.state_dict.items():
        close(stacked.state_dict[name], tensor)
    if solo.status == "done":
        outputs = []
        for result in (stacked, solo):
            model = build_model(cfg.model, 784, 10, cfg.seed).double().eval()
            model.load_state_dict(result.state_dict)
            with torch.no_grad():
                outputs.append(model(splits.test_x))
        close(outputs[0], outputs[1])


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("bn", ["none", "before", "after"])
def test_stack_matches_solo_runs(tiny_config: Path, bn: str, optimizer: str) -> None:
    cfgs = configs(tiny_config, optimizer, [f"model.bn={bn}"])
    splits = float64(load_dataset(cfgs[0].data, torch.device("cpu")))
    stacked = train_stack(cfgs, splits)
    for cfg, result in zip(cfgs, stacked, strict=True):
        assert result.status == "done"
        assert_same_run(result, train(cfg, splits), cfg, splits)


@pytest.mark.parametrize("order", ["after_bn", "before_bn"])
@pytest.mark.parametrize("bn", ["none", "before", "after"])
def test_dropout_masks_are_each_members_solo_masks(tiny_config: Path, bn: str, order: str) -> None:
    rates = ("model.dropout=0.1", "model.dropout=0.5", "model.dropout=0.3")
    cfgs = configs(tiny_config, "adam", [f"model.bn={bn}", f"model.dropout_order={order}"], rates)
    splits = float64(load_dataset(cfgs[0].data, torch.device("cpu")))
    for cfg, result in zip(cfgs, train_stack(cfgs, splits), strict=True):
        assert_same_run(result, train(cfg, splits), cfg, splits)


# Caught at a logged step, or by the epoch's mean loss; with momentum, and without (plain SGD
# keeps no optimizer state at all, which the member's removal must not trip over).
@pytest.mark.parametrize(("log_every", "momentum"), [(1, 0.9), (1000, 0.9), (1, 0.0)])
def test_diverged_member_leaves_the_others_as_their_solo_runs(tiny_config: Path, log_every: int,
                                                               momentum: float) -> None:
    common = ["model.bn=none", "train.optimizer=sgd", f"train.momentum={momentum}", "train.steps=40",
              f"train.log_every={log_every}"]
    cfgs = [load_config(tiny_config, [*common, "seed=0", "train.lr=0.05"]),
            load_config(tiny_config, [*common, "seed=1", "train.lr=1e50"]),
            load_config(tiny_config, [*common, "seed=2", "train.lr=0.02"])]
    splits = float64(load_dataset(cfgs[0].data, torch.device("cpu")))
    stacked = train_stack(cfgs, splits)
    assert [result.status for result in stacked] == ["done", "diverged", "done"]
    assert stacked[1].final == {} and stacked[1].evals == []
    for cfg, result in zip(cfgs, stacked, strict=True):
        # Survivors carry their momentum buffers (if any) through the member's removal unchanged.
        assert_same_run(result, train(cfg, splits), cfg, splits)


def test_results_have_the_solo_format_and_load_into_build_model(tiny_config: Path) -> None:
    cfgs = [load_config(tiny_config, [f"seed={seed}", f"train.lr={lr}", "train.log_every=1", "eval.every_steps=4"])
            for seed, lr in [(3, 0.02), (4, 0.005)]]
    splits = load_dataset(cfgs[0].data, torch.device("cpu"))
    events: list[dict[str, Any]] = []
    stacked = train_stack(cfgs, splits, events.append)
    for cfg, result in zip(cfgs, stacked, strict=True):
        solo = train(cfg, splits)
        assert result.status == "done" and result.device == solo.device == "cpu"
        for attribute in ("steps", "epochs", "probes", "evals"):
            rows, solo_rows = getattr(result, attribute), getattr(solo, attribute)
            assert [sorted(row) for row in rows] == [sorted(row) for row in solo_rows], attribute
        assert result.final.keys() == solo.final.keys() and result.best.keys() == solo.best.keys()
        assert result.timings.keys() == solo.timings.keys()
        assert (result.timings["stack_size"], solo.timings["stack_size"]) == (2, 1)
        assert [row["lr"] for row in result.epochs] == [cfg.train.lr] * 2  # results come back in input order
        # float32: the same first batch from the same weights; later steps differ by rounding only.
        assert result.steps[0]["train_loss"] == pytest.approx(solo.steps[0]["train_loss"], rel=1e-5)
        assert result.final["test_acc"] > 0.5
        model = build_model(cfg.model, 784, 10, cfg.seed)
        assert {k: v.shape for k, v in model.state_dict().items()} == {
            k: v.shape for k, v in result.state_dict.items()}
        saved = io.BytesIO()
        torch.save(result.state_dict, saved)
        model.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
        # Each state dict holds its member's tensors alone, not views into the whole stack.
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in result.state_dict.values())
    assert {(event["member"], event["run_id"]) for event in events} == {(0, cfgs[0].run_id()), (1, cfgs[1].run_id())}
    assert [event["kind"] for event in events if event["member"] == 1][0] == "start"
    assert [event["kind"] for event in events if event["member"] == 1][-1] == "end"


SHARED = ["seed=5", "train.lr=0.1", "train.weight_decay=0.01", "train.momentum=0.5", "model.dropout=0.3",
          "model.bn_momentum=0.01", "name=other"]
APART = ["train.batch_size=16", "model.hidden=[8]", "model.bn=before", "model.dropout=0", "train.optimizer=adam",
         "train.steps=7", "model.init=he", "eval.every_steps=3", "data.val_size=50", "device=auto",
         "model.norm=layer", "model.bn_noise=0.5"]

KEY_FIELDS = {"train.steps": "train.length", "model.dropout": "model.dropout > 0", "data.val_size": "data",
              "model.bn_noise": "model.bn_noise > 0"}


@pytest.mark.parametrize("override", SHARED + APART)
def test_stack_key_separates_what_shapes_the_computation(tiny_config: Path, override: str) -> None:
    base = load_config(tiny_config, ["train.optimizer=sgd", "model.dropout=0.2"])
    other = load_config(tiny_config, ["train.optimizer=sgd", "model.dropout=0.2", override])
    assert (stack_key(base) == stack_key(other)) == (override in SHARED)
    if override in APART:
        key = override.partition("=")[0]
        field = KEY_FIELDS.get(key, key)
        with pytest.raises(ValueError, match=f"cannot share a stack with config 0: {re.escape(field)} differ"):
            train_stack([base, other], load_dataset(base.data, torch.device("cpu")))


def test_all_members_diverging_ends_the_stack(tiny_config: Path) -> None:
    cfgs = [load_config(tiny_config, ["model.bn=none", "train.optimizer=sgd", "train.lr=1e6", f"seed={seed}"])
            for seed in (0, 1)]
    results = train_stack(cfgs, load_dataset(cfgs[0].data, torch.device("cpu")))
    assert [result.status for result in results] == ["diverged", "diverged"]
    assert all(math.isfinite(result.timings["seconds_total"]) for result in results)


@pytest.mark.parametrize("bn", ["before", "after"])
def test_ghost_batches_and_last_layer_dropout_match_solo(tiny_config: Path, bn: str) -> None:
    # Batch 32 in ghost batches of 8; the epoch's last batch of 12 in 8 and 4.
    cfgs = configs(tiny_config, "adam", [f"model.bn={bn}", "model.ghost_batch=8", "model.dropout_layers=last"],
                   ("model.dropout=0.1", "model.dropout=0.5", "model.dropout=0.3"))
    splits = float64(load_dataset(cfgs[0].data, torch.device("cpu")))
    for cfg, result in zip(cfgs, train_stack(cfgs, splits), strict=True):
        assert_same_run(result, train(cfg, splits), cfg, splits)


@pytest.mark.parametrize("bn", ["before", "after"])
def test_layer_norm_members_match_solo(tiny_config: Path, bn: str) -> None:
    """LayerNorm per member and sample over its units, with its own gain and shift; batch-size
    independent, so no step drops a single-sample batch and every eval mode is the same network."""
    cfgs = configs(tiny_config, "adam", [f"model.bn={bn}", "model.norm=layer"])
    splits = float64(load_dataset(cfgs[0].data, torch.device("cpu")))
    for cfg, result in zip(cfgs, train_stack(cfgs, splits), strict=True):
        assert {row["bn_stats"] for row in result.evals} == {"running"}
        assert_same_run(result, train(cfg, splits), cfg, splits)


@pytest.mark.parametrize("bn", ["before", "after"])
def test_noisy_bn_members_draw_their_solo_noise(tiny_config: Path, bn: str) -> None:
    """Each member's noise scale differs, and dropout draws from the same stream in between: the
    stack must reproduce every member's solo draws in their solo order."""
    scales = ("model.bn_noise=0.5", "model.bn_noise=1.0", "model.bn_noise=0.2")
    cfgs = configs(tiny_config, "adam", [f"model.bn={bn}", "model.dropout=0.2"], scales)
    splits = float64(load_dataset(cfgs[0].data, torch.device("cpu")))
    for cfg, result in zip(cfgs, train_stack(cfgs, splits), strict=True):
        assert_same_run(result, train(cfg, splits), cfg, splits)
    # The noise is there: without it the same run trains differently.
    quiet = Config.model_validate(cfgs[1].model_dump() | {"model": cfgs[1].model.model_dump() | {"bn_noise": 0.0}})
    noisy, plain = column(train(cfgs[1], splits).steps, "train_loss"), column(train(quiet, splits).steps, "train_loss")
    assert not torch.allclose(noisy, plain)


def test_probes_on_train_images_and_shuffled_batches_match_solo(tiny_config: Path) -> None:
    """eval.train_eval, the shuffled and disagreement evaluations and the variance shift read a
    member's solo-shaped model: the same numbers as its solo run."""
    cfgs = configs(tiny_config, "adam", ["model.bn=after", "eval.train_eval=true", "eval.variance_shift=true",
                                         "eval.bn_stats=[running, batch, shuffled]", "eval.batch_sizes=[16, 10000]"])
    splits = float64(load_dataset(cfgs[0].data, torch.device("cpu")))
    for cfg, result in zip(cfgs, train_stack(cfgs, splits), strict=True):
        solo = train(cfg, splits)
        assert_same_run(result, solo, cfg, splits)
        for rows, solo_rows, key in ((result.epochs, solo.epochs, "train_eval_loss"),
                                     (result.steps, solo.steps, "train_eval_acc"),
                                     (result.evals, solo.evals, "disagree"), (result.evals, solo.evals, "acc"),
                                     (result.layers, solo.layers, "variance_shift")):
            torch.testing.assert_close(column(rows, key), column(solo_rows, key), rtol=0, atol=TOLERANCE,
                                       equal_nan=True)
        assert not column(result.epochs, "train_eval_loss").isnan().any() and len(result.layers) == 2
