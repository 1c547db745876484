"""Sweep throughput: one run at a time vs the local executor, without and with stacking.

A sweep of 5 seeds x 4 learning rates, 1 epoch per run, 784-256-128-64-10 ReLU-then-BN with
Adam, on real MNIST, at batch 32 and again at batch 128, run three ways in this one process:
  lean     one run after another in a plain-PyTorch loop (the reference: no records at all)
  local    `run_sweep` with --stack off (worker processes, threads split between them)
  stacked  `run_sweep` with --stack auto (the default)
The sweeps include everything a user waits for: worker start-up, data loading, records, plots.
Also printed: the FLOP lower bound of one model-epoch (forward, weight gradients, and input
gradients for every layer but the first) at the float32 rate of a 2048^3 matmul timed here, and
the stacked sweep's training loops alone against it (its runs' seconds_train, over the workers).

    python bench/sweep_speed.py [--data DIR]

Ends with one JSON line (keys ratio_stacked_b32, ratio_stacked_b128, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml
from run_speed import DEFAULT_DATA, bench_config, reference_epoch

from bnlab.config.spec import load_sweep
from bnlab.engine.device import matmul_gflops
from bnlab.records import read_summary
from bnlab.runs.sweep import SweepOptions, plan_workers, run_sweep

SEEDS = [0, 1, 2, 3, 4]
LRS = [0.001, 0.002, 0.005, 0.01]
WIDTHS = [784, 256, 128, 64, 10]


def flops_per_epoch(n_train: int) -> float:
    """Forward 2mn, weight gradient 2mn per layer, input gradient 2mn for all but the first."""
    layers = list(zip(WIDTHS, WIDTHS[1:], strict=False))
    per_sample = sum(2 * m * n * 2 for m, n in layers) + sum(2 * m * n for m, n in layers[1:])
    return per_sample * n_train


def write_spec(folder: Path, data_root: str, batch_size: int) -> Path:
    spec = folder / f"speed-b{batch_size}.yaml"
    spec.write_text(yaml.safe_dump({
        "name": f"speed-b{batch_size}",
        "base": {"device": "cpu", "data": {"root": data_root},
                 "model": {"hidden": WIDTHS[1:-1], "bn": "after"},
                 "train": {"epochs": 1, "batch_size": batch_size, "optimizer": "adam"}},
        "grid": {"train.lr": LRS},
        "seeds": SEEDS,
    }))
    return spec


def timed_sweep(spec: Path, runs: Path, stack: str) -> float:
    started = time.perf_counter()
    state = run_sweep(load_sweep(spec), runs, SweepOptions(stack=stack))
    assert state.counts["failed"] == 0, state.failures
    return time.perf_counter() - started


def training_core_seconds(folder: Path) -> float:
    """The stacks' training loops alone (summary timings: no start-up, evaluation or records), in
    core-seconds: each member carries its stack's seconds_train."""
    summaries = [read_summary(path.parent) for path in folder.rglob("summary.json")]
    return sum(s["timings"]["seconds_train"] / s["timings"]["stack_size"] for s in summaries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("BNLAB_DATA", str(DEFAULT_DATA)))
    args = parser.parse_args()
    from bnlab.data.tensors import load_dataset

    splits = load_dataset(bench_config(args.data, 32).data, "cpu")
    n_models = len(SEEDS) * len(LRS)
    rate = matmul_gflops() * 1e9
    bound = flops_per_epoch(len(splits.train_x)) / rate
    print(f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"2048^3 matmul: {rate / 1e9:.1f} GFLOP/s; FLOP bound per model-epoch: {bound:.2f} s")
    figures: dict[str, float] = {"matmul_gflops": round(rate / 1e9, 2), "flop_bound_s": round(bound, 3)}
    for batch_size in (32, 128):
        reference_epoch(splits, batch_size, seed=99)  # warm-up
        started = time.perf_counter()
        for seed in range(n_models):
            reference_epoch(splits, batch_size, seed)
        lean = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as runs:
            spec = write_spec(Path(runs), args.data, batch_size)
            local = timed_sweep(spec, Path(runs) / "off", "off")
            stacked = timed_sweep(spec, Path(runs) / "auto", "auto")
            train_only = training_core_seconds(Path(runs) / "auto") / plan_workers(SweepOptions())[0]
        per_model = {name: seconds / n_models for name, seconds in
                     (("lean", lean), ("local", local), ("stacked", stacked))}
        figures |= {f"{name}_s_per_model_epoch_b{batch_size}": round(value, 3) for name, value in per_model.items()}
        figures[f"ratio_local_b{batch_size}"] = round(lean / local, 3)
        figures[f"ratio_stacked_b{batch_size}"] = round(lean / stacked, 3)
        figures[f"stacked_over_flop_bound_b{batch_size}"] = round(per_model["stacked"] / bound, 3)
        # Where the rest goes: the training loops alone, spread over the workers, against the bound.
        figures[f"stacked_training_loop_over_flop_bound_b{batch_size}"] = round(train_only / n_models / bound, 3)
        print(f"batch {batch_size:4d}: s per model-epoch: lean {per_model['lean']:.3f}, "
              f"local {per_model['local']:.3f}, stacked {per_model['stacked']:.3f} (FLOP bound {bound:.3f}); "
              f"throughput vs lean: local {lean / local:.2f}x, stacked {lean / stacked:.2f}x; stacked / FLOP bound "
              f"{per_model['stacked'] / bound:.2f} (training loops alone {train_only / n_models / bound:.2f})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
