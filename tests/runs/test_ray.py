"""The Ray executor on a real local Ray instance bound to loopback (conftest's local_ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WAIT_SECONDS, masked, read_results, write_spec

from bnlab.config.spec import load_sweep
from bnlab.runs.sweep import SweepOptions, run_sweep

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'bnlab[ray]')")


def test_ray_sweep_matches_local_and_resumes(tmp_path: Path, tiny_mnist: Path, local_ray: None) -> None:
    spec = write_spec(tmp_path, tiny_mnist, lrs="[0.01, 0.05]", seeds="[0]")
    sweep = load_sweep(spec)
    local = run_sweep(sweep, tmp_path / "local", SweepOptions(stack="off", workers=1))
    on_ray = run_sweep(sweep, tmp_path / "ray", SweepOptions(executor="ray", stack="off", workers=1))
    assert on_ray.counts == local.counts == {"done": 4, "diverged": 0, "failed": 0}
    # Same thread count (1) on both sides: the same numbers.
    assert masked(read_results(tmp_path / "ray" / "grid" / "results.csv")) == masked(
        read_results(tmp_path / "local" / "grid" / "results.csv"))
    again = run_sweep(sweep, tmp_path / "ray", SweepOptions(executor="ray", stack="off", workers=1))
    assert (again.skipped, sum(again.counts.values())) == (4, 0)


def test_without_ray_the_message_says_how_to_install(tmp_path: Path, tiny_mnist: Path) -> None:
    spec = write_spec(tmp_path, tiny_mnist)
    hide_ray = ("import sys; sys.modules['ray'] = None; from bnlab.cli import app; "
                f"app(['sweep', {str(spec)!r}, '--executor', 'ray', '--runs-dir', {str(tmp_path / 'runs')!r}])")
    result = subprocess.run([sys.executable, "-c", hide_ray], capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert result.returncode == 2
    assert result.stderr == ("error: --executor ray: Ray is not installed; install it with pip install "
                             "\"bnlab[ray]\" or use --executor local\n")
    assert not (tmp_path / "runs").exists()
