"""The experiment schema: data, model, train and eval sections of one run's config. Knows nothing
of torch. Every model forbids unknown keys (pydantic ignores them by default, and a typo'd YAML
key must fail loudly) and every field has a default, so an empty file is a valid config."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bnlab.config._yaml import short_repr

# Names become folder names under runs/: keep them to one safe path component. \Z, not $:
# `$` also matches before a trailing newline, and "abc\n" would become a folder name.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}\Z"
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)\Z"
# (section, field, default) of every field added since run ids were first published (format 1).
LATER_FIELDS = (("model", "norm", "batch"), ("model", "bn_noise", 0.0), ("eval", "train_eval", False),
                ("eval", "variance_shift", False), ("eval", "grad_ics", False))


class Strict(BaseModel):
    """Every file bnlab reads (configs, sweep specs, claim suites): an unknown key is an error, not
    silently ignored (pydantic's default), and a loaded value never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    root: str | None = None  # a folder of IDX files; else BNLAB_DATA, the cache, system copies, download
    val_size: int = Field(5000, ge=0, le=50000)  # held out from the end of train, for choosing lr
    train_subset: int | None = Field(None, ge=1)  # first N training images (after the val split)
    normalize: Literal["standard", "unit", "binary"] = "standard"
    # Off only for datasets that are not the published files (the tests' tiny fixtures):
    # their SHA-256 is still recorded in summary.json.
    verify: bool = True


class ModelConfig(Strict):
    hidden: list[int] = Field(default_factory=lambda: [256, 128, 64], min_length=1)
    activation: Literal["relu", "sigmoid", "tanh", "gelu"] = "relu"
    bn: Literal["none", "before", "after"] = "after"  # relative to the activation
    # What `bn` places there: BatchNorm, or LayerNorm (per sample over the layer's units: no batch
    # statistics, so nothing depends on the batch size; the control that isolates BN's batch part).
    norm: Literal["batch", "layer"] = "batch"
    bn_momentum: float = Field(0.1, gt=0, le=1)  # PyTorch convention: Keras's 0.99 is 0.01 here
    bn_eps: float = Field(1e-5, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    dropout_order: Literal["before_bn", "after_bn"] = "after_bn"
    # `last`: dropout only in the last hidden block, after the last BN (Li et al.'s recommendation).
    dropout_layers: Literal["all", "last"] = "all"
    # BN statistics over ghost batches of this many samples inside each training batch (Hoffer
    # et al. 2017): more noise in the statistics, the regularizer claim's dose-response.
    ghost_batch: int | None = Field(None, ge=2)
    # Noisy BN (inspired by Santurkar et al. 2018, docs/model.md): after each BatchNorm, in
    # training only, every activation of every sample is scaled and shifted by noise whose own
    # mean and spread are redrawn every step; this is the noise scale (0: none).
    bn_noise: float = Field(0.0, ge=0, le=10)
    init: Literal["default", "he", "xavier", "normal"] = "default"
    init_std: float | None = Field(None, gt=0)  # only for init: normal

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, hidden: list[int]) -> list[int]:
        if any(width < 1 for width in hidden):
            raise ValueError(f"every hidden width must be >= 1 (got {hidden})")
        return hidden

    @model_validator(mode="after")
    def _batch_norm_options_need_batch_norm(self) -> ModelConfig:
        if self.norm == "layer" and self.bn == "none":
            raise ValueError("norm: layer needs a place for it: model.bn before or after (bn is 'none')")
        for name, used in (("ghost_batch", self.ghost_batch is not None), ("bn_noise", self.bn_noise > 0)):
            if used and self.bn == "none":
                raise ValueError(f"{name}: only used with model.bn before or after (bn is 'none')")
            if used and self.norm != "batch":
                raise ValueError(f"{name}: only used with model.norm batch (norm is {self.norm!r})")
        return self

    @property
    def batch_statistics(self) -> bool:
        """Whether the network normalises with batch statistics (BatchNorm placed somewhere)."""
        return self.bn != "none" and self.norm == "batch"

    @model_validator(mode="after")
    def _init_std_with_normal(self) -> ModelConfig:
        if self.init == "normal" and self.init_std is None:
            raise ValueError("init_std: required when init is 'normal'")
        if self.init != "normal" and self.init_std is not None:
            raise ValueError(f"init_std: only used with init: normal (init is {self.init!r})")
        return self


class TrainConfig(Strict):
    epochs: int = Field(5, ge=1)
    steps: int | None = Field(None, ge=1)  # when set, replaces epochs
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "nesterov", "adam", "adamw"] = "adam"  # keys of train.OPTIMIZERS
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)  # sgd and nesterov only
    weight_decay: float = Field(0.0, ge=0)
    log_every: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _momentum_fits_optimizer(self) -> TrainConfig:
        if self.momentum > 0 and self.optimizer in ("adam", "adamw"):
            raise ValueError(f"momentum: only used by sgd and nesterov (optimizer is {self.optimizer!r})")
        if self.optimizer == "nesterov" and self.momentum == 0:
            raise ValueError("momentum: nesterov needs momentum > 0")
        return self


