"""One run's learning-curve figure, as PNG bytes (files are the records module's business)."""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

SPLITS = (("train", "C0"), ("val", "C1"), ("test", "C2"))


class _Curves:
    """One figure per process, redrawn with each run's data: building a matplotlib figure and its
    ticks from scratch cost 0.3-0.8 s here, a third of a one-epoch batch-128 sweep's wall time;
    redrawing a kept one costs about a third of that."""

    def __init__(self) -> None:
        # A fixed layout: constrained_layout would double the cost of every figure.
        self.figure, (self.loss_axis, self.acc_axis) = plt.subplots(1, 2, figsize=(9, 3.4))
        self.figure.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.85, wspace=0.25)
        (self.batch_loss,) = self.loss_axis.plot([], [], color="0.7", lw=0.8, label="train (batch)")
        self.epoch_loss = {split: self.loss_axis.plot([], [], "o-", color=colour, ms=3, label=split)[0]
                           for split, colour in SPLITS}
        self.epoch_acc = {split: self.acc_axis.plot([], [], "o-", color=colour, ms=3, label=split)[0]
                          for split, colour in SPLITS}
        self.loss_axis.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss")
        # Labelled 1-2-5 ticks in plain numbers and no minor ticks: the default log ticks are half
        # the drawing time (mathtext labels, many minor ticks) and harder to read over a decade or two.
        self.loss_axis.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        self.loss_axis.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        self.loss_axis.yaxis.set_minor_locator(ticker.NullLocator())
        self.acc_axis.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
        for axis in (self.loss_axis, self.acc_axis):
            axis.grid(alpha=0.3)
        self.title = self.figure.suptitle("", fontsize=10)
        self.legend_with_batch: bool | None = None

    def render(self, epochs: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]], title: str) -> bytes:
        logged = [row for row in steps if "train_loss" in row]
        self.batch_loss.set_data([r["step"] for r in logged], [r["train_loss"] for r in logged])
        for split, _ in SPLITS:
            self.epoch_loss[split].set_data([r["step"] for r in epochs], [r[f"{split}_loss"] for r in epochs])
            self.epoch_acc[split].set_data([r["epoch"] for r in epochs], [100 * r[f"{split}_acc"] for r in epochs])
        if self.legend_with_batch != bool(logged):  # a run too short to log a step has no batch curve
            self.batch_loss.set_label("train (batch)" if logged else "_hidden")
            for axis in (self.loss_axis, self.acc_axis):
                axis.legend(fontsize=8)
            self.legend_with_batch = bool(logged)
        for axis, empty_ylim in ((self.loss_axis, (0.1, 10.0)), (self.acc_axis, (0.0, 100.0))):
            axis.relim()
            if np.isfinite(axis.dataLim.get_points()).all():
                axis.set_autoscale_on(True)  # set_xlim/set_ylim below turn it off for later runs
                axis.autoscale_view()
            else:  # nothing finite to show (a run that diverged at once): not the previous run's view
                axis.set(xlim=(0.0, 1.0), ylim=empty_ylim)
        self.title.set_text(title)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=110)
        return buffer.getvalue()


@functools.cache
def _curves() -> _Curves:
    return _Curves()


def learning_curves_png(
    epochs: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]], title: str
) -> bytes:
    """Loss per logged step and per epoch (left), accuracy per epoch (right)."""
    return _curves().render(epochs, steps, title)
