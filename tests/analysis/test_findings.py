"""Findings: `claim test --out` writes a report with its verdict.json, `claim table` builds the
README's table from them, and the shipped README agrees with the shipped findings."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WAIT_SECONDS, Holds
from recheck import absolute_paths, recheck
from typer.testing import CliRunner

from bnlab.analysis.findings import TABLE_END, TABLE_START, read_findings, table_in, verdict_table
from bnlab.analysis.suites import suite_names
from bnlab.cli import app

ROOT = Path(__file__).resolve().parents[2]


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
    """Every comparison of a fresh finding, recomputed from runs.csv and verdict.json alone (tests/analysis/
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
    # The data folder given on the command line is named, not shown, in every file (HTML included).
    assert verdict["command"].startswith(f"bnlab claim test {suite} data.root=(local path) ")
    assert "data.root=(local path)" in (out / "report.html").read_text()
    assert [item["runs_trained"] for item in verdict["invocations"]] == [verdict["runs"]]
    assert verdict["wall_seconds"] == verdict["invocations"][0]["wall_seconds"] > 0
    again = CliRunner().invoke(app, ["claim", "test", suite, f"data.root={tiny_mnist}", "data.verify=false",
                                     "device=cpu", "train.epochs=4", "--budget", "smoke", "--runs-dir", str(runs),
                                     "--out", str(out)])
    assert again.exit_code == result.exit_code
    assert json.loads((out / "verdict.json").read_text())["wall_seconds"] == verdict["wall_seconds"]  # not reset


def test_the_recheck_fails_on_a_changed_number(tmp_path: Path, tiny_mnist: Path) -> None:
    """The recheck is a test that can fail: one per-seed value moved in runs.csv, or an outcome
    changed in verdict.json, and it says which comparison no longer follows from the files."""
    out = tmp_path / "placement"
    result = CliRunner().invoke(app, ["claim", "test", "placement", f"data.root={tiny_mnist}", "data.verify=false",
                                      "device=cpu", "train.epochs=4", "--budget", "smoke", "--runs-dir",
                                      str(tmp_path / "runs"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert recheck(out) > 0
    verdict_text, runs_text = (out / "verdict.json").read_text(), (out / "runs.csv").read_text()
    comparison = next(c for c in json.loads(verdict_text)["comparisons"] if c["n"] >= 2)
    run_id = comparison["per_seed"][0]["runs_b"][0]
    lines = runs_text.splitlines()
    header = lines[0].split(",")
    for index, line in enumerate(lines):
        cells = line.split(",")
        if cells[0] == run_id and cells[header.index("arm")] == comparison["b"]:
            column = header.index(comparison["metric"])
            cells[column] = repr(float(cells[column]) - 0.01)
            lines[index] = ",".join(cells)
    (out / "runs.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(AssertionError, match=re.escape(comparison["label"])):
        recheck(out)
    (out / "runs.csv").write_text(runs_text)
    verdict = json.loads(verdict_text)
    verdict["comparisons"][0]["outcome"] = "supported" if verdict["comparisons"][0]["outcome"] != "supported" \
        else "not supported"
    (out / "verdict.json").write_text(json.dumps(verdict))
    with pytest.raises(AssertionError):
        recheck(out)


def test_the_recheck_fails_on_a_changed_spread(tmp_path: Path) -> None:
    """batch-size's seed-to-seed spread rows follow from runs.csv: a moved sd, a moved p or another
    lr pick in verdict.json is caught, and so is one changed test accuracy in runs.csv."""
    shipped = ROOT / "docs" / "findings" / "batch-size"
    verdict = json.loads((shipped / "verdict.json").read_text())
    assert len(verdict["spread"]) == 14  # 7 batch sizes x (LayerNorm, BN) and (no-norm, BN)
    for change in ({"b_sd": verdict["spread"][0]["b_sd"] * 1.01}, {"brown_forsythe_p": 0.5},
                   {"a_pick": 0.003}):
        out = tmp_path / "_".join(change)
        out.mkdir()
        (out / "runs.csv").write_text((shipped / "runs.csv").read_text())
        (out / "verdict.json").write_text(json.dumps({**verdict, "spread": [verdict["spread"][0] | change]}))
        with pytest.raises(AssertionError, match="spread at train.batch_size=4"):
            recheck(out)
    out = tmp_path / "runs"
    out.mkdir()
    run_id = verdict["spread"][0]["b_runs"][0]
    lines = (shipped / "runs.csv").read_text().splitlines()
    column = lines[0].split(",").index("test_acc")
    lines = [",".join(cells[:column] + [repr(float(cells[column]) - 0.01)] + cells[column + 1:])
             if cells[0] == run_id else line for line, cells in ((line, line.split(",")) for line in lines)]
    (out / "runs.csv").write_text("\n".join(lines) + "\n")
    (out / "verdict.json").write_text(json.dumps({**verdict, "comparisons": [], "spread": verdict["spread"][:1]}))
    with pytest.raises(AssertionError, match="spread at train.batch_size=4"):
        recheck(out)


SHIPPED = sorted(path.parent.name for path in (ROOT / "docs" / "findings").glob("*/verdict.json"))


@pytest.mark.parametrize("suite", SHIPPED)
def test_every_shipped_finding_rechecks_from_its_files(suite: str) -> None:
    """Every comparison of every finding the repository ships follows from its runs.csv and
    verdict.json (tests/analysis/recheck.py), and none of its files names a path of the machine that made it."""
    folder = ROOT / "docs" / "findings" / suite
    assert recheck(folder) >= 1
    assert absolute_paths(folder) == []


def test_every_suite_has_a_shipped_finding() -> None:
    assert SHIPPED == suite_names()


def test_an_interrupted_invocation_counts_toward_the_wall_time(tmp_path: Path, tiny_mnist: Path,
                                                              holds: Holds) -> None:
    """A claim test stopped by Ctrl-C after one finished run, then resumed: verdict.json lists both
    invocations, with the runs each trained, and their total."""
    command = [sys.executable, "-m", "bnlab", "claim", "test", "placement", f"data.root={tiny_mnist}",
               "data.verify=false", "device=cpu", "--budget", "smoke", "--runs-dir", str(tmp_path / "runs"),
               "--workers", "1"]
    holds.arm("sweep.run")  # the driver, just after it recorded its first finished run
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    assert holds.wait("sweep.run", process) == process.pid
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 130, stderr
    out = tmp_path / "findings"
    resumed = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert resumed.returncode == 0, resumed.stderr
    verdict = json.loads((out / "verdict.json").read_text())
    first, second = verdict["invocations"]
    assert first["runs_trained"] >= 1 and first["runs_trained"] + second["runs_trained"] == verdict["runs"] == 16
    assert verdict["runs_trained"] == 16
    assert verdict["wall_seconds"] == round(first["wall_seconds"] + second["wall_seconds"], 1)
    assert all(item["matmul_gflops"] > 0 for item in verdict["invocations"])
