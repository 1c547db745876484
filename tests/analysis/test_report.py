"""Reports: a real sweep on the tiny dataset, read back into report.md and one self-contained
report.html; odd inputs (one seed, damaged folders, mixed datasets, hostile names, nothing at all)."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import matplotlib.image
import pandas as pd
import pytest
import typer
from conftest import WAIT_SECONDS, require, write_dataset, write_spec
from typer.testing import CliRunner

from bnlab.analysis import figures, learning_curves
from bnlab.analysis.cells import Group
from bnlab.analysis.claims import ClaimResult
from bnlab.analysis.compare import Comparison
from bnlab.analysis.document import Report, Table
from bnlab.analysis.figures import heat_axes
from bnlab.analysis.render import render_html, write_report
from bnlab.analysis.report import build_report
from bnlab.analysis.stats import paired_comparison, plain_words, verdict
from bnlab.cli.report import report as report_command
from bnlab.config import validate
from bnlab.config.spec import load_sweep
from bnlab.records import read_finished
from bnlab.runs.runner import run as run_one
from bnlab.runs.sweep import SweepOptions, run_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)<"  # a folder name cannot hold "/", so no closing tag; "<script" is the point


def report_app() -> typer.Typer:
    """The command as bnlab/cli.py registers it; the callback keeps `report` a subcommand."""
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("report")(report_command)
    return app


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, tiny_mnist: Path) -> Path:
    """8 tiny runs: lr 0.01 trains, lr 1e6 diverges, with and without BN, seeds 0 and 1."""
    root = tmp_path_factory.mktemp("report")
    spec = write_spec(root, tiny_mnist, lrs="[0.01, 1000000.0]", seeds="[0, 1]", epochs=2)
    spec.write_text(spec.read_text().replace("train: {", "train: {optimizer: sgd, ")
                    .replace("hidden: [16]", "hidden: [16, 8]"))
    state = run_sweep(load_sweep(spec), root / "runs", SweepOptions(stack="off", workers=1))
    assert state.counts == {"done": 4, "diverged": 4, "failed": 0}
    return root / "runs" / "grid"


def results(folder: Path) -> list[dict[str, str]]:
    with (folder / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


def placement_claim(folder: Path) -> ClaimResult:
    """A real paired comparison (bn after vs none at lr 0.01, paired by seed), as a suite would make it."""
    rows = [row for row in results(folder) if row["train.lr"] == "0.01"]
    by_seed = {(row["model.bn"], row["seed"]): float(row["test_acc"]) for row in rows}
    a, b = ([by_seed[(bn, seed)] for seed in ("0", "1")] for bn in ("none", "after"))
    paired = paired_comparison(a, b, margin=0.002)
    decided = verdict(paired, 0.002, +1)
    words = dict(name_a="bn none", name_b="bn after", metric="test accuracy", unit="pp", scale=100.0,
                 margin=0.002, direction=+1)
    sentence = plain_words(paired, decided, **words)
    comparison = Comparison("relu, lr 0.01", "bn none", "bn after", paired, decided, sentence, primary=True)
    rates = pd.DataFrame({"arm": ["bn none", "bn after"], "diverged": [2, 2], "rate": [0.5, 0.5]})
    return ClaimResult(name="placement", claim="BN lets you raise the learning rate", design="docs/literature.md C2",
                       budget="smoke", outcome=decided.outcome, summary=comparison.sentence,
                       rule={"name": "paired_difference", "metric": "test_acc", "margin": 0.002, "direction": 1,
                             "unit": "pp", "scale": 100.0},
                       comparisons=[comparison], tables=[("divergence rates", rates)],
                       deviations=["2 seeds instead of 5 (smoke budget)"],
                       literature="This verdict (not supported) DISAGREES with what the literature leads us to "
                                  "expect (supported). Ioffe & Szegedy trained at 30x the learning rate with BN.",
                       expected="supported", disagrees=True,
                       command=f"bnlab claim test placement --runs-dir {folder.parent}")


class Written(NamedTuple):
    built: Report
    md_path: Path
    html_path: Path
    claim: ClaimResult


def ratio_claim(folder: Path) -> ClaimResult:
    """A steps_to_target-style rule: paired log-ratios, shown as ratios B / A."""
    rows = [row for row in results(folder) if row["train.lr"] == "0.01"]
    steps = {(row["model.bn"], row["seed"]): math.log(100 * float(row["test_acc"])) for row in rows}
    paired = paired_comparison([steps[("none", s)] for s in "01"], [steps[("after", s)] for s in "01"], 0.223)
    decided = verdict(paired, 0.223, -1)
    comparison = Comparison("relu", "bn none", "bn after", paired, decided, "ratio sentence", primary=True)
    return ClaimResult(name="convergence", claim="BN speeds up convergence", design="docs/literature.md C7",
                       budget="smoke", outcome=decided.outcome, summary="ratio summary",
                       rule={"name": "steps_to_target", "metric": "steps", "target": 0.97, "margin": 0.223,
                             "direction": -1, "unit": "log-ratio", "scale": 1},
                       comparisons=[comparison])


@pytest.fixture(scope="module")
def written(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Written:
    claim = placement_claim(sweep)
    built = build_report(sweep, [claim, ratio_claim(sweep)])
    return Written(built, *write_report(built, tmp_path_factory.mktemp("out")), claim)


def copy_runs(source: Path, target: Path, keep: Callable[[dict[str, str]], bool] = lambda row: True) -> Path:
    target.mkdir(parents=True)
    for row in results(source):
        if keep(row):
            shutil.copytree(source / row["run_id"], target / row["run_id"])
    for name in ("sweep.json", "spec.yaml"):
        shutil.copy(source / name, target / name)
    return target


def images(page: str) -> list[bytes]:
    sources = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)
    assert len(sources) == page.count("<img"), "every <img> has a quoted src"
    prefix = "data:image/png;base64,"
    assert all(source.startswith(prefix) for source in sources), sources
    return [base64.b64decode(source[len(prefix):], validate=True) for source in sources]


# --- the report of a real sweep ---------------------------------------------------------------


def test_report_sections_and_numbers_match_results_csv(written: Written, sweep: Path) -> None:
    built, md_path = written.built, written.md_path
    md = md_path.read_text()
    for heading in ("## Claim: placement", "## Claim: convergence", "## Provenance", "## Results by field",
                    "## Results per cell", "## Accuracy heatmaps", "## Learning curves", "## Activation percentiles",
                    "## Divergence", "## Commands per cell"):
        assert heading in md, heading
    summary = json.loads((sweep / results(sweep)[0]["run_id"] / "summary.json").read_text())
    for digest in summary["dataset"]["sha256"].values():
        assert digest in md
    assert f"bnlab sweep {sweep / 'spec.yaml'}" in md
    assert "| runs | 8 (4 done, 4 diverged) |" in md
    assert f"| torch | {summary['versions']['torch']} |" in md

    # Every cell's mean is the mean of results.csv's test_acc over its finished seeds, printed in %.
    cells: dict[tuple[str, str], list[float]] = {}
    for row in results(sweep):
        cells.setdefault((f"{float(row['train.lr']):g}", row["model.bn"]), []).extend(
            [float(row["test_acc"])] if row["test_acc"] else [])
    frame = built.cells.set_index(["train.lr", "model.bn"])
    for (lr, bn), values in cells.items():
        got = frame.loc[(lr, bn)]
        assert got["runs"] == 2 and got["test_acc_n"] == len(values)
        if values:
            mean = sum(values) / len(values)
            assert got["test_acc_mean"] == pytest.approx(mean, abs=1e-12)
            assert f"| {lr} | {bn} | 2 | 2 | {100 * mean:.2f} |" in md
        else:
            assert math.isnan(got["test_acc_mean"])
            assert f"| {lr} | {bn} | 2 | 0 | – | – | no result |" in md

    # Divergence: all four lr=1e6 runs, two per placement; per-cell commands in both forms.
    assert "4 of 8 runs diverged" in md
    assert "| 1e+06 | none | 2 | 2 | 0 | 0 |" in md
    first = next(row for row in results(sweep) if row["train.lr"] == "0.01" and row["model.bn"] == "none"
                 and row["seed"] == "0")
    assert f"`train.lr=0.01 model.bn=none` | 0, 1 | `bnlab run {sweep / first['run_id'] / 'config.yaml'}`" in md
    assert "report-figures/heatmap.png" in md and (md_path.parent / "report-figures" / "heatmap.png").exists()


def test_claim_section_renders_verdict_table_and_literature(written: Written, sweep: Path) -> None:
    page = written.html_path.read_text()
    assert written.built.sections[0].title == "Claim: placement"
    comparison = written.claim.comparisons[0]
    outcome = comparison.verdict.outcome
    assert f'<span class="badge {outcome.replace(" ", "-")}">{outcome}</span>' in page
    assert comparison.sentence in written.md_path.read_text()
    diff = f"{100 * comparison.paired.diff_mean:+.2f}"
    assert f"<td class=\"num\">{diff}</td>" in page  # B - A in percentage points
    assert '<p class="callout disagree">Literature: This verdict (not supported) DISAGREES' in page
    assert "<h4>divergence rates</h4>" in page and "<h4>deviations:</h4>" in page
    assert "paired-t p" in page and "TOST p" in page and "Welch p" in page
    ratio = written.built.sections[1]  # the log-ratio rule reads as a factor, not as pp
    assert ratio.title == "Claim: convergence"
    table = next(block for block in ratio.blocks if isinstance(block, Table))
    assert table.columns[6] == "B / A"
    assert table.rows[0][6] == f"{math.exp(ratio_claim(sweep).comparisons[0].paired.diff_mean):.2f}x"
    assert "margin a factor of 1.25" in written.md_path.read_text()


def test_html_is_one_offline_file_with_valid_inline_pngs(written: Written) -> None:
    page = written.html_path.read_text()
    assert "<script" not in page.lower()
    assert "http://" not in page and "https://" not in page
    references = re.findall(r"\b(?:src|href)\s*=\s*[\"']([^\"']*)[\"']", page)
    assert len(references) == len(re.findall(r"\b(?:src|href)\s*=", page)), "every reference is quoted"
    assert all(ref.startswith(("data:image/png;base64,", "#")) for ref in references), "data: and #anchors only"
    assert "@import" not in page and "url(" not in page and "<link" not in page
    pngs = images(page)
    assert len(pngs) == len(written.built.figures) == 3  # heatmap, learning curves, activation percentiles
    for png in pngs:
        assert png.startswith(PNG_SIGNATURE)
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_short_runs_draw_learning_curves_against_steps(sweep: Path, written: Written) -> None:
    """Two-epoch runs would give a per-epoch curve of two points: the figure uses the logged steps,
    each seed's loss smoothed on its own, then the mean and range over seeds per step."""
    curves = next(figure for figure in written.built.figures if figure.slug.startswith("curves"))
    assert "against training steps" in curves.caption and curves.caption.startswith("Training loss")
    cell = [row["run_id"] for row in results(sweep) if row["status"] == "done" and row["model.bn"] == "after"]
    runs = [read_finished(sweep / run_id) for run_id in cell]
    assert len(runs) == 2 and learning_curves.curve_source(runs) is learning_curves.LOGGED_LOSS
    x, mean, low, high = learning_curves.curve_band(runs, learning_curves.LOGGED_LOSS)
    logged = [pd.read_csv(sweep / run_id / "steps.csv") for run_id in cell]
    smoothed = pd.concat([frame.set_index("step")["train_loss"].rolling(5, min_periods=1).mean() for frame in logged],
                         axis=1)
    assert x == [float(step) for step in smoothed.index]
    assert mean == pytest.approx(list(smoothed.mean(axis=1))) and low == pytest.approx(list(smoothed.min(axis=1)))
    assert high == pytest.approx(list(smoothed.max(axis=1))) and low != high


