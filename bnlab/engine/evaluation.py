"""Evaluation modes of a trained network: BN's running statistics, each batch's own statistics
(at several batch sizes, or class-sorted batches), and statistics recalibrated over the training
set. Pure computation on tensors already on the device."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.config import Config
from bnlab.data.tensors import Splits
from bnlab.engine.model import STREAM_EVAL_ORDER, generator

EVAL_CHUNK = 5000  # running-statistics evaluation does not depend on batch size: use big chunks


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """BN normalises with each batch's own statistics, dropout is off, running stats untouched."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    saved = [{name: buffer.clone() for name, buffer in norm.named_buffers()} for norm in norms]
    model.eval()
    for norm in norms:
        norm.train()
    try:
        yield
    finally:
        for norm, buffers in zip(norms, saved, strict=True):
            for name, value in buffers.items():
                getattr(norm, name).copy_(value)
        model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str, batch_size: int,
             with_predictions: bool = False) -> dict[str, Any]:
    """Loss and accuracy on (x, y). `running`: eval mode. `batch`: statistics of each batch of
    `batch_size`; a trailing batch of one sample is left out (its variance is undefined).
    `with_predictions`: also each sample's predicted class, (N,), -1 where left out."""
    if len(x) == 0:
        return {"loss": math.nan, "acc": math.nan}
    if mode == "running":
        model.eval()
        chunk = EVAL_CHUNK
        context = _nothing()
    elif mode == "batch":
        chunk = batch_size
        context = batch_statistics(model)
    else:
        raise ValueError(f"eval mode: unknown {mode!r}")
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    predictions = torch.full((len(x),), -1, dtype=torch.int64, device=x.device) if with_predictions else None
    counted = 0
    with context:
        for start in range(0, len(x), chunk):
            xb, yb = x[start : start + chunk], y[start : start + chunk]
            if mode == "batch" and len(xb) < 2:
                continue
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            predicted = logits.argmax(1)
            correct += (predicted == yb).sum()
            if predictions is not None:
                predictions[start : start + len(xb)] = predicted
            counted += len(xb)
    metrics: dict[str, Any] = {"loss": loss_sum.item() / counted, "acc": correct.item() / counted}
    if predictions is not None:
        metrics["predictions"] = predictions
    return metrics


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def final_evals(model: nn.Module, splits: Splits, cfg: Config, last_epoch: dict[str, Any]) -> list[dict[str, Any]]:
    """Validation and test accuracy per evaluation mode (EvalConfig.bn_stats); batch statistics
    at each eval batch size. Running statistics were just measured at the end of the last epoch:
    reuse, don't recompute. Every other mode's row says how many of its predictions differ from
    the running-statistics ones (`disagree`, a fraction of the samples it scored)."""
    rows = []
    has_bn = cfg.model.batch_statistics
    recalibrated = recalibrated_copy(model, splits.train_x, cfg.train.batch_size) \
        if has_bn and "recalibrated" in cfg.eval.bn_stats else None
    # Without BN every mode is the same network: record it once.
    modes = cfg.eval.bn_stats if has_bn else ["running"]
    data = {"val": (splits.val_x, splits.val_y), "test": (splits.test_x, splits.test_y)}
    running = {split: evaluate(model, x, y, "running", 0, with_predictions=True).get("predictions")
               for split, (x, y) in data.items()} if any(mode != "running" for mode in modes) else {}
    orders = {"sorted": {split: torch.argsort(y, stable=True) for split, (_, y) in data.items()},
              "shuffled": {split: torch.randperm(len(y), generator=generator(cfg.seed, STREAM_EVAL_ORDER, index))
                           .to(y.device) for index, (split, (_, y)) in enumerate(data.items())}}
    for mode in modes:
        for size in cfg.eval.batch_sizes if mode in ("batch", "sorted", "shuffled") else [None]:
            for split, (x, y) in data.items():
                if mode == "running":
                    metrics = {"loss": last_epoch[f"{split}_loss"], "acc": last_epoch[f"{split}_acc"]}
                elif mode == "recalibrated":
                    metrics = evaluate(recalibrated, x, y, "running", 0, with_predictions=True)
                elif mode in orders:
                    order = orders[mode][split]
                    metrics = evaluate(model, x[order], y[order], "batch", size or 0, with_predictions=True)
                    if "predictions" in metrics:  # back to the stored order, to compare
                        metrics["predictions"] = torch.empty_like(metrics["predictions"]).scatter_(
                            0, order, metrics["predictions"])
                else:
                    metrics = evaluate(model, x, y, mode, size or 0, with_predictions=True)
                predicted = metrics.pop("predictions", None)
                if predicted is not None and running.get(split) is not None:
                    scored = predicted >= 0
                    metrics["disagree"] = (predicted[scored] != running[split][scored]).double().mean().item()
                rows.append({"split": split, "bn_stats": mode, "batch_size": size, **metrics})
    return rows


@torch.no_grad()
def recalibrated_copy(model: nn.Module, train_x: torch.Tensor, batch_size: int) -> nn.Module:
    """A copy whose BN statistics are re-estimated over one pass of the training set in batches
    of the training batch size: the cumulative average of batch means and unbiased variances,
    Ioffe & Szegedy's Alg. 2 (its m/(m-1) correction is BN's unbiased running variance)."""
    import copy

    copied = copy.deepcopy(model).eval()
    for module in copied.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # None: a cumulative average rather than an exponential one
            module.train()
    for start in range(0, len(train_x) - 1, batch_size):
        chunk = train_x[start : start + batch_size]
        if len(chunk) >= 2:
            copied(chunk)
    return copied.eval()
