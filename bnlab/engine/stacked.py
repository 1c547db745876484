"""K runs trained as one network: how a sweep beats running its runs one at a time on a CPU.

A 784-256-128-64-10 MLP at batch 32 spends most of a CPU step on fixed cost (Python, dispatch,
autograd, the optimizer call), not arithmetic; a stack pays it once for K runs. Member k's
weights are W[k] of (K, out, in) tensors, the same (out, in) as its nn.Linear, and activations
are (K, features, batch): a Linear is one batched matmul, BatchNorm is the native kernel over
(1, K*features, batch), i.e. per member and unit over that member's own batch, and the logits
(K, 10, batch) go straight into cross_entropy. No transposes, no copies per member.

Per member, exactly as in its solo run (bnlab.engine.train.train): initial weights (build_model with
its seed), batch order (epoch_order), dropout masks (its own generator on the solo stream), BN
batch and running statistics, and updates: the solo engine's optimizer (bnlab.engine.optim: torch's
fused and foreach kernels), over views of the members' slices, one param group per distinct (lr, weight
decay, momentum). Hand-written per-member optimizer math on (K, 1, 1) hyperparameter tensors
takes several passes over memory where the fused kernel takes one, and the optimizer is memory
bound here; the price of torch's kernels is a call per param group, so a stack of one lr is
cheaper than a stack of many (docs/stacked.md). The loss is the sum of each member's mean loss,
so each member's gradient is its own. float64 stacks match solo runs to rounding; in float32 the
batched kernels sum in another order, so a stacked run equals its solo run in distribution, not
bitwise.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.config import Config, TrainConfig
from bnlab.data.tensors import Splits
from bnlab.engine.compatible import stack_key, stackable
from bnlab.engine.model import (
    STREAM_DROPOUT,
    BatchNoise,
    GhostBatchNorm1d,
    build_model,
    ghost_chunks,
    noise_draws,
    stream_seed,
)
from bnlab.engine.train import (
    OPTIMIZERS,
    OnEvent,
    RunBook,
    RunResult,
    epoch_order,
    gather_batch,
    make_schedule,
    run_timings,
)

N_CLASSES = 10


def _hyper(train: TrainConfig) -> tuple[float, float, float]:
    """What one optimizer param group holds; members that share it update in one call."""
    return (train.lr, train.weight_decay, train.momentum)


@dataclass
class _Member:
    index: int  # position in train_stack's input
    cfg: Config
    model: nn.Sequential  # solo-shaped, its tensors views into the stack: evaluation and records
    book: RunBook
    dropout_rng: torch.Generator


class _Stack:
    """The K members' parameters, statistics and optimizer state as (K, ...) tensors.

    The stacked tensors are keyed by the solo state_dict's names ("0.weight", "2.running_mean").
    Members leave the stack (diverged) by indexing every member-indexed tensor.
    """

    def __init__(self, members: list[_Member], device: torch.device) -> None:
        self.members = members
        self.device = device
        first = members[0].model
        states = [member.model.state_dict() for member in members]
        parameter_names = {name for name, _ in first.named_parameters()}
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        for name in states[0]:
            if name.endswith("num_batches_tracked"):
                continue  # a counter, set from the step count when a member's record is written
            stacked = torch.stack([state[name] for state in states])
            if stacked.dim() == 2:
                stacked = stacked.unsqueeze(-1)  # per-unit vectors as (K, H, 1): they broadcast over the batch
            if name in parameter_names:
                self.params[name] = stacked.requires_grad_()
            else:
                self.buffers[name] = stacked
        for name in [name for name in self.buffers if name.endswith(("running_mean", "running_var"))]:
            self.buffers[name.replace("running", "batch")] = torch.zeros_like(self.buffers[name])
        self.dtype = next(iter(self.params.values())).dtype
        momentum = torch.tensor([[[m.cfg.model.bn_momentum]] for m in members], dtype=self.dtype, device=device)
        self.buffers["bn_momentum"], self.buffers["bn_keep"] = momentum, 1 - momentum  # (K, 1, 1)
        self.program = [(self._step_function(module), str(position), module) for position, module in enumerate(first)]
        self.eps = members[0].cfg.model.bn_eps
        self.order = torch.empty(0)
        self.loss_sum = torch.empty(0)
        self.correct = torch.empty(0)
        self._bind_members()
        self.optimizer = self._build_optimizer(None)

    def _step_function(self, module: nn.Module) -> Any:
        if isinstance(module, nn.Linear):
            return self._linear
        if isinstance(module, nn.BatchNorm1d):
            return self._batch_norm
        if isinstance(module, nn.LayerNorm):
            return self._layer_norm
        if isinstance(module, nn.Dropout):
            return self._dropout
        if isinstance(module, BatchNoise):
            return self._noise
        return self._elementwise  # the activations

    # --- the network --------------------------------------------------------------------------

    def _linear(self, h: torch.Tensor, position: str, module: nn.Module) -> torch.Tensor:
        weight = self.params[position + ".weight"]  # (K, out, in)
        bias = self.params.get(position + ".bias")  # (K, out, 1)
        if bias is None:
            return torch.bmm(weight, h)
        return torch.baddbmm(bias, weight, h)  # (K, out, B)

    def _batch_norm(self, h: torch.Tensor, position: str, module: nn.Module) -> torch.Tensor:
        if isinstance(module, GhostBatchNorm1d):
            # As the solo module: each ghost batch normalised, and running stats updated, in turn.
            return torch.cat([self._batch_norm_over(chunk, position)
                              for chunk in ghost_chunks(h, module.ghost_batch, dim=2)], dim=2)
        return self._batch_norm_over(h, position)

    def _batch_norm_over(self, h: torch.Tensor, position: str) -> torch.Tensor:
        k, width, batch = h.shape
        batch_mean, batch_var = self.buffers[position + ".batch_mean"], self.buffers[position + ".batch_var"]
        # Channels are (member, unit) pairs, each normalised over its member's batch. Momentum 1
        # makes BN write this batch's statistics (unbiased variance, as its own running average)
        # into batch_*; the running averages then take them at each member's own momentum.
        out = F.batch_norm(h.view(1, k * width, batch), batch_mean.view(-1), batch_var.view(-1),
                           self.params[position + ".weight"].view(-1), self.params[position + ".bias"].view(-1),
                           training=True, momentum=1.0, eps=self.eps)
        keep, momentum = self.buffers["bn_keep"], self.buffers["bn_momentum"]  # (K, 1, 1)
        with torch.no_grad():
            self.buffers[position + ".running_mean"].mul_(keep).addcmul_(batch_mean, momentum)
            self.buffers[position + ".running_var"].mul_(keep).addcmul_(batch_var, momentum)
        return out.view(k, width, batch)

    def _layer_norm(self, h: torch.Tensor, position: str, module: nn.Module) -> torch.Tensor:
        # Per member and sample over its units: layer_norm normalises the last dimension, so the
        # (K, B, H) view; each member's own gain and shift (K, H, 1) then broadcast over the batch.
        normalized = F.layer_norm(h.transpose(1, 2), (h.shape[1],), eps=module.eps).transpose(1, 2)  # (K, H, B)
        return torch.addcmul(self.params[position + ".bias"], normalized, self.params[position + ".weight"])

    def _noise(self, h: torch.Tensor, position: str, module: nn.Module) -> torch.Tensor:
        k, width, batch = h.shape
        draws = [noise_draws((batch, width), member.cfg.model.bn_noise, h.dtype, h.device, member.dropout_rng)
                 for member in self.members]  # each member's solo draws, (B, H), from its own stream
        multiplier = torch.stack([m for m, _ in draws]).transpose(1, 2)  # (K, H, B)
        shift = torch.stack([s for _, s in draws]).transpose(1, 2)
        return torch.addcmul(shift, h, multiplier)

    def _dropout(self, h: torch.Tensor, position: str, module: nn.Module) -> torch.Tensor:
        k, width, batch = h.shape
        masks = []
        for member in self.members:
            # nn.Dropout's own arithmetic on a (B, H) mask from the member's stream: the solo masks.
            keep = 1 - member.cfg.model.dropout
            noise = torch.empty((batch, width), dtype=h.dtype, device=h.device)
            masks.append(noise.bernoulli_(keep, generator=member.dropout_rng).div_(keep))
        return h * torch.stack(masks).transpose(1, 2)

    def _elementwise(self, h: torch.Tensor, position: str, module: nn.Module) -> torch.Tensor:
        return module(h)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training forward and backward on x (K, B, in), y (K, B); returns each member's
        mean loss (K,) and correct count (K,), detached."""
        h = x.transpose(1, 2)  # (K, in, B): a view, which bmm reads as is
        for function, position, module in self.program:
            h = function(h, position, module)
        losses = F.cross_entropy(h, y, reduction="none").mean(1)  # (K,)
        for leaf in self.params.values():
            leaf.grad = None
        losses.sum().backward()
        return losses.detach(), (h.detach().argmax(1) == y).sum(1)

    def grad_norms(self) -> torch.Tensor:
        """Each member's gradient norm over all its parameters, as the solo engine's. (K,)"""
        per_leaf = [torch.linalg.vector_norm(leaf.grad.flatten(1), dim=1) for leaf in self.params.values()]
        return torch.linalg.vector_norm(torch.stack(per_leaf), dim=0)

    # --- the optimizer ------------------------------------------------------------------------

    def _groups(self) -> list[tuple[int, int]]:
        """Runs of members with one _hyper: contiguous, because members are sorted by it."""
        bounds: list[tuple[int, int]] = []
        for position, member in enumerate(self.members):
            if bounds and _hyper(self.members[bounds[-1][0]].cfg.train) == _hyper(member.cfg.train):
                bounds[-1] = (bounds[-1][0], position + 1)
            else:
                bounds.append((position, position + 1))
        return bounds

    def _build_optimizer(self, states: list[list[dict[str, Any]]] | None) -> Any:
        """The solo engine's optimizer over views of each group's slices; `states` (per group,
        per parameter) carries the optimizer state across a change of members."""
        self.bindings: list[tuple[torch.Tensor, str, int, int]] = []  # (view, name, start, stop)
        param_groups = []
        for start, stop in self._groups():
            train = self.members[start].cfg.train
            views = []
            for name, leaf in self.params.items():
                views.append(leaf.detach()[start:stop])
                self.bindings.append((views[-1], name, start, stop))
            param_groups.append({"params": views, "lr": train.lr, "weight_decay": train.weight_decay,
                                 "momentum": train.momentum})
        optimizer = OPTIMIZERS[self.members[0].cfg.train.optimizer](param_groups, self.members[0].cfg.train)
        for group, group_states in zip(optimizer.param_groups, states or [], strict=False):
            for view, state in zip(group["params"], group_states, strict=True):
                optimizer.state[view] = state
        return optimizer

    def update(self) -> None:
        for view, name, start, stop in self.bindings:
            view.grad = self.params[name].grad[start:stop]
        self.optimizer.step()

    # --- members ------------------------------------------------------------------------------

    def _bind_members(self) -> None:
        """Point each member's solo-shaped model at its slices: evaluating it reads the stack."""
        for k, member in enumerate(self.members):
            for name, stacked in [*self.params.items(), *self.buffers.items()]:
                position, _, attribute = name.partition(".")
                if not position.isdigit() or attribute.startswith("batch_"):
                    continue  # stack-only tensors: the members' BN momenta, the last batch statistics
                module = member.model[int(position)]
                view = stacked.detach()[k].view(getattr(module, attribute).shape)
                setattr(module, attribute, nn.Parameter(view, requires_grad=False) if name in self.params else view)

    def start_epoch(self, epoch: int, n_train: int) -> None:
        self.order = torch.stack([epoch_order(m.cfg.seed, epoch, n_train, self.device) for m in self.members])
        self.loss_sum = torch.zeros(len(self.members), dtype=self.dtype, device=self.device)
        self.correct = torch.zeros(len(self.members), dtype=torch.int64, device=self.device)

    def drop(self, leaving: set[int]) -> None:
        """Remove members (by position) from every stacked tensor and from the optimizer."""
        keep = [k for k in range(len(self.members)) if k not in leaving]
        if not keep:
            self.members = []
            return
        states = []
        for (start, stop), group in zip(self._groups(), self.optimizer.param_groups, strict=True):
            local = [k - start for k in keep if start <= k < stop]
            if local:
                rows = torch.tensor(local, dtype=torch.int64, device=self.device)
                # Member-indexed state has the view's leading dimension; Adam's `step` is a scalar.
                states.append([{key: value[rows] if isinstance(value, torch.Tensor) and value.dim() > 0 else value
                                for key, value in self.optimizer.state[view].items()} for view in group["params"]])
        rows = torch.tensor(keep, dtype=torch.int64, device=self.device)
        self.params = {name: leaf.detach()[rows].requires_grad_() for name, leaf in self.params.items()}
        self.buffers = {name: buffer[rows] for name, buffer in self.buffers.items()}
        self.order, self.loss_sum, self.correct = self.order[rows], self.loss_sum[rows], self.correct[rows]
        self.members = [self.members[k] for k in keep]
        self._bind_members()
        self.optimizer = self._build_optimizer(states)


