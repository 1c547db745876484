"""Findings: `claim test --out` writes a report with its verdict.json, `claim table` builds the
README's table from them, and the shipped README agrees with the shipped findings."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

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
