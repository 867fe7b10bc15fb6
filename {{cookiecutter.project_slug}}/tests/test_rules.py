"""The rules judged in the job: on synthetic recorded series (fast), then on purpose-built tiny runs.

Each rule must fire on the run built to break it and stay quiet on a healthy one; a save interval
too large to judge must give NotEnoughData, never NoIssuesFound. The tiny runs train a small MLP
(monkeypatched in for the backbone, so its initialisation is ours to choose) on 32 px noisy images.
"""

from __future__ import annotations

import json
import random
import re
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


def epochs(count: int, train: int, valid: int) -> list[dict]:
    """The recorder's epoch table: `train` training steps then `valid` validation steps per epoch."""
    return [
        {"epoch": e, "train_steps": [train * e, train * (e + 1)], "eval_steps": [valid * e, valid * (e + 1)]}
        for e in range(count)
    ]


def fired(verdict) -> tuple:
    return verdict.verdict, verdict.mode, verdict.step


QUIET = ("NoIssuesFound", None, None)


def test_loss_not_decreasing_compares_every_num_steps_as_aws_documents(rules):
    # Saved every 3 steps, num_steps 10: step 12 is compared with step 0, then 24 with 12 (AWS's example).
    rising = recording(losses={"TRAIN": series([1.0, 0.9, 0.8, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95], every=3)})
    verdict = rules.loss_not_decreasing(rising)
    # 0.75 at step 12 < 1.0 at step 0; 0.95 at step 24 is 27% above 0.75, where the rise began.
    assert fired(verdict) == ("IssuesFound", "TRAIN", 24) and "26.7% above 0.7500" in verdict.reason
    assert "TRAIN losses (mode not set" in verdict.reading
    falling = recording(losses={"TRAIN": series([1.0 - 0.05 * i for i in range(12)], every=3)})
    assert fired(rules.loss_not_decreasing(falling)) == QUIET
    # num_steps 3: every saved step is a check, and the first rise (0.75 at step 12) is 7% > 5%.
    assert fired(rules.loss_not_decreasing(rising, num_steps=3)) == ("IssuesFound", "TRAIN", 12)
    one_step = recording(losses={"TRAIN": series([1.0, 0.5], every=5)})
    verdict = rules.loss_not_decreasing(one_step)
    assert verdict.verdict == "NotEnoughData" and verdict.steps_had == {"EVAL": 0, "TRAIN": 2}
    assert "needs 2 saved at least 10 steps apart" in verdict.reason


def test_loss_not_decreasing_diff_and_increase_thresholds(rules):
    slow = recording(losses={"TRAIN": series([1.0 * 0.995**i for i in range(4)], every=10)})  # -0.5% a check
    assert fired(rules.loss_not_decreasing(slow)) == QUIET
    assert fired(rules.loss_not_decreasing(slow, diff_percent=1.0)) == ("IssuesFound", "TRAIN", 10)
    # Rises of 2% a check are allowed until the loss is 5% above where the rise began: the third (6.1%).
    creeping = recording(losses={"TRAIN": series([1.0, 1.02, 1.0404, 1.0612, 1.0824], every=10)})
    assert fired(rules.loss_not_decreasing(creeping)) == ("IssuesFound", "TRAIN", 30)
    assert fired(rules.loss_not_decreasing(creeping, increase_threshold_percent=1.0)) == (
        "IssuesFound",
        "TRAIN",
        10,
    )
    assert fired(rules.loss_not_decreasing(creeping, increase_threshold_percent=10.0)) == QUIET
    # A rise that is followed by a fall resets where the next rise is measured from.
    bumpy = recording(losses={"TRAIN": series([1.0, 1.03, 0.9, 0.93, 0.8], every=10)})
    assert fired(rules.loss_not_decreasing(bumpy)) == QUIET


