"""Claim suites: every built-in suite at --budget smoke on the tiny dataset, through the real CLI,
and the verdict arithmetic checked against the run folders it came from."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from bnlab.analysis.claims import combine
from bnlab.analysis.compare import Comparison
from bnlab.analysis.expansion import suite_sweep
from bnlab.analysis.rules import RULES
from bnlab.analysis.stats import Verdict, paired_comparison
from bnlab.analysis.suites import CLAIMS_DIR, load_suite, suite_names, suite_path
from bnlab.cli import app
from bnlab.config import cell_values
from bnlab.errors import ConfigError
from bnlab.records import read_config, read_summary

SUITES = suite_names()


def test_all_nine_suites_are_shipped_and_valid() -> None:
    assert SUITES == ["batch-size", "convergence", "dropout-order", "high-lr", "ics", "inference-stats",
                      "init-robustness", "placement", "regularizer"]
    for name in SUITES:
        suite = load_suite(suite_path(name))
        assert suite.rule.name in RULES
        assert set(suite.budgets) == {"pilot", "full", "quick", "smoke"}
        assert not set(suite.budgets["pilot"].seeds) & set(suite.budgets["full"].seeds)
        assert suite.design.startswith("docs/literature.md C")


def test_every_suite_has_a_seed_plan() -> None:
    assert [name for name in SUITES if load_suite(suite_path(name)).seed_plan is None] == []


@pytest.mark.parametrize("name", SUITES)
def test_a_shipped_seed_plan_recomputes_from_its_pilot_spread(name: str) -> None:
    """A suite's seed plan is the simulation's answer at the pilot's spread (seeded, so exact)."""
    from bnlab.analysis.planning import seed_plan

    plan = load_suite(suite_path(name)).seed_plan
    assert plan is not None
    for item in plan.comparisons:
        again = seed_plan(item.sd, item.margin)
        assert (again.seeds, round(again.p_supported, 4), round(again.p_not_supported, 4)) == (
            item.seeds, item.p_supported, item.p_not_supported), item.label
    assert plan.seeds == max(item.seeds for item in plan.comparisons)


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
    # inference-stats: seeds alone make small stacks; ics: its probes train solo by design.
    assert stacked / len(rows) >= 0.8 or name in ("inference-stats", "ics")


def test_placement_verdict_matches_its_runs(tmp_path: Path, tiny_mnist: Path) -> None:
    """The primary comparison is recomputed by hand from the run folders' summaries."""
    from bnlab.lab import test_claim

    outcome = test_claim("placement", "smoke", [f"data.root={tiny_mnist}", "data.verify=false", "device=cpu"],
                         tmp_path)
    primary = [c for c in outcome.result.comparisons if c.primary]
    assert len(primary) == 1 and primary[0].label.startswith("model.activation=relu, train.lr=best (")
    picked = {arm.split("-")[0]: lr for arm, lr in primary[0].selection["picked"].items()}
    by_arm: dict[str, dict[int, float]] = {"before": {}, "after": {}}
    for run in outcome.folder.iterdir():
        if not (run / "summary.json").exists():
            continue
        summary = read_summary(run)
        config = (run / "config.yaml").read_text()
        arm = "before" if "bn: before" in config else "after"
        if "activation: relu" in config and f"lr: {picked[arm]}" in config:
            trained = summary["status"] == "done" and summary["final"]["train_loss"] <= math.log(10)
            by_arm[arm][summary["seed"]] = summary["final"]["test_acc"] if trained else math.nan
    seeds = sorted(by_arm["before"])
    both = [s for s in seeds if not (math.isnan(by_arm["before"][s]) or math.isnan(by_arm["after"][s]))]
    expected = paired_comparison([by_arm["before"][s] for s in both], [by_arm["after"][s] for s in both], 0.002)
    assert primary[0].paired.diffs == expected.diffs
    assert primary[0].n_dropped == len(seeds) - len(both)
    assert math.isclose(primary[0].paired.diff_mean, expected.diff_mean) or expected.n == 0


def test_unknown_suite_and_budget_are_one_line(tmp_path: Path) -> None:
    unknown = CliRunner().invoke(app, ["claim", "test", "placment", "--runs-dir", str(tmp_path)])
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("error: claim 'placment': no such suite; available: batch-size, convergence")
    budget = CliRunner().invoke(app, ["claim", "test", "placement", "--budget", "huge"])
    assert (budget.exit_code, budget.stderr) == (2, "error: --budget: 'huge' is not allowed; allowed: smoke, quick, "
                                                    "full, pilot\n")
    assert not any(tmp_path.iterdir())


