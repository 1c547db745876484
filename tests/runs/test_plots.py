"""The learning-curve figure is one kept matplotlib figure per process: nothing of one run's
figure may leak into the next."""

from __future__ import annotations

from bnlab.runs.curves import learning_curves_png

EPOCHS = [{"epoch": e, "step": 100 * e, **{f"{s}_loss": 1.0 / e for s in ("train", "val", "test")},
           **{f"{s}_acc": 0.8 + e / 100 for s in ("train", "val", "test")}} for e in (1, 2, 3)]
STEPS = [{"step": 10 * i, "train_loss": 2.0 / i} for i in range(1, 31)]


def test_a_figure_does_not_depend_on_the_runs_drawn_before_it() -> None:
    first = learning_curves_png(EPOCHS, STEPS, "run a")
    diverged = learning_curves_png([], [{"step": 5, "train_loss": float("nan")}], "run b")
    short = learning_curves_png(EPOCHS[:1], [], "run c")  # no logged step: no batch curve in the legend
    assert learning_curves_png(EPOCHS, STEPS, "run a") == first
    assert all(png.startswith(b"\x89PNG") for png in (first, diverged, short))
    assert len({first, diverged, short}) == 3