def test_loss_not_decreasing_modes_in_aws_order(rules):
    both = recording(
        losses={"TRAIN": series([1.0, 0.5, 0.25], every=10), "EVAL": series([1.0, 1.0], every=10)},
        epochs=epochs(2, 20, 10),
    )
    # Mode not set: EVAL first (it has a check), and its losses 10 steps apart straddle a training pass.
    verdict = rules.loss_not_decreasing(both)
    assert fired(verdict) == ("IssuesFound", "EVAL", 10) and not verdict.caveat
    assert verdict.reading.startswith("EVAL losses")
    assert fired(rules.loss_not_decreasing(both, mode="TRAIN")) == QUIET
    # GLOBAL: training steps 0, 10 (global 0, 10), validation step 0 (global 20), ... in the job's order;
    # validation 1.0 after training 0.5 is a rise of 100%, named in the validation loss's own numbering.
    assert fired(rules.loss_not_decreasing(both, mode="GLOBAL")) == ("IssuesFound", "EVAL", 0)
    # Two validation losses of one pass: same weights, different batches; the verdict says so.
    one_pass = recording(losses={"EVAL": series([1.0, 1.0], every=10)}, epochs=epochs(1, 5, 20))
    verdict = rules.loss_not_decreasing(one_pass)
    assert fired(verdict) == ("IssuesFound", "EVAL", 10) and "same weights" in verdict.caveat


def test_overtraining_reports_whichever_loss_stalled_first(rules):
    flat = recording(losses={"EVAL": series([0.5] * 11), "TRAIN": series([1.0, 0.5])})
    assert fired(rules.overtraining(flat)) == ("IssuesFound", "EVAL", 10)
    short = recording(losses={"EVAL": series([0.5] * 10), "TRAIN": series([0.5] * 5)})
    verdict = rules.overtraining(short)
    assert verdict.verdict == "NotEnoughData"
    assert verdict.steps_needed == {"TRAIN": 6, "EVAL": 11} and verdict.steps_had == {"TRAIN": 5, "EVAL": 10}
    # Training stalls at its step 5 (the job's 6th step); validation, run after 6 training steps, at 10.
    both = recording(losses={"TRAIN": series([1.0] * 6), "EVAL": series([0.5] * 11)}, epochs=epochs(1, 6, 11))
    assert fired(rules.overtraining(both)) == ("IssuesFound", "TRAIN", 5)
    assert fired(rules.overtraining(both, patience_train=6)) == ("IssuesFound", "EVAL", 10)
    improving = recording(losses={"EVAL": series([1.0 - 0.02 * i for i in range(11)])})
    assert fired(rules.overtraining(improving)) == QUIET  # 0.02 better each step > delta 0.01
    # delta 0.25: no loss is a new optimum (0.8 at the end is 0.2 below 1.0).
    assert fired(rules.overtraining(improving, delta=0.25)) == ("IssuesFound", "EVAL", 10)
    assert fired(rules.overtraining(improving, patience_validation=3, delta=0.25)) == (
        "IssuesFound",
        "EVAL",
        3,
    )


def test_overfit_counts_patience_in_saved_validation_steps(rules):
    table = epochs(2, 4, 2)
    fit = recording(losses={"TRAIN": series([1.0] * 8), "EVAL": series([1.05] * 4)}, epochs=table)
    assert fired(rules.overfit(fit)) == QUIET
    over = recording(
        losses={"TRAIN": series([1.0] * 8), "EVAL": series([1.05, 1.05, 1.5, 1.5])}, epochs=table
    )
    assert fired(rules.overfit(over)) == ("IssuesFound", "EVAL", 2)  # ratio 0.5 at the pass's first step
    assert fired(rules.overfit(over, patience=2)) == ("IssuesFound", "EVAL", 3)
    assert fired(rules.overfit(over, patience=3)) == QUIET  # two steps in a row only
    assert fired(rules.overfit(over, ratio_threshold=0.6)) == QUIET
    # start_step leaves out the first training steps of the second epoch (a loss of 5 there).
    late = recording(
        losses={"TRAIN": series([2.0] * 4 + [5.0, 1.0, 1.0, 1.0]), "EVAL": series([2.0, 2.0, 1.5, 1.5])},
        epochs=table,
    )
    assert fired(rules.overfit(late)) == QUIET  # training mean 2.0 > validation 1.5
    assert fired(rules.overfit(late, start_step=5)) == ("IssuesFound", "EVAL", 2)
    verdict = rules.overfit(recording(losses={"TRAIN": series([1.0])}, epochs=[]))
    assert verdict.verdict == "NotEnoughData"


def gradient_entry(step: int, spreads: dict[str, float], mean_abs: float = 1e-3) -> dict:
    layers = {
        name: {"mean_abs": mean_abs, "variance": 1.0, "nonfinite": 0, "nan": 0, "p5": -s / 2, "p95": s / 2}
        for name, s in spreads.items()
    }
    return {"step": step, "layers": layers, "all": {"p5": -1.0, "p95": 1.0}}


