"""The house rules of docs/architecture.md that no linter holds: import-linter keeps the layers and
ruff's banned-api keeps file reading in records; these keep names private, modules small, run
file names in records, and the light commands light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WAIT_SECONDS
from typer.testing import CliRunner

from bnlab import records
from bnlab.cli import app

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bnlab"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import, relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + int(is_package)]
                base = ".".join([*anchor, *filter(None, [base])])
            found.append((node.lineno, base, [alias.name for alias in node.names]))
    return found


def test_the_rules_see_every_module() -> None:
    """A scan that finds nothing passes everything: it must see the wings and their support modules."""
    names = {_module_name(path) for path in _sources("bnlab")}
    assert {"bnlab.records", "bnlab.records._run", "bnlab.engine.train", "bnlab.cli"} <= names
    assert len(names) > 40


def test_every_wing_is_a_regular_package() -> None:
    """A folder of modules without __init__.py still imports (a namespace package), but
    setuptools leaves it out of the wheel and import-linter cannot see it."""
    folders = {path.parent for path in _sources("bnlab")}
    assert [str(folder.relative_to(ROOT)) for folder in sorted(folders) if not (folder / "__init__.py").is_file()] == []


def test_no_import_cycle() -> None:
    """Between any two modules, not only across wings (import-linter's layers see only those), and
    counting imports inside functions and under TYPE_CHECKING. The tree before the wings had six:
    bnlab <-> runner, report <-> report_figures, runner <-> sweep, among them."""
    import grimp

    graph = grimp.build_graph("bnlab")
    cycles = [(importer, imported) for importer in sorted(graph.modules)
              for imported in sorted(graph.find_modules_directly_imported_by(importer))
              if imported != importer and graph.chain_exists(importer=imported, imported=importer)]
    assert len(graph.modules) > 40 and cycles == []


@pytest.mark.parametrize("path", _sources("bnlab", "tests", "bench"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_takes_another_modules_private_name(path: Path) -> None:
    """`_name` stays in its module, and a support module (`_module`) is imported only from inside its
    own package (bnlab.records._run from bnlab.records.*, never from bnlab.analysis)."""
    module = _module_name(path)
    tree = ast.parse(path.read_text())
    for line, imported, names in _imports(tree, module, path.name == "__init__.py"):
        where = f"{path.relative_to(ROOT)}:{line}"
        private = [name for name in names if name.startswith("_") and not name.startswith("__")]
        assert not private, f"{where}: imports private {private} from {imported}"
        parts = imported.split(".")
        for depth, part in enumerate(parts):
            if part.startswith("_") and not part.startswith("__") and parts[0] == "bnlab":
                owner = ".".join(parts[:depth])
                assert module == owner or module.startswith(owner + "."), (
                    f"{where}: {imported} is a support module of {owner}; import {owner}'s public names")
        for name in names:  # `from bnlab.records import _run` takes a support module the same way
            if name.startswith("_") and imported.startswith("bnlab"):
                raise AssertionError(f"{where}: imports {imported}.{name}")


@pytest.mark.parametrize("path", _sources("bnlab"), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_is_small_and_says_its_one_job(path: Path) -> None:
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines; split it by job (docs/architecture.md)"
    if path.name == "__main__.py":
        return
    doc = ast.get_docstring(ast.parse(text))
    assert doc, f"{path.relative_to(ROOT)}: no module docstring stating its job"
    assert len(doc.splitlines()[0]) > 20, f"{path.relative_to(ROOT)}: the docstring's first line is not a sentence"


RUN_FILE_NAMES = {value for name, value in vars(records).items()
                  if name.isupper() and isinstance(value, str) and "." in value}


def test_records_names_every_run_and_sweep_file() -> None:
    assert {"summary.json", "config.yaml", "epochs.csv", "sweep.json", "results.csv", "arms.csv", ".lock"} \
        <= RUN_FILE_NAMES


@pytest.mark.parametrize("path", [p for p in _sources("bnlab") if "records" not in p.parts],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_only_records_spells_a_run_or_sweep_file_name(path: Path) -> None:
    """Prose may mention summary.json; code that opens one goes through records (its constants or
    its functions), so the folder format has one owner."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            spelled = [name for name in RUN_FILE_NAMES if text == name or text.endswith("/" + name)]
            assert not spelled, f"{path.relative_to(ROOT)}:{node.lineno}: spells {spelled[0]}; use bnlab.records"


def _loaded_heavy(argv: list[str]) -> tuple[str, list[str]]:
    """(stdout, which of torch and scipy a fresh interpreter loaded) for one bnlab command."""
    code = ("import sys\nfrom bnlab.cli import app\ntry:\n    app(sys.argv[1:], standalone_mode=False)\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                            timeout=WAIT_SECONDS)
    assert result.returncode == 0, result.stderr
    *output, loaded = result.stdout.splitlines()
    return "\n".join(output), ast.literal_eval(loaded)


@pytest.mark.parametrize("command", [["--help"], ["claim", "list"], ["data", "where"]])
def test_light_commands_import_neither_torch_nor_scipy(command: list[str]) -> None:
    assert _loaded_heavy(command)[1] == []


def test_ls_of_a_finished_run_imports_neither_torch_nor_scipy(tiny_config: Path) -> None:
    """A real finished run, so reading it back (config, summary, metrics) is part of what is checked."""
    runs = tiny_config.parent / "runs"
    trained = CliRunner().invoke(app, ["run", str(tiny_config), "--runs-dir", str(runs), "--quiet"])
    assert trained.exit_code == 0, trained.output
    output, loaded = _loaded_heavy(["ls", str(runs)])
    assert "tiny" in output and "done" in output, output
    assert loaded == []