def test_hostile_names_and_errors_are_escaped(sweep: Path, tmp_path: Path) -> None:
    folder = copy_runs(sweep, tmp_path / HOSTILE)
    failed = next(row["run_id"] for row in results(sweep) if row["status"] == "done")
    summary = json.loads((folder / failed / "summary.json").read_text())
    summary |= {"status": "failed", "error": "RuntimeError: <img src=x onerror=alert(1)> & </table>"}
    (folder / failed / "summary.json").write_text(json.dumps(summary))
    md_path, html_path = write_report(build_report(folder), tmp_path / "out")
    page = html_path.read_text()
    assert "<script" not in page and "<img src=x" not in page and "</table> &" not in page
    assert "&lt;script&gt;alert(1)&lt;" in page
    assert "RuntimeError: &lt;img src=x onerror=alert(1)&gt; &amp; &lt;/table&gt;" in page
    assert "## Failed runs" in md_path.read_text() and "&lt;img src=x" in md_path.read_text()
    assert "1 run(s) failed" in page


def test_one_seed_says_no_confidence_interval(sweep: Path, tmp_path: Path) -> None:
    folder = copy_runs(sweep, tmp_path / "one-seed", keep=lambda row: row["seed"] == "0")
    md = render_markdown_of(folder)
    assert "n=1: no confidence interval" in md
    assert "| 0.01 | none | 1 | 1 |" in md and "n=1: no CI" in md