def test_vanishing_gradient_threshold_and_the_bias_before_a_batchnorm(rules):
    def grads(means: dict[str, float], step: int = 4) -> list[dict]:
        healthy = gradient_entry(0, dict.fromkeys(means, 1.0))
        low = gradient_entry(step, dict.fromkeys(means, 1.0))
        for name, mean in means.items():
            low["layers"][name]["mean_abs"] = mean
        return [healthy, low]

    assert fired(rules.vanishing_gradient(recording(gradients=grads({"fc.weight": 1e-8})))) == (
        "IssuesFound",
        "TRAIN",
        4,
    )
    assert (
        fired(rules.vanishing_gradient(recording(gradients=grads({"fc.weight": 1e-8})), threshold=1e-9))
        == QUIET
    )
    assert fired(rules.vanishing_gradient(recording(gradients=grads({"fc.weight": 1e-3})))) == QUIET
    assert rules.vanishing_gradient(recording(gradients=[])).verdict == "NotEnoughData"
    # Only the bias before a BatchNorm is below: IssuesFound as documented, with the caveat.
    bn = recording(
        gradients=grads({"bn1.bias": 1e-9, "fc.weight": 1e-3}), zero_gradient_parameters=["bn1.bias"]
    )
    verdict = rules.vanishing_gradient(bn)
    assert fired(verdict) == ("IssuesFound", "TRAIN", 4) and "zero by construction" in verdict.caveat
    both = recording(
        gradients=grads({"bn1.bias": 1e-9, "fc.weight": 1e-9}), zero_gradient_parameters=["bn1.bias"]
    )
    assert rules.vanishing_gradient(both).caveat == ""


def test_poor_weight_initialization_judges_each_check_on_the_first_steps(rules):
    # The smallest per-tensor spread (AWS's "minimum difference") fires where the pooled one would not.
    narrow = recording(gradients=[gradient_entry(0, {"a": 1.0}), gradient_entry(2, {"a": 1.0, "b": 2e-4})])
    verdict = rules.poor_weight_initialization(narrow)
    assert fired(verdict) == ("IssuesFound", "TRAIN", 2) and "(b)" in verdict.reason
    assert fired(rules.poor_weight_initialization(narrow, distribution_range=1e-4)) == QUIET
    late = recording(gradients=[gradient_entry(12, {"b": 2e-4})])
    assert rules.poor_weight_initialization(late).verdict == "NotEnoughData"  # only steps < 10 count
    assert fired(rules.poor_weight_initialization(late, steps=20)) == ("IssuesFound", "TRAIN", 12)
    structural = {**narrow, "zero_gradient_parameters": ["b"]}
    assert "zero by construction" in rules.poor_weight_initialization(structural).caveat
    # ReLU input variance: 20x across layers at step 1.
    relus = {
        "relu1": {"input_variance": 1.0, "activity": [50.0]},
        "relu2": {"input_variance": 20.0, "activity": [50.0]},
    }
    spread = recording(activations=[{"step": 1, "mode": "TRAIN", "layers": relus}])
    assert fired(rules.poor_weight_initialization(spread)) == ("IssuesFound", "TRAIN", 1)
    assert fired(rules.poor_weight_initialization(spread, threshold=30.0)) == QUIET
    # The loss: flat for 5 saved steps fires at the 5th; patience 3 fires earlier.
    flat = recording(losses={"TRAIN": series([1.0] * 6)})
    assert fired(rules.poor_weight_initialization(flat)) == ("IssuesFound", "TRAIN", 5)
    assert fired(rules.poor_weight_initialization(flat, patience=3)) == ("IssuesFound", "TRAIN", 3)
    assert rules.poor_weight_initialization(flat, patience=6).verdict == "NotEnoughData"
    # The first step any check held is the one named.
    everything = {**spread, "losses": flat["losses"], "gradients": narrow["gradients"]}
    assert fired(rules.poor_weight_initialization(everything)) == ("IssuesFound", "TRAIN", 1)