def test_claims_dir_is_package_data() -> None:
    assert CLAIMS_DIR == Path(__file__).resolve().parents[2] / "bnlab" / "claim_suites"


@pytest.mark.parametrize("name", SUITES)
def test_quick_budget_trains_at_least_80_percent_stacked(name: str) -> None:
    """The plan (a function of the spec alone) is what the sweep trains, so it is checked without training."""
    from bnlab.runs.sweep import plan_groups

    suite = load_suite(suite_path(name))
    sweep, _ = suite_sweep(suite, "quick", ["device=cpu"], "")
    groups = plan_groups(sweep.configs, "auto", 10)
    stacked = sum(len(group.configs) for group in groups if group.stacked)
    if suite.base.get("eval", {}).get("grad_ics"):  # its probes (gradient ICS, input drift) train solo, by design
        assert stacked == 0, [len(group.configs) for group in groups]
    else:
        assert stacked / len(sweep.configs) >= 0.8, [len(group.configs) for group in groups]


def _by_hand(folder: Path, fields: dict[str, Any], metric: str) -> dict[int, float]:
    """Per seed, `metric` of the one run whose config has exactly `fields` (NaN if it did not
    train), read from the run folders alone."""
    values: dict[int, float] = {}
    for run in sorted(p for p in folder.iterdir() if (p / "summary.json").exists()):
        config = cell_values(read_config(run), list(fields))
        if config != fields:
            continue
        summary = read_summary(run)
        final = summary["final"] or {}
        trained = summary["status"] == "done" and final.get("train_loss", math.inf) <= math.log(10)
        if metric == "matched:gap:0.05":  # the first checkpoint with eval-mode train NLL <= 0.05
            with (run / "steps.csv").open() as handle:
                hit = next((row for row in csv.DictReader(handle)
                            if row["train_eval_loss"] and float(row["train_eval_loss"]) <= 0.05), None)
            value = float(hit["train_eval_acc"]) - float(hit["test_acc"]) if hit else math.nan
        else:
            value = final[metric]
        assert summary["seed"] not in values, f"two runs with {fields} for seed {summary['seed']}"
        values[summary["seed"]] = value if trained else math.nan
    return values


@pytest.mark.parametrize(
    ("suite", "arm_a", "arm_b", "fields_a", "fields_b", "metric"),
    [
        # Nested arms: BN's fields are a subset of the ghost-BN arms', dropout-after-BN's of dropout-last-only's.
        ("regularizer", "no-BN", "BN", {"model.bn": "none", "model.ghost_batch": None, "train.lr": 0.003},
         {"model.bn": "after", "model.ghost_batch": None, "train.lr": 0.003}, "matched:gap:0.05"),
        ("dropout-order", "dropout-before-BN", "dropout-after-BN",
         {"model.dropout_order": "before_bn", "model.dropout_layers": "all", "model.dropout": 0.5},
         {"model.dropout_order": "after_bn", "model.dropout_layers": "all", "model.dropout": 0.5}, "test_acc"),
    ],
)
def test_an_arm_takes_only_the_runs_it_generated(suite: str, arm_a: str, arm_b: str, fields_a: dict[str, Any],
                                                 fields_b: dict[str, Any], metric: str, tmp_path: Path,
                                                 tiny_mnist: Path) -> None:
    """An arm whose fields are a subset of another arm's must not take that arm's runs: each
    per-seed value is recomputed from the run folders of exactly that arm's configs."""
    from bnlab.lab import test_claim

    # Enough epochs that every run trains (smoke's one epoch ends above ln 10): all seeds compared.
    outcome = test_claim(suite, "smoke", [f"data.root={tiny_mnist}", "data.verify=false", "device=cpu",
                                          "train.epochs=6", "train.lr=0.003"], tmp_path)
    primary = [c for c in outcome.result.comparisons if c.primary]
    assert [(c.name_a, c.name_b) for c in primary] == [(arm_a, arm_b)]
    values_a, values_b = _by_hand(outcome.folder, fields_a, metric), _by_hand(outcome.folder, fields_b, metric)
    assert sorted(values_a) == sorted(values_b) == [0, 1]
    assert not any(math.isnan(v) for v in [*values_a.values(), *values_b.values()])
    assert primary[0].paired.diffs == tuple(values_b[s] - values_a[s] for s in (0, 1))


