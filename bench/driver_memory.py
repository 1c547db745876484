"""Long sweeps hold: the driver's memory stays flat, and nothing is left behind.

A sweep of a few hundred tiny runs (stacked, on the tests' tiny IDX dataset) in this process,
which is the sweep driver: it samples its own resident memory (VmRSS) after every finished run,
and counts its open file descriptors and child processes before and after. Growth is the median
of the last quarter of samples minus the median of the first quarter, in MiB.

    python bench/driver_memory.py [--runs 300] [--workers 2]

Ends with one JSON line (keys runs, seconds, rss_first_quarter_mib, rss_last_quarter_mib,
rss_growth_mib, rss_max_mib, fds_before, fds_after, fds_leaked, children_left).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import write_dataset  # noqa: E402 - the tests' tiny IDX writer, not a copy of it

from bnlab.config.spec import load_sweep  # noqa: E402
from bnlab.runs.sweep import SweepOptions, SweepState, run_sweep  # noqa: E402

SEEDS_PER_LR = 30


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own fd, closed by now
    return found


def new_fds(before: dict[int, str], after: dict[int, str]) -> list[str]:
    """Descriptors opened during the sweep and still open, but for the pipe to multiprocessing's
    resource tracker: started with the first worker, it lives as long as this process."""
    from multiprocessing import resource_tracker

    tracker_fd = getattr(resource_tracker._resource_tracker, "_fd", None)
    return [f"{fd} -> {target}" for fd, target in sorted(after.items())
            if before.get(fd) != target and fd != tracker_fd]


def children() -> list[str]:
    """Command lines of this process's live children (multiprocessing's resource tracker is one:
    it lives as long as the process that started it, by design)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        except (OSError, ValueError, IndexError):
            continue
    return found


def write_spec(folder: Path, data_root: Path, runs: int) -> Path:
    lrs = [round(0.001 * (index + 1), 4) for index in range(max(1, runs // SEEDS_PER_LR))]
    spec = folder / "memory.yaml"
    spec.write_text(f"""\
name: memory
base:
  device: cpu
  data: {{root: '{data_root}', val_size: 100, train_subset: 64, verify: false}}
  model: {{hidden: [16], bn: after}}
  train: {{epochs: 1, batch_size: 32, log_every: 1}}
  eval: {{batch_sizes: [100]}}
grid:
  train.lr: {lrs}
seeds: {list(range(SEEDS_PER_LR))}
""")
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bnlab-memory-") as tmp:
        folder = Path(tmp)
        write_dataset(folder / "data")
        sweep = load_sweep(write_spec(folder, folder / "data", args.runs))
        samples: list[float] = []

        def on_event(kind: str, state: SweepState, payload: Any) -> None:
            if kind == "run":
                samples.append(rss_mib())

        fds_before, children_before = open_fds(), children()
        started = time.perf_counter()
        state = run_sweep(sweep, folder / "runs", SweepOptions(workers=args.workers), on_event=on_event)
        seconds = time.perf_counter() - started
        time.sleep(0.5)  # let the workers' exits be reaped
        fds_after = open_fds()
        left = [cmd for cmd in children() if cmd not in children_before and "resource_tracker" not in cmd]
        left += [str(child) for child in multiprocessing.active_children()]

    quarter = max(1, len(samples) // 4)
    first, last = statistics.median(samples[:quarter]), statistics.median(samples[-quarter:])
    finished = sum(state.counts.values())
    print(f"{finished} runs ({state.counts}) in {seconds:.1f} s")
    print(f"driver RSS: first quarter median {first:.1f} MiB, last quarter median {last:.1f} MiB, "
          f"growth {last - first:+.1f} MiB, max {max(samples):.1f} MiB over {len(samples)} samples")
    leaked = new_fds(fds_before, fds_after)
    print(f"open fds: {len(fds_before)} before, {len(fds_after)} after (the resource tracker's pipe aside, "
          f"new: {leaked or 'none'}); child processes left: {left or 'none'}")
    print(json.dumps({"runs": finished, "seconds": round(seconds, 1), "rss_first_quarter_mib": round(first, 1),
                      "rss_last_quarter_mib": round(last, 1), "rss_growth_mib": round(last - first, 1),
                      "rss_max_mib": round(max(samples), 1), "fds_before": len(fds_before),
                      "fds_after": len(fds_after), "fds_leaked": len(leaked), "children_left": len(left)}))


if __name__ == "__main__":
    main()
