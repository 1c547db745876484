"""Panels, contrasts and guarded rules, end to end on the tiny dataset: a suite file of the
user's own, the real CLI, and the finding rechecked from its runs.csv and verdict.json alone."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from recheck import recheck
from typer.testing import CliRunner

from bnlab.analysis.compare import guard_check, guarded
from bnlab.analysis.stats import Verdict
from bnlab.analysis.suites import Guard
from bnlab.cli import app


def _suite(tmp_path: Path, tiny_mnist: Path) -> Path:
    """A main lr grid; a panel `wide` with its own base and comparison; a panel `shared` whose every
    run is one the main panel generates too; an interaction contrast and one across panels."""
    suite: dict[str, Any] = {
        "name": "panels", "claim": "BN helps.", "design": "a test design",
        "base": {"device": "cpu", "data": {"root": str(tiny_mnist), "val_size": 100, "verify": False},
                 "model": {"hidden": [16]}, "train": {"epochs": 3, "batch_size": 32, "log_every": 5}},
        "grid": {"train.lr": [0.003, 0.01]},
        "arms": {"no-BN": {"model.bn": "none"}, "BN": {"model.bn": "after"}},
        "compare": [["no-BN", "BN"]], "nuisance": "train.lr",
        "panels": {"wide": {"set": {"model.hidden": [24]}, "compare": [["no-BN", "BN"]]},
                   "shared": {"set": {"train.lr": 0.003}, "arms": ["BN"]},
                   "select": {"grid": {"train.lr": [0.003, 0.01]}, "set": {"eval.every_steps": 5}}},
        "contrasts": [
            {"name": "lr-interaction", "terms": [
                {"arm": "BN", "where": {"train.lr": 0.01}, "weight": 1},
                {"arm": "BN", "where": {"train.lr": 0.003}, "weight": -1},
                {"arm": "no-BN", "where": {"train.lr": 0.01}, "weight": -1},
                {"arm": "no-BN", "where": {"train.lr": 0.003}, "weight": 1}]},
            {"name": "best-against-shared", "secondary": True, "terms": [
                {"arm": "BN", "where": {"train.lr": "best"}, "weight": 1},
                {"arm": "BN", "panel": "shared", "weight": -1}]},
            {"name": "chosen-elsewhere", "secondary": True, "needs": "lr-interaction", "terms": [
                {"arm": "BN", "where": {"train.lr": "best"}, "weight": 1,
                 "select": {"panel": "select", "metric": "log_steps:0.5", "lower": True}},
                {"arm": "no-BN", "where": {"train.lr": 0.003}, "weight": -1}]},
        ],
        "rule": {"name": "paired_difference", "metric": "test_acc", "margin": 0.002,
                 "guard": {"metric": "val_acc", "margin": 0.5}},
        "budgets": {"smoke": {"seeds": [0, 1, 2], "panels": {"select": {"seeds": [7, 8]}}}},
    }
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finding(tmp_path_factory: pytest.TempPathFactory, tiny_mnist: Path) -> Path:
    tmp_path = tmp_path_factory.mktemp("panels")
    out = tmp_path / "finding"
    result = CliRunner().invoke(app, ["claim", "test", str(_suite(tmp_path, tiny_mnist)), "--budget", "smoke",
                                      "--runs-dir", str(tmp_path / "runs"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_a_run_two_panels_generate_alike_trains_once_and_serves_both(finding: Path) -> None:
    verdict = json.loads((finding / "verdict.json").read_text())
    # main: 2 arms x 2 lrs x 3 seeds; wide: 2 arms x 3 seeds; shared: nothing new; select: 2 x 2 x its 2 seeds.
    assert verdict["runs"] == verdict["runs_trained"] == 26
    rows = list(csv.DictReader(io.StringIO((finding / "runs.csv").read_text())))
    shared = {row["run_id"] for row in rows if row["panel"] == "shared"}
    main_bn = {row["run_id"] for row in rows if (row["panel"], row["arm"], row["train.lr"]) == ("main", "BN", "0.003")}
    assert len(shared) == 3 and shared == main_bn
    assert {row["model.hidden"] for row in rows if row["panel"] == "wide"} == {"[24]"}
    assert {row["model.hidden"] for row in rows if row["panel"] != "wide"} == {"[16]"}


def test_comparisons_carry_their_panel_and_contrasts_their_terms(finding: Path) -> None:
    comparisons = json.loads((finding / "verdict.json").read_text())["comparisons"]
    assert {c["panel"] for c in comparisons} == {"main", "wide"}
    wide = [c for c in comparisons if c["panel"] == "wide"]
    assert len(wide) == 1 and wide[0]["label"].startswith("panel wide: ") and "guard" in wide[0]
    interaction = next(c for c in comparisons if c.get("name") == "lr-interaction")
    assert interaction["kind"] == "contrast" and interaction["primary"]
    assert [term["weight"] for term in interaction["terms"]] == [1, -1, -1, 1]
    for row in interaction["per_seed"]:
        if row["value"] is not None:
            assert math.isclose(row["value"], sum(t["weight"] * v for t, v in zip(interaction["terms"], row["values"],
                                                                                 strict=True)))
    across = next(c for c in comparisons if c.get("name") == "best-against-shared")
    assert not across["primary"] and across["terms"][0]["selection"]["picked"] in (0.003, 0.01)
    assert across["terms"][1]["panel"] == "shared"
    elsewhere = next(c for c in comparisons if c.get("name") == "chosen-elsewhere")
    selection = elsewhere["terms"][0]["selection"]
    assert (selection["panel"], selection["metric"], selection["lower"]) == ("select", "log_steps:0.5", True)
    assert elsewhere["needs"] == "lr-interaction" and {row["seed"] for row in elsewhere["per_seed"]} == {0, 1, 2}


def test_the_finding_rechecks_and_the_recheck_can_fail(finding: Path, tmp_path: Path) -> None:
    verdict_text = (finding / "verdict.json").read_text()
    assert recheck(finding) == len(json.loads(verdict_text)["comparisons"])
    for change in ("term value", "guard outcome"):
        verdict = json.loads(verdict_text)
        if change == "term value":
            contrast = next(c for c in verdict["comparisons"] if c["kind"] == "contrast")
            row = next(row for row in contrast["per_seed"] if row["value"] is not None)
            row["values"][0] += 0.01
            label = contrast["label"]
        else:
            guarded_one = next(c for c in verdict["comparisons"] if "guard" in c)
            guarded_one["guard"]["outcome"] = "fails" if guarded_one["guard"]["outcome"] != "fails" else "holds"
            label = guarded_one["label"]
        (finding / "verdict.json").write_text(json.dumps(verdict))
        try:
            with pytest.raises(AssertionError, match=re.escape(label)):
                recheck(finding)
        finally:
            (finding / "verdict.json").write_text(verdict_text)


@pytest.mark.parametrize(
    ("a", "b", "state"),
    [([0.90, 0.91, 0.92], [0.90, 0.915, 0.92], "holds"),  # no drop at all
     ([0.90, 0.91, 0.92], [0.80, 0.805, 0.81], "fails"),  # 10 pp lower in every seed
     ([0.90, 0.91, 0.92], [0.89, 0.93, 0.85], "unsettled"),  # the CI reaches past a 1 pp drop
     ([0.90], [0.95], "unsettled")],  # one seed: no CI
)
def test_a_guard_holds_fails_or_is_unsettled(a: list[float], b: list[float], state: str) -> None:
    rows = [{"seed": seed, "value_a": x, "value_b": y} for seed, (x, y) in enumerate(zip(a, b, strict=True))]
    assert guard_check(Guard(metric="test_acc", margin=0.01), rows)["outcome"] == state


def test_a_guarded_verdict_is_supported_only_when_the_guard_holds() -> None:
    supported, inconclusive = Verdict("supported", "effect", None), Verdict("inconclusive", "inconclusive", 7)
    opposite = Verdict("not supported", "opposite", None)
    assert guarded(supported, "holds") == supported
    assert guarded(supported, "unsettled") == Verdict("inconclusive", "guard unsettled", None)
    assert guarded(supported, "fails") == Verdict("not supported", "guard fails", None)
    assert guarded(inconclusive, "holds") == inconclusive
    assert guarded(opposite, "unsettled") == opposite


def test_a_refutation_that_needs_another_contrast_stands_only_when_that_one_holds() -> None:
    """ics: noisy BN keeping BN's speed-up refutes the claim only if its input drifts at least as
    much as without BN (the needed contrast's CI above minus its margin); else inconclusive."""
    from bnlab.analysis.compare import Comparison
    from bnlab.analysis.contrast import apply_needs
    from bnlab.analysis.stats import paired_comparison

    def contrast(name: str, values: list[float], outcome: str) -> Comparison:
        paired = paired_comparison([0.0] * len(values), values, 0.01)
        return Comparison(name, "", name, paired, Verdict(outcome, "equivalent", None), "", kind="contrast",
                          margin=0.01, direction=1)

    refuting = contrast("keeps-speed-up", [0.001, -0.002, 0.0], "not supported")
    assert apply_needs(refuting, contrast("drifts", [0.05, 0.04, 0.06], "supported")).verdict.outcome == "not supported"
    weaker = apply_needs(refuting, contrast("drifts", [-0.05, -0.04, -0.06], "not supported"))
    assert (weaker.verdict.outcome, weaker.verdict.reason) == ("inconclusive", "needs drifts")
    supporting = contrast("keeps-speed-up", [0.05, 0.04, 0.06], "supported")
    assert apply_needs(supporting, contrast("drifts", [-0.05, -0.04, -0.06], "not supported")) == supporting


def test_the_verdict_figure_draws_when_nothing_trained(tmp_path: Path, tiny_mnist: Path) -> None:
    """Every run diverges (a learning rate of 1e4): the figure still draws, on a linear axis (a
    log axis of NaN lines alone cannot be drawn), and the claim says inconclusive."""
    suite = yaml.safe_load(_suite(tmp_path, tiny_mnist).read_text())
    suite.update(grid={"train.lr": [1e4, 3e4]}, panels={}, contrasts=[], rule={
        "name": "paired_difference", "metric": "test_acc", "margin": 0.002},
        figure={"kind": "against", "title": "nothing trained", "x": "train.lr", "log_x": True, "failures": True},
        budgets={"smoke": {"seeds": [0, 1]}})
    path = tmp_path / "diverges.yaml"
    path.write_text(yaml.safe_dump(suite))
    result = CliRunner().invoke(app, ["claim", "test", str(path), "--budget", "smoke", "--runs-dir",
                                      str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "panels: INCONCLUSIVE" in result.stdout
    assert (tmp_path / "runs" / "claim-panels-smoke" / "report-figures" / "verdict-panels.png").stat().st_size > 0


def test_curves_against_a_loss_bin_each_seeds_checkpoints_first() -> None:
    """Seeds reach a loss at different checkpoints: a bin averages each seed's points, then the seeds,
    and a bin only one of three seeds reaches is not drawn."""
    from bnlab.analysis.verdict_figure import BINS, binned

    fast = [(1.0, 0.5), (0.1, 0.9), (0.01, 0.95)]
    slow = [(1.0, 0.4), (0.9, 0.45), (0.1, 0.8)]
    last = [(1.0, 0.6), (0.1, 0.7)]
    centres, per_seed = binned([fast, slow, last], log=True)
    assert len(centres) <= BINS and centres == sorted(centres)
    assert min(centres) > 0.0134  # the lowest bin, [0.01, 0.0133], holds the fast seed alone
    at_point_one = per_seed[min(range(len(centres)), key=lambda i: abs(math.log(centres[i] / 0.1)))]
    assert sorted(at_point_one) == pytest.approx([0.7, 0.8, 0.9])
    assert sorted(per_seed[-1]) == pytest.approx(sorted([0.5, (0.4 + 0.45) / 2, 0.6]))
    on_edges = [(float(x), float(x)) for x in range(BINS + 1)] + [(math.nan, 99.0), (math.inf, 99.0)]
    centres, per_seed = binned([on_edges], log=False)  # each point in one bin; the last bin is closed
    assert per_seed == [[float(x)] for x in range(BINS - 1)] + [[BINS - 0.5]]
    assert binned([[(0.05, 1.0)], [(0.05, 3.0)]], log=True) == ([0.05], [[1.0, 3.0]])
