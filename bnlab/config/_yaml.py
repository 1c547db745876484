"""Reading YAML that a person or an attacker wrote: one safe, bounded loader, and every failure
one ConfigError naming the file."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from bnlab.errors import ConfigError

# A config bigger than this is not a hand-written experiment; refuse it before parsing.
MAX_CONFIG_BYTES = 1 << 20


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


def short_repr(value: Any) -> str:
    """repr(value), cut to 60 characters: error messages quote what they refuse, never all of it."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