def _set_step_counters(model: nn.Module, steps: int) -> None:
    """num_batches_tracked as the solo run's BN would have counted it: one per training step."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.num_batches_tracked.fill_(steps)


def train_stack(cfgs: Sequence[Config], splits: Splits, on_event: OnEvent | None = None) -> list[RunResult]:
    """Train configs that share stack_key as one stacked network; return their results in input
    order, each as its solo `train` returns it, with the stack's wall time in its timings.

    A member whose loss becomes non-finite is recorded as diverged and leaves the stack; the
    others go on. Events carry `member` (the input position) and `run_id`. The network computes
    in the dtype of splits.train_x.
    """
    if not cfgs:
        raise ValueError("train_stack: no configs")
    if not all(stackable(cfg) for cfg in cfgs):
        raise ValueError("train_stack: eval.grad_ics runs train solo (bnlab.engine.compatible.stackable)")
    keys = [stack_key(cfg) for cfg in cfgs]
    for index, key in enumerate(keys):
        differing = [field for (field, ours), (_, theirs) in zip(key, keys[0], strict=True) if ours != theirs]
        if differing:
            raise ValueError(f"train_stack: config {index} cannot share a stack with config 0: "
                             f"{', '.join(differing)} differ")
    started = time.perf_counter()
    device, dtype = splits.train_x.device, splits.train_x.dtype
    n_train = len(splits.train_x)
    schedule = make_schedule(cfgs[0], n_train)
    emit = on_event or (lambda event: None)
    members = []
    for index in sorted(range(len(cfgs)), key=lambda i: _hyper(cfgs[i].train)):
        cfg = cfgs[index]
        model = build_model(cfg.model, splits.train_x.shape[1], N_CLASSES, cfg.seed).to(device, dtype)
        member_emit = _member_events(emit, index, cfg.run_id())
        dropout_rng = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, STREAM_DROPOUT))
        members.append(_Member(index, cfg, model, RunBook(cfg, splits, model, schedule, member_emit), dropout_rng))
    stack = _Stack(members, device)
    results: dict[int, RunResult] = {}
    batch_size = cfgs[0].train.batch_size

    def finish(member: _Member, step: int, seconds_train: float) -> None:
        _set_step_counters(member.model, step)
        timings = run_timings(time.perf_counter() - started, seconds_train, step, batch_size, len(cfgs))
        results[member.index] = member.book.finish(step, timings)

    step = 0
    train_seconds = 0.0
    for epoch in range(1, schedule.epochs + 1):
        epoch_started = time.perf_counter()
        stack.start_epoch(epoch, n_train)
        seen = 0
        for batch_index in range(schedule.steps_in_epoch(step)):
            indices = stack.order[:, batch_index * batch_size : (batch_index + 1) * batch_size]  # (K, B)
            x, y = gather_batch(splits, indices)
            losses, correct = stack.forward_backward(x, y)
            step += 1
            log_now, eval_now = schedule.logs(step), schedule.evaluates(step)
            if log_now:
                grad_norms = stack.grad_norms()
            stack.update()
            stack.loss_sum.add_(losses, alpha=y.shape[1])
            stack.correct.add_(correct)
            seen += y.shape[1]
            if log_now or eval_now:
                batches = None
                if log_now:  # one host sync for all members; between log steps there is none
                    accuracy = correct.to(losses.dtype) / y.shape[1]
                    batches = torch.stack([losses, accuracy, grad_norms]).T.tolist()
                leaving = set()
                for k, member in enumerate(stack.members):
                    if not member.book.record_step(step, epoch, batches[k] if batches else None, eval_now):
                        finish(member, step, train_seconds + time.perf_counter() - epoch_started)
                        leaving.add(k)
                if leaving:
                    stack.drop(leaving)
                if not stack.members:
                    break
        epoch_train_seconds = time.perf_counter() - epoch_started
        train_seconds += epoch_train_seconds
        train_losses = (stack.loss_sum / max(seen, 1)).tolist()
        train_accs = (stack.correct / max(seen, 1)).tolist()
        leaving = set()
        for k, member in enumerate(stack.members):
            if not member.book.epoch_finite(step, train_losses[k]):
                finish(member, step, train_seconds)
                leaving.add(k)
        if leaving:
            stack.drop(leaving)
        if not stack.members:
            break
        evaluated = [member.book.evaluate_epoch() for member in stack.members]
        seconds = time.perf_counter() - epoch_started  # the stack's epoch, every member's evaluation included
        for k, member in enumerate(stack.members):
            member.book.record_epoch(epoch, step, train_losses[k], train_accs[k], evaluated[k], member.cfg.train.lr,
                                     seconds, seen / epoch_train_seconds)
    for member in stack.members:
        finish(member, step, train_seconds)
    return [results[index] for index in range(len(cfgs))]


def _member_events(emit: OnEvent, index: int, run_id: str) -> OnEvent:
    return lambda event: emit({**event, "member": index, "run_id": run_id})
