"""Per-model seconds per epoch: solo `train` against `train_stack` at several stack sizes.

784-256-128-64-10, ReLU then BN, Adam lr 0.01, one epoch of real MNIST per run, evaluation
included, at each batch size and torch thread count. Each stack trains K seeds; solo trains one
seed; `lean` is bench/run_speed.py's plain-PyTorch loop (no records), the sweep target's
reference. Each is measured `--repeats` times and the fastest kept: on a shared machine other
work only ever slows a measurement down. `--mixed-lr` gives every member of a stack its own
learning rate (one optimizer param group each) instead of one shared lr. `--workers N` runs N
copies of this probe at once, as a sweep's worker processes would, and prints each copy's
table: a machine's throughput is N times a copy's.

    python bench/stack_probe.py [--data DIR] [--batch-sizes 32 128] [--stack-sizes 2 4 8 10 20]
                                [--threads 1 2] [--repeats 2] [--mixed-lr] [--workers 1]

Ends with one JSON line of the measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from run_speed import reference_epoch

from bnlab.config import Config, load_config
from bnlab.data.tensors import Splits, load_dataset
from bnlab.engine.stacked import train_stack
from bnlab.engine.train import train

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "mnist"


def probe_config(data_root: str, batch_size: int, seed: int, lr: float = 0.01, steps: int | None = None) -> Config:
    return load_config(None, [f"data.root={data_root}", "device=cpu", "model.hidden=[256, 128, 64]",
                              "model.bn=after", "train.optimizer=adam", f"train.lr={lr}", "train.epochs=1",
                              f"train.batch_size={batch_size}", f"seed={seed}", "name=stack-probe",
                              *([f"train.steps={steps}"] if steps else [])])


def stack_seconds(splits: Splits, data_root: str, batch_size: int, size: int, mixed_lr: bool) -> tuple[float, float]:
    """Seconds per member (the stack's wall time over K), and the members' mean test accuracy;
    size 0 is a solo run."""
    if size == 0:
        started = time.perf_counter()
        result = train(probe_config(data_root, batch_size, 0), splits)
        return time.perf_counter() - started, result.final["test_acc"]
    # Mixed: K learning rates spread around 0.01, so no two members share a param group.
    cfgs = [probe_config(data_root, batch_size, seed, 0.01 * (1 + seed / size) if mixed_lr else 0.01)
            for seed in range(size)]
    started = time.perf_counter()
    results = train_stack(cfgs, splits)
    seconds = time.perf_counter() - started
    return seconds / size, statistics.fmean(result.final["test_acc"] for result in results)


def probe(args: argparse.Namespace) -> list[dict[str, float]]:
    splits = load_dataset(probe_config(args.data, 32, 0).data, "cpu")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch_size in args.batch_sizes:
            train_stack([probe_config(args.data, batch_size, 99, steps=50)] * 2, splits)  # warm-up: allocator, kernels
            lean = min(reference_epoch(splits, batch_size, seed) for seed in range(args.repeats))
            solo = 0.0
            for size in [0, *args.stack_sizes]:
                seconds, accuracy = min(stack_seconds(splits, args.data, batch_size, size, args.mixed_lr)
                                        for _ in range(args.repeats))
                solo = solo or seconds
                rows.append({"threads": threads, "batch_size": batch_size, "stack_size": size,
                             "seconds_per_model": seconds, "vs_solo": solo / seconds, "vs_lean": lean / seconds,
                             "lean_seconds": lean, "test_acc": accuracy})
                print(_format(rows[-1]), flush=True)
    return rows


def _format(row: dict[str, float]) -> str:
    engine = f"stack K={row['stack_size']:<3d}" if row["stack_size"] else "solo       "
    return (f"threads {row['threads']}  batch {row['batch_size']:4d}  {engine} {row['seconds_per_model']:6.2f} s/epoch "
            f"per model  x{row['vs_solo']:.2f} vs solo  x{row['vs_lean']:.2f} vs lean ({row['lean_seconds']:.2f} s)  "
            f"test_acc {row['test_acc']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("BNLAB_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--stack-sizes", type=int, nargs="+", default=[2, 4, 8, 10, 20])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mixed-lr", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers > 1:
        # The copies compete for cores, caches and memory bandwidth, as a sweep's workers do.
        command = [sys.executable, __file__, *sys.argv[1:], "--workers", "1"]  # argparse keeps the last
        copies = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(args.workers)]
        for number, copy in enumerate(copies):
            output, _ = copy.communicate()
            print(f"--- worker {number}\n{output}", end="")
        return
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, mixed lr: {args.mixed_lr}")
    print(json.dumps(probe(args)))


if __name__ == "__main__":
    main()
