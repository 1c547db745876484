"""`bnlab claim list|test`: the built-in claim suites (bnlab/claim_suites/, shipped in the package)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bnlab.cli._errors import user_errors

claim_app = typer.Typer(help="Test claims about BN with the built-in suites.", no_args_is_help=True)


@claim_app.command("list")
def list_claims() -> None:
    """The claim suites, with the claim each tests."""
    from bnlab.analysis.suites import load_suite, suite_names, suite_path

    with user_errors():
        for name in suite_names():
            suite = load_suite(suite_path(name))
            typer.echo(f"{name:16s} {suite.claim}  ({suite.design})")


@claim_app.command("test")
def test_claim(
    name: Annotated[str, typer.Argument(help="A suite name from `bnlab claim list`, or a suite file (.yaml)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="field=value, applied to every arm")] = None,
    budget: Annotated[str, typer.Option(help="smoke (seconds), quick (minutes), full (the design) or pilot")]
    = "quick",
    executor: Annotated[str, typer.Option(help="local or ray")] = "local",
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes")] = None,
    address: Annotated[str | None, typer.Option(help="HOST:PORT of a Ray cluster")] = None,
    stack: Annotated[str, typer.Option(help="auto or off")] = "auto",
    runs_dir: Annotated[Path | None, typer.Option("--runs-dir", help="Where run folders go")] = None,
    force: Annotated[bool, typer.Option("--force", help="Also redo runs whose config.yaml was edited")] = False,
    out: Annotated[Path | None, typer.Option(help="Also copy the report there, with verdict.json (findings)")]
    = None,
) -> None:
    """Run a claim suite as a sweep (resumable), judge it, and write its report."""
    from rich.console import Console

    from bnlab.cli.progress import SweepLiveView, SweepPlainView
    from bnlab.lab import test_claim as run_claim
    from bnlab.runs.sweep import Interrupted, SweepOptions

    if budget not in ("smoke", "quick", "full", "pilot"):
        typer.echo(f"error: --budget: {budget!r} is not allowed; allowed: smoke, quick, full, pilot", err=True)
        raise typer.Exit(code=2)
    console = Console()
    options = SweepOptions(executor=executor, workers=workers, address=address, stack=stack, force=force)
    with user_errors():
        view = SweepLiveView(console) if console.is_terminal else SweepPlainView(console)
        try:
            with view:
                outcome = run_claim(name, budget, overrides or [], runs_dir, options, on_event=view)
        except Interrupted as stop:
            typer.echo(f"interrupted by {stop}: finished runs are kept; run the same command again to resume",
                       err=True)
            raise typer.Exit(code=128 + stop.signum) from None
    result = outcome.result
    typer.echo(f"{result.name}: {result.outcome.upper()} ({result.budget} budget)")
    typer.echo(result.summary)
    typer.echo(f"report: {outcome.report_html}")
    if out is not None:
        from bnlab.analysis.findings import write_findings

        with user_errors():
            typer.echo(f"findings: {write_findings(outcome, out)}")
    if outcome.state.failures:
        typer.echo(f"{len(outcome.state.failures)} run(s) failed; see the report", err=True)
        raise typer.Exit(code=1)


@claim_app.command("plan")
def plan(
    name: Annotated[str, typer.Argument(help="A suite name from `bnlab claim list`, or a suite file (.yaml)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="field=value, applied to every arm")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes")] = None,
    runs_dir: Annotated[Path | None, typer.Option("--runs-dir", help="Where run folders go")] = None,
) -> None:
    """Run the suite's pilot budget and print the seed plan for its full budget (docs/claims.md)."""
    import yaml
    from rich.console import Console

    from bnlab.cli.progress import SweepLiveView, SweepPlainView
    from bnlab.lab import plan_claim
    from bnlab.runs.sweep import SweepOptions

    console = Console()
    with user_errors():
        view = SweepLiveView(console) if console.is_terminal else SweepPlainView(console)
        with view:
            outcome, seed_plan = plan_claim(name, overrides or [], runs_dir, SweepOptions(workers=workers),
                                            on_event=view)
    for item in seed_plan["comparisons"]:
        typer.echo(f"{item['label']}: pilot sd {item['sd']:.4g} against a margin of {item['margin']:g}: "
                   f"{item['seeds'] or 'more than 40'} seeds (P(supported | 2 x margin) = {item['p_supported']:.2f}, "
                   f"P(not supported | 0) = {item['p_not_supported']:.2f})")
    typer.echo(f"report: {outcome.report_html}")
    typer.echo("paste into the suite, then give its full budget that many seeds (none of the pilot's):")
    typer.echo(yaml.safe_dump({"seed_plan": seed_plan}, sort_keys=False).rstrip())


@claim_app.command("table")
def table(
    folder: Annotated[Path, typer.Argument(help="A findings folder: one claim test --out DIR per suite")]
    = Path("docs/findings"),
) -> None:
    """The verdict table (Markdown) of a findings folder, as the README shows it."""
    from bnlab.analysis.findings import read_findings, verdict_table

    with user_errors():
        typer.echo(verdict_table(read_findings(folder), link_root=str(folder)))
