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
