"""Showing a run's progress events: a live rich view on a terminal, one line per epoch elsewhere."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class LiveRunView:
    """Epoch, step, loss, accuracy, samples/s and ETA, redrawn in place."""

    def __init__(self, console: Console, label: str) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console, transient=False,
        )
        self.label = label
        self.task: Any = None

    def __enter__(self) -> LiveRunView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "start":
            self.task = self.progress.add_task(self.label, total=event["total_steps"], status="")
            self.epochs = event["epochs"]
        elif kind == "step" and "train_loss" in event:
            status = (f"epoch {event['epoch']}/{self.epochs}  loss {event['train_loss']:.4f}  "
                      f"acc {100 * event['train_acc']:.1f}%")
            self.progress.update(self.task, completed=event["step"], status=status)
        elif kind == "epoch":
            status = (f"epoch {event['epoch']}/{event['epochs']}  loss {event['train_loss']:.4f}  "
                      f"val {100 * event['val_acc']:.2f}%  {event['samples_per_second']:,.0f} samples/s")
            self.progress.update(self.task, completed=event["step"], status=status)


class PlainRunView:
    """One line per epoch, for logs and pipes."""

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = label

    def __enter__(self) -> PlainRunView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, event: dict[str, Any]) -> None:
        if event["kind"] == "epoch":
            self.console.print(
                f"{self.label} epoch {event['epoch']}/{event['epochs']} step {event['step']} "
                f"train_loss {event['train_loss']:.4f} train_acc {100 * event['train_acc']:.2f}% "
                f"val_acc {100 * event['val_acc']:.2f}% test_acc {100 * event['test_acc']:.2f}% "
                f"{event['seconds']:.1f}s {event['samples_per_second']:,.0f} samples/s",
                highlight=False, soft_wrap=True,
            )
        elif event["kind"] == "end" and event["status"] == "diverged":
            self.console.print(f"{self.label} diverged (non-finite loss)", highlight=False)


# --- sweeps --------------------------------------------------------------------------------------

_STATE_STYLE = {"done": "green", "diverged": "yellow", "failed": "red", "running": "cyan"}


def _eta_seconds(state: Any, workers: int) -> float | None:
    if not state.seconds_per_run:
        return None
    remaining = state.total - state.skipped - sum(state.counts.values())
    return remaining * (sum(state.seconds_per_run) / len(state.seconds_per_run)) / max(workers, 1)


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def sweep_headline(state: Any, workers: int = 1) -> str:
    finished = state.skipped + sum(state.counts.values())
    return (f"{state.sweep.name}: {finished}/{state.total} finished ({state.skipped} before this start), "
            f"{len(state.running)} running, {state.counts['diverged']} diverged, {state.counts['failed']} failed, "
            f"ETA {_fmt_seconds(_eta_seconds(state, workers))}")


def _grid_axes(axes: dict[str, list[Any]]) -> tuple[str | None, str | None]:
    """Rows and columns of the compact grid: batch size x lr when both vary, else the first two."""
    names = list(axes)
    preferred = [name for name in ("train.batch_size", "train.lr") if name in axes]
    chosen = preferred if len(preferred) == 2 else (preferred + [n for n in names if n not in preferred])[:2]
    return (chosen[0] if chosen else None), (chosen[1] if len(chosen) > 1 else None)


def grid_cells(state: Any) -> tuple[str | None, str | None, dict[tuple[str, str], list[str]]]:
    """The compact grid's axes and each cell's run ids, computed once per sweep: hashing every
    config for every redraw would make a long sweep's display quadratic."""
    from bnlab.config import cell_values

    row_axis, col_axis = _grid_axes(state.sweep.axes)
    fields = [axis for axis in (row_axis, col_axis) if axis]
    cells: dict[tuple[str, str], list[str]] = {}
    for cfg in state.sweep.configs:
        values = cell_values(cfg, fields)
        cells.setdefault((repr(values.get(row_axis)), repr(values.get(col_axis))), []).append(cfg.run_id())
    return row_axis, col_axis, cells


def sweep_grid(state: Any, layout: tuple[str | None, str | None, dict[tuple[str, str], list[str]]]) -> Any:
    """Each cell: finished/total runs over every other axis and seed, coloured by the worst state."""
    from rich.table import Table

    row_axis, col_axis, cells = layout
    rows = state.sweep.axes.get(row_axis, [None]) if row_axis else [None]
    cols = state.sweep.axes.get(col_axis, [None]) if col_axis else [None]
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column(f"{row_axis or ''} \\ {col_axis or ''}", style="bold")
    for col in cols:
        table.add_column(str(col) if col_axis else "runs", justify="center")
    for row in rows:
        rendered = []
        for col in cols:
            statuses = [state.status.get(run_id, "queued") for run_id in cells.get((repr(row), repr(col)), [])]
            finished = sum(status in ("done", "diverged", "failed") for status in statuses)
            worst = next((s for s in ("failed", "diverged", "running", "done") if s in statuses), None)
            style = _STATE_STYLE.get(worst or "", "dim") if worst != "done" or finished == len(statuses) else "dim"
            rendered.append(f"[{style}]{finished}/{len(statuses)}[/]")
        table.add_row(str(row) if row_axis else "all", *rendered)
    return table


def print_damaged(console: Console, state: Any) -> None:
    """Say which finished-looking runs are redone and why, so no record is replaced in silence."""
    for run_id, problem in sorted(state.damaged.items()):
        console.print(f"redoing damaged run {run_id}: {problem}", highlight=False, soft_wrap=True, markup=False)


class SweepLiveView:
    def __init__(self, console: Console) -> None:
        from rich.live import Live

        self.console = console
        self.live = Live(console=console, refresh_per_second=4, transient=False)
        self.workers = 1

    def __enter__(self) -> SweepLiveView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def __call__(self, kind: str, state: Any, payload: Any) -> None:
        from rich.console import Group as RenderGroup

        if kind == "plan":
            self.workers = payload["workers"]
            self.layout = grid_cells(state)
            print_damaged(self.console, state)
        self.live.update(RenderGroup(sweep_headline(state, self.workers), sweep_grid(state, self.layout)))


class SweepPlainView:
    """One line per finished run, for logs and pipes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.workers = 1

    def __enter__(self) -> SweepPlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, kind: str, state: Any, payload: Any) -> None:
        from bnlab.config import cell_values

        if kind == "plan":
            self.workers = payload["workers"]
            # run_id() hashes a config: look each up once, not once per finished run.
            self.configs = {cfg.run_id(): cfg for cfg in state.sweep.configs}
            self.console.print(f"{sweep_headline(state, self.workers)}; {len(payload['groups'])} group(s) to train "
                               f"on {payload['workers']} worker(s) x {payload['threads']} thread(s)",
                               highlight=False, soft_wrap=True)
            print_damaged(self.console, state)
        elif kind == "run":
            cfg = self.configs[payload["run_id"]]
            cell = " ".join(f"{k}={v}" for k, v in cell_values(cfg, list(state.sweep.axes)).items())
            test_acc = (payload.get("final") or {}).get("test_acc")
            result = f"test_acc {100 * test_acc:.2f}%" if test_acc is not None else payload.get("error") or ""
            finished = state.skipped + sum(state.counts.values())
            self.console.print(f"[{finished}/{state.total}] {payload['status']:8s} {payload['run_id']} {cell} "
                               f"seed={cfg.seed} {result}", highlight=False, soft_wrap=True, markup=False)
