"""The rules judged in the job: on synthetic recorded series (fast), then on purpose-built tiny runs.

Each rule must fire on the run built to break it and stay quiet on a healthy one; a save interval
too large to judge must give NotEnoughData, never NoIssuesFound. The tiny runs train a small MLP
(monkeypatched in for the backbone, so its initialisation is ours to choose) on 32 px noisy images.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REQUIRED_SCRIPT_ARGS, tiny_args
from PIL import Image
from torch import nn

STANDARD = "vanishing_gradient,overfit,overtraining,poor_weight_initialization,loss_not_decreasing"
EXTENDED = STANDARD + ",exploding_tensor,dead_relu,class_imbalance"


@pytest.fixture(scope="module")
def rules(training):
    return training("rules")


def recording(**parts) -> dict:
    base = {"save_intervals": {"TRAIN": 1, "EVAL": 1, "PREDICT": 1}, "steps_seen": {}, "losses": {}}
    return {**base, **parts}


def series(values: list[float], every: int = 1) -> list[list[float]]:
    return [[i * every, v] for i, v in enumerate(values)]


# --------------------------------------------------------------------------- synthetic series


def test_loss_not_decreasing_compares_every_num_steps_as_aws_documents(rules):
    # Saved every 3 steps, num_steps 10: step 12 is compared with step 0, then 24 with 12 (AWS's example).
    rising = recording(losses={"TRAIN": series([1.0, 0.9, 0.8, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95], every=3)})
    verdict = rules.loss_not_decreasing(rising)
    assert (verdict.verdict, verdict.step) == ("IssuesFound", 24)
    falling = recording(losses={"TRAIN": series([1.0 - 0.05 * i for i in range(12)], every=3)})
    assert rules.loss_not_decreasing(falling).verdict == "NoIssuesFound"
    one_step = recording(losses={"TRAIN": series([1.0, 0.5], every=5)})
    verdict = rules.loss_not_decreasing(one_step)
    assert verdict.verdict == "NotEnoughData" and verdict.steps_had == {"TRAIN": 2}


def test_overtraining_needs_patience_plus_one_saved_losses(rules):
    flat = recording(losses={"EVAL": series([0.5] * 11), "TRAIN": series([1.0, 0.5])})
    verdict = rules.overtraining(flat)
    assert (verdict.verdict, verdict.mode, verdict.step) == ("IssuesFound", "EVAL", 10)
    short = recording(losses={"EVAL": series([0.5] * 10), "TRAIN": series([0.5] * 5)})
    verdict = rules.overtraining(short)
    assert verdict.verdict == "NotEnoughData"
    assert verdict.steps_needed == {"TRAIN": 6, "EVAL": 11} and verdict.steps_had == {"TRAIN": 5, "EVAL": 10}


def test_overfit_compares_each_epochs_mean_losses(rules):
    epochs = [
        {"epoch": e, "train_steps": [4 * e, 4 * e + 4], "eval_steps": [2 * e, 2 * e + 2]} for e in range(2)
    ]
    fit = recording(losses={"TRAIN": series([1.0] * 8), "EVAL": series([1.05] * 4)}, epochs=epochs)
    assert rules.overfit(fit).verdict == "NoIssuesFound"
    over = recording(
        losses={"TRAIN": series([1.0] * 8), "EVAL": series([1.05, 1.05, 1.5, 1.5])}, epochs=epochs
    )
    verdict = rules.overfit(over)
    assert (verdict.verdict, verdict.step) == ("IssuesFound", 7)
    assert rules.overfit(recording(losses={"TRAIN": series([1.0])}, epochs=[])).verdict == "NotEnoughData"


def test_gradient_rules_on_synthetic_statistics(rules):
    def grads(mean_abs: float, spread: float) -> list[dict]:
        layer = {"mean_abs": mean_abs, "variance": 1.0, "nonfinite": 0, "nan": 0}
        return [{"step": 0, "layers": {"fc.weight": layer}, "all": {"p5": 0.0, "p95": spread}}]

    assert rules.vanishing_gradient(recording(gradients=grads(1e-8, 1.0))).verdict == "IssuesFound"
    assert rules.vanishing_gradient(recording(gradients=grads(1e-3, 1.0))).verdict == "NoIssuesFound"
    assert rules.vanishing_gradient(recording(gradients=[])).verdict == "NotEnoughData"
    assert rules.poor_weight_initialization(recording(gradients=grads(1e-3, 1e-4))).verdict == "IssuesFound"
    assert rules.poor_weight_initialization(recording(gradients=grads(1e-3, 1.0))).verdict == "NoIssuesFound"
    late = recording(gradients=[{**grads(1e-3, 1e-4)[0], "step": 100}])
    assert rules.poor_weight_initialization(late).verdict == "NotEnoughData"  # only steps < 10 count


def test_exploding_tensor_ignores_steps_the_gradient_scaler_skipped(rules):
    layer = {"mean_abs": 1.0, "variance": 1.0, "nonfinite": 3, "nan": 0}
    skipped = recording(
        losses={"TRAIN": series([1.0])},
        gradients=[{"step": 0, "layers": {"w": layer}, "all": {}}],
        amp_skipped_steps=[0],
    )
    assert rules.exploding_tensor(skipped).verdict == "NoIssuesFound"
    assert rules.exploding_tensor({**skipped, "amp_skipped_steps": []}).verdict == "IssuesFound"
    nan_loss = recording(losses={"EVAL": series([1.0, float("nan")])})
    assert (rules.exploding_tensor(nan_loss).verdict, rules.exploding_tensor(nan_loss).step) == (
        "IssuesFound",
        1,
    )


def test_dead_relu_and_class_imbalance_on_synthetic_counts(rules):
    dead = {
        "step": 0,
        "mode": "TRAIN",
        "layers": {"relu": {"activity": [0.0, 0.5, 30.0], "input_variance": 1}},
    }
    assert rules.dead_relu(recording(activations=[dead])).verdict == "IssuesFound"
    alive = {**dead, "layers": {"relu": {"activity": [0.0, 50.0, 30.0], "input_variance": 1}}}
    assert rules.dead_relu(recording(activations=[alive])).verdict == "NoIssuesFound"
    labels = {"TRAIN": {"counts": [500, 40], "correct": [500, 40]}}
    assert rules.class_imbalance(recording(labels=labels, class_names=["a", "b"])).verdict == "IssuesFound"
    balanced = {"TRAIN": {"counts": [300, 300], "correct": [300, 300]}}
    assert rules.class_imbalance(recording(labels=balanced)).verdict == "NoIssuesFound"
    few = {"TRAIN": {"counts": [30, 30], "correct": [30, 30]}}
    assert rules.class_imbalance(recording(labels=few)).verdict == "NotEnoughData"


def test_unknown_rule_names_are_refused_with_the_known_ones(rules):
    assert rules.parse_rules(" overfit , LowGPUUtilization,") == ["overfit", "LowGPUUtilization"]
    with pytest.raises(ValueError, match=r"unknown rule 'overfitt'; choose from vanishing_gradient, overfit"):
        rules.parse_rules("overfitt")


def test_verdict_log_line_is_one_greppable_line(rules):
    verdict = rules.Verdict("overfit", "IssuesFound", "ratio 0.3 > 0.1", step=12)
    assert verdict.log_line() == "rule:overfit verdict=IssuesFound step=12 reason=ratio 0.3 > 0.1"


# --------------------------------------------------------------------------- tiny runs


def noisy_dataset(root: Path, per_class: dict[str, int], signal: float = 0.35, seed: int = 0) -> Path:
    """3 classes of 32 px images: a class colour under heavy noise, so learning takes some steps."""
    rng = random.Random(seed)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for split, count in per_class.items():
        for index, colour in enumerate(colours):
            folder = root / split / f"{index + 1:03d}.Class_{index + 1:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                noise = Image.frombytes("RGB", (32, 32), rng.randbytes(32 * 32 * 3))
                Image.blend(noise, Image.new("RGB", (32, 32), colour), signal).save(folder / f"{n}.png")
    return root


def mislabel_validation(root: Path) -> Path:
    """Validation class k gets class k+1's images: fitting the training set can only hurt validation."""
    names = sorted(p.name for p in (root / "valid").iterdir())
    for name in names:
        (root / "valid" / name).rename(root / "valid" / f"{name}.tmp")
    for index, name in enumerate(names):
        (root / "valid" / f"{names[(index + 1) % len(names)]}.tmp").rename(root / "valid" / name)
    return root


