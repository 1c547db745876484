"""The schema, overrides, and every bad-input case: one stderr line, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from bnlab.cli import app
from bnlab.config import Config, load_config
from bnlab.engine.train import OPTIMIZERS
from bnlab.errors import ConfigError


def test_defaults_need_no_file() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model.hidden == [256, 128, 64]
    assert cfg.eval.bn_stats == ["running"]


def test_overrides_apply_in_order_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train: {lr: 0.1}\n")
    cfg = load_config(path, ["train.lr=0.01", "model.hidden=[10, 20]", "train.lr=1e-3", "eval.bn_stats=batch"])
    assert cfg.train.lr == 1e-3
    assert cfg.model.hidden == [10, 20]
    assert cfg.eval.bn_stats == ["batch"]
    assert cfg.name == "exp"  # named after the file when it sets no name


def test_run_id_ignores_name_only() -> None:
    assert Config(name="a").run_id() == Config(name="b").run_id()
    assert Config(seed=1).run_id() != Config(seed=0).run_id()


def test_optimizer_table_matches_config() -> None:
    allowed = typing.get_args(Config.model_fields["train"].annotation.model_fields["optimizer"].annotation)
    assert set(OPTIMIZERS) == set(allowed)


def _invoke(args: list[str]):
    return CliRunner().invoke(app, args)


@pytest.fixture()
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # runs/ would be created here
    return tmp_path


BAD_FILES = {
    "unknown key": (
        "train: {learning_rate: 0.1}\n",
        "train.learning_rate: unknown field (did you mean 'lr'?); allowed: epochs, steps, batch_size, "
        "optimizer, lr, momentum, weight_decay, log_every",
    ),
    "wrong type": ("train: {epochs: many}\n",
                   "train.epochs: Input should be a valid integer, unable to parse string as an integer (got 'many')"),
    "out of range": ("train: {lr: -1}\n", "train.lr: Input should be greater than 0 (got -1)"),
    "bad choice": ("model: {bn: post}\n", "model.bn: Input should be 'none', 'before' or 'after' (got 'post')"),
    "yaml syntax": ("train: {lr: 0.1\n",
                    "not valid YAML (line 2, column 1): expected ',' or '}', but got '<stream end>'"),
    "not a mapping": ("- 1\n- 2\n", "must be a mapping of fields, got list"),
    "batch of one with bn": (
        "train: {batch_size: 1}\n",
        "train.batch_size: 1 is not allowed with model.bn=after (batch statistics need at least 2 samples); "
        "use >= 2 or model.bn=none",
    ),
    "nesterov without momentum": ("train: {optimizer: nesterov}\n", "train.momentum: nesterov needs momentum > 0"),
    "normal init without std": ("model: {init: normal}\n", "model.init_std: required when init is 'normal'"),
    "bad name": ("name: ../x\n", "name: must be 1-100 letters, digits, '.', '_', '+' or '-', starting with a "
                                 "letter or digit, so it stays inside runs/ (got '../x')"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_config_file_is_one_line_exit_2(in_tmp: Path, case: str) -> None:
    text, message = BAD_FILES[case]
    path = in_tmp / "exp.yaml"
    path.write_text(text)
    result = _invoke(["run", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {path}: {message}")
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.yaml"], "error: missing.yaml: no such file"),
        (["train.lr"], "error: override 'train.lr': expected field=value, e.g. train.lr=0.01"),
        (["train.lrr=0.1"], "error: override 'train.lrr=0.1': train.lrr: unknown field (did you mean 'lr'?); "
                            "allowed in train: epochs, steps, batch_size, optimizer, lr, momentum, weight_decay, "
                            "log_every"),
        (["model.hidden.x=1"], "error: override 'model.hidden.x=1': model.hidden.x: model.hidden has no sub-fields"),
        (["train.lr=[1, 2]"], "error: config: train.lr: Input should be a valid number (got [1, 2])"),
        (["model.hidden=[4, -1]"], "error: config: model.hidden: every hidden width must be >= 1 (got [4, -1])"),
        (["device=tpu"], "error: config: device: must be auto, cpu, mps, cuda or cuda:N (got 'tpu')"),
    ],
)
def test_bad_override_is_one_line_exit_2(in_tmp: Path, args: list[str], message: str) -> None:
    result = _invoke(["run", *args])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(message)
    assert not (in_tmp / "runs").exists()


def test_override_without_equals_after_config(in_tmp: Path) -> None:
    path = in_tmp / "exp.yaml"
    path.write_text("{}\n")
    result = _invoke(["run", str(path), "train.lr"])
    assert result.exit_code == 2
    assert result.stderr == "error: override 'train.lr': expected field=value, e.g. train.lr=0.01\n"


def test_unreadable_and_directory_and_binary(in_tmp: Path) -> None:
    folder = in_tmp / "cfgdir"
    folder.mkdir()
    result = _invoke(["run", str(folder)])
    assert (result.exit_code, result.stderr) == (2, f"error: {folder}: is a directory, not a YAML file\n")
    binary = in_tmp / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    result = _invoke(["run", str(binary)])
    assert (result.exit_code, result.stderr) == (2, f"error: {binary}: not UTF-8 text (byte 6)\n")
    assert not (in_tmp / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_where_there_is_none(in_tmp: Path, tiny_config: Path) -> None:
    result = _invoke(["run", str(tiny_config), "device=cuda"])
    assert result.exit_code == 2
    assert result.stderr == "error: device: 'cuda' requested but no CUDA device is available; allowed here: auto, cpu\n"
    assert not (in_tmp / "runs").exists()


def test_config_show_prints_resolved_yaml(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("model: {bn: before}\n")
    result = _invoke(["config", "show", str(path), "train.lr=0.05"])
    assert result.exit_code == 0, result.output
    shown = Config.model_validate(__import__("yaml").safe_load(result.stdout))
    assert shown == load_config(path, ["train.lr=0.05"])
    assert f"# run id: {shown.run_id()}" in result.stdout


def test_version() -> None:
    result = _invoke(["--version"])
    assert (result.exit_code, result.stdout) == (0, "bnlab 0.1.0\n")


def test_cli_import_is_light() -> None:
    """`bnlab --help` must not pay for torch, pandas, matplotlib, Ray, scipy or pydantic."""
    code = ("import sys, bnlab.cli; heavy = {'torch', 'pandas', 'matplotlib', 'ray', 'scipy', 'pydantic', 'numpy'};"
            "print(sorted(heavy & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_load_config_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_the_readme_lists_every_field_with_its_default() -> None:
    """The README's config block is the schema: a field added without it (or a default changed)
    fails here, not in a reader's hands."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```yaml\nname: bn-after-relu", 1)[1].split("```", 1)[0]
    documented = yaml.safe_load("name: bn-after-relu" + block)
    assert documented == Config(name="bn-after-relu").model_dump()
