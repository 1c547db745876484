"""The `bnlab` command: parse, call one library function, print, map errors to exit codes.

Heavy libraries (torch, pandas, matplotlib, ray) are imported inside the commands, so
`bnlab --help` stays fast; a test checks that importing this module loads none of them.
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer

from bnlab.cli._errors import user_errors
from bnlab.cli.claims import claim_app
from bnlab.cli.data import data_app
from bnlab.cli.report import report as report_command

app = typer.Typer(
    help="Test claims about batch normalization instead of repeating them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(claim_app, name="claim")
app.command("report")(report_command)

ConfigAndOverrides = Annotated[
    list[str] | None,
    typer.Argument(help="An optional YAML config, then dotted overrides like train.lr=0.01", show_default=False),
]
RunsDir = Annotated[
    Path | None, typer.Option("--runs-dir", help="Where run folders go (default: $BNLAB_RUNS or ./runs)")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bnlab {version('bnlab')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit")] = False,
) -> None:
    """Test claims about batch normalization instead of repeating them."""


def _split_config_arg(args: list[str] | None) -> tuple[Path | None, list[str]]:
    """The first argument is the config file if it names one (an existing path, or a .yaml/.yml
    name); anything else is an override, so `bnlab run train.lr` says what an override needs."""
    args = list(args or [])
    if args and "=" not in args[0]:
        first = Path(args[0])
        if first.exists() or first.suffix in (".yaml", ".yml") or "/" in args[0]:
            return first, args[1:]
    return None, args


@app.command()
def run(
    args: ConfigAndOverrides = None,
    runs_dir: RunsDir = None,
    force: Annotated[bool, typer.Option("--force", help="Redo the run even if it already finished")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result line")] = False,
) -> None:
    """Train one config and write its run folder.

    A last partial batch of a single sample is dropped when the model has BN.
    """
    from rich.console import Console

    from bnlab.cli.progress import LiveRunView, PlainRunView
    from bnlab.config import load_config
    from bnlab.runs.runner import run as run_one

    console = Console()
    with user_errors():
        path, overrides = _split_config_arg(args)
        cfg = load_config(path, overrides)
        label = f"{cfg.name} {cfg.run_id()}"
        view_class = LiveRunView if console.is_terminal else PlainRunView
        if quiet:
            outcome = run_one(cfg, runs_dir, force=force)
        else:
            with view_class(console, label) as view:
                outcome = run_one(cfg, runs_dir, force=force, on_event=view)
    summary = outcome.summary
    if outcome.skipped:
        typer.echo(f"already finished: {outcome.folder} ({summary['status']}); use --force to redo it")
        return
    test_acc = summary["final"].get("test_acc")
    result = f"test_acc {100 * test_acc:.2f}%" if test_acc is not None else summary["status"]
    typer.echo(f"wrote {outcome.folder} ({result}, {summary['timings']['seconds_total']:.1f} s)")
    if outcome.redid_damaged:
        typer.echo(f"  in place of a damaged record: {outcome.redid_damaged}")


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="A sweep spec: base, grid, seeds")],
    overrides: Annotated[list[str] | None, typer.Argument(help="field=value, applied to the base")] = None,
    executor: Annotated[str, typer.Option(help="local (worker processes) or ray")] = "local",
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: per machine)")] = None,
    address: Annotated[str | None, typer.Option(help="HOST:PORT of a Ray cluster to join")] = None,
    stack: Annotated[str, typer.Option(help="auto: train compatible runs together as one stacked model; off")] = "auto",
    max_stack: Annotated[int, typer.Option(min=1, help="Most runs in one stack")] = 10,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed runs again")] = False,
    force: Annotated[bool, typer.Option("--force", help="Also redo runs whose config.yaml was edited")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and an estimate; run nothing")] = False,
    runs_dir: RunsDir = None,
) -> None:
    """Run a grid of configs; resumable: run the same command again to finish what is left."""
    from rich.console import Console

    from bnlab.cli.progress import SweepLiveView, SweepPlainView
    from bnlab.config.spec import load_sweep
    from bnlab.runs.sweep import Interrupted, SweepOptions, describe_plan, run_sweep

    console = Console()
    options = SweepOptions(executor=executor, workers=workers, address=address, stack=stack,
                           max_stack=max_stack, retry_failed=retry_failed, force=force)
    with user_errors():
        plan = load_sweep(spec, overrides or [])
        if dry_run:
            typer.echo(describe_plan(plan, runs_dir, options))
            return
        view = SweepLiveView(console) if console.is_terminal else SweepPlainView(console)
        try:
            with view:
                state = run_sweep(plan, runs_dir, options, on_event=view)
        except Interrupted as stop:
            typer.echo(f"interrupted by {stop}: finished runs are kept; run the same command again to resume",
                       err=True)
            raise typer.Exit(code=128 + stop.signum) from None
    from bnlab.records import RESULTS

    counts = state.counts
    typer.echo(f"sweep {plan.name}: {counts['done']} done, {counts['diverged']} diverged, {counts['failed']} failed "
               f"this time; {state.skipped} already finished; results in "
               f"{Path(runs_dir or _default_runs()) / plan.name / RESULTS}")
    for run_id, error in sorted(state.failures.items()):
        typer.echo(f"  failed {run_id}: {error}", err=True)
    if state.failures:
        typer.echo("re-run with --retry-failed to try the failed runs again", err=True)
        raise typer.Exit(code=1)


def _default_runs() -> Path:
    from bnlab.records import runs_dir

    return runs_dir(None)


@app.command("ls")
def list_runs(
    path: Annotated[Path | None, typer.Argument(help="A sweep folder, a run folder or a runs root")] = None,
    where: Annotated[list[str] | None, typer.Option("--where", help="field=value filter, e.g. model.bn=after")] = None,
    sort: Annotated[str | None, typer.Option(help="Column to sort by, e.g. test_acc or train.lr")] = None,
) -> None:
    """List runs as a table: name, id, varied fields, status, final test accuracy, time."""
    from rich.console import Console

    from bnlab.analysis.listing import read_listing
    from bnlab.cli._tables import runs_table

    with user_errors():
        table = runs_table(read_listing(path or _default_runs(), where or [], sort))
    console = Console()
    if not console.is_terminal:
        console.width = 240  # a pipe or a file: don't squeeze columns to 80
    console.print(table)


@config_app.command("show")
def config_show(args: ConfigAndOverrides = None) -> None:
    """Print the resolved config (defaults filled, overrides applied) as YAML."""
    from bnlab.config import load_config

    with user_errors():
        path, overrides = _split_config_arg(args)
        cfg = load_config(path, overrides)
    typer.echo(cfg.to_yaml(), nl=False)
    typer.echo(f"# run id: {cfg.run_id()}")


@app.command()
def show(run_dir: Annotated[Path, typer.Argument(help="A run folder (runs/<name>/<run id>)")]) -> None:
    """Print a finished run's summary as a table."""
    from rich.console import Console
    from rich.table import Table

    from bnlab.config import flatten
    from bnlab.records import read_summary

    with user_errors():
        summary = read_summary(run_dir)
    table = Table(title=f"{summary.get('name')} {summary.get('run_id')}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in flatten(summary).items():
        table.add_row(key, _fmt(value)[:16] + "..." if ".sha256." in key else _fmt(value))
    Console().print(table)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
