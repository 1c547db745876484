"""`bnlab run` end to end on a tiny real dataset: the run folder, determinism, pairing, eval modes."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from bnlab.cli import app
from bnlab.config import load_config
from bnlab.data.tensors import load_dataset
from bnlab.engine.ics import InputDrift, gradient_ics, rng_state
from bnlab.engine.model import STREAM_EVAL_ORDER, build_model, generator
from bnlab.engine.probes import PROBE_UNITS
from bnlab.engine.stacked import train_stack
from bnlab.engine.train import OPTIMIZERS, epoch_order, train
from bnlab.records import read_finished, read_summary
from bnlab.runs.runner import run
from bnlab.runs.sweep import plan_groups

RUN_FILES = {"config.yaml", "epochs.csv", "steps.csv", "probes.csv", "evals.csv", "summary.json", "model.pt",
             "plots"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _strict_json_load(path: Path) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_run_writes_the_whole_folder(tmp_path: Path, tiny_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(tiny_config), "eval.bn_stats=[running, batch]",
                                      "eval.batch_sizes=[8, 50]"])
    assert result.exit_code == 0, result.output
    cfg = load_config(tiny_config, ["eval.bn_stats=[running, batch]", "eval.batch_sizes=[8, 50]"])
    folder = tmp_path / "runs" / "tiny" / cfg.run_id()
    assert f"wrote runs/tiny/{cfg.run_id()}" in result.stdout
    assert {path.name for path in folder.iterdir()} == RUN_FILES
    assert load_config(folder / "config.yaml") == cfg.model_copy(update={"name": "tiny"})

    summary = _strict_json_load(folder / "summary.json")
    assert summary["status"] == "done"
    assert summary["run_id"] == cfg.run_id() and summary["seed"] == 0
    assert summary["engine"] == "solo" and summary["stack_size"] == 1
    assert summary["device"] == "cpu"
    assert set(summary["versions"]) >= {"python", "torch", "bnlab"}
    assert set(summary["dataset"]["sha256"]) == {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}
    assert "git_commit" in summary
    assert summary["final"]["test_acc"] > 0.5  # the tiny classes are learnable: this is not chance

    epochs = _rows(folder / "epochs.csv")
    assert [int(row["epoch"]) for row in epochs] == [1, 2]
    assert set(epochs[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                              "lr", "seconds"}
    assert float(epochs[-1]["test_acc"]) == summary["final"]["test_acc"]
    steps = _rows(folder / "steps.csv")
    # 300 training images at batch 32: 9 full batches + 12 left over, per epoch; a row every 5 steps.
    assert [int(row["step"]) for row in steps] == list(range(5, 21, 5))
    assert all(float(row["grad_norm"]) > 0 for row in steps)

    probes = _rows(folder / "probes.csv")
    assert {(row["layer"]) for row in probes} == {"1", "2"}
    assert {int(row["step"]) for row in probes} == {0, 5, 10, 15, 20}
    assert len(probes) == 5 * 2 * PROBE_UNITS
    assert all(float(r["p15"]) <= float(r["p50"]) <= float(r["p85"]) for r in probes)

    evals = _rows(folder / "evals.csv")
    assert [(r["split"], r["bn_stats"], r["batch_size"]) for r in evals] == [
        ("val", "running", ""), ("test", "running", ""), ("val", "batch", "8"), ("test", "batch", "8"),
        ("val", "batch", "50"), ("test", "batch", "50")]
    state = torch.load(folder / "model.pt", weights_only=True)
    model = build_model(cfg.model, 784, 10, seed=0)
    model.load_state_dict(state)
    assert (folder / "plots" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(folder.rglob("*.tmp"))


def test_finished_run_is_kept_unless_forced(tmp_path: Path, tiny_config: Path) -> None:
    runs = tmp_path / "elsewhere"
    first = CliRunner().invoke(app, ["run", str(tiny_config), "--runs-dir", str(runs), "--quiet"])
    assert first.exit_code == 0, first.output
    (folder,) = (runs / "tiny").iterdir()
    before = (folder / "summary.json").read_bytes()
    again = CliRunner().invoke(app, ["run", str(tiny_config), "--runs-dir", str(runs)])
    assert again.exit_code == 0
    assert again.stdout == f"already finished: {folder} (done); use --force to redo it\n"
    assert (folder / "summary.json").read_bytes() == before
    forced = CliRunner().invoke(app, ["run", str(tiny_config), "--runs-dir", str(runs), "--force", "--quiet"])
    assert forced.exit_code == 0
    assert (folder / "summary.json").read_bytes() != before  # new timings


def test_a_damaged_run_is_redone_and_says_what_it_replaced(tmp_path: Path, tiny_config: Path) -> None:
    runs = tmp_path / "runs"
    assert CliRunner().invoke(app, ["run", str(tiny_config), "--runs-dir", str(runs), "--quiet"]).exit_code == 0
    (folder,) = (runs / "tiny").iterdir()
    (folder / "summary.json").write_text('{"status": "done", ')  # cut off mid-write by something else
    again = CliRunner().invoke(app, ["run", str(tiny_config), "--runs-dir", str(runs), "--quiet"])
    assert again.exit_code == 0, again.output
    lines = again.stdout.splitlines()
    assert lines[0].startswith(f"wrote {folder} (test_acc ")
    assert lines[1].startswith(f"  in place of a damaged record: {folder / 'summary.json'}: damaged: ")
    assert _strict_json_load(folder / "summary.json")["status"] == "done"


def test_bnlab_runs_env_names_the_runs_dir(tmp_path: Path, tiny_config: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNLAB_RUNS", str(tmp_path / "from-env"))
    outcome = run(load_config(tiny_config, ["train.epochs=1"]))
    assert outcome.folder.parent.parent == tmp_path / "from-env"


def test_same_config_and_seed_give_identical_numbers(tmp_path: Path, tiny_config: Path) -> None:
    cfg = load_config(tiny_config, ["model.dropout=0.2", "eval.every_steps=4"])
    first = run(cfg, tmp_path / "a").folder
    second = run(cfg, tmp_path / "b").folder
    for name in ("steps.csv", "probes.csv", "evals.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in _rows(first / "epochs.csv")]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in _rows(second / "epochs.csv")]
    assert torch.load(first / "model.pt", weights_only=True)["0.weight"].equal(
        torch.load(second / "model.pt", weights_only=True)["0.weight"])


@pytest.mark.parametrize("bn", ["none", "after", "before"])
def test_seed_fixes_first_layer_and_batch_order_across_placements(tiny_config: Path, bn: str) -> None:
    """The loss logged at step 1 is the untrained model's loss on epoch_order's first batch:
    with the same seed, every placement trains on the same batches from the same first layer."""
    cfg = load_config(tiny_config, [f"model.bn={bn}", "train.log_every=1", "train.steps=1"])
    splits = load_dataset(cfg.data, torch.device("cpu"))
    first_batch = epoch_order(cfg.seed, 1, len(splits.train_x), torch.device("cpu"))[: cfg.train.batch_size]
    model = build_model(cfg.model, 784, 10, cfg.seed).train()
    with torch.no_grad():
        expected = F.cross_entropy(model(splits.train_x[first_batch]), splits.train_y[first_batch]).item()
    result = train(cfg, splits)
    assert result.steps[0]["train_loss"] == pytest.approx(expected, rel=1e-6)
    reference = build_model(load_config(tiny_config, ["model.bn=none"]).model, 784, 10, cfg.seed)
    assert torch.equal(model[0].weight, reference[0].weight)
    assert not torch.equal(first_batch, epoch_order(cfg.seed + 1, 1, len(splits.train_x), torch.device("cpu"))[
        : cfg.train.batch_size])


def test_steps_replace_epochs_and_single_sample_batch_is_dropped(tiny_config: Path) -> None:
    # 300 training images at batch 299: one full batch and a leftover of one, which BN cannot use.
    cfg = load_config(tiny_config, ["train.batch_size=299", "train.epochs=3"])
    result = train(cfg, load_dataset(cfg.data, torch.device("cpu")))
    assert result.timings["steps"] == 3
    no_bn = load_config(tiny_config, ["train.batch_size=299", "train.steps=5", "model.bn=none"])
    result = train(no_bn, load_dataset(no_bn.data, torch.device("cpu")))
    assert result.timings["steps"] == 5
    assert [row["epoch"] for row in result.epochs] == [1, 2, 3]  # 2 steps an epoch, the last one cut short


@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam", "adamw"])
def test_each_optimizer_trains(tiny_config: Path, optimizer: str) -> None:
    momentum = "0.9" if optimizer in ("sgd", "nesterov") else "0"
    lr = "0.05" if optimizer in ("sgd", "nesterov") else "0.01"
    cfg = load_config(tiny_config, [f"train.optimizer={optimizer}", f"train.momentum={momentum}",
                                    f"train.lr={lr}", "train.weight_decay=1e-4"])
    result = train(cfg, load_dataset(cfg.data, torch.device("cpu")))
    assert result.status == "done"
    assert result.epochs[-1]["train_loss"] < result.epochs[0]["train_loss"] or result.final["train_acc"] > 0.9


def test_huge_learning_rate_is_diverged_not_a_crash(tmp_path: Path, tiny_config: Path) -> None:
    cfg = load_config(tiny_config, ["model.bn=none", "train.optimizer=sgd", "train.lr=1e6", "train.log_every=1"])
    outcome = run(cfg, tmp_path)
    summary = read_summary(outcome.folder)
    assert summary["status"] == "diverged"
    assert summary["diverged_step"] >= 1
    assert summary["final"] == {}
    _strict_json_load(outcome.folder / "summary.json")


def test_batch_statistics_eval_leaves_running_stats_alone(tiny_config: Path) -> None:
    cfg = load_config(tiny_config, ["eval.bn_stats=[running, batch]", "eval.batch_sizes=[2, 16]"])
    splits = load_dataset(cfg.data, torch.device("cpu"))
    result = train(cfg, splits)
    by_mode = {(row["split"], row["bn_stats"], row["batch_size"]): row for row in result.evals}
    assert by_mode[("test", "running", None)]["acc"] == result.final["test_acc"]
    # Batches of two normalise each pair against itself: clearly worse than running statistics.
    assert by_mode[("test", "batch", 2)]["acc"] < by_mode[("test", "running", None)]["acc"]
    assert all(math.isfinite(row["loss"]) for row in result.evals)


def test_every_steps_adds_val_and_test_accuracy(tiny_config: Path) -> None:
    cfg = load_config(tiny_config, ["eval.every_steps=3", "train.log_every=100"])
    result = train(cfg, load_dataset(cfg.data, torch.device("cpu")))
    assert [row["step"] for row in result.steps] == [3, 6, 9, 12, 15, 18]
    assert all(set(row) == {"step", "epoch", "val_acc", "test_acc"} for row in result.steps)


def test_show_prints_the_summary(tmp_path: Path, tiny_config: Path) -> None:
    folder = run(load_config(tiny_config, ["train.epochs=1"]), tmp_path).folder
    result = CliRunner().invoke(app, ["show", str(folder)])
    assert result.exit_code == 0, result.output
    assert "final.test_acc" in result.stdout and "done" in result.stdout
    missing = CliRunner().invoke(app, ["show", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert missing.stderr == f"error: {tmp_path / 'nope' / 'summary.json'}: missing (the run did not finish)\n"


def test_recalibrated_and_class_sorted_evaluations(tiny_config: Path) -> None:
    cfg = load_config(tiny_config, ["eval.bn_stats=[running, recalibrated, batch, sorted]",
                                    "eval.batch_sizes=[50]"])
    result = train(cfg, load_dataset(cfg.data, torch.device("cpu")))
    by_mode = {(row["split"], row["bn_stats"], row["batch_size"]): row["acc"] for row in result.evals}
    assert set(by_mode) == {(split, mode, size) for split in ("val", "test")
                            for mode, size in (("running", None), ("recalibrated", None), ("batch", 50),
                                               ("sorted", 50))}
    # Batches of one class normalise part of the class signal away: below the i.i.d. batches.
    assert by_mode[("test", "sorted", 50)] < by_mode[("test", "batch", 50)]
    assert by_mode[("test", "recalibrated", None)] > 0.5


def test_probes_are_spread_over_a_long_run(tiny_mnist: Path) -> None:
    """A probe at every log step would cost a long batch-32 run a fifth of its arithmetic."""
    cfg = load_config(None, ["device=cpu", f"data.root={tiny_mnist}", "data.verify=false", "data.val_size=100",
                             "model.hidden=[8]", "train.steps=300", "train.log_every=2", "train.batch_size=16"])
    result = train(cfg, load_dataset(cfg.data, "cpu"))
    assert sorted({row["step"] for row in result.probes}) == list(range(0, 301, 12))  # 2 * ceil(300 / (2 * 25))
    assert len(result.steps) == 150


def _predictions(model: torch.nn.Module, x: torch.Tensor, batch: int | None) -> torch.Tensor:
    """The definition, in plain torch: running statistics (batch None), or each batch of `batch`
    normalised with its own statistics, dropout off, batches of one sample left out (-1)."""
    model = copy.deepcopy(model).eval()
    if batch is None:
        with torch.no_grad():
            return model(x).argmax(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.train()
    out = torch.full((len(x),), -1)
    with torch.no_grad():
        for start in range(0, len(x), batch):
            if len(x[start:start + batch]) >= 2:
                out[start:start + batch] = model(x[start:start + batch]).argmax(1)
    return out


def test_shuffled_batches_and_disagreement_match_their_definitions(tiny_config: Path) -> None:
    """`disagree` is the fraction of scored test predictions unlike the running-statistics ones;
    `shuffled` scores batches in an order drawn from the seed; one batch of 10000 holds the whole
    tiny test set, so its order cannot matter there."""
    cfg = load_config(tiny_config, ["model.dropout=0.2", "eval.bn_stats=[running, batch, shuffled]",
                                    "eval.batch_sizes=[16, 10000]"])
    splits = load_dataset(cfg.data, torch.device("cpu"))
    result = train(cfg, splits)
    rows = {(row["split"], row["bn_stats"], row["batch_size"]): row for row in result.evals}
    assert "disagree" not in rows[("test", "running", None)]
    model = build_model(cfg.model, 784, 10, cfg.seed)
    model.load_state_dict(result.state_dict)
    running = _predictions(model, splits.test_x, None)
    in_order = _predictions(model, splits.test_x, 16)
    assert rows[("test", "batch", 16)]["disagree"] == pytest.approx((in_order != running).double().mean().item())
    order = torch.randperm(len(splits.test_y), generator=generator(cfg.seed, STREAM_EVAL_ORDER, 1))
    shuffled = torch.empty_like(running).scatter_(0, order, _predictions(model, splits.test_x[order], 16))
    scored = shuffled >= 0
    assert rows[("test", "shuffled", 16)]["disagree"] == pytest.approx(
        (shuffled[scored] != running[scored]).double().mean().item())
    assert rows[("test", "shuffled", 16)]["acc"] == pytest.approx(
        (shuffled[scored] == splits.test_y[scored]).double().mean().item())
    assert rows[("test", "shuffled", 10000)]["acc"] == pytest.approx(rows[("test", "batch", 10000)]["acc"])
    assert rows[("test", "shuffled", 10000)]["disagree"] == pytest.approx(rows[("test", "batch", 10000)]["disagree"])


def test_train_eval_is_the_eval_mode_score_on_the_training_images(tiny_config: Path) -> None:
    """With dropout, the running-mean train accuracy of an epoch is lowered by the noise;
    train_eval is the network as evaluated, recomputed here from its saved weights."""
    cfg = load_config(tiny_config, ["model.dropout=0.5", "eval.train_eval=true", "eval.every_steps=5"])
    splits = load_dataset(cfg.data, torch.device("cpu"))
    result = train(cfg, splits)
    assert all({"train_eval_loss", "train_eval_acc"} <= set(row) for row in result.epochs)
    assert all("train_eval_acc" in row for row in result.steps if "val_acc" in row)
    model = build_model(cfg.model, 784, 10, cfg.seed)
    model.load_state_dict(result.state_dict)
    model.eval()
    with torch.no_grad():
        logits = model(splits.train_x)
    assert result.final["train_eval_acc"] == pytest.approx((logits.argmax(1) == splits.train_y).double().mean().item())
    assert result.final["train_eval_loss"] == pytest.approx(F.cross_entropy(logits, splits.train_y).item(), rel=1e-5)
    plain = train(load_config(tiny_config, ["model.dropout=0.5", "eval.every_steps=5"]), splits)
    assert "train_eval_acc" not in plain.final and all("train_eval_acc" not in row for row in plain.steps)


def test_variance_shift_is_running_variance_over_the_test_inputs_variance(tmp_path: Path, tiny_config: Path) -> None:
    """Li et al.'s variance shift, recomputed from the saved weights; with dropout before BN the
    running variance was trained on inflated inputs, so it exceeds the test-time variance."""
    shifts = {}
    for order in ("before_bn", "after_bn"):
        cfg = load_config(tiny_config, ["model.dropout=0.5", f"model.dropout_order={order}", "eval.variance_shift=true",
                                        "train.epochs=4"])
        outcome = run(cfg, tmp_path / order)
        finished = read_finished(outcome.folder)
        layers = finished.table("layers")
        assert [int(row["layer"]) for row in layers] == [1, 2]
        model = build_model(cfg.model, 784, 10, cfg.seed)
        model.load_state_dict(torch.load(outcome.folder / "model.pt", weights_only=True))
        model.eval()
        inputs: list[torch.Tensor] = []
        for module in model:
            if isinstance(module, torch.nn.BatchNorm1d):
                module.register_forward_pre_hook(lambda _m, args, seen=inputs: seen.append(args[0]))
        splits = load_dataset(cfg.data, torch.device("cpu"))
        with torch.no_grad():
            model(splits.test_x)
        norms = [module for module in model if isinstance(module, torch.nn.BatchNorm1d)]
        for row, norm, seen in zip(layers, norms, inputs, strict=True):
            test_var, running_var = seen.double().var(0), norm.running_var.double()
            live = (test_var > norm.eps) & (running_var > norm.eps)  # dead units say nothing
            assert int(row["units"]) == int(live.sum()) > 0
            ratio = running_var[live] / test_var[live]
            assert float(row["variance_shift"]) == pytest.approx(ratio.mean().item(), rel=1e-4)
            assert float(row["variance_shift_max"]) == pytest.approx(torch.maximum(ratio, 1 / ratio).max().item(),
                                                                     rel=1e-4)
        shifts[order] = float(layers[-1]["variance_shift"])
    assert shifts["before_bn"] > 1.2 and shifts["before_bn"] > shifts["after_bn"]
    plain = run(load_config(tiny_config, ["train.epochs=1"]), tmp_path / "plain")
    assert not (plain.folder / "layers.csv").exists() and read_finished(plain.folder).table("layers") == []


def test_gradient_ics_leaves_the_run_as_it_was(tiny_config: Path) -> None:
    """The probe replays the step on copies and rewinds the generators: the run's losses, masks,
    noise and weights are exactly those of the same run without it."""
    extra = ["model.dropout=0.3", "model.bn=before", "model.bn_noise=0.3", "train.log_every=2"]
    splits = load_dataset(load_config(tiny_config).data, torch.device("cpu"))
    probed = train(load_config(tiny_config, [*extra, "eval.grad_ics=true"]), splits)
    plain = train(load_config(tiny_config, extra), splits)
    assert [row["train_loss"] for row in probed.steps] == [row["train_loss"] for row in plain.steps]
    assert all(torch.equal(probed.state_dict[name], tensor) for name, tensor in plain.state_dict.items())
    steps = sorted({row["step"] for row in probed.layers})
    assert len(steps) >= 5 and {row["layer"] for row in probed.layers} == {2, 3}  # two hidden layers + output
    assert plain.layers == []
    first = [row["drift"] for row in probed.layers if row["step"] == steps[0]]
    later = [row["drift"] for row in probed.layers if row["step"] != steps[0]]
    assert all(math.isnan(value) for value in first) and all(value > 0 for value in later)


def test_input_drift_matches_its_definition(tiny_config: Path) -> None:
    """Doubling the first layer (ReLU is positively homogeneous) doubles every unit's mean and sd
    of the second layer's input: the drift is the mean of sqrt(m^2 + s^2) / s over live units.
    Noisy BN's noise is part of what the next layer sees: with the weights unchanged the input
    drifts by the noise alone, and not at all without it."""
    cfg = load_config(tiny_config, ["model.hidden=[16]", "model.bn=none"])
    x = load_dataset(cfg.data, torch.device("cpu")).train_x[:200]
    model = build_model(cfg.model, 784, 10, cfg.seed)
    probe = InputDrift(model, x)
    assert math.isnan(probe.measure()[2])
    with torch.no_grad():
        hidden = torch.relu(model[0](x)).double()
        model[0].weight *= 2
        model[0].bias *= 2
    mean, sd = hidden.mean(0), hidden.std(0)
    live = sd > InputDrift.DEAD_SD
    assert probe.measure()[2] == pytest.approx((torch.sqrt(mean**2 + sd**2)[live] / sd[live]).mean().item(), rel=1e-6)
    for noise, moved in ((0.0, False), (1.0, True)):
        noisy = build_model(load_config(tiny_config, ["model.hidden=[16]", "model.bn=before",
                                                      f"model.bn_noise={noise}"]).model, 784, 10, cfg.seed)
        probe = InputDrift(noisy, x)
        probe.measure()
        torch.rand(1)  # a training step between probes moves the generator on
        assert (probe.measure()[2] > 0.01) is moved


def test_gradient_ics_matches_its_definition(tiny_config: Path) -> None:
    """Plain SGD makes the update explicit, W1' = W1 - lr * G1: G2' recomputed by hand on the same
    batch. With a vanishing lr the preceding layers barely move, so G' = G even with dropout and
    noise (the masks and noise of the step are replayed)."""
    cfg = load_config(tiny_config, ["model.hidden=[16]", "model.bn=none", "train.optimizer=sgd", "train.lr=0.5"])
    splits = load_dataset(cfg.data, torch.device("cpu"))
    model = build_model(cfg.model, 784, 10, cfg.seed)
    optimizer = OPTIMIZERS["sgd"](model.parameters(), cfg.train)
    x, y = splits.train_x[:32], splits.train_y[:32]
    replay = rng_state(x.device)
    F.cross_entropy(model(x), y).backward()
    (row,) = gradient_ics(model, optimizer, x, y, 1, replay)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved[0].weight -= 0.5 * model[0].weight.grad
        moved[0].bias -= 0.5 * model[0].bias.grad
    F.cross_entropy(moved(x), y).backward()
    g, g_prime = model[2].weight.grad.flatten(), moved[2].weight.grad.flatten()
    assert row["layer"] == 2
    assert row["ics_l2"] == pytest.approx(torch.linalg.vector_norm(g - g_prime).item(), rel=1e-5)
    assert row["ics_cos"] == pytest.approx(F.cosine_similarity(g, g_prime, dim=0).item(), rel=1e-6)
    noisy = load_config(tiny_config, ["model.dropout=0.5", "model.bn_noise=1.0", "train.lr=1e-9", "eval.grad_ics=true",
                                      "train.log_every=2"])
    for layer in train(noisy, splits).layers:
        assert layer["ics_l2"] < 1e-4 and layer["ics_cos"] == pytest.approx(1.0, abs=1e-6)


def test_gradient_ics_runs_train_solo_in_a_sweep(tiny_config: Path) -> None:
    cfgs = [load_config(tiny_config, [f"seed={seed}", *(["eval.grad_ics=true"] if seed < 2 else [])])
            for seed in range(6)]
    groups = plan_groups(cfgs, "auto", 10)
    assert sorted(len(group.configs) for group in groups) == [1, 1, 4]
    assert all(not group.stacked for group in groups if group.configs[0].eval.grad_ics)
    with pytest.raises(ValueError, match="eval.grad_ics runs train solo"):
        train_stack(cfgs[:2], load_dataset(cfgs[0].data, torch.device("cpu")))
