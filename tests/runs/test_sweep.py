"""Sweeps: spec errors, layout, resume after a real SIGKILL, locking, failure isolation, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WAIT_SECONDS, Holds, assert_no_processes_left, masked, read_results, sweep_command, write_spec
from filelock import FileLock
from typer.testing import CliRunner

from bnlab.cli import app
from bnlab.config.spec import load_sweep
from bnlab.records import finished_run, read_summary
from bnlab.runs.sweep import SweepOptions, plan_workers, run_sweep


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("  train.lrr: [0.1]\n", "grid.train.lrr: unknown field (did you mean 'lr'?); allowed in train:"),
        ("  train.epochs: []\n", "grid.train.epochs: empty list; give at least one value"),
        ("  train.batch_size: [32, -4]\n", "grid cell train.lr=0.01, model.bn='none', train.batch_size=-4 seed=0: "
                                           "train.batch_size: Input should be greater than or equal to 1 (got -4)"),
        ("  model.dropout: [0.1, 0.1]\n", "grid.model.dropout: values repeat (got [0.1, 0.1])"),
    ],
)
def test_spec_errors_are_found_before_anything_runs(tmp_path: Path, tiny_mnist: Path, grid: str,
                                                    message: str) -> None:
    spec = write_spec(tmp_path, tiny_mnist, extra_grid=grid)
    result = CliRunner().invoke(app, ["sweep", str(spec), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {spec}: {message}")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_sweep_layout_results_and_ls(tmp_path: Path, tiny_mnist: Path) -> None:
    spec = write_spec(tmp_path, tiny_mnist)
    runs = tmp_path / "runs"
    dry = CliRunner().invoke(app, ["sweep", str(spec), "--runs-dir", str(runs), "--dry-run", "--stack", "off"])
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.startswith("sweep grid: 8 runs (4 cell(s) x 2 seed(s)); 0 already finished, 8 to run")
    assert "varies train.lr: [0.01, 0.05]" in dry.stdout and "estimate ~" in dry.stdout
    assert not runs.exists()

    result = CliRunner().invoke(app, ["sweep", str(spec), "--runs-dir", str(runs), "--stack", "off"])
    assert result.exit_code == 0, result.output
    folder = runs / "grid"
    assert (folder / "spec.yaml").read_text() == spec.read_text()
    rows = read_results(folder / "results.csv")
    expected_ids = sorted(cfg.run_id() for cfg in load_sweep(spec).configs)
    assert [row["run_id"] for row in rows] == expected_ids
    assert set(rows[0]) >= {"train.lr", "model.bn", "seed", "status", "test_acc", "val_acc", "seconds"}
    assert {row["status"] for row in rows} == {"done"}
    for row in rows:
        summary = read_summary(folder / row["run_id"])
        assert float(row["test_acc"]) == summary["final"]["test_acc"]
        assert summary["torch_threads"] == plan_workers(SweepOptions())[1]  # the worker's, not this process's

    listing = CliRunner().invoke(app, ["ls", str(folder), "--where", "model.bn=after", "--sort", "test_acc"],
                                 env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    assert "4 run(s)" in listing.stdout and "train.lr" in listing.stdout and "seed" in listing.stdout
    bad = CliRunner().invoke(app, ["ls", str(folder), "--sort", "nope"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --sort nope: no such column; allowed:")

    again = CliRunner().invoke(app, ["sweep", str(spec), "--runs-dir", str(runs), "--stack", "off"])
    assert again.exit_code == 0
    assert "0 done, 0 diverged, 0 failed this time; 8 already finished" in again.stdout


def test_grid_changes_run_only_new_cells_and_base_changes_are_refused(tmp_path: Path, tiny_mnist: Path) -> None:
    runs = tmp_path / "runs"
    spec = write_spec(tmp_path, tiny_mnist, lrs="[0.01]", seeds="[0]")
    options = SweepOptions(stack="off", workers=1)
    first = run_sweep(load_sweep(spec), runs, options)
    assert first.counts["done"] == 2
    before = {p.name: (p / "summary.json").stat().st_mtime_ns for p in (runs / "grid").iterdir() if p.is_dir()}

    write_spec(tmp_path, tiny_mnist, lrs="[0.01, 0.05]", seeds="[0]")
    grown = run_sweep(load_sweep(spec), runs, options)
    assert (grown.skipped, grown.counts["done"]) == (2, 2)
    for run_id, mtime in before.items():
        assert (runs / "grid" / run_id / "summary.json").stat().st_mtime_ns == mtime

    write_spec(tmp_path, tiny_mnist, lrs="[0.05]", seeds="[0]")
    shrunk = run_sweep(load_sweep(spec), runs, options)
    assert (shrunk.skipped, shrunk.counts["done"]) == (2, 0)
    assert all((runs / "grid" / run_id / "summary.json").exists() for run_id in before)  # dropped cells kept

    write_spec(tmp_path, tiny_mnist, lrs="[0.05]", seeds="[0]", epochs=3)
    refused = CliRunner().invoke(app, ["sweep", str(spec), "--runs-dir", str(runs)])
    assert refused.exit_code == 2
    assert refused.stderr == (f"error: {runs / 'grid'}: base field train.epochs changed (2 -> 3) since this sweep "
                              "started; keep it, or give the spec a new name: to start a new sweep\n")


def test_failed_and_diverged_runs_are_recorded_and_the_sweep_goes_on(tmp_path: Path, tiny_mnist: Path) -> None:
    # A training subset of one image makes no batch BN can use: that run raises inside its worker.
    spec = write_spec(tmp_path, tiny_mnist, lrs="[0.01, 1000000.0]", seeds="[0]",
                      extra_grid="  data.train_subset: [1, 200]\n",
                      base_extra=", init: normal, init_std: 3.0")
    text = spec.read_text().replace("train: {", "train: {optimizer: sgd, ")
    spec.write_text(text)
    runs = tmp_path / "runs"
    result = subprocess.run(sweep_command(spec, runs, "--stack", "off"), capture_output=True, text=True,
                            timeout=WAIT_SECONDS)
    assert result.returncode == 1, result.stderr
    rows = {row["run_id"]: row for row in read_results(runs / "grid" / "results.csv")}
    by_cell = {(row["train.lr"], row["model.bn"], row["data.train_subset"]): row for row in rows.values()}
    assert by_cell[("0.01", "after", "1")]["status"] == "failed"
    assert "make no batch of >= 2 for BN" in by_cell[("0.01", "after", "1")]["error"]
    assert by_cell[("0.01", "none", "200")]["status"] == "done"
    assert by_cell[("1000000.0", "none", "200")]["status"] == "diverged"
    failed_ids = sorted(run_id for run_id, row in rows.items() if row["status"] == "failed")
    assert len(failed_ids) == 2  # bn=after with one image, at both learning rates
    for run_id in failed_ids:
        assert f"failed {run_id}: ConfigError: train.batch_size:" in result.stderr
        assert (runs / "grid" / run_id / "error.txt").read_text().startswith("Traceback")
    assert "re-run with --retry-failed" in result.stderr

    plain = subprocess.run(sweep_command(spec, runs, "--stack", "off"), capture_output=True, text=True,
                           timeout=WAIT_SECONDS)
    assert plain.returncode == 0 and "0 done, 0 diverged, 0 failed this time; 8 already finished" in plain.stdout
    retry = subprocess.run(sweep_command(spec, runs, "--stack", "off", "--retry-failed"), capture_output=True,
                           text=True, timeout=WAIT_SECONDS)
    assert retry.returncode == 1
    assert "0 done, 0 diverged, 2 failed this time; 6 already finished" in retry.stdout


def _finished(store: Path) -> set[str]:
    return {folder.name for folder in store.iterdir() if folder.is_dir() and finished_run(folder) is not None}


def test_sigkill_then_resume_gives_the_uninterrupted_result(tmp_path: Path, tiny_mnist: Path, holds: Holds) -> None:
    spec = write_spec(tmp_path, tiny_mnist, lrs="[0.01, 0.02, 0.05]", seeds="[0, 1]", epochs=3, racing=True)
    reference = tmp_path / "reference"
    subprocess.run(sweep_command(spec, reference, "--stack", "off", "--workers", "2"), check=True,
                   capture_output=True, timeout=WAIT_SECONDS)
    runs = tmp_path / "runs"
    results = runs / "grid" / "results.csv"
    holds.arm("sweep.run", 3)  # the driver, just after it recorded its third finished run
    process = subprocess.Popen(sweep_command(spec, runs, "--stack", "off", "--workers", "2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert holds.wait("sweep.run", process) == process.pid
    os.killpg(process.pid, signal.SIGKILL)  # the driver and both workers, mid-sweep
    process.wait()
    finished_before = _finished(runs / "grid")
    assert len(finished_before) == 3
    assert {r["run_id"] for r in read_results(results) if r["status"] == "done"} == finished_before
    resumed = subprocess.run(sweep_command(spec, runs, "--stack", "off", "--workers", "2"), capture_output=True,
                             text=True, timeout=WAIT_SECONDS)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 already finished" in resumed.stdout
    assert "9 done" in resumed.stdout  # nothing run twice, nothing lost
    assert masked(read_results(results)) == masked(read_results(reference / "grid" / "results.csv"))
    assert not list((runs / "grid").rglob("*.tmp"))


def test_second_sweep_on_the_same_folder_is_refused(tmp_path: Path, tiny_mnist: Path, holds: Holds) -> None:
    spec = write_spec(tmp_path, tiny_mnist, racing=True)
    runs = tmp_path / "runs"
    holds.arm("sweep.plan")  # the first sweep, holding the folder's lock, about to train
    first = subprocess.Popen(sweep_command(spec, runs, "--stack", "off"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert holds.wait("sweep.plan", first) == first.pid
        second = subprocess.run(sweep_command(spec, runs), capture_output=True, text=True, timeout=WAIT_SECONDS)
        assert second.returncode == 2
        assert second.stderr == (f"error: {runs / 'grid'}: another bnlab sweep (pid {first.pid}) is running on this "
                                 "folder; wait for it to finish or stop it\n")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_keeps_finished_runs_and_says_how_to_resume(tmp_path: Path, tiny_mnist: Path, holds: Holds,
                                                             signum: int, code: int) -> None:
    spec = write_spec(tmp_path, tiny_mnist, lrs="[0.01, 0.02, 0.05]", racing=True)
    runs = tmp_path / "runs"
    holds.arm("sweep.run")  # the driver, just after it recorded its first finished run
    process = subprocess.Popen(sweep_command(spec, runs, "--stack", "off"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert holds.wait("sweep.run", process) == process.pid
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == code
    assert stderr.strip().splitlines()[-1] == (f"interrupted by {signal.Signals(signum).name}: finished runs are "
                                               "kept; run the same command again to resume")
    done = {row["run_id"] for row in read_results(runs / "grid" / "results.csv") if row["status"] == "done"}
    assert done and done == _finished(runs / "grid") and len(done) < 12
    assert all(read_summary(runs / "grid" / run_id)["status"] == "done" for run_id in done)
    assert_no_processes_left(process.pid)


def test_workers_die_with_a_killed_driver_and_free_the_folder(tmp_path: Path, tiny_mnist: Path,
                                                              holds: Holds) -> None:
    # The driver alone is killed: its forked workers hold a copy of the folder lock, and must not
    # train on for nobody and make the next sweep wait or be refused.
    spec = write_spec(tmp_path, tiny_mnist, lrs="[0.01]", seeds="[0, 1]", racing=True)
    runs = tmp_path / "runs"
    holds.arm("train.start")  # a worker, busy with a run
    process = subprocess.Popen(sweep_command(spec, runs, "--stack", "off", "--workers", "2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    worker = holds.wait("train.start", process)
    assert worker in _children(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert_no_processes_left(process.pid)
    FileLock(runs / "grid" / ".lock").acquire(timeout=0)  # raises Timeout while any process holds it


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_killed_worker_fails_only_its_own_run(tmp_path: Path, tiny_mnist: Path, holds: Holds) -> None:
    spec = write_spec(tmp_path, tiny_mnist, lrs="[0.01]", seeds="[0, 1]", racing=True)
    runs = tmp_path / "runs"
    holds.arm("train.start")  # one worker, in its first run
    process = subprocess.Popen(sweep_command(spec, runs, "--stack", "off", "--workers", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    worker = holds.wait("train.start", process)
    assert worker in _children(process.pid)
    os.kill(worker, signal.SIGKILL)
    _, stderr = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 1, stderr
    rows = read_results(runs / "grid" / "results.csv")
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["error"] == "worker process killed by signal 9 (SIGKILL)"
    assert sum(row["status"] == "done" for row in rows) == 3


def test_workers_are_forked_only_where_that_is_safe(tmp_path: Path, tiny_mnist: Path) -> None:
    from bnlab.runs.executors import start_method
    from bnlab.runs.sweep import plan_groups

    groups = plan_groups(load_sweep(write_spec(tmp_path, tiny_mnist)).configs, "auto", 10)
    assert start_method(groups, threads=1) == ("fork" if sys.platform.startswith("linux") else "spawn")
    # A child running OpenMP with 2 threads after the driver did can hang: spawn (faults tests' path).
    assert start_method(groups, threads=2) == "spawn"