def _suite(tmp_path: Path, tiny_mnist: Path, **fields: Any) -> Path:
    """A small suite file on the tiny dataset; `fields` replace its top-level keys."""
    suite = {
        "name": "probe", "claim": "BN helps.", "design": "a test design",
        "base": {"device": "cpu", "data": {"root": str(tiny_mnist), "val_size": 100, "verify": False},
                 "model": {"hidden": [16]}, "train": {"epochs": 2, "batch_size": 32, "log_every": 5}},
        "grid": {"train.lr": [0.003, 0.01]},
        "arms": {"no-BN": {"model.bn": "none"}, "BN": {"model.bn": "after"}},
        "compare": [["no-BN", "BN"]], "nuisance": "train.lr",
        "rule": {"name": "paired_difference", "metric": "test_acc", "margin": 0.002},
        "budgets": {"smoke": {"seeds": [0, 1]}, "quick": {"seeds": [0, 1]}, "full": {"seeds": [0, 1]}},
        **fields,
    }
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"arms": {"no-BN": {"model.bn": "none"}, "BN": {"model.bn": "after", "train.lr": 0.1}}},
         "arms.BN: sets train.lr, which is also a grid axis; an arm may not set what the grid varies (unless the "
         "arm is not_crossed with it)"),
        ({"primary": {"model.hidden": [16]}},
         "primary: model.hidden is neither a `within` axis nor the nuisance; allowed: train.lr"),
        ({"panels": {"main": {}}}, "panels.main: reserved for the suite's own grid and comparisons; rename it"),
        ({"compare": []}, "compare: empty, and no panel compares or contrast; give at least one"),
        ({"panels": {"wide": {"arms": ["BN"], "compare": [["no-BN", "BN"]]}}},
         "panels.wide.compare: unknown 'no-BN'; panel wide's arms: BN"),
        ({"panels": {"wide": {"grid": {"model.bn_eps": [0.001]}, "arms": ["BN", "ghost"]}},
          "arms": {"no-BN": {"model.bn": "none"}, "BN": {"model.bn": "after"}, "ghost": {"model.bn_eps": 0.1}}},
         "arms.ghost: sets model.bn_eps, which is also a grid axis of panel wide; an arm may not set what the grid "
         "varies (unless the arm is not_crossed with it)"),
        ({"contrasts": [{"name": "c", "terms": [{"arm": "BN", "panel": "wide", "weight": 1},
                                                {"arm": "no-BN", "weight": -1}]}]},
         "contrasts.0.terms.0.panel: unknown 'wide'; panels: main"),
        ({"contrasts": [{"name": "c", "terms": [{"arm": "BN", "where": {"model.bn": "after"}, "weight": 1},
                                                {"arm": "no-BN", "weight": -1}]}]},
         "contrasts.0.terms.0.where: model.bn is not an axis of panel main; axes: train.lr"),
        ({"nuisance": None, "contrasts": [{"name": "c", "terms": [{"arm": "BN", "where": {"train.lr": "best"},
                                                                   "weight": 1}, {"arm": "no-BN", "weight": -1}]}]},
         "contrasts.0.terms.0.where: train.lr=best: only the panel's nuisance (none) can be chosen at its best"),
        ({"rule": {"name": "stable_lr", "margin": 0.002, "guard": {"metric": "test_acc", "margin": 0.01}}},
         "rule.guard: guards paired_difference only, not stable_lr"),
        ({"budgets": {"smoke": {"seeds": [0], "more_seeds": [{"where": {"train.lr": 0.01}, "seeds": [1],
                                                               "panel": "wide"}]}}},
         "budgets.smoke.more_seeds.0.panel: unknown 'wide'; panels: main"),
        ({"spread": "train.batch_size"}, "spread: train.batch_size is not an axis of the suite's grid; axes: train.lr"),
    ],
)
def test_suite_design_errors_name_the_field(tmp_path: Path, tiny_mnist: Path, fields: dict, message: str) -> None:
    path = _suite(tmp_path, tiny_mnist, **fields)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {message}") + "$"):
        load_suite(path)


def test_two_arms_that_generate_one_run_are_refused(tmp_path: Path, tiny_mnist: Path) -> None:
    path = _suite(tmp_path, tiny_mnist, arms={"BN": {"model.bn": "after"}, "also-BN": {"model.bn": "after",
                                                                                    "model.bn_eps": 1.0e-5}},
                  compare=[["BN", "also-BN"]])
    with pytest.raises(ConfigError, match=re.escape("claim probe: arms BN and also-BN generate the same run "
                                                    "(train.lr=0.003, seed 0); give them different fields")):
        suite_sweep(load_suite(path), "smoke", [], "")


