"""Hostile and damaged input (issue 7, points 1-3): each is one clear line or a visibly damaged
record, never a traceback, a hang, code run on bnlab's behalf, or a half-written file trusted.

The damaged-record tests train one small sweep for real and damage copies of it the ways
RELIABILITY.md lists (torn and corrupt CSV lines, empty or truncated summaries, edited configs).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import write_spec
from test_fuzz import alias_bomb
from typer.testing import CliRunner

from bnlab.cli import app
from bnlab.config import MAX_CONFIG_BYTES, Config
from bnlab.config.spec import load_sweep
from bnlab.records import read_runs
from bnlab.runs.sweep import SweepOptions, run_sweep

BNLAB_SOURCE = Path(__file__).resolve().parents[2] / "bnlab"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# --- what the loader refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(("levels", "problem"), [
    (12, "more than 100 aliases"),
    # Under the alias cap, but 10^8 values: without the expansion cap this hangs in repr().
    (8, "more than 100000 values once aliases are expanded"),
])
def test_yaml_alias_bomb_is_refused(tmp_path: Path, levels: int, problem: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_bytes(alias_bomb(levels))
    assert invoke("config", "show", str(path)) == (2, "", f"error: {path}: not valid YAML: {problem}\n")


@pytest.mark.parametrize("text", ["a: &x [*x]\n", "model: &x {hidden: *x}\n"])
def test_an_alias_into_its_own_node_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    assert invoke("config", "show", str(path)) == (
        2, "", f"error: {path}: not valid YAML: an alias refers to the node that contains it (a recursive structure)\n")


@pytest.mark.parametrize("text", ["a: " + "[" * 3000 + "]" * 3000, "{a: " * 3000])
def test_nesting_past_the_recursion_limit_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    assert invoke("config", "show", str(path)) == (
        2, "", f"error: {path}: not valid YAML: nested deeper than 100 levels\n")


def test_oversized_config_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    assert invoke("config", "show", str(path)) == (
        2, "", f"error: {path}: {path.stat().st_size} bytes is over the {MAX_CONFIG_BYTES}-byte limit for a config\n")


@pytest.mark.timeout(30, method="thread")  # both used to block forever
def test_special_files_are_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        assert invoke("config", "show", str(path)) == (2, "", f"error: {path}: not a regular file\n")


def test_nul_in_a_base_path_is_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text('base: "a\\0b"\n')
    # The base is relative to the spec; the path is shown as a repr, so the NUL is visible.
    shown = repr(str(tmp_path / "a\0b"))
    assert invoke("sweep", str(spec), "--dry-run") == (
        2, "", f"error: {shown}: not a usable path (it holds a NUL byte)\n")


def test_an_override_cannot_make_a_bad_section_valid(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("train: [1]\n")
    assert invoke("config", "show", str(path), "train.lr=0.1") == (
        2, "", "error: override 'train.lr=0.1': train: must be a mapping of fields, got list [1]\n")


@pytest.mark.parametrize("command", ["config", "sweep"])
def test_yaml_tags_that_would_run_code_are_refused(tmp_path: Path, command: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    code, _, stderr = invoke(*(["config", "show"] if command == "config" else ["sweep", "--dry-run"]), str(path))
    assert (code, stderr) == (2, f"error: {path}: not valid YAML (line 1, column 7): could not determine a "
                                 "constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yaml"]


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            found.append((f"{owner.id if isinstance(owner, ast.Name) else '?'}.{node.func.attr}", node))
    return found


def test_nothing_bnlab_loads_can_run_code() -> None:
    """Every deserializer call in bnlab/ is a safe one: YAML through the SafeLoader subclass,
    torch.load only with weights_only=True, never pickle or eval."""
    checked = 0
    for source in sorted(BNLAB_SOURCE.rglob("*.py")):
        for name, call in _calls(ast.parse(source.read_text())):
            keywords = {kw.arg: kw.value for kw in call.keywords}
            where = f"{source.relative_to(BNLAB_SOURCE)}:{call.lineno}: {name}"
            assert name not in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "pickle.load",
                                "pickle.loads", "marshal.loads", "np.load", "numpy.load"), where
            if name == "yaml.load":
                assert isinstance(keywords.get("Loader"), ast.Name) and keywords["Loader"].id == "_LimitedLoader", where
                checked += 1
            if name == "torch.load":
                assert isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                checked += 1
        assert not [call.lineno for call in ast.walk(ast.parse(source.read_text())) if isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name) and call.func.id in ("eval", "exec")], source.name
    assert checked >= 1  # the YAML loader itself: the scan sees real calls


# --- hostile names --------------------------------------------------------------------------------

HOSTILE_NAMES = {
    "../x": "'../x'", "/etc/passwd": "'/etc/passwd'", "a/b": "'a/b'", "a\0b": "'a\\x00b'", "..": "'..'",
    ".hidden": "'.hidden'", "run\n": "'run\\n'", "<script>": "'<script>'", "": "''",
    "run\x85": "'run\\x85'", "a\u2028b": "'a\\u2028b'",  # line breaks to str.splitlines and terminals
    "a" * 101: "'" + "a" * 56 + "...",
}
NAME_RULE = ("name: must be 1-100 letters, digits, '.', '_', '+' or '-', starting with a letter or digit, "
             "so it stays inside runs/ (got ")


@pytest.mark.parametrize("name", list(HOSTILE_NAMES))
def test_names_that_leave_runs_are_refused(tmp_path: Path, name: str) -> None:
    runs = tmp_path / "runs"
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"name": name, "device": "cpu"}))
    assert invoke("run", str(cfg), "--runs-dir", str(runs)) == (
        2, "", f"error: {cfg}: {NAME_RULE}{HOSTILE_NAMES[name]})\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": name, "grid": {"train.lr": [0.1]}}))
    assert invoke("sweep", str(spec), "--runs-dir", str(runs)) == (
        2, "", f"error: {spec}: {NAME_RULE}{HOSTILE_NAMES[name]})\n")
    assert not runs.exists()


@pytest.mark.parametrize(("text", "message"), [
    ("grdi: {train.lr: [0.1]}\n", "grdi: unknown field (did you mean 'grid'?); allowed: name, base, grid, seeds"),
    ("grid: {train.lr: [0.1}\n", "not valid YAML (line 1, column 22): expected ',' or ']', but got '}'"),
    ("grid: {train.lr: 0.1}\n", "grid.train.lr: Input should be a valid list (got 0.1)"),
    ("seeds: [1, 1]\n", "seeds: seeds repeat (got [1, 1])"),
    ("seeds: []\n", "seeds: List should have at least 1 item after validation, not 0 (got [])"),
])
def test_bad_spec_is_one_line_before_anything_runs(tmp_path: Path, text: str, message: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert invoke("sweep", str(spec), "--runs-dir", str(tmp_path / "runs")) == (2, "", f"error: {spec}: {message}\n")
    assert not (tmp_path / "runs").exists()


def test_a_spec_file_stem_that_is_no_folder_name(tmp_path: Path) -> None:
    spec = tmp_path / "my sweep.yaml"
    spec.write_text("grid: {train.lr: [0.1]}\n")
    assert invoke("sweep", str(spec), "--runs-dir", str(tmp_path / "runs")) == (
        2, "", f"error: {spec}: name: the file's stem 'my sweep' is not a usable folder name; set `name:`\n")
    assert not (tmp_path / "runs").exists()


# --- damaged records ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_mnist: Path) -> tuple[Path, Path]:
    """(spec, runs): one real sweep of 4 finished runs, trained once for every test here."""
    folder = tmp_path_factory.mktemp("finished")
    spec = write_spec(folder, tiny_mnist, seeds="[0]")
    run_sweep(load_sweep(spec), folder / "runs", SweepOptions(workers=1))
    return spec, folder / "runs"


def copy_runs(finished: tuple[Path, Path], tmp_path: Path) -> tuple[Path, list[Path]]:
    """A private copy of the sweep folder and its run folders, sorted by run id."""
    sweep = tmp_path / "runs" / "grid"
    shutil.copytree(finished[1] / "grid", sweep)
    return sweep, sorted(p for p in sweep.iterdir() if p.is_dir())


def _replace_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines))


def _set_field(line: str, header: str, column: str, value: str) -> str:
    fields = line.rstrip("\n").split(",")
    fields[header.split(",").index(column)] = value
    return ",".join(fields)


def _edit_config(run: Path, old: str, new: str) -> None:
    text = (run / "config.yaml").read_text()
    assert old in text
    (run / "config.yaml").write_text(text.replace(old, new, 1))


def _summary(run: Path, **changes: object) -> None:
    (run / "summary.json").write_text(json.dumps(json.loads((run / "summary.json").read_text()) | changes))


def _header_fields(path: Path) -> int:
    return len(path.read_text().splitlines()[0].split(","))


def _cut_steps(run: Path) -> tuple[str, int]:
    """(the last step left in epochs.csv, the final step summary.json records)."""
    last_row = (run / "epochs.csv").read_text().splitlines()[-1]
    return last_row.split(",")[1], json.loads((run / "summary.json").read_text())["final"]["step"]


# Each: (damage the run folder, the problem ls and report give, relative to that folder).
DAMAGE: dict[str, tuple[Callable[[Path], None], Callable[[Path], str]]] = {
    "summary empty": (lambda run: (run / "summary.json").write_bytes(b""),
                      lambda run: "summary.json: damaged: Expecting value: line 1 column 1 (char 0)"),
    "summary truncated": (lambda run: (run / "summary.json").write_bytes(b'{"loss": 0.'),
                          lambda run: "summary.json: damaged: Expecting ',' delimiter: line 1 column 11 (char 10)"),
    "summary null": (lambda run: (run / "summary.json").write_bytes(b"null"),
                     lambda run: "summary.json: damaged: no valid status"),
    "summary garbage final": (lambda run: _summary(run, final="garbage"),
                              lambda run: "summary.json: damaged: final is not a mapping of numbers"),
    "summary of another run": (lambda run: _summary(run, run_id="0123456789ab"),
                               lambda run: "summary.json: run_id '0123456789ab' does not match its folder"),
    "epochs.csv torn mid-line": (lambda run: (run / "epochs.csv").write_bytes((run / "epochs.csv").read_bytes()[:-7]),
                                 lambda run: "epochs.csv: line 3: torn (the file ends mid-line)"),
    "epochs.csv without its last newline": (
        lambda run: (run / "epochs.csv").write_bytes((run / "epochs.csv").read_bytes()[:-1]),
        lambda run: "epochs.csv: line 3: torn (the file ends mid-line)"),
    "epochs.csv cut at a line end": (
        lambda run: (run / "epochs.csv").write_text("".join((run / "epochs.csv").read_text().splitlines(True)[:-1])),
        lambda run: "epochs.csv: ends at step {}, summary.json says {}: rows are missing".format(*_cut_steps(run))),
    "epochs.csv last step empty": (
        lambda run: _replace_line(run / "epochs.csv", len(lines := (run / "epochs.csv").read_text().splitlines()),
                                  _set_field(lines[-1], lines[0], "step", "")),
        lambda run: f"epochs.csv: ends at step (none), summary.json says {_cut_steps(run)[1]}: rows are missing"),
    "epochs.csv missing": (lambda run: (run / "epochs.csv").unlink(), lambda run: "epochs.csv: missing"),
    "steps.csv row 3 is abc,,": (
        lambda run: _replace_line(run / "steps.csv", 4, "abc,,"),
        lambda run: f"steps.csv: line 4: 3 field(s), the header has {_header_fields(run / 'steps.csv')}"),
    "probes.csv holds markup": (
        lambda run: _replace_line(run / "probes.csv", 2, _set_field(
            (run / "probes.csv").read_text().splitlines()[1], (run / "probes.csv").read_text().splitlines()[0],
            "p50", "<script>alert(1)</script>")),
        lambda run: "probes.csv: line 2: p50: '<script>alert(1)</script>' is not a number"),
    "evals.csv not UTF-8": (lambda run: (run / "evals.csv").write_bytes(b"\xff" + (run / "evals.csv").read_bytes()),
                            lambda run: "evals.csv: not UTF-8 text (byte 0)"),
    "model.pt empty": (lambda run: (run / "model.pt").write_bytes(b""), lambda run: "model.pt: missing or empty"),
    "config.yaml no longer validates": (
        lambda run: _edit_config(run, "lr: ", "lr: -"),
        lambda run: "config.yaml: train.lr: Input should be greater than 0 (got {})".format(
            yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"])),
    "config.yaml edited": (
        lambda run: _edit_config(run, "epochs: 2", "epochs: 3"),
        lambda run: "config.yaml: does not match its folder: it hashes to run id {} (edited after the run?)".format(
            Config.model_validate(yaml.safe_load((run / "config.yaml").read_text())).run_id())),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_run_is_listed_with_its_problem(finished: tuple[Path, Path], tmp_path: Path, case: str) -> None:
    sweep, runs = copy_runs(finished, tmp_path)
    damage, problem = DAMAGE[case]
    damage(runs[0])
    frame = read_runs(sweep).set_index("run_id")
    assert frame.loc[runs[0].name, "problem"] == f"{runs[0]}/{problem(runs[0])}"
    assert frame["status"].to_dict() == {run.name: "damaged" if run == runs[0] else "done" for run in runs}
    code, stdout, stderr = invoke("ls", str(sweep))
    assert (code, stderr) == (0, "")
    rows = {line.split("│")[2].strip(): line for line in stdout.splitlines() if line.count("│") > 4}
    assert "│ damaged │" in rows[runs[0].name] and all("│ done " in rows[run.name] for run in runs[1:])
    code, stdout, stderr = invoke("sweep", str(finished[0]), "--runs-dir", str(sweep.parent), "--dry-run")
    if case == "config.yaml edited":  # someone's edit: refused rather than redone (see the next tests)
        assert code == 2 and "config.yaml: edited after the run" in stderr
    else:
        assert code == 0 and "3 already finished, 1 to run" in stdout.splitlines()[0]  # never trusted: redone


def test_report_flags_damaged_runs_and_reports_the_others(finished: tuple[Path, Path], tmp_path: Path) -> None:
    sweep, runs = copy_runs(finished, tmp_path)
    cases = ["steps.csv row 3 is abc,,", "probes.csv holds markup", "summary truncated"]
    for run, case in zip(runs, cases, strict=False):
        DAMAGE[case][0](run)
    code, stdout, stderr = invoke("report", str(sweep))
    assert (code, stderr) == (0, "")
    md = (sweep / "report.md").read_text()
    assert "| runs | 4 (1 done, 3 damaged) |" in md and "3 damaged run folder(s) are left out" in md
    for run in (runs[0], runs[2]):
        assert f"| {run} | {run}/{DAMAGE[cases[runs.index(run)]][1](run)} |" in md
    assert f"| {runs[1]} | {runs[1]}/probes.csv: line 2: p50: '&lt;script&gt;alert(1)&lt;/script&gt;' is not" in md
    page = (sweep / "report.html").read_text()
    assert "<script>alert(1)" not in page
    assert "p50: &#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27; is not a number" in page
    assert runs[3].name in page  # the one intact run is reported


def test_sweep_redoes_damaged_and_half_created_runs_in_place(finished: tuple[Path, Path], tmp_path: Path) -> None:
    spec, _ = finished
    sweep, runs = copy_runs(finished, tmp_path)
    DAMAGE["epochs.csv torn mid-line"][0](runs[0])
    DAMAGE["config.yaml edited"][0](runs[1])
    shutil.rmtree(runs[2])
    runs[2].mkdir()  # half-created: the folder, nothing in it
    intact = (runs[3] / "summary.json").read_bytes()
    # An edit is a person's, not damage: refused before anything is written, unless --force;
    # --dry-run says so too, since it plans from the same reading of the folder.
    before = {path: path.read_bytes() for path in sweep.rglob("*") if path.is_file()}
    refused = (2, f"error: {runs[1]}/config.yaml: edited after the run (train.epochs: 2 -> 3), so it no longer "
                  "matches its folder; move the folder away, or pass --force to redo the run there\n")
    for extra in (["--dry-run"], []):
        code, stdout, stderr = invoke("sweep", str(spec), "--runs-dir", str(sweep.parent), *extra)
        assert (code, stderr) == refused
    assert {path: path.read_bytes() for path in sweep.rglob("*") if path.is_file()} == before
    code, stdout, _ = invoke("sweep", str(spec), "--runs-dir", str(sweep.parent), "--dry-run", "--force")
    assert code == 0 and "1 already finished, 3 to run" in stdout.splitlines()[0]
    assert f"  redo damaged {runs[0].name}: {runs[0]}/epochs.csv: line 3: torn" in stdout
    code, stdout, stderr = invoke("sweep", str(spec), "--runs-dir", str(sweep.parent), "--force")
    assert code == 0, stderr
    assert f"redoing damaged run {runs[0].name}: {runs[0]}/epochs.csv: line 3: torn" in stdout
    assert f"redoing damaged run {runs[1].name}: {runs[1]}/config.yaml: does not match its folder" in stdout
    assert stdout.splitlines()[-1].startswith("sweep grid: 3 done, 0 diverged, 0 failed this time; 1 already finished;")
    frame = read_runs(sweep)
    assert set(frame["status"]) == {"done"} and "problem" not in frame.columns
    assert (runs[3] / "summary.json").read_bytes() == intact
    # With --force the run's own config, which hashes to its folder, is written back.
    assert "epochs: 2" in (runs[1] / "config.yaml").read_text()


def test_run_refuses_to_overwrite_an_edited_config(tmp_path: Path, tiny_config: Path) -> None:
    runs = tmp_path / "runs"
    code, _, stderr = invoke("run", str(tiny_config), "--runs-dir", str(runs), "--quiet")
    assert code == 0, stderr
    (folder,) = (runs / "tiny").iterdir()
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.01", "lr: 0.02"))
    (folder / "summary.json").unlink()  # unfinished as well: an edit is refused all the same
    edited = config.read_bytes()
    code, _, stderr = invoke("run", str(tiny_config), "--runs-dir", str(runs), "--quiet")
    assert (code, stderr) == (2, f"error: {config}: edited after the run (train.lr: 0.01 -> 0.02), so it no longer "
                                 "matches its folder; move the folder away, or pass --force to redo the run there\n")
    assert config.read_bytes() == edited
    code, _, stderr = invoke("run", str(tiny_config), "--runs-dir", str(runs), "--quiet", "--force")
    assert code == 0, stderr
    assert "lr: 0.01" in config.read_text() and (folder / "summary.json").exists()


def test_an_unreadable_record_stops_the_sweep_instead_of_redoing_the_run(finished: tuple[Path, Path],
                                                                         tmp_path: Path) -> None:
    """A read error (here: summary.json is a folder; in life a permission or an I/O error) says
    nothing about whether the run is whole, so the sweep must not redo it over the error."""
    spec, _ = finished
    sweep, runs = copy_runs(finished, tmp_path)
    summary = runs[0] / "summary.json"
    summary.unlink()
    summary.mkdir()
    before = {path: path.read_bytes() for path in sweep.rglob("*") if path.is_file()}
    code, _, stderr = invoke("sweep", str(spec), "--runs-dir", str(sweep.parent))
    assert (code, stderr) == (2, f"error: {summary}: cannot read: Is a directory\n")
    assert {path: path.read_bytes() for path in sweep.rglob("*") if path.is_file()} == before
