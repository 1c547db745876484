"""The experiment schema, YAML loading and dotted overrides. Knows nothing of torch.

Every model forbids unknown keys (pydantic ignores them by default, and a typo'd YAML key must
fail loudly) and every field has a default, so an empty file is a valid config.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bnlab.errors import ConfigError

# A config bigger than this is not a hand-written experiment; refuse it before parsing.
MAX_CONFIG_BYTES = 1 << 20
# Names become folder names under runs/: keep them to one safe path component. \Z, not $:
# `$` also matches before a trailing newline, and "abc\n" would become a folder name.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}\Z"
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)\Z"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    root: str | None = None  # a folder of IDX files; else BNLAB_DATA, the cache, system copies, download
    val_size: int = Field(5000, ge=0, le=50000)  # held out from the end of train, for choosing lr
    train_subset: int | None = Field(None, ge=1)  # first N training images (after the val split)
    normalize: Literal["standard", "unit", "binary"] = "standard"
    # Off only for datasets that are not the published files (the tests' tiny fixtures):
    # their SHA-256 is still recorded in summary.json.
    verify: bool = True


class ModelConfig(_Strict):
    hidden: list[int] = Field(default_factory=lambda: [256, 128, 64], min_length=1)
    activation: Literal["relu", "sigmoid", "tanh", "gelu"] = "relu"
    bn: Literal["none", "before", "after"] = "after"  # relative to the activation
    bn_momentum: float = Field(0.1, gt=0, le=1)  # PyTorch convention: Keras's 0.99 is 0.01 here
    bn_eps: float = Field(1e-5, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    dropout_order: Literal["before_bn", "after_bn"] = "after_bn"
    # `last`: dropout only in the last hidden block, after the last BN (Li et al.'s recommendation).
    dropout_layers: Literal["all", "last"] = "all"
    # BN statistics over ghost batches of this many samples inside each training batch (Hoffer
    # et al. 2017): more noise in the statistics, the regularizer claim's dose-response.
    ghost_batch: int | None = Field(None, ge=2)
    init: Literal["default", "he", "xavier", "normal"] = "default"
    init_std: float | None = Field(None, gt=0)  # only for init: normal

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, hidden: list[int]) -> list[int]:
        if any(width < 1 for width in hidden):
            raise ValueError(f"every hidden width must be >= 1 (got {hidden})")
        return hidden

    @model_validator(mode="after")
    def _ghost_batch_needs_bn(self) -> ModelConfig:
        if self.ghost_batch is not None and self.bn == "none":
            raise ValueError("ghost_batch: only used with model.bn before or after (bn is 'none')")
        return self

    @model_validator(mode="after")
    def _init_std_with_normal(self) -> ModelConfig:
        if self.init == "normal" and self.init_std is None:
            raise ValueError("init_std: required when init is 'normal'")
        if self.init != "normal" and self.init_std is not None:
            raise ValueError(f"init_std: only used with init: normal (init is {self.init!r})")
        return self


class TrainConfig(_Strict):
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


class EvalConfig(_Strict):
    # running: the running averages. recalibrated: population statistics re-estimated over one
    # pass of the training set (Ioffe & Szegedy, Alg. 2). batch: each eval batch's own statistics,
    # at each of batch_sizes. sorted: the same on class-sorted batches (the non-i.i.d. case).
    bn_stats: list[Literal["running", "recalibrated", "batch", "sorted"]] = Field(
        default_factory=lambda: ["running"], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1000], min_length=1)
    every_steps: int | None = Field(None, ge=1)

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


class Config(_Strict):
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
            raise ValueError(f"must be auto, cpu, mps, cuda or cuda:N (got {_short_repr(device)})")
        return device

    @model_validator(mode="after")
    def _bn_needs_two_samples(self) -> Config:
        if self.model.bn != "none" and self.train.batch_size < 2:
            raise ValueError(
                f"train.batch_size: 1 is not allowed with model.bn={self.model.bn} "
                "(batch statistics need at least 2 samples); use >= 2 or model.bn=none"
            )
        return self

    def run_id(self) -> str:
        """Short hash of the resolved config minus `name`: the same run wherever it executes."""
        payload = json.dumps(self.model_dump(exclude={"name"}), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def safe_name(name: str) -> str:
    """A run or sweep name becomes a folder under runs/: one safe path component, or ValueError."""
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"must be 1-100 letters, digits, '.', '_', '+' or '-', starting with a letter "
                         f"or digit, so it stays inside runs/ (got {_short_repr(name)})")
    return name


# --- loading -----------------------------------------------------------------------------------


class _LimitedLoader(yaml.SafeLoader):
    """Safe loading with caps on aliases, nesting and expanded size. A billion-laughs document
    expands without bound even under the alias cap (8 levels of 10 aliases is 10^8 values, and
    anything that walks it, an error message's repr included, hangs); nesting deeper than
    Python's recursion limit crashes the recursive composer."""

    max_aliases = 100
    max_depth = 100
    max_values = 100_000  # a hand-written config holds hundreds

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases_seen = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._aliases_seen += 1
            if self._aliases_seen > self.max_aliases:
                raise yaml.YAMLError(f"more than {self.max_aliases} aliases")
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise yaml.YAMLError(f"nested deeper than {self.max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > self.max_values:
            raise yaml.YAMLError(f"more than {self.max_values} values once aliases are expanded")
        return node


def _expanded_size(node: yaml.Node, seen: dict[int, int | None]) -> int:
    """Values in `node` with every alias expanded; memoized by node, so linear in the document.
    A node met again while its own size is being counted is an alias into itself (`a: &x [*x]`):
    infinitely many values."""
    if id(node) in seen:
        size = seen[id(node)]
        if size is None:
            raise yaml.YAMLError("an alias refers to the node that contains it (a recursive structure)")
        return size
    seen[id(node)] = None
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = []
    seen[id(node)] = size = 1 + sum(_expanded_size(child, seen) for child in children)
    return size


def parse_yaml_text(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_LimitedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{source}: not valid YAML{where}: {' '.join(str(problem).split())}") from None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; every failure is one ConfigError naming the file."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{path}: is a directory, not a YAML file")
        if not stat.S_ISREG(mode):  # a FIFO blocks on open, /dev/zero never ends
            raise ConfigError(f"{path}: not a regular file")
        with path.open("rb") as handle:
            # Bounded, not st_size: the file may grow between stat and read.
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            size = max(path.stat().st_size, len(data))
            raise ConfigError(f"{path}: {size} bytes is over the {MAX_CONFIG_BYTES}-byte limit for a config")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except ValueError:  # os.stat refuses a NUL in a path with ValueError, not OSError
        raise ConfigError(f"{str(path)!r}: not a usable path (it holds a NUL byte)") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    raw = parse_yaml_text(text, str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of fields, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=0.01` -> (["train", "lr"], 0.01); the value parses as a YAML scalar or list."""
    if "=" not in item:
        raise ConfigError(f"override {_short_repr(item)}: expected field=value, e.g. train.lr=0.01")
    path, _, text = item.partition("=")
    parts = path.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {_short_repr(item)}: expected a dotted field name before '='")
    value = parse_yaml_text(text, f"override {_short_repr(item)}")
    return parts, value


def check_dotted_path(parts: Sequence[str], model: type[BaseModel] = Config) -> None:
    """Raise ConfigError unless `parts` names a field of the schema (with a did-you-mean)."""
    current: type[BaseModel] = model
    for depth, part in enumerate(parts):
        fields = current.model_fields
        if part not in fields:
            prefix = ".".join(parts[:depth])
            raise ConfigError(
                f"{'.'.join(parts)}: unknown field{_did_you_mean(part, fields)}; allowed"
                f"{' in ' + prefix if prefix else ''}: {', '.join(fields)}"
            )
        annotation = fields[part].annotation
        is_last = depth == len(parts) - 1
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        elif not is_last:
            raise ConfigError(f"{'.'.join(parts)}: {'.'.join(parts[: depth + 1])} has no sub-fields")


def set_dotted(raw: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:  # absent, or an empty `train:` section
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            # Replacing it would make a bad file valid by overriding one of its fields.
            raise ConfigError(f"{'.'.join(parts[: depth + 1])}: must be a mapping of fields, "
                              f"got {type(child).__name__} {_short_repr(child)}")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        try:
            check_dotted_path(parts)
            set_dotted(raw, parts, value)
        except ConfigError as err:
            raise ConfigError(f"override {_short_repr(item)}: {err}") from None
    return raw


def validate(raw: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe(err)}") from None


def load_config(path: Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read YAML (or nothing: all defaults), apply dotted overrides in order, validate.

    A file that sets no `name` is named after its stem, so runs land in runs/<stem>/.
    """
    raw = read_yaml_mapping(path) if path is not None else {}
    if path is not None and "name" not in raw and re.match(NAME_PATTERN, path.stem):
        raw["name"] = path.stem
    apply_overrides(raw, overrides)
    return validate(raw, str(path) if path is not None else "config")


# --- messages ----------------------------------------------------------------------------------


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    # Spelled-out names of our abbreviations: learning_rate -> lr.
    initials = "".join(part[:1] for part in re.split(r"[_\W]+", word.lower()) if part)
    close = close or [choice for choice in choices if len(initials) > 1 and choice == initials]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(loc: Sequence[Any], root: type[BaseModel]) -> type[BaseModel] | None:
    current: type[BaseModel] = root
    for part in loc:
        field = current.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        current = annotation
    return current


def describe(err: ValidationError, root: type[BaseModel] = Config) -> str:
    """The first problem as `dotted.field: what is wrong; allowed ...`, for one line on stderr;
    `root` is the model that was validated (a Config, or a sweep spec)."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    field = ".".join(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        owner = _model_at(loc[:-1], root)
        allowed = list(owner.model_fields) if owner else []
        what = f"unknown field{_did_you_mean(loc[-1], allowed)}; allowed: {', '.join(allowed)}"
    elif first["type"] == "value_error":
        # Our own validators put the field in the message; pydantic prefixes "Value error, ".
        message = first["msg"].removeprefix("Value error, ")
        head, sep, rest = message.partition(": ")
        if sep and (head.replace(".", "").replace("_", "").isalnum()) and " " not in head:
            if "." not in head and loc:
                head = f"{field}.{head}"
            return head + ": " + rest + _more(err)
        what = message
    else:
        shown = first.get("input")
        what = f"{first['msg']} (got {_short_repr(shown)})"
    return f"{field}: {what}{_more(err)}"


def _more(err: ValidationError) -> str:
    return f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def changed_fields(old: Config, new: Config) -> list[str]:
    """Dotted fields whose values differ, the name aside."""
    return sorted(_diff(old.model_dump(exclude={"name"}), new.model_dump(exclude={"name"})))


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [field for key in old.keys() | new.keys()
                for field in _diff(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def cell_values(cfg: Config, fields: Sequence[str]) -> dict[str, Any]:
    """The value of each dotted field in `cfg` (for tables and labels)."""
    dumped = cfg.model_dump()
    values = {}
    for field in fields:
        node: Any = dumped
        for part in field.split("."):
            node = node[part]
        values[field] = node
    return values
