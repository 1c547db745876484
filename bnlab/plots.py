"""One run's learning-curve figure, as PNG bytes (files are the records module's business)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves_png(
    epochs: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]], title: str
) -> bytes:
    """Loss per logged step and per epoch (left), accuracy per epoch (right)."""
    # A fixed layout: constrained_layout would double the cost of a figure made once per run.
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(9, 3.4))
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.85, wspace=0.25)
    logged = [row for row in steps if "train_loss" in row]
    if logged:
        loss_axis.plot([r["step"] for r in logged], [r["train_loss"] for r in logged],
                       color="0.7", lw=0.8, label="train (batch)")
    for split, colour in (("train", "C0"), ("val", "C1"), ("test", "C2")):
        xs = [row["step"] for row in epochs]
        loss_axis.plot(xs, [row[f"{split}_loss"] for row in epochs], "o-", color=colour, ms=3, label=split)
        acc_axis.plot([row["epoch"] for row in epochs], [100 * row[f"{split}_acc"] for row in epochs],
                      "o-", color=colour, ms=3, label=split)
    loss_axis.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss")
    acc_axis.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for axis in (loss_axis, acc_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
