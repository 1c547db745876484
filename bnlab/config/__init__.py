"""Config: the experiment schema, safe YAML loading, dotted overrides and sweep specs (a grid
expanded into run configs). Plain data: knows nothing of torch, files of runs, or training."""

from bnlab.config._fields import (
    apply_overrides,
    cell_values,
    changed_fields,
    check_dotted_path,
    describe,
    flatten,
    load_config,
    parse_override,
    set_dotted,
    validate,
)
from bnlab.config._schema import (
    DEVICE_PATTERN,
    NAME_PATTERN,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    Strict,
    TrainConfig,
    safe_name,
)
from bnlab.config._yaml import MAX_CONFIG_BYTES, parse_yaml_text, read_yaml_mapping, short_repr

__all__ = [
    "DEVICE_PATTERN", "MAX_CONFIG_BYTES", "NAME_PATTERN", "Config", "DataConfig", "EvalConfig", "ModelConfig",
    "Strict", "TrainConfig", "apply_overrides", "cell_values", "changed_fields", "check_dotted_path", "describe",
    "flatten", "load_config", "parse_override", "parse_yaml_text", "read_yaml_mapping", "safe_name", "set_dotted",
    "short_repr", "validate",
]
