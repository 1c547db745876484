"""The solo training loop, and the bookkeeping it shares with the stacked engine. Writes no files.

The network is small, so what costs time is per-step overhead, not FLOPs: the dataset is one
tensor on the device, batches are index slices of a seeded permutation, nothing syncs with the
host between log steps, and the optimizer is torch's fused kernel (bnlab.engine.optim).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab import faults
from bnlab.config import Config, TrainConfig
from bnlab.data.tensors import Splits
from bnlab.engine.evaluation import evaluate, final_evals
from bnlab.engine.ics import InputDrift, gradient_ics, rng_state
from bnlab.engine.model import STREAM_DATA_ORDER, STREAM_DROPOUT, build_model, generator, stream_seed
from bnlab.engine.optim import ForeachSGD, FusedAdam
from bnlab.engine.probes import PROBE_POINTS, PROBE_SAMPLES, PreActivationProbe, variance_shift
from bnlab.errors import ConfigError

Event = dict[str, Any]
OnEvent = Callable[[Event], None]

OPTIMIZERS: dict[str, Callable[[Any, TrainConfig], Any]] = {
    "sgd": lambda params, cfg: ForeachSGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
    "nesterov": lambda params, cfg: ForeachSGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                               weight_decay=cfg.weight_decay, nesterov=True),
    "adam": lambda params, cfg: FusedAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adamw": lambda params, cfg: FusedAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled=True),
}


def epoch_order(seed: int, epoch: int, n_train: int, device: torch.device) -> torch.Tensor:
    """The batch order of one epoch: a function of seed and epoch only, so arms that differ in
    anything else (placement, lr, dropout) see the same batches."""
    return torch.randperm(n_train, generator=generator(seed, STREAM_DATA_ORDER, epoch)).to(device)


def gather_batch(splits: Splits, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images and labels at `indices`, of any shape: (B,) for a solo run, (K, B) for a
    stack. index_select, not splits.train_x[indices]: advanced indexing gathers element by element,
    5-8x slower for rows of 784 floats on this CPU (2.4 ms against 0.3 ms per batch-128 step of 10)."""
    flat = indices.reshape(-1)
    x = splits.train_x.index_select(0, flat).view(*indices.shape, splits.train_x.shape[1])
    return x, splits.train_y.index_select(0, flat).view(indices.shape)


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
    layers: list[dict[str, Any]] = field(default_factory=list)  # per-layer probes (eval.variance_shift)
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    diverged_step: int | None = None
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)


# --- bookkeeping shared by the solo and the stacked engine -------------------------------------


@dataclass(frozen=True)
class Schedule:
    """How many steps a run takes, and which of them log or evaluate: the same for every engine."""

    per_epoch: int
    total_steps: int
    epochs: int
    log_every: int
    every_steps: int | None

    def steps_in_epoch(self, steps_done: int) -> int:
        return min(self.per_epoch, self.total_steps - steps_done)

    def logs(self, step: int) -> bool:
        return step % self.log_every == 0

    def evaluates(self, step: int) -> bool:
        return self.every_steps is not None and step % self.every_steps == 0


def make_schedule(cfg: Config, n_train: int) -> Schedule:
    per_epoch = batches_per_epoch(n_train, cfg.train.batch_size, cfg.model.batch_statistics)
    if per_epoch == 0:
        raise ConfigError(
            f"train.batch_size: {n_train} training image(s) make no batch of >= 2 for BN; "
            "use more data or model.bn=none"
        )
    total_steps = cfg.train.steps or per_epoch * cfg.train.epochs
    return Schedule(per_epoch, total_steps, math.ceil(total_steps / per_epoch), cfg.train.log_every,
                    cfg.eval.every_steps)


def run_timings(seconds_total: float, seconds_train: float, steps: int, batch_size: int,
                stack_size: int) -> dict[str, float]:
    """A stacked run reports its stack's wall time: its throughput is its own samples over it."""
    return {"seconds_total": seconds_total, "seconds_train": seconds_train, "steps": steps,
            "samples_per_second": steps * batch_size / seconds_train if seconds_train else 0.0,
            "stack_size": stack_size}