def test_exploding_tensor_names_the_first_step_in_the_jobs_order(rules):
    layer = {"mean_abs": 1.0, "variance": 1.0, "nonfinite": 3, "nan": 0}
    skipped = recording(
        losses={"TRAIN": series([1.0])},
        gradients=[{"step": 0, "layers": {"w": layer}, "all": {}}],
        amp_skipped_steps=[0],
    )
    assert fired(rules.exploding_tensor(skipped)) == QUIET
    assert fired(rules.exploding_tensor({**skipped, "amp_skipped_steps": []})) == ("IssuesFound", "TRAIN", 0)
    # Training gradients go non-finite at training step 7; validation step 0 runs after training step 9.
    late = recording(
        losses={"EVAL": series([float("nan")])},
        gradients=[{"step": 7, "layers": {"w": layer}, "all": {}}],
        epochs=epochs(1, 10, 5),
    )
    assert fired(rules.exploding_tensor(late)) == ("IssuesFound", "TRAIN", 7)
    infinite = recording(losses={"EVAL": series([1.0, float("inf")])})
    assert fired(rules.exploding_tensor(infinite)) == ("IssuesFound", "EVAL", 1)
    assert fired(rules.exploding_tensor(infinite, only_nan=True)) == QUIET


def test_dead_relu_thresholds_and_what_records_the_relus(rules):
    def relu_at(step: int, activity: list[float]) -> dict:
        return {
            "step": step,
            "mode": "TRAIN",
            "layers": {"relu": {"activity": activity, "input_variance": 1}},
        }

    alive, dying = relu_at(0, [0.0, 50.0, 30.0]), relu_at(4, [0.0, 0.5, 30.0])
    run = recording(activations=[alive, dying])
    assert fired(rules.dead_relu(run)) == ("IssuesFound", "TRAIN", 4)  # 2 of 3 ReLUs under 1% active
    assert fired(rules.dead_relu(run, threshold_layer=70.0)) == QUIET
    assert fired(rules.dead_relu(run, threshold_inactivity=0.1)) == QUIET  # 0.5% counts as alive
    assert fired(rules.dead_relu(run, threshold_inactivity=40.0)) == ("IssuesFound", "TRAIN", 0)
    note = "feature_cache=true runs the backbone once: set feature_cache = false"
    verdict = rules.dead_relu(recording(activations=[], activations_note=note))
    assert verdict.verdict == "NotEnoughData" and verdict.reason == note


def test_class_imbalance_counts_training_labels_and_judges_the_last_validation(rules):
    labels = {"TRAIN": {"counts": [500, 40], "correct": [500, 40]}}
    verdict = rules.class_imbalance(recording(labels=labels, class_names=["a", "b"]))
    assert (verdict.verdict, verdict.mode) == ("IssuesFound", "TRAIN") and "ratio 12.5" in verdict.reason
    assert rules.class_imbalance(recording(labels=labels), threshold_imbalance=20).verdict == "NoIssuesFound"
    missed = {
        "TRAIN": {"counts": [300, 300], "correct": [300, 300]},
        "EVAL": {"counts": [10, 10], "correct": [10, 2]},
    }
    verdict = rules.class_imbalance(recording(labels=missed, class_names=["a", "b"]))
    assert (verdict.verdict, verdict.mode) == ("IssuesFound", "EVAL") and "b 80%" in verdict.reason
    assert (
        rules.class_imbalance(recording(labels=missed), threshold_misprediction=0.9).verdict
        == "NoIssuesFound"
    )
    few = {"TRAIN": {"counts": [30, 30], "correct": [30, 30]}}
    assert rules.class_imbalance(recording(labels=few)).verdict == "NotEnoughData"
    assert rules.class_imbalance(recording(labels=few), samples=50).verdict == "NoIssuesFound"