def render_markdown_of(folder: Path) -> str:
    md_path, _ = write_report(build_report(folder), folder)
    return md_path.read_text()


def test_damaged_run_is_listed_not_fatal(sweep: Path, tmp_path: Path) -> None:
    folder = copy_runs(sweep, tmp_path / "damaged")
    broken = next(row["run_id"] for row in results(sweep) if row["status"] == "done")
    (folder / broken / "summary.json").write_text("{not json")
    hostile = folder / "<img src=x onerror=alert(1)>"
    hostile.mkdir()
    (hostile / "config.yaml").write_text("model: {bn: sideways}\n")
    result = CliRunner().invoke(report_app(), ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {folder / 'report.md'} and {folder / 'report.html'}\n"
    md = (folder / "report.md").read_text()
    assert "## Damaged runs" in md and "2 damaged run folder(s) are left out" in md
    assert f"{folder / broken / 'summary.json'}: damaged" in md
    assert "| runs | 9 (3 done, 4 diverged, 2 damaged) |" in md
    page = (folder / "report.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_mixed_datasets_warn_and_split(sweep: Path, tmp_path: Path) -> None:
    folder = copy_runs(sweep, tmp_path / "mixed", keep=lambda row: row["train.lr"] == "0.01")
    fashion_root = tmp_path / "fashion"
    write_dataset(fashion_root / "FashionMNIST" / "raw", seed=7)
    raw = json.loads((sweep / "sweep.json").read_text())["base"]
    raw |= {"name": "fashion", "data": {**raw["data"], "dataset": "fashion-mnist", "root": str(fashion_root)},
            "train": {**raw["train"], "lr": 0.01}}
    outcome = run_one(validate(raw, "test"), tmp_path / "fashion-runs")
    shutil.copytree(outcome.folder, folder / outcome.folder.name)
    built = build_report(folder)
    assert built.warnings[0].startswith("These runs mix datasets (fashion-mnist, mnist)")
    titles = [section.title for section in built.sections]
    assert "Results per cell (fashion-mnist)" in titles and "Results per cell (mnist)" in titles
    assert sorted(built.cells["dataset"]) == ["fashion-mnist", "mnist", "mnist"]
    page = render_html(built)
    assert page.index("mix datasets") < page.index('id="provenance"')


# --- the command ------------------------------------------------------------------------------


def test_empty_path_is_one_line_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(report_app(), ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path}: no runs here\n"
    assert list(tmp_path.iterdir()) == []


def test_out_option_and_bnlab_runs_default(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = copy_runs(sweep, tmp_path / "runs" / "grid", keep=lambda row: row["model.bn"] == "after")
    monkeypatch.setenv("BNLAB_RUNS", str(tmp_path / "runs"))
    result = CliRunner().invoke(report_app(), ["report", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.html").exists() and not (folder / "report.html").exists()
    assert "4 (2 done, 2 diverged)" in (tmp_path / "out" / "report.md").read_text()


def test_registered_in_bnlab_cli(sweep: Path, tmp_path: Path) -> None:
    from bnlab.cli import app

    folder = copy_runs(sweep, tmp_path / "grid", keep=lambda row: row["seed"] == "1")
    result = CliRunner().invoke(app, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert (folder / "report.html").exists()
    empty = CliRunner().invoke(app, ["report", str(tmp_path / "grid" / "nothing-here")])
    assert empty.exit_code == 2 and len(empty.stderr.splitlines()) == 1


def test_importing_the_command_loads_nothing_heavy() -> None:
    code = ("import sys, bnlab.cli.report; heavy = {'torch', 'pandas', 'matplotlib', 'scipy', 'numpy'}; "
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_heat_axes_prefer_batch_size_by_lr() -> None:
    assert heat_axes(["model.bn", "train.lr", "train.batch_size"]) == ("train.batch_size", "train.lr")
    assert heat_axes(["model.bn", "model.activation", "train.lr"]) == ("model.activation", "train.lr")
    assert heat_axes(["train.lr", "model.bn"]) == ("train.lr", "model.bn")
    assert heat_axes(["train.lr"]) is None


# --- a real browser, offline ------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    require(found is not None, "chromium (apt-get install -y --no-install-recommends chromium)")
    return found


def browse(browser: str, page: Path, workdir: Path) -> tuple[bytes, str]:
    """Screenshot `page` with the network pointed at a dead proxy; returns (PNG, the browser's net log)."""
    workdir.mkdir()
    shot, net_log = workdir / "shot.png", workdir / "net.json"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={workdir / 'profile'}", f"--screenshot={shot}", "--window-size=1280,4000",
                    "--hide-scrollbars", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
                    f"--log-net-log={net_log}", page.resolve().as_uri()],
                   capture_output=True, timeout=WAIT_SECONDS, check=True)
    return shot.read_bytes(), net_log.read_text()


def page_requests(net_log: str) -> list[str]:
    """URLs the page itself asked the network for: requests keyed to the file:// page (Chromium's
    own background traffic is keyed to its own sites). The net log holds one event per line."""
    urls = []
    for line in net_log.splitlines():
        if not line.startswith('{"params"'):
            continue
        params = json.loads(line.rstrip(",")).get("params", {})
        if str(params.get("network_isolation_key", "")).startswith("file://") and "url" in params:
            urls.append(params["url"])
    return urls


def test_report_renders_offline_in_chromium(written: Written, tmp_path: Path) -> None:
    browser = chromium()
    png, net_log = browse(browser, written.html_path, tmp_path / "report")
    assert png.startswith(PNG_SIGNATURE)
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (4000, 1280)
    assert len({tuple(pixel) for pixel in pixels[::8, ::8].reshape(-1, pixels.shape[2]).tolist()}) > 50
    assert page_requests(net_log) == []

    # The check above can see a request: the same browser on a page that asks for one.
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<!DOCTYPE html><p>x</p><img src="http://example.invalid/x.png">')
    _, leaky_log = browse(browser, leaky, tmp_path / "leaky")
    assert page_requests(leaky_log) == ["http://example.invalid/x.png"]


def test_heatmap_tick_labels_never_overlap() -> None:
    """Eight long lr labels in a narrow panel overlap as drawn; the heatmap turns them until they don't."""
    lrs = ["0.0001", "0.00017321", "0.0003", "0.00051962", "0.001", "0.0017321", "0.003", "0.0051962"]
    sizes = ["8", "64"]
    cells = {(size, lr): figures.HeatCell(0.9, 2, 0) for size in sizes for lr in lrs}
    drawn = figures.heatmap_figure([figures.HeatPanel(f"panel {k}", cells) for k in range(3)],
                                   "train.lr", lrs, "train.batch_size", sizes)
    panels = [axis for axis in drawn.axes if axis.get_xticklabels() and axis.get_title()]
    assert len(panels) == 3 and not any(figures.overlapping_x_ticks(drawn, axis) for axis in panels)
    naive, (axis,) = figures.new_figure(1, 1, width=0.75 + 0.55 * len(lrs) / 2)
    axis.set_xticks(range(len(lrs)), lrs)
    assert figures.overlapping_x_ticks(naive, axis)  # the check itself can see an overlap


def test_activation_percentiles_show_a_typical_run_of_the_best_cell(sweep: Path, written: Written) -> None:
    """The lr that trains (0.01) is each placement's best cell; of its two seeds, the lower test accuracy
    is the median (the lower middle), and the caption says why that run."""
    probes = next(figure for figure in written.built.figures if figure.slug.startswith("probes"))
    assert "the seed with the median final test accuracy" in probes.caption
    rows = [row for row in results(sweep) if float(row["train.lr"]) == 0.01]
    shown = [placement for placement in ("after", "none") if f"bn {placement}: run" in probes.caption]
    assert "after" in shown
    for placement in shown:
        mine = sorted((row for row in rows if row["model.bn"] == placement),
                      key=lambda row: (float(row["test_acc"]), int(row["seed"])))
        assert f"run {mine[0]['run_id']}" in probes.caption and f"run {mine[1]['run_id']}" not in probes.caption


def test_a_heatmap_leaves_out_settings_run_in_a_single_cell(sweep: Path) -> None:
    """A ghost-BN-like setting run at one (batch, lr) is one coloured square: named in the caption, not drawn."""
    run = read_finished(sweep / next(row["run_id"] for row in results(sweep) if row["status"] == "done"))
    fields = ["model.norm", "train.batch_size", "train.lr"]
    grid = {("batch", size, lr): [run] for size in ("8", "16") for lr in ("0.1", "0.3")}
    drawn = figures.heatmap(Group("", fields, {**grid, ("ghost", "8", "0.1"): [run]}))
    assert drawn is not None and "Not drawn: 1 setting(s) run in a single cell (model.norm=ghost)" in drawn.caption
    assert "Not drawn" not in figures.heatmap(Group("", fields, grid)).caption
    assert figures.heatmap(Group("", fields, {("ghost", "8", "0.1"): [run]})) is None