def _analyze(path: Path, tmp_path: Path) -> Any:
    from bnlab.analysis.claims import analyze
    from bnlab.records import write_arms
    from bnlab.runs.sweep import SweepOptions, run_sweep, sweep_folder

    suite = load_suite(path)
    sweep, members = suite_sweep(suite, "smoke", [], "")
    run_sweep(sweep, tmp_path / "runs", SweepOptions(workers=1))
    folder = sweep_folder(sweep, tmp_path / "runs")
    write_arms(folder, members)
    return analyze(suite, sweep, folder, "smoke", "test")


def test_a_comparison_that_would_pool_runs_is_an_error_naming_them(tmp_path: Path, tiny_mnist: Path) -> None:
    # train.lr is a grid axis but neither `within` nor the nuisance: two runs per (arm, seed).
    path = _suite(tmp_path, tiny_mnist, nuisance=None)
    with pytest.raises(ConfigError, match=r"^arm no-BN at all runs, seed 0: several runs \(\w{12}, \w{12}\); a "
                                          "comparison needs exactly one"):
        _analyze(path, tmp_path)


def test_a_primary_that_matches_nothing_is_an_error(tmp_path: Path, tiny_mnist: Path) -> None:
    path = _suite(tmp_path, tiny_mnist, primary={"train.lr": 0.5})
    with pytest.raises(ConfigError, match=r"^claim probe: primary \{'train.lr': 0.5\} matches no comparison; "):
        _analyze(path, tmp_path)


def test_a_best_value_at_the_grid_edge_is_flagged(tmp_path: Path, tiny_mnist: Path) -> None:
    result = _analyze(_suite(tmp_path, tiny_mnist), tmp_path)
    best = next(c for c in result.comparisons if c.primary)
    assert "best" in best.label
    # Two lrs: any best is at an edge, and says so in the flags and the sentence.
    assert len(best.flags) == 2 and all("is at the edge of its grid (0.003 to 0.01)" in f for f in best.flags)
    assert best.flags[0][0].upper() + best.flags[0][1:] in best.sentence


CONTROL = {"grid": {"model.dropout": [0.2, 0.5]}, "nuisance": None, "within": ["model.dropout"],
           "arms": {"no-dropout": {"model.dropout": 0.0, "not_crossed": ["model.dropout"]},
                    "before": {"model.dropout_order": "before_bn"}, "after": {"model.dropout_order": "after_bn"}},
           "compare": [["no-dropout", "after"], ["before", "after"]]}


def test_a_control_not_crossed_with_an_axis_trains_once_and_serves_every_value(tmp_path: Path,
                                                                             tiny_mnist: Path) -> None:
    """The no-dropout control has no dropout rate: one run per seed, compared at each rate."""
    suite = load_suite(_suite(tmp_path, tiny_mnist, **CONTROL))
    sweep, members = suite_sweep(suite, "smoke", [], "")
    assert len(sweep.configs) == 2 + 4 + 4  # the control once per seed, the others per rate and seed
    assert {str(m["cell"]) for m in members if m["arm"] == "no-dropout"} == {"{}"}
    result = _analyze(_suite(tmp_path, tiny_mnist, **CONTROL), tmp_path)
    against_control = [c for c in result.comparisons if c.name_a == "no-dropout"]
    assert [c.stratum for c in against_control] == [{"model.dropout": 0.2}, {"model.dropout": 0.5}]
    control_runs = [[row["runs_a"] for row in c.per_seed] for c in against_control]
    assert control_runs[0] == control_runs[1] and len(control_runs[0]) == 2
    assert [[row["runs_b"] for row in c.per_seed] for c in against_control][0] != \
        [[row["runs_b"] for row in c.per_seed] for c in against_control][1]


@pytest.mark.parametrize(("not_crossed", "message"), [
    (["train.lr"], "arms.no-dropout.not_crossed: ['train.lr'] must list grid axes; axes: model.dropout"),
    ([], "arms.no-dropout: sets model.dropout, which is also a grid axis; an arm may not set what the grid varies "
         "(unless the arm is not_crossed with it)"),
])
def test_not_crossed_names_grid_axes_only(tmp_path: Path, tiny_mnist: Path, not_crossed: list[str],
                                          message: str) -> None:
    arms = CONTROL["arms"] | {"no-dropout": {"model.dropout": 0.0, "not_crossed": not_crossed}}
    path = _suite(tmp_path, tiny_mnist, **(CONTROL | {"arms": arms}))
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: {message}") + "$"):
        load_suite(path)