class RunBook:
    """One run's records, kept the same way by both engines: logged steps, probes, evaluations
    during training and at each epoch's end, divergence, final evaluations, the state dict.

    `model` is an nn.Sequential shaped by build_model that holds the run's current weights; the
    stacked engine's are views into its stacked tensors, so nothing is copied to evaluate.
    """

    def __init__(self, cfg: Config, splits: Splits, model: nn.Sequential, schedule: Schedule,
                 emit: OnEvent) -> None:
        self.cfg, self.splits, self.model, self.schedule, self._on_event = cfg, splits, model, schedule, emit
        self.probe = PreActivationProbe(model, splits.train_x[:PROBE_SAMPLES])
        self.probe_every = schedule.log_every * max(1, math.ceil(schedule.total_steps
                                                                 / (schedule.log_every * PROBE_POINTS)))
        self.result = RunResult(status="done", device=str(splits.train_x.device))
        self.result.probes += self.probe.record(0)
        self.emit({"kind": "start", "total_steps": schedule.total_steps, "epochs": schedule.epochs,
                   "per_epoch": schedule.per_epoch})

    def emit(self, event: dict[str, Any]) -> None:
        faults.hold(f"train.{event['kind']}")
        self._on_event(event)

    def record_step(self, step: int, epoch: int, batch: tuple[float, float, float] | None, eval_now: bool) -> bool:
        """A steps row: `batch` is (loss, accuracy, gradient norm) on a log step, else None.
        False when the batch loss is not finite: the run has diverged and must stop."""
        row: dict[str, Any] = {"step": step, "epoch": epoch}
        if batch is not None:
            row |= {"train_loss": batch[0], "train_acc": batch[1], "grad_norm": batch[2]}
            if not math.isfinite(batch[0]):
                self.result.status, self.result.diverged_step = "diverged", step
                self.result.steps.append(row)
                return False
            if step % self.probe_every == 0:
                self.result.probes += self.probe.record(step)
        if eval_now:
            evaluated = self.evaluate_epoch()
            row |= {"val_acc": evaluated["val"]["acc"], "test_acc": evaluated["test"]["acc"]}
            row |= _on_train_images(evaluated)
        self.result.steps.append(row)
        self.emit({"kind": "step", "step": step, "epoch": epoch, **row})
        return True

    def epoch_finite(self, step: int, train_loss: float) -> bool:
        """False once the run has diverged, by a logged step or by this epoch's mean loss."""
        if self.result.status == "diverged":
            return False
        if not math.isfinite(train_loss):
            self.result.status, self.result.diverged_step = "diverged", step
            return False
        return True

    def evaluate_epoch(self) -> dict[str, dict[str, float]]:
        """Loss and accuracy with running statistics, as now: on validation and test, and with
        eval.train_eval on the training images too (a forward pass over all of them)."""
        splits = self.splits
        evaluated = {"val": evaluate(self.model, splits.val_x, splits.val_y, "running", 0),
                     "test": evaluate(self.model, splits.test_x, splits.test_y, "running", 0)}
        if self.cfg.eval.train_eval:
            evaluated["train_eval"] = evaluate(self.model, splits.train_x, splits.train_y, "running", 0)
        return evaluated

    def record_epoch(self, epoch: int, step: int, train_loss: float, train_acc: float,
                     evaluated: dict[str, dict[str, float]], lr: float, seconds: float,
                     samples_per_second: float) -> None:
        val, test = evaluated["val"], evaluated["test"]
        row = {"epoch": epoch, "step": step, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val["loss"], "val_acc": val["acc"], "test_loss": test["loss"], "test_acc": test["acc"]}
        row |= {**_on_train_images(evaluated), "lr": lr, "seconds": seconds}
        self.result.epochs.append(row)
        self.emit({"kind": "epoch", "epochs": self.schedule.epochs, "samples_per_second": samples_per_second, **row})

    def finish(self, step: int, timings: dict[str, float]) -> RunResult:
        result = self.result
        if result.status == "done":
            if not result.probes or result.probes[-1]["step"] != step:
                result.probes += self.probe.record(step)
            result.evals = final_evals(self.model, self.splits, self.cfg, result.epochs[-1])
            if self.cfg.eval.variance_shift and self.cfg.model.batch_statistics:
                result.layers = variance_shift(self.model, self.splits.test_x, step)
            result.final = {key: value for key, value in result.epochs[-1].items() if key not in ("epoch", "lr")}
            best = max(result.epochs, key=lambda row: row["val_acc"] if math.isfinite(row["val_acc"]) else -1)
            result.best = {"val_acc": best["val_acc"], "epoch": best["epoch"], "test_acc": best["test_acc"]}
        result.timings = timings
        # A copy, not the model's tensors: the stacked engine's are views into all K members' storage.
        state = self.model.state_dict()
        result.state_dict = {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}
        self.emit({"kind": "end", "status": result.status})
        return result


