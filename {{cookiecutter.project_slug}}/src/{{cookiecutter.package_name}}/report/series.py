"""Reading a run's series: epochs, steps, per-class accuracy, the profiler's figures, the verdicts.

And what the rule verdicts mean, in words."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import schema
from .fetch import PROFILER_REPORT_RULE, JobOutput, Verdict

if TYPE_CHECKING:
    pass

MODES = ("TRAIN", "EVAL")
# Points per drawn series: enough for the shape of a curve; every point stays in the JSON files.
MAX_PLOT_POINTS = 400


# --- the numbers behind the pictures --------------------------------------------------------------


@dataclass(frozen=True)
class EpochPoint:
    """One epoch's mean losses and accuracies (None where not recorded). `epoch` counts from 1."""

    epoch: int
    training_loss: float | None = None
    validation_loss: float | None = None
    training_accuracy: float | None = None
    validation_accuracy: float | None = None


@dataclass(frozen=True)
class ClassAccuracy:
    name: str
    images: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.images if self.images else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def epoch_points(recording: dict[str, Any] | None, history: dict[str, Any] | None) -> list[EpochPoint]:
    """Per-epoch training and validation loss (and accuracy), from recording.json and history.json.

    The recorder keeps every step's mean per pass; an older recording has only the saved steps, whose
    mean stands in for the training loss. history.json has the validation loss of every epoch even
    when no rule recorded anything.
    """
    history_epochs = (history or {}).get("epochs") or []
    recorded = (recording or {}).get("epochs") or []
    saved_train = [(int(s), float(v)) for s, v in ((recording or {}).get("losses") or {}).get("TRAIN", [])]
    points = []
    for index in range(max(len(recorded), len(history_epochs))):
        entry = recorded[index] if index < len(recorded) else {}
        past = history_epochs[index] if index < len(history_epochs) else {}
        training_loss = _number(entry.get("train_loss"))
        if training_loss is None and entry.get("train_steps"):
            first, end = entry["train_steps"]
            saved = [value for step, value in saved_train if first <= step < end]
            training_loss = statistics.fmean(saved) if saved else None
        validation_loss = _number(entry.get("eval_loss"))
        validation_accuracy = _number(entry.get("eval_accuracy"))
        if validation_loss is None:
            validation_loss = _number(past.get("loss"))
            validation_accuracy = _number(past.get("accuracy"))
        points.append(
            EpochPoint(
                epoch=int(entry.get("epoch", index)) + 1,
                training_loss=training_loss,
                validation_loss=validation_loss,
                training_accuracy=_number(entry.get("train_accuracy")),
                validation_accuracy=validation_accuracy,
            )
        )
    return points


def step_series(recording: dict[str, Any] | None) -> dict[str, tuple[list[float], list[float], bool]]:
    """Per mode, (x, loss, x_in_epochs) of every saved step.

    Training and validation steps are counted separately, so each step is placed on a common epoch
    axis where the recording says which steps each epoch had: the steps of epoch n (counted from 1)
    spread over (n-1, n], so x = n is the end of epoch n, where the per-epoch panel puts its point.
    """
    recording = recording or {}
    epochs = recording.get("epochs") or []
    ranges = {
        "TRAIN": [
            (e.get("epoch", i), *e["train_steps"]) for i, e in enumerate(epochs) if e.get("train_steps")
        ],
        "EVAL": [(e.get("epoch", i), *e["eval_steps"]) for i, e in enumerate(epochs) if e.get("eval_steps")],
    }
    series = {}
    for mode in MODES:
        saved = [(int(s), float(v)) for s, v in (recording.get("losses") or {}).get(mode, [])]
        if not saved:
            continue
        xs: list[float] = []
        for step, _ in saved:
            place = next(
                (
                    epoch + (step - first + 1) / max(end - first, 1)
                    for epoch, first, end in ranges[mode]
                    if first <= step < end
                ),
                None,
            )
            xs.append(place if place is not None else math.nan)
        in_epochs = bool(ranges[mode]) and not any(math.isnan(x) for x in xs)
        if not in_epochs:
            xs = [float(step) for step, _ in saved]
        series[mode] = (xs, [value for _, value in saved], in_epochs)
    return series


def confusion_matrix(recording: dict[str, Any] | None) -> list[list[int]] | None:
    """The test pass's (true, predicted) counts (row: true class, column: predicted); None: not recorded."""
    matrix = ((recording or {}).get("labels") or {}).get("PREDICT", {}).get("confusion")
    if not matrix:
        return None
    size = len(matrix)
    if any(len(row) != size for row in matrix):
        return None
    return [[int(cell) for cell in row] for row in matrix]


def class_names(recording: dict[str, Any] | None, count: int) -> list[str]:
    """The classes as people read them (`001.Affenpinscher` -> `Affenpinscher`), as the endpoint does."""
    names = list((recording or {}).get("class_names") or [])
    if len(names) != count:
        return [str(index) for index in range(count)]
    return [schema.readable_class_name(str(name)) for name in names]


