"""Device choice, the training loop, evaluation modes and instrumentation. Writes no files.

The network is small, so what costs time is per-step overhead, not FLOPs: the dataset is one
tensor on the device, batches are index slices of a seeded permutation, nothing syncs with the
host between log steps, and the optimizer is the fused one where torch has it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.config import Config, TrainConfig
from bnlab.data import Splits
from bnlab.errors import ConfigError
from bnlab.model import STREAM_DATA_ORDER, STREAM_DROPOUT, build_model, generator, stream_seed

Event = dict[str, Any]
OnEvent = Callable[[Event], None]

PROBE_SAMPLES = 1000  # fixed training images whose pre-activations show the distribution drift
PROBE_UNITS = 3  # units per hidden layer, spread across its width
PROBE_PERCENTILES = (0.15, 0.50, 0.85)
EVAL_CHUNK = 5000  # running-statistics evaluation does not depend on batch size: use big chunks


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


def _fused_supported(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda", "mps")


OPTIMIZERS: dict[str, Callable[[Any, TrainConfig, torch.device], torch.optim.Optimizer]] = {
    "sgd": lambda params, cfg, device: torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True
    ),
    "nesterov": lambda params, cfg, device: torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True, foreach=True
    ),
    "adam": lambda params, cfg, device: torch.optim.Adam(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fused_supported(device)
    ),
    "adamw": lambda params, cfg, device: torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fused_supported(device)
    ),
}


def epoch_order(seed: int, epoch: int, n_train: int, device: torch.device) -> torch.Tensor:
    """The batch order of one epoch: a function of seed and epoch only, so arms that differ in
    anything else (placement, lr, dropout) see the same batches."""
    return torch.randperm(n_train, generator=generator(seed, STREAM_DATA_ORDER, epoch)).to(device)


def batches_per_epoch(n_train: int, batch_size: int, has_bn: bool) -> int:
    """Full batches, plus the partial last one unless BN would see a single sample there."""
    full, remainder = divmod(n_train, batch_size)
    keep_partial = remainder >= (2 if has_bn else 1)
    return full + int(keep_partial)


@dataclass
class RunResult:
    status: str  # done | diverged
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    diverged_step: int | None = None
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)


# --- evaluation ----------------------------------------------------------------------------------


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
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str, batch_size: int) -> dict[str, float]:
    """Loss and accuracy on (x, y). `running`: eval mode. `batch`: statistics of each batch of
    `batch_size`; a trailing batch of one sample is left out (its variance is undefined)."""
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
    counted = 0
    with context:
        for start in range(0, len(x), chunk):
            xb, yb = x[start : start + chunk], y[start : start + chunk]
            if mode == "batch" and len(xb) < 2:
                continue
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(1) == yb).sum()
            counted += len(xb)
    return {"loss": loss_sum.item() / counted, "acc": correct.item() / counted}


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# --- probes --------------------------------------------------------------------------------------


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
    from bnlab.model import ACTIVATIONS

    return list(ACTIVATIONS.values())


def _probe_units(width: int) -> list[int]:
    count = min(PROBE_UNITS, width)
    return sorted({round(i * (width - 1) / max(count - 1, 1)) for i in range(count)})


# --- the loop ------------------------------------------------------------------------------------


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def train(cfg: Config, splits: Splits, on_event: OnEvent | None = None) -> RunResult:
    """Train one config on already-loaded splits; return everything the run folder records."""
    emit = on_event or (lambda event: None)
    device = splits.train_x.device
    started = time.perf_counter()
    model = build_model(cfg.model, splits.train_x.shape[1], 10, cfg.seed).to(device)
    optimizer = OPTIMIZERS[cfg.train.optimizer](model.parameters(), cfg.train, device)
    # Dropout draws from the global generator; seed it so the masks repeat run to run.
    torch.manual_seed(stream_seed(cfg.seed, STREAM_DROPOUT))

    n_train = len(splits.train_x)
    has_bn = cfg.model.bn != "none"
    per_epoch = batches_per_epoch(n_train, cfg.train.batch_size, has_bn)
    if per_epoch == 0:
        raise ConfigError(
            f"train.batch_size: {n_train} training image(s) make no batch of >= 2 for BN; "
            "use more data or model.bn=none"
        )
    total_steps = cfg.train.steps or per_epoch * cfg.train.epochs
    n_epochs = math.ceil(total_steps / per_epoch)
    every_steps = cfg.eval.every_steps
    log_every = cfg.train.log_every
    probe = PreActivationProbe(model, splits.train_x[:PROBE_SAMPLES])
    result = RunResult(status="done", device=str(device))
    result.probes += probe.record(0)
    emit({"kind": "start", "total_steps": total_steps, "epochs": n_epochs, "per_epoch": per_epoch})

    step = 0
    train_seconds = 0.0
    for epoch in range(1, n_epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        permutation = epoch_order(cfg.seed, epoch, n_train, device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        steps_this_epoch = min(per_epoch, total_steps - step)
        for batch_index in range(steps_this_epoch):
            indices = permutation[batch_index * cfg.train.batch_size : (batch_index + 1) * cfg.train.batch_size]
            xb, yb = splits.train_x[indices], splits.train_y[indices]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step += 1
            log_now = step % log_every == 0
            eval_now = every_steps is not None and step % every_steps == 0
            if log_now:
                grad_norm = _grad_norm(model)
            optimizer.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(yb)
            if log_now or eval_now:
                row: dict[str, Any] = {"step": step, "epoch": epoch}
                if log_now:
                    batch_loss = loss.item()
                    row |= {
                        "train_loss": batch_loss,
                        "train_acc": (logits.argmax(1) == yb).float().mean().item(),
                        "grad_norm": grad_norm.item(),
                    }
                    if not math.isfinite(batch_loss):
                        result.status, result.diverged_step = "diverged", step
                        result.steps.append(row)
                        break
                    result.probes += probe.record(step)
                if eval_now:
                    row["val_acc"] = evaluate(model, splits.val_x, splits.val_y, "running", 0)["acc"]
                    row["test_acc"] = evaluate(model, splits.test_x, splits.test_y, "running", 0)["acc"]
                    model.train()
                result.steps.append(row)
                emit({"kind": "step", "step": step, "epoch": epoch, **row})
        epoch_train_seconds = time.perf_counter() - epoch_started
        train_seconds += epoch_train_seconds
        train_loss = (loss_sum / max(seen, 1)).item()
        if result.status == "diverged" or not math.isfinite(train_loss):
            result.status = "diverged"
            result.diverged_step = result.diverged_step or step
            break
        val = evaluate(model, splits.val_x, splits.val_y, "running", 0)
        test = evaluate(model, splits.test_x, splits.test_y, "running", 0)
        epoch_row = {
            "epoch": epoch,
            "step": step,
            "train_loss": train_loss,
            "train_acc": correct.item() / max(seen, 1),
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "test_loss": test["loss"],
            "test_acc": test["acc"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - epoch_started,
        }
        result.epochs.append(epoch_row)
        emit({"kind": "epoch", "epochs": n_epochs, "samples_per_second": seen / epoch_train_seconds, **epoch_row})

    if result.status == "done":
        if not result.probes or result.probes[-1]["step"] != step:
            result.probes += probe.record(step)
        result.evals = final_evals(model, splits, cfg, result.epochs[-1])
        result.final = {key: value for key, value in result.epochs[-1].items() if key not in ("epoch", "lr")}
        best = max(result.epochs, key=lambda row: row["val_acc"] if math.isfinite(row["val_acc"]) else -1)
        result.best = {"val_acc": best["val_acc"], "epoch": best["epoch"], "test_acc": best["test_acc"]}
    result.timings = {
        "seconds_total": time.perf_counter() - started,
        "seconds_train": train_seconds,
        "steps": step,
        "samples_per_second": step * cfg.train.batch_size / train_seconds if train_seconds else 0.0,
    }
    result.state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    emit({"kind": "end", "status": result.status})
    return result


def final_evals(model: nn.Module, splits: Splits, cfg: Config, last_epoch: dict[str, Any]) -> list[dict[str, Any]]:
    """Validation and test accuracy per evaluation mode; batch statistics at each eval batch size.
    Running statistics were just measured at the end of the last epoch: reuse, don't recompute."""
    rows = []
    has_bn = cfg.model.bn != "none"
    # Without BN both modes are the same network: record it once.
    for mode in cfg.eval.bn_stats if has_bn else ["running"]:
        for size in cfg.eval.batch_sizes if mode == "batch" else [None]:
            for split, x, y in (("val", splits.val_x, splits.val_y), ("test", splits.test_x, splits.test_y)):
                if mode == "running":
                    metrics = {"loss": last_epoch[f"{split}_loss"], "acc": last_epoch[f"{split}_acc"]}
                else:
                    metrics = evaluate(model, x, y, mode, size or 0)
                rows.append({"split": split, "bn_stats": mode, "batch_size": size, **metrics})
    return rows
