"""bnlab's training engine against a plain-PyTorch reference loop, measured in the same run.

Both train 784-256-128-64-10 (Linear -> ReLU -> BN, Adam lr 0.01) for one epoch on real MNIST
with the whole dataset as one tensor, randperm batches, fused Adam, the same thread count and
the same per-epoch val/test evaluation. bnlab's extra bookkeeping (logged steps, gradient norms,
activation probes, final evaluations) counts against it. The two alternate, repeated, because
this machine is noisy; the ratio is of the medians.

    python bench/run_speed.py [--data DIR] [--repeats N]

Ends with one JSON line: ratio_b32, ratio_b128, peak_rss_mib, help_s, and the ms/step figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.config import load_config
from bnlab.data.tensors import Splits, load_dataset
from bnlab.engine.train import train

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "mnist"
BATCH_SIZES = (32, 128)


def bench_config(data_root: str, batch_size: int):
    return load_config(None, [f"data.root={data_root}", "device=cpu", "model.hidden=[256, 128, 64]",
                              "model.bn=after", "train.optimizer=adam", "train.lr=0.01", "train.epochs=1",
                              f"train.batch_size={batch_size}", "name=bench"])


def reference_epoch(splits: Splits, batch_size: int, seed: int) -> float:
    """The loop a careful PyTorch user writes by hand; returns seconds for one epoch + evaluation."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    n_in = 784
    for width in (256, 128, 64):
        layers += [nn.Linear(n_in, width), nn.ReLU(), nn.BatchNorm1d(width)]
        n_in = width
    model = nn.Sequential(*layers, nn.Linear(n_in, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    started = time.perf_counter()
    model.train()
    permutation = torch.randperm(len(splits.train_x))
    for start in range(0, len(permutation), batch_size):
        indices = permutation[start : start + batch_size]
        if len(indices) < 2:
            continue
        loss = F.cross_entropy(model(splits.train_x[indices]), splits.train_y[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        for x, y in ((splits.val_x, splits.val_y), (splits.test_x, splits.test_y)):
            for start in range(0, len(x), 5000):
                logits = model(x[start : start + 5000])
                F.cross_entropy(logits, y[start : start + 5000])
                (logits.argmax(1) == y[start : start + 5000]).sum().item()
    return time.perf_counter() - started


def bnlab_epoch(splits: Splits, data_root: str, batch_size: int, seed: int) -> float:
    cfg = bench_config(data_root, batch_size).model_copy(update={"seed": seed})
    started = time.perf_counter()
    train(cfg, splits)
    return time.perf_counter() - started


def peak_rss_of_a_run(data_root: str) -> float:
    """Peak RSS (MiB) of a real `bnlab run` subprocess, on the batch-32 bench config."""
    with tempfile.TemporaryDirectory() as runs:
        subprocess.run([sys.executable, "-m", "bnlab", "run", f"data.root={data_root}", "device=cpu",
                        "model.hidden=[256, 128, 64]", "train.lr=0.01", "train.epochs=1", "train.batch_size=32",
                        "--runs-dir", runs, "--quiet"], check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kilobytes on Linux


def help_seconds(repeats: int = 5) -> float:
    bnlab_script = Path(sys.executable).with_name("bnlab")
    command = [str(bnlab_script)] if bnlab_script.exists() else [sys.executable, "-m", "bnlab"]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([*command, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("BNLAB_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    splits = load_dataset(bench_config(args.data, 32).data, "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(splits.train_x)} training images")
    figures: dict[str, float] = {}
    for batch_size in BATCH_SIZES:
        steps = -(-len(splits.train_x) // batch_size)
        reference_epoch(splits, batch_size, seed=99)  # warm-up: allocator, kernels, fused Adam
        bnlab_epoch(splits, args.data, batch_size, seed=99)
        ours, theirs = [], []
        for repeat in range(args.repeats):
            ours.append(bnlab_epoch(splits, args.data, batch_size, seed=repeat))
            theirs.append(reference_epoch(splits, batch_size, seed=repeat))
        ratio = statistics.median(ours) / statistics.median(theirs)
        figures[f"ratio_b{batch_size}"] = round(ratio, 3)
        figures[f"bnlab_ms_per_step_b{batch_size}"] = round(1000 * statistics.median(ours) / steps, 3)
        figures[f"reference_ms_per_step_b{batch_size}"] = round(1000 * statistics.median(theirs) / steps, 3)
        print(f"batch {batch_size:4d}: bnlab {figures[f'bnlab_ms_per_step_b{batch_size}']:.3f} ms/step, "
              f"reference {figures[f'reference_ms_per_step_b{batch_size}']:.3f} ms/step, "
              f"ratio bnlab/reference {ratio:.3f}  (epochs: bnlab {[round(t, 2) for t in ours]}, "
              f"reference {[round(t, 2) for t in theirs]} s)")
    figures["peak_rss_mib"] = round(peak_rss_of_a_run(args.data), 1)
    figures["help_s"] = round(help_seconds(), 3)
    print(f"peak RSS of a `bnlab run`: {figures['peak_rss_mib']:.0f} MiB; `bnlab --help`: {figures['help_s']:.3f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
