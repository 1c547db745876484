"""Which runs may train together as one stack: those whose configs agree on everything that shapes
the computation (stack_key). Plain config logic: the sweep plans stacks with it before any
tensor exists."""

from __future__ import annotations

from bnlab.config import Config


def stackable(cfg: Config) -> bool:
    """Whether a run can train in a stack at all: the gradient-ICS probe replays a run's own
    optimizer step on a copy, which only the solo engine does."""
    return not cfg.eval.grad_ics


def stack_key(cfg: Config) -> tuple:
    """Everything that shapes the computation, as (field, value) pairs: configs with equal keys
    can share a stack. Seeds and the per-run scalars (lr, weight_decay, momentum, dropout rate,
    bn_momentum) may differ within a stack."""
    model, train, evaluation = cfg.model, cfg.train, cfg.eval
    return (
        ("device", cfg.device),
        ("data", tuple(sorted(cfg.data.model_dump().items()))),
        ("model.hidden", tuple(model.hidden)),
        ("model.activation", model.activation),
        ("model.bn", model.bn),
        ("model.norm", model.norm),
        ("model.bn_noise > 0", model.bn_noise > 0),  # whether the network has noise modules at all
        ("model.dropout_order", model.dropout_order),
        ("model.init", model.init),
        ("model.init_std", model.init_std),
        ("model.bn_eps", model.bn_eps),
        ("model.dropout > 0", model.dropout > 0),  # whether the network has Dropout modules at all
        ("model.dropout_layers", model.dropout_layers),
        ("model.ghost_batch", model.ghost_batch),
        ("train.batch_size", train.batch_size),
        ("train.length", ("steps", train.steps) if train.steps else ("epochs", train.epochs)),
        ("train.optimizer", train.optimizer),
        ("train.log_every", train.log_every),
        ("eval.bn_stats", tuple(evaluation.bn_stats)),
        ("eval.batch_sizes", tuple(evaluation.batch_sizes)),
        ("eval.every_steps", evaluation.every_steps),
    )
