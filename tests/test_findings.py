"""Findings: `claim test --out` writes a report with its verdict.json, `claim table` builds the
README's table from them, and the shipped README agrees with the shipped findings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recheck import absolute_paths, recheck
from typer.testing import CliRunner

from bnlab.claims import suite_names
from bnlab.cli import app
from bnlab.findings import TABLE_END, TABLE_START, read_findings, table_in, verdict_table

ROOT = Path(__file__).resolve().parent.parent


def test_claim_test_out_writes_findings_and_the_table_reads_them(tmp_path: Path, tiny_mnist: Path) -> None:
    out = tmp_path / "findings" / "placement"
    result = CliRunner().invoke(app, ["claim", "test", "placement", f"data.root={tiny_mnist}", "data.verify=false",
                                      "device=cpu", "--budget", "smoke", "--runs-dir", str(tmp_path / "runs"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    verdict = json.loads((out / "verdict.json").read_text())
    assert f"\nplacement: {verdict['outcome'].upper()} (smoke budget)\n" in result.stdout
    assert verdict["summary"] in result.stdout
    assert (verdict["seeds"], verdict["runs"], verdict["runs_trained"]) == ([0, 1], 16, 16)
    assert verdict["command"].startswith("bnlab claim test placement data.root=")
    assert verdict["datasets"][0]["sha256"]["train-images-idx3-ubyte"]
    assert verdict["wall_seconds"] > 0
    markdown = (out / "report.md").read_text()
    assert verdict["outcome"] in markdown and "runs over seeds [0, 1]" in markdown
    figures = [line.split("](")[1].rstrip(")") for line in markdown.splitlines() if line.startswith("![")]
    assert figures and all((out / figure).is_file() for figure in figures)
    assert "data:image/png;base64," in (out / "report.html").read_text()

    table = CliRunner().invoke(app, ["claim", "table", str(out.parent)])
    assert table.exit_code == 0, table.output
    assert table.stdout.startswith(TABLE_START) and table.stdout.rstrip().endswith(TABLE_END)
    assert f"| **{verdict['outcome']}** |" in table.stdout
    assert f"]({out.parent}/placement/report.md)" in table.stdout


def test_claim_table_of_a_folder_without_findings_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["claim", "table", str(tmp_path)])
    assert (result.exit_code, result.stderr) == (2, f"error: {tmp_path}: no findings here (no */verdict.json)\n")


def test_readme_verdict_table_is_generated_from_the_shipped_findings() -> None:
    findings = read_findings(ROOT / "docs" / "findings")
    shipped = table_in((ROOT / "README.md").read_text())
    assert shipped is not None, "README.md has no generated verdict table"
    assert shipped == verdict_table(findings), "README's verdict table is stale: paste `bnlab claim table`"
    for finding in findings:
        report = (ROOT / "docs" / "findings" / finding["suite"] / "report.md").read_text()
        assert f"budget: {finding['budget']}" in report and finding["summary"] in report


@pytest.mark.parametrize("suite", suite_names())
def test_a_finding_is_rechecked_from_its_own_files(suite: str, tmp_path: Path, tiny_mnist: Path) -> None:
    """Every comparison of a fresh finding, recomputed from runs.csv and verdict.json alone (tests/
    recheck.py: pandas and scipy, no bnlab analysis); no file names a path of this machine. Four
    epochs, so that the runs train and the comparisons have seeds to recheck."""
    out = tmp_path / "findings" / suite
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["claim", "test", suite, f"data.root={tiny_mnist}", "data.verify=false",
                                      "device=cpu", "train.epochs=4", "--budget", "smoke", "--runs-dir", str(runs),
                                      "--out", str(out)])
    assert result.exit_code in (0, 1), result.output  # 1: some runs failed, which the finding reports
    verdict = json.loads((out / "verdict.json").read_text())
    assert recheck(out) == len(verdict["comparisons"]) >= 1
    assert any(c["n"] >= 2 for c in verdict["comparisons"] if c["primary"]), "nothing trained: a vacuous recheck"
    assert absolute_paths(out) == []
    assert str(tmp_path) not in (out / "report.md").read_text()
    assert [item["runs_trained"] for item in verdict["invocations"]] == [verdict["runs"]]
    assert verdict["wall_seconds"] == verdict["invocations"][0]["wall_seconds"] > 0
    again = CliRunner().invoke(app, ["claim", "test", suite, f"data.root={tiny_mnist}", "data.verify=false",
                                     "device=cpu", "train.epochs=4", "--budget", "smoke", "--runs-dir", str(runs),
                                     "--out", str(out)])
    assert again.exit_code == result.exit_code
    assert json.loads((out / "verdict.json").read_text())["wall_seconds"] == verdict["wall_seconds"]  # not reset