def test_rule_parameters_reach_the_rules_and_bad_ones_are_refused(rules):
    parameters = rules.parse_rule_parameters(
        '{"overfit": {"patience": 2}, "loss_not_decreasing": {"mode": "TRAIN"}}'
    )
    over = recording(
        losses={"TRAIN": series([1.0] * 8), "EVAL": series([1.05, 1.05, 1.5, 1.5])}, epochs=epochs(2, 4, 2)
    )
    verdicts = rules.evaluate_debugger_rules(["overfit", "loss_not_decreasing"], over, parameters)
    assert fired(verdicts[0]) == ("IssuesFound", "EVAL", 3) and verdicts[0].parameters["patience"] == 2
    assert verdicts[1].parameters["mode"] == "TRAIN" and verdicts[1].reading.startswith("TRAIN losses")
    for text, message in (
        ('{"overfitt": {}}', "rule_parameters names 'overfitt'"),
        ('{"overfit": {"patient": 2}}', "overfit has no parameter 'patient'; it takes start_step, patience"),
        ('{"overfit": {"patience": 1.5}}', "overfit patience = 1.5 is not of the kind of 1"),
        ('{"loss_not_decreasing": {"mode": "PREDICT"}}', "mode = 'PREDICT'"),
        ("[1]", "must be a JSON object of objects"),
        ("{", "is not JSON"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            rules.parse_rule_parameters(text)


def test_recorder_finds_the_biases_a_batchnorm_cancels(training):
    recorder = training("recorder")
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )
    assert recorder.zero_gradient_parameters(net) == ["0.bias", "1.bias"]
    net[0].bias.requires_grad_(False)  # frozen: no gradient to judge
    assert recorder.zero_gradient_parameters(net) == ["1.bias"]
    # On a real backward those are exactly the gradients under vanishing_gradient's 1e-7: the first
    # BatchNorm's bias (~1e-9) would fire the rule on any run of this network.
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    nn.functional.cross_entropy(mlp(torch.randn(32, 8)), torch.randint(0, 3, (32,))).backward()
    vanishing = sorted(n for n, p in mlp.named_parameters() if p.grad.abs().mean().item() < 1e-7)
    assert vanishing == recorder.zero_gradient_parameters(mlp) == ["0.bias", "1.bias"]


def test_unknown_rule_names_are_refused_with_the_known_ones(rules):
    assert rules.parse_rules(" overfit , LowGPUUtilization,") == ["overfit", "LowGPUUtilization"]
    with pytest.raises(ValueError, match=r"unknown rule 'overfitt'; choose from vanishing_gradient, overfit"):
        rules.parse_rules("overfitt")


def test_verdict_log_line_is_one_greppable_line(rules):
    verdict = rules.Verdict("overfit", "IssuesFound", "ratio 0.3 > 0.1", step=12)
    assert verdict.log_line() == "rule:overfit verdict=IssuesFound step=12 reason=ratio 0.3 > 0.1"
    verdict = rules.Verdict("overfit", "IssuesFound", "ratio 0.3 > 0.1", step=12, mode="EVAL")
    assert verdict.log_line() == "rule:overfit verdict=IssuesFound step=12 mode=EVAL reason=ratio 0.3 > 0.1"


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
        "--rules", EXTENDED, "--epochs", "1", "--lr", "0.0003",
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
    assert recorded["losses"]["PREDICT"] and len(recorded["losses"]["EVAL"]) == 3
    # Every saved gradient tensor carries its own 5th-95th percentiles (poor_weight_initialization).
    assert {"p5", "p95"} <= set(recorded["gradients"][0]["layers"]["1.weight"])
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
        "--rule_parameters", '{"loss_not_decreasing": {"mode": "TRAIN"}}',
    )  # fmt: skip
    for name in ("overtraining", "loss_not_decreasing"):
        assert verdicts[name]["verdict"] == "NotEnoughData", verdicts[name]
        assert verdicts[name]["steps_needed"]
    assert "saved every 1000 steps" in verdicts["loss_not_decreasing"]["reason"]


def test_head_only_training_records_the_frozen_backbones_relus(training, monkeypatch, datasets, tmp_path):
    verdicts = tiny_run(
        training, monkeypatch, tmp_path, datasets["noisy"],
        "--rules", "dead_relu,poor_weight_initialization", "--finetune", "head", "--train_save_interval", "5",
    )  # fmt: skip
    assert verdicts["dead_relu"]["verdict"] in ("NoIssuesFound", "IssuesFound")
    recorded = json.loads((tmp_path / "output" / "recording.json").read_text())
    assert [a["step"] for a in recorded["activations"]] == [0, 5]
    assert "frozen pretrained backbone" in recorded["activations_caveat"]


def test_unknown_rules_are_refused_before_training(training, datasets, tmp_path):
    train_model = training("train_model")
    args = train_model.get_args_parser("test").parse_args(
        [*REQUIRED_SCRIPT_ARGS, "--data_dir", str(datasets["noisy"]), "--rules", "overfit,dead_relus"]
    )
    with pytest.raises(SystemExit, match="unknown rule 'dead_relus'; choose from .*dead_relu"):
        train_model.main(args, use_debugger=True)
    shutil.rmtree(tmp_path, ignore_errors=True)