def test_more_seeds_where_a_cell_needs_them(tmp_path: Path, tiny_mnist: Path) -> None:
    """Cells at lr 0.01 get seeds 2 and 3 besides 0 and 1, in both arms: their comparison pairs
    four seeds, the other lr's two; `best` pairs what both picks have."""
    budgets = {name: {"seeds": [0, 1], "more_seeds": [{"where": {"train.lr": 0.01}, "seeds": [2, 3]}]}
               for name in ("smoke", "quick", "full")}
    path = _suite(tmp_path, tiny_mnist, budgets=budgets)
    sweep, members = suite_sweep(load_suite(path), "smoke", [], "")
    assert len(sweep.configs) == 2 * (2 + 4)
    result = _analyze(path, tmp_path)
    seeds = {c.label: [row["seed"] for row in c.per_seed] for c in result.comparisons}
    assert seeds["train.lr=0.003"] == [0, 1] and seeds["train.lr=0.01"] == [0, 1, 2, 3]


def test_more_seeds_name_a_cell_of_the_grid(tmp_path: Path, tiny_mnist: Path) -> None:
    budgets = {"smoke": {"seeds": [0], "more_seeds": [{"where": {"train.lr": 0.1}, "seeds": [2]}]}}
    path = _suite(tmp_path, tiny_mnist, budgets=budgets)
    with pytest.raises(ConfigError, match=re.escape("budgets.smoke.more_seeds.0.where: train.lr=0.1 is not a cell "
                                                    "of panel main's grid; axes: {'train.lr': [0.003, 0.01]}")):
        load_suite(path)


def _comparison(label: str, outcome: str) -> Comparison:
    paired = paired_comparison([0.0, 0.0], [0.01, 0.02], 0.002)
    return Comparison(label, "no-BN", "BN", paired, Verdict(outcome, "x", None), "", primary=True)


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        (["supported", "supported"], "supported"),
        (["not supported", "not supported"], "not supported"),
        (["supported", "not supported"], "depends"),
        (["supported", "not supported", "inconclusive"], "depends"),
        (["supported", "inconclusive"], "inconclusive"),
        (["not supported", "inconclusive"], "inconclusive"),
    ],
)
def test_the_outcome_table(outcomes: list[str], expected: str) -> None:
    comparisons = [_comparison(f"depth={i}", outcome) for i, outcome in enumerate(outcomes)]
    assert combine(comparisons) == expected


def test_depends_names_where_the_claim_holds() -> None:
    from bnlab.analysis.claims import outcome_words

    primary = [_comparison("model.hidden=[100, 100, 100]", "not supported"),
               _comparison("model.hidden=[100]*8", "supported")]
    assert outcome_words("depends", primary) == ("It depends: the claim holds at model.hidden=[100]*8, not at "
                                                  "model.hidden=[100, 100, 100].")


def test_a_layers_metric_is_its_mean_over_probe_steps(tmp_path: Path, tiny_config: Path) -> None:
    """`drift` (and every layers.csv column) as the analysis reads it: the mean over a run's probe
    points of one layer (`drift:2`) or of all; NaN for a run that recorded none."""
    from bnlab.analysis.arms import metric_value
    from bnlab.config import load_config
    from bnlab.records import finished_run
    from bnlab.runs.runner import run

    probed = run(load_config(tiny_config, ["eval.grad_ics=true", "train.log_every=2"]), tmp_path / "probed")
    finished = finished_run(probed.folder)
    rows = finished.table("layers")
    per_layer = {layer: [float(row["drift"]) for row in rows if row["layer"] == layer and row["drift"]]
                 for layer in ("2", "3")}
    finite = {layer: [v for v in values if math.isfinite(v)] for layer, values in per_layer.items()}
    assert all(len(values) >= 3 for values in finite.values())
    assert metric_value(finished, "drift:2") == pytest.approx(sum(finite["2"]) / len(finite["2"]))
    every = finite["2"] + finite["3"]
    assert metric_value(finished, "drift") == pytest.approx(sum(every) / len(every))
    plain = finished_run(run(load_config(tiny_config), tmp_path / "plain").folder)
    assert math.isnan(metric_value(plain, "drift"))