def class_accuracies(recording: dict[str, Any] | None) -> list[ClassAccuracy]:
    """Per class, the test images and how many were right (the recorder's PREDICT label counts)."""
    labels = ((recording or {}).get("labels") or {}).get("PREDICT") or {}
    counts, correct = labels.get("counts") or [], labels.get("correct") or []
    if not counts or not any(counts) or len(correct) != len(counts):
        return []
    names = class_names(recording, len(counts))
    return [ClassAccuracy(name, int(n), int(c)) for name, n, c in zip(names, counts, correct, strict=True)]


def best_and_worst(
    classes: Sequence[ClassAccuracy], count: int = 3
) -> tuple[list[ClassAccuracy], list[ClassAccuracy]]:
    """The `count` most and least accurate classes with test images (fewer when there are few classes)."""
    judged = sorted((c for c in classes if c.images), key=lambda c: (-(c.accuracy or 0.0), -c.images, c.name))
    count = max(1, min(count, len(judged) // 2)) if judged else 0
    return judged[:count], judged[::-1][:count]


def accuracy_on_test(output: JobOutput) -> tuple[float | None, int | None]:
    """(accuracy, images) of the test pass: history.json's (every process's share), else the recorder's."""
    history = output.history or {}
    test = (output.recording or {}).get("test") or {}
    images = test.get("images")
    if images is None:
        counts = (((output.recording or {}).get("labels") or {}).get("PREDICT") or {}).get("counts")
        images = int(sum(counts)) if counts and sum(counts) else None
    accuracy = _number(history.get("test_accuracy"))
    if accuracy is None:
        accuracy = _number(test.get("accuracy"))
    return accuracy, images


def downsample(values: Sequence[Any], limit: int = MAX_PLOT_POINTS) -> list[Any]:
    """At most `limit` evenly spaced items of `values`, the first and last kept."""
    if len(values) <= limit:
        return list(values)
    last = len(values) - 1
    return [values[round(i * last / (limit - 1))] for i in range(limit)]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def profiler_finding(output: JobOutput) -> str:
    """One sentence: the first profiler rule that found an issue, else what the samples show."""
    judged = [v for v in output.verdicts if v.kind == "profiler" and v.rule != PROFILER_REPORT_RULE]
    issues = [v for v in judged if v.verdict == "IssuesFound"]
    if issues:
        also = f" (also: {', '.join(v.rule for v in issues[1:])})" if len(issues) > 1 else ""
        return f"{issues[0].rule}: {issues[0].reason}{also}"
    profile = output.profile
    if not profile:
        return "no profiler data (the run had no profiler rule)"
    samples = profile.get("samples") or []
    parts = []
    cpu = [s["cpu_percent"] for s in samples if "cpu_percent" in s]
    memory = [s["memory_percent"] for s in samples if "memory_percent" in s]
    gpu = [g["utilization_percent"] for s in samples for g in s.get("gpus", [])]
    if cpu:
        parts.append(f"median CPU {statistics.median(cpu):.0f}%")
    if memory:
        parts.append(f"memory {statistics.median(memory):.0f}%")
    parts.append(f"GPU {statistics.median(gpu):.0f}%" if gpu else "no GPU")
    steps = [
        s for s in profile.get("steps") or [] if s.get("mode") == "TRAIN" and not s.get("first_of_epoch")
    ]
    data = sum(s.get("data_seconds", 0.0) for s in steps)
    compute = sum(s.get("compute_seconds", 0.0) for s in steps)
    if data + compute > 0:
        parts.append(f"{100 * data / (data + compute):.0f}% of training step time waiting for data")
    if any(v.verdict != "NotEnoughData" for v in judged):
        lead = "no profiler rule found an issue"
    else:
        lead = "too little data for the profiler rules" if judged else "profiled"
    return f"{lead}: {', '.join(parts)}"


# --- what a verdict means and what to try ---------------------------------------------------------

# Per rule: what an issue means, and what to change (config.toml's key or the script's hyperparameter;
# a key added under [hyperparameters] reaches train_model.py as `--key value`).
RULE_ADVICE: dict[str, tuple[str, str]] = {
    "vanishing_gradient": (
        "some layer's gradients shrank towards zero, so that layer stops learning",
        "raise `lr` in [hyperparameters] (or the range [tuning.ranges.lr]), or start from ImageNet weights "
        "(`pretrained = true` in [model])",
    ),
    "exploding_tensor": (
        "a tensor became NaN or infinite: the training diverged",
        "lower `lr` in [hyperparameters] (and the top of [tuning.ranges.lr])",
    ),
    "overfit": (
        "the validation loss rose while the training loss fell: the network learns the training images "
        "by heart instead of what tells the classes apart",
        'train fewer `epochs` ([hyperparameters]), train only the head (`finetune = "head"` in [model]), or '
        "add `weight_decay = 0.001` under [hyperparameters]",
    ),
    "overtraining": (
        "the loss stopped improving (the reason says which, training or validation): the last epochs add "
        "nothing",
        "lower `epochs` in [hyperparameters] to where the validation loss stopped falling",
    ),
    "poor_weight_initialization": (
        "the layers' activations start with very different spreads: the network starts badly",
        "start from ImageNet weights (`pretrained = true` in [model])",
    ),
    "loss_not_decreasing": (
        "the loss stayed flat or rose between checks: the network is not learning",
        "change `lr` in [hyperparameters] (too low learns slowly, too high bounces), and check that each "
        "class folder holds that class's images",
    ),
    "dead_relu": (
        "many ReLU units output zero for every image: they no longer learn",
        "lower `lr` in [hyperparameters]",
    ),
    "class_imbalance": (
        "some classes have far more training images than others, or are mispredicted far more often",
        "add `class_weights = true` under [hyperparameters] (the loss weighs classes by inverse frequency), "
        "or add images of the small classes",
    ),
    "LowGPUUtilization": (
        "the GPU sat idle for much of the run: you pay for a GPU that waits",
        "raise `batch_size` in [hyperparameters], or choose a smaller instance in [instances.training] "
        "`type`",
    ),
    "CPUBottleneck": (
        "the CPU was busy while the GPU waited for it",
        'add `feature_cache = true` under [hyperparameters] (with `finetune = "head"`), or choose an '
        "instance with more vCPUs in [instances.training] `type`",
    ),
    "DataLoadingBottleneck": (
        "the steps waited for images longer than they computed",
        "raise `num_workers` under [hyperparameters], or add `pixel_cache_gb = 4` there (decoded images "
        "kept in memory after the first epoch)",
    ),
    PROFILER_REPORT_RULE: (
        "one of the profiler rules found an issue",
        "see that rule's line and the profiler report's recommendations",
    ),
}
NO_ISSUES_MEANING = "judged the run and found nothing to change"
# `NotEnoughData` is this project's own verdict: SageMaker's built-in rules end with NoIssuesFound when
# they cannot judge, which reads as a pass. What gives a rule enough data depends on what it reads.
NOT_ENOUGH_DATA_MEANING = {
    "debugger": (
        "could not judge: the run saved too few steps (its reason says how many it needs); save more "
        "with a smaller [debugger] `train_save_interval` / `eval_save_interval`, or train more `epochs`"
    ),
    "profiler": (
        "could not judge: the run had no GPU or too few timed steps (its reason says which); run on a GPU "
        "instance ([instances.training] `type`) for long enough"
    ),
}
NOT_ENOUGH_DATA_NOTE = (
    "`NotEnoughData` is this project's own verdict: SageMaker's built-in rules end with NoIssuesFound "
    "when they cannot judge."
)
# How the verdict tables mark NotEnoughData (NOT_ENOUGH_DATA_NOTE says why, under each table).


def reading_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """Per rule, one line: the parameters it ran with and the reading of AWS's page it took."""
    lines = []
    for v in verdicts:
        if not v.reading:
            continue
        parameters = ", ".join(f"{name}={value}" for name, value in v.parameters.items())
        lines.append(f"`{v.rule}` ({parameters}): {v.reading}")
    return lines


def rule_insights(verdicts: Sequence[Verdict]) -> list[str]:
    """Markdown sentences: per issue, what it means and what to try; then one per other verdict kind."""
    lines = []
    for v in verdicts:
        if v.verdict != "IssuesFound":
            continue
        at = f" at step {v.step_text}" if v.step is not None else ""
        meaning, remedy = RULE_ADVICE.get(v.rule, ("the rule's condition held", "see the rule's reason"))
        reason = " ".join(v.reason.split()).rstrip(".")
        if v.caveat:
            # The documented test held, but on this network it cannot tell a healthy run from a sick one.
            lines.append(
                f"**{v.rule}** found an issue{at} ({reason}), but it {v.caveat.rstrip('.')}: "
                "nothing to change for it."
            )
            continue
        lines.append(f"**{v.rule}** found an issue{at} ({reason}): {meaning}. Try: {remedy}.")
    fine = [v.rule for v in verdicts if v.verdict == "NoIssuesFound"]
    if fine:
        lines.append(
            f"**{', '.join(fine)}**: NoIssuesFound, {'it' if len(fine) == 1 else 'each'} {NO_ISSUES_MEANING}."
        )
    for kind, meaning in NOT_ENOUGH_DATA_MEANING.items():
        unjudged = [v.rule for v in verdicts if v.verdict == "NotEnoughData" and v.kind == kind]
        if unjudged:
            lines.append(f"**{', '.join(unjudged)}**: NotEnoughData, {meaning}.")
    if any(v.verdict == "NotEnoughData" for v in verdicts):
        lines.append(NOT_ENOUGH_DATA_NOTE)
    return lines


def class_insight(classes: Sequence[ClassAccuracy]) -> str | None:
    """The best and worst classes on the test set, or that every class scored the same; None: not recorded."""
    best, worst = best_and_worst(classes)
    if not best:
        return None
    if best[0].accuracy == worst[0].accuracy:
        images = sum(c.images for c in classes)
        return f"every class scored {_percent(best[0].accuracy)} on the {images} test images: none stands out"
    return f"best recognised classes: {_class_list(best)}; worst: {_class_list(worst)}"


def _class_list(classes: Sequence[ClassAccuracy]) -> str:
    return ", ".join(f"{c.name} ({_percent(c.accuracy)} of {c.images})" for c in classes)