def mlp_builder(scale: float):
    """build_model's stand-in: a 3-layer ReLU MLP, He-initialised then scaled by `scale`."""

    def build(
        backbone: str, num_classes: int, *, pretrained: bool = False, finetune: str = "full"
    ) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 32 * 32, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )
        for layer in model:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                layer.weight.data *= scale
                nn.init.zeros_(layer.bias)
        return model

    return build


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rules-data")
    noisy = noisy_dataset(root / "noisy", {"train": 20, "valid": 6, "test": 2})
    handful = mislabel_validation(noisy_dataset(root / "handful", {"train": 2, "valid": 2, "test": 2}))
    return {"noisy": noisy, "handful": handful}


def mlp_run(training, monkeypatch, tmp_path: Path, data: Path, *extra: str, model=None) -> Path:
    """train_model.py's main in-process with the debugger, `model` (the MLP) for the backbone and no
    checkpoints; returns the output data directory."""
    train_model = training("train_model")
    monkeypatch.setattr(train_model, "build_model", model or mlp_builder(1.0))
    args = tiny_args(
        train_model, data, tmp_path,
        "--checkpoint_dir", "", "--finetune", "full", "--augment", "false", *extra,
    )  # fmt: skip
    train_model.main(args, use_debugger=True, evaluate_test=True)
    return tmp_path / "output"


def rule_verdicts(output: Path) -> dict[str, dict]:
    """{rule: verdict dict} from a run's rule_verdicts.json."""
    return {v["rule"]: v for v in json.loads((output / "rule_verdicts.json").read_text())["rules"]}


