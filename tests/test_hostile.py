"""Hostile and damaged input (a start on issue 7): each is one clear line or a visibly damaged
record, never a traceback, a hang, or a trusted half-written file."""

from __future__ import annotations

from pathlib import Path

from test_sweep import write_spec
from typer.testing import CliRunner

from bnlab.cli import app
from bnlab.config import MAX_CONFIG_BYTES
from bnlab.spec import load_sweep
from bnlab.sweep import SweepOptions, run_sweep


def test_yaml_alias_bomb_is_refused(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(levels) + "\n")
    result = CliRunner().invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}: not valid YAML: more than 100 aliases\n"


def test_oversized_config_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    result = CliRunner().invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 2
    assert result.stderr == (f"error: {path}: {path.stat().st_size} bytes is over the {MAX_CONFIG_BYTES}-byte "
                             "limit for a config\n")


def test_damaged_run_is_listed_as_damaged_and_rerun_by_the_sweep(tmp_path: Path, tiny_mnist: Path) -> None:
    spec = write_spec(tmp_path, tiny_mnist, lrs="[0.01]", seeds="[0]")
    runs = tmp_path / "runs"
    run_sweep(load_sweep(spec), runs, SweepOptions(stack="off", workers=1))
    folders = sorted(p for p in (runs / "grid").iterdir() if p.is_dir())
    (folders[0] / "summary.json").write_bytes(b'{"status": "do')  # torn
    listing = CliRunner().invoke(app, ["ls", str(runs / "grid")])
    assert listing.exit_code == 0, listing.output
    assert "damaged" in listing.stdout
    again = run_sweep(load_sweep(spec), runs, SweepOptions(stack="off", workers=1))
    assert (again.skipped, again.counts["done"]) == (1, 1)  # the damaged run, redone; the other kept
    assert (folders[0] / "summary.json").read_text().startswith("{")
