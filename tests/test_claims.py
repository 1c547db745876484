"""Claim suites: every built-in suite at --budget smoke on the tiny dataset, through the real CLI,
and the verdict arithmetic checked against the run folders it came from."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bnlab.claims import CLAIMS_DIR, RULES, load_suite, suite_names, suite_path, suite_sweep
from bnlab.cli import app
from bnlab.records import read_summary
from bnlab.stats import paired_comparison

SUITES = suite_names()


def test_all_eight_suites_are_shipped_and_valid() -> None:
    assert SUITES == ["batch-size", "convergence", "dropout-order", "high-lr", "inference-stats",
                      "init-robustness", "placement", "regularizer"]
    for name in SUITES:
        suite = load_suite(suite_path(name))
        assert suite.rule.name in RULES
        assert set(suite.budgets) == {"full", "quick", "smoke"}
        assert suite.design.startswith("LITERATURE.md C")


@pytest.mark.parametrize("name", SUITES)
def test_suite_runs_at_smoke_budget(name: str, tmp_path: Path, tiny_mnist: Path) -> None:
    result = CliRunner().invoke(app, ["claim", "test", name, f"data.root={tiny_mnist}", "data.verify=false",
                                      "device=cpu", "--budget", "smoke", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()
    verdict_line = next(line for line in first if line.startswith(f"{name}: "))
    assert verdict_line.split(": ")[1].split(" (")[0] in ("SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE")
    folder = tmp_path / f"claim-{name}-smoke"
    assert (folder / "report.html").exists() and (folder / "report.md").exists()
    markdown = (folder / "report.md").read_text()
    assert load_suite(suite_path(name)).claim in markdown
    with (folder / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    stacked = sum(row["engine"] == "stacked" for row in rows)
    assert stacked / len(rows) >= 0.8 or name == "inference-stats"  # seeds alone make small stacks


def test_placement_verdict_matches_its_runs(tmp_path: Path, tiny_mnist: Path) -> None:
    """The primary comparison is recomputed by hand from the run folders' summaries."""
    from bnlab.lab import test_claim

    outcome = test_claim("placement", "smoke", [f"data.root={tiny_mnist}", "data.verify=false", "device=cpu"],
                         tmp_path)
    primary = [c for c in outcome.result.comparisons if c.primary]
    assert len(primary) == 1 and primary[0].label == "model.activation=relu, train.lr=0.001"
    by_arm: dict[str, dict[int, float]] = {"before": {}, "after": {}}
    for run in outcome.folder.iterdir():
        if not (run / "summary.json").exists():
            continue
        summary = read_summary(run)
        config = (run / "config.yaml").read_text()
        if "activation: relu" in config and "lr: 0.001" in config:
            arm = "before" if "bn: before" in config else "after"
            by_arm[arm][summary["seed"]] = summary["final"]["test_acc"]
    seeds = sorted(by_arm["before"])
    expected = paired_comparison([by_arm["before"][s] for s in seeds], [by_arm["after"][s] for s in seeds], 0.002)
    assert primary[0].paired.diffs == expected.diffs
    assert math.isclose(primary[0].paired.diff_mean, expected.diff_mean)


def test_unknown_suite_and_budget_are_one_line(tmp_path: Path) -> None:
    unknown = CliRunner().invoke(app, ["claim", "test", "placment", "--runs-dir", str(tmp_path)])
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("error: claim 'placment': no such suite; available: batch-size, convergence")
    budget = CliRunner().invoke(app, ["claim", "test", "placement", "--budget", "huge"])
    assert (budget.exit_code, budget.stderr) == (2, "error: --budget: 'huge' is not allowed; allowed: smoke, quick, "
                                                    "full\n")
    assert not any(tmp_path.iterdir())


def test_claims_dir_is_the_shipped_configs() -> None:
    assert CLAIMS_DIR == Path(__file__).resolve().parent.parent / "configs" / "claims"


@pytest.mark.parametrize("name", SUITES)
def test_quick_budget_trains_at_least_80_percent_stacked(name: str) -> None:
    """The plan (a function of the spec alone) is what the sweep trains, so it is checked without training."""
    from bnlab.sweep import plan_groups

    suite = load_suite(suite_path(name))
    sweep = suite_sweep(suite, "quick", ["device=cpu"], "")
    groups = plan_groups(sweep.configs, "auto", 10)
    stacked = sum(len(group.configs) for group in groups if group.stacked)
    assert stacked / len(sweep.configs) >= 0.8, [len(group.configs) for group in groups]