def _on_train_images(evaluated: dict[str, dict[str, float]]) -> dict[str, float]:
    """The eval-mode columns on the training images, when eval.train_eval asked for them."""
    on_train = evaluated.get("train_eval")
    return {} if on_train is None else {"train_eval_loss": on_train["loss"], "train_eval_acc": on_train["acc"]}


# --- the solo loop -------------------------------------------------------------------------------


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def train(cfg: Config, splits: Splits, on_event: OnEvent | None = None) -> RunResult:
    """Train one config on already-loaded splits; return everything the run folder records.
    The network computes in the dtype of splits.train_x (float32 from load_dataset; the oracle
    tests compare engines in float64)."""
    emit = on_event or (lambda event: None)
    device = splits.train_x.device
    started = time.perf_counter()
    model = build_model(cfg.model, splits.train_x.shape[1], 10, cfg.seed).to(device, splits.train_x.dtype)
    optimizer = OPTIMIZERS[cfg.train.optimizer](model.parameters(), cfg.train)
    # Dropout draws from the global generator; seed it so the masks repeat run to run.
    torch.manual_seed(stream_seed(cfg.seed, STREAM_DROPOUT))
    n_train = len(splits.train_x)
    schedule = make_schedule(cfg, n_train)
    book = RunBook(cfg, splits, model, schedule, emit)
    drift = InputDrift(model, splits.train_x[:PROBE_SAMPLES]) if cfg.eval.grad_ics else None

    step = 0
    train_seconds = 0.0
    for epoch in range(1, schedule.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        permutation = epoch_order(cfg.seed, epoch, n_train, device)
        loss_sum = torch.zeros((), device=device, dtype=splits.train_x.dtype)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for batch_index in range(schedule.steps_in_epoch(step)):
            indices = permutation[batch_index * cfg.train.batch_size : (batch_index + 1) * cfg.train.batch_size]
            xb, yb = gather_batch(splits, indices)
            ics_now = cfg.eval.grad_ics and (step + 1) % book.probe_every == 0
            replay = rng_state(device) if ics_now else None
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad()
            loss.backward()
            step += 1
            log_now, eval_now = schedule.logs(step), schedule.evaluates(step)
            if log_now:
                grad_norm = _grad_norm(model)
            if replay is not None and drift is not None:
                drifted = drift.measure()
                book.result.layers += [row | {"drift": drifted[row["layer"]]}
                                       for row in gradient_ics(model, optimizer, xb, yb, step, replay)]
            optimizer.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(yb)
            if log_now or eval_now:
                batch = None
                if log_now:
                    batch = (loss.item(), (logits.argmax(1) == yb).float().mean().item(), grad_norm.item())
                if not book.record_step(step, epoch, batch, eval_now):
                    break
                model.train()  # evaluation left it in eval mode
        epoch_train_seconds = time.perf_counter() - epoch_started
        train_seconds += epoch_train_seconds
        train_loss = (loss_sum / max(seen, 1)).item()
        if not book.epoch_finite(step, train_loss):
            break
        evaluated = book.evaluate_epoch()
        book.record_epoch(epoch, step, train_loss, correct.item() / max(seen, 1), evaluated,
                          optimizer.param_groups[0]["lr"], time.perf_counter() - epoch_started,
                          seen / epoch_train_seconds)
    timings = run_timings(time.perf_counter() - started, train_seconds, step, cfg.train.batch_size, stack_size=1)
    return book.finish(step, timings)