def tiny_run(training, monkeypatch, tmp_path: Path, data: Path, *extra: str, scale: float = 1.0) -> dict:
    """An MLP run that never stops early (patience 0); returns its verdicts."""
    output = mlp_run(
        training, monkeypatch, tmp_path, data, "--patience", "0", *extra, model=mlp_builder(scale)
    )
    return rule_verdicts(output)


def test_a_healthy_run_leaves_the_rules_quiet(training, monkeypatch, datasets, tmp_path, capsys):
    verdicts = tiny_run(
        training, monkeypatch, tmp_path, datasets["noisy"],
        "--rules", EXTENDED, "--epochs", "2", "--lr", "0.0003",
        "--train_save_interval", "2", "--eval_save_interval", "1",
    )  # fmt: skip
    quiet = ("vanishing_gradient", "overfit", "poor_weight_initialization", "loss_not_decreasing")
    assert {name: verdicts[name]["verdict"] for name in quiet} == dict.fromkeys(quiet, "NoIssuesFound")
    assert verdicts["exploding_tensor"]["verdict"] == verdicts["dead_relu"]["verdict"] == "NoIssuesFound"
    # 20 steps of 6 labels: fewer than the 500 the rule waits for, so it says so.
    assert verdicts["class_imbalance"]["verdict"] == "NotEnoughData"
    out = capsys.readouterr().out
    assert "rule:loss_not_decreasing verdict=NoIssuesFound step=-" in out
    assert len([line for line in out.splitlines() if line.startswith("rule:")]) == 8
    recorded = json.loads((tmp_path / "output" / "recording.json").read_text())
    # The test pass is PREDICT: it never joins the validation series the rules compare with training.
    assert recorded["losses"]["PREDICT"] and len(recorded["losses"]["EVAL"]) == 2 * 3
    assert recorded["weights"][0]["when"] == "initialisation"


def test_an_absurd_learning_rate_fires_loss_not_decreasing(training, monkeypatch, datasets, tmp_path):
    verdicts = tiny_run(
        training, monkeypatch, tmp_path, datasets["noisy"],
        "--rules", "loss_not_decreasing,exploding_tensor", "--epochs", "2", "--lr", "5", "--optimizer", "sgd",
        "--train_save_interval", "2",
    )  # fmt: skip
    assert verdicts["loss_not_decreasing"]["verdict"] == "IssuesFound"
    assert verdicts["loss_not_decreasing"]["step"] == 10


def test_a_tiny_initialisation_fires_poor_weight_initialization_and_vanishing_gradient(
    training, monkeypatch, datasets, tmp_path
):
    verdicts = tiny_run(
        training, monkeypatch, tmp_path, datasets["noisy"],
        "--rules", STANDARD, "--epochs", "1", "--train_save_interval", "2",
        scale=1e-3,
    )  # fmt: skip
    assert verdicts["poor_weight_initialization"]["verdict"] == "IssuesFound"
    assert "variance" in verdicts["poor_weight_initialization"]["reason"]
    assert (verdicts["vanishing_gradient"]["verdict"], verdicts["vanishing_gradient"]["step"]) == (
        "IssuesFound",
        0,
    )


def test_many_epochs_on_a_handful_of_images_fire_overfit_and_overtraining(
    training, monkeypatch, datasets, tmp_path
):
    verdicts = tiny_run(
        training, monkeypatch, tmp_path, datasets["handful"],
        "--rules", STANDARD, "--epochs", "15", "--lr", "0.001",
        "--train_save_interval", "1", "--eval_save_interval", "1",
    )  # fmt: skip
    assert verdicts["overfit"]["verdict"] == "IssuesFound"
    assert verdicts["overtraining"]["verdict"] == "IssuesFound"


def test_a_save_interval_too_large_to_judge_gives_not_enough_data(training, monkeypatch, datasets, tmp_path):
    verdicts = tiny_run(
        training, monkeypatch, tmp_path, datasets["noisy"],
        "--rules", STANDARD, "--epochs", "2", "--train_save_interval", "1000", "--eval_save_interval", "1000",
    )  # fmt: skip
    for name in ("overtraining", "loss_not_decreasing"):
        assert verdicts[name]["verdict"] == "NotEnoughData", verdicts[name]
        assert verdicts[name]["steps_needed"]
    assert "saved every 1000 steps" in verdicts["loss_not_decreasing"]["reason"]


def test_unknown_rules_are_refused_before_training(training, datasets, tmp_path):
    train_model = training("train_model")
    args = train_model.get_args_parser("test").parse_args(
        [*REQUIRED_SCRIPT_ARGS, "--data_dir", str(datasets["noisy"]), "--rules", "overfit,dead_relus"]
    )
    with pytest.raises(SystemExit, match="unknown rule 'dead_relus'; choose from .*dead_relu"):
        train_model.main(args, use_debugger=True)
    shutil.rmtree(tmp_path, ignore_errors=True)