class EvalConfig(Strict):
    # running: the running averages. recalibrated: population statistics re-estimated over one
    # pass of the training set (Ioffe & Szegedy, Alg. 2). batch: each eval batch's own statistics,
    # at each of batch_sizes. sorted: the same on class-sorted batches (the non-i.i.d. case).
    # shuffled: the same on batches in an order drawn from the run's seed (the stored order of the
    # test set is not random enough to stand for i.i.d. batches).
    bn_stats: list[Literal["running", "recalibrated", "batch", "sorted", "shuffled"]] = Field(
        default_factory=lambda: ["running"], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1000], min_length=1)
    every_steps: int | None = Field(None, ge=1)
    # Eval-mode (running statistics, no dropout) loss and accuracy on the training images at every
    # validation checkpoint: the train side of a generalization gap that batch noise cannot lower.
    train_eval: bool = False
    # At the end, per BatchNorm layer: its running variance against the variance of its input on
    # the test set in eval mode (Li et al. 2019's variance shift; docs/probes.md). layers.csv.
    variance_shift: bool = False
    # Santurkar et al.'s gradient ICS and the drift of each layer's input, per layer at the
    # activation probe's steps (about 25 a run):
    # solo runs only (a sweep trains them unstacked). layers.csv.
    grad_ics: bool = False

    @field_validator("bn_stats", mode="before")
    @classmethod
    def _scalar_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("batch_sizes")
    @classmethod
    def _batch_sizes_above_one(cls, sizes: list[int]) -> list[int]:
        # Batch statistics of a single sample are undefined (zero variance).
        if any(size < 2 for size in sizes):
            raise ValueError(f"every eval batch size must be >= 2 (got {sizes})")
        return sizes


class Config(Strict):
    name: str = "run"  # a label and a folder name under runs/: not part of the run id
    seed: int = Field(0, ge=0, lt=2**31)
    device: str = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return safe_name(name)

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.match(DEVICE_PATTERN, device):
            raise ValueError(f"must be auto, cpu, mps, cuda or cuda:N (got {short_repr(device)})")
        return device

    @model_validator(mode="after")
    def _bn_needs_two_samples(self) -> Config:
        if self.model.batch_statistics and self.train.batch_size < 2:
            raise ValueError(
                f"train.batch_size: 1 is not allowed with model.bn={self.model.bn} "
                "(batch statistics need at least 2 samples); use >= 2 or model.bn=none"
            )
        return self

    def run_id(self) -> str:
        """Short hash of the resolved config minus `name`: the same run wherever it executes.
        A field added after run ids were first published is left out while it holds its
        default, so every run recorded before it existed keeps its id and folder."""
        dumped = self.model_dump(exclude={"name"})
        for section, field, default in LATER_FIELDS:
            if dumped[section][field] == default:
                del dumped[section][field]
        payload = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def safe_name(name: str) -> str:
    """A run or sweep name becomes a folder under runs/: one safe path component, or ValueError."""
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"must be 1-100 letters, digits, '.', '_', '+' or '-', starting with a letter "
                         f"or digit, so it stays inside runs/ (got {short_repr(name)})")
    return name
