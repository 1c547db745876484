"""Dotted fields (`train.lr`): overrides applied to a raw config, validation with messages that
name the field and what is allowed, and configs compared or flattened field by field."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from bnlab.config._schema import NAME_PATTERN, Config
from bnlab.config._yaml import parse_yaml_text, read_yaml_mapping, short_repr
from bnlab.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=0.01` -> (["train", "lr"], 0.01); the value parses as a YAML scalar or list."""
    if "=" not in item:
        raise ConfigError(f"override {short_repr(item)}: expected field=value, e.g. train.lr=0.01")
    path, _, text = item.partition("=")
    parts = path.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {short_repr(item)}: expected a dotted field name before '='")
    value = parse_yaml_text(text, f"override {short_repr(item)}")
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
                              f"got {type(child).__name__} {short_repr(child)}")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for item in overrides:
        parts, value = parse_override(item)
        try:
            check_dotted_path(parts)
            set_dotted(raw, parts, value)
        except ConfigError as err:
            raise ConfigError(f"override {short_repr(item)}: {err}") from None
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
        what = f"{first['msg']} (got {short_repr(shown)})"
    return f"{field}: {what}{_more(err)}"


def _more(err: ValidationError) -> str:
    return f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""


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


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"bn": "after"}} -> {"model.bn": "after"}: nested mappings as dotted fields."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat
