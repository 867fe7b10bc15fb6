"""The rules of SageMaker Debugger and Profiler, judged inside the training job on what it recorded.

Each function takes the recording (`recorder.Recorder.recording()`, or `profiler.Profiler.data()`) and
returns one `Verdict`. Names and default parameters are those AWS documents for the built-in rule of the
same name (SageMaker developer guide, "List of Debugger built-in rules"); the code of the built-in
rules is not public, so where the documentation leaves a choice open the docstring says what is done.

A verdict is `NoIssuesFound`, `IssuesFound` (at which step, why) or `NotEnoughData` (the saved steps it
had and the ones it needs): a rule that could not judge never says "no issues".

Pure Python on purpose: the rules are unit-tested on synthetic series without torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

NO_ISSUES, ISSUES, NOT_ENOUGH = "NoIssuesFound", "IssuesFound", "NotEnoughData"
MODES = ("TRAIN", "EVAL", "PREDICT")


@dataclass
class Verdict:
    rule: str
    verdict: str
    reason: str
    kind: str = "debugger"  # "debugger" or "profiler"
    step: int | None = None
    mode: str | None = None
    # Saved steps per mode the rule had and the ones it needs (filled where data was short or counted).
    steps_had: dict[str, int] = field(default_factory=dict)
    steps_needed: dict[str, int] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)

    def log_line(self) -> str:
        """One greppable line per rule, e.g. `rule:overfit verdict=IssuesFound step=120 reason=...`."""
        step = "-" if self.step is None else self.step
        return f"rule:{self.rule} verdict={self.verdict} step={step} reason={self.reason}"

    def to_json(self) -> dict:
        return asdict(self)


def _verdicts(rule: str, params: dict, kind: str = "debugger") -> Callable[..., Verdict]:
    """`Verdict` with the rule's name, kind and parameters filled in: `verdict(ISSUES, reason, step=...)`."""
    return functools.partial(Verdict, rule, kind=kind, parameters=params)


def quantile(values: list[float], q: float) -> float:
    """numpy.quantile's default (linear interpolation), without numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _losses(recording: dict, mode: str) -> list[tuple[int, float]]:
    return [(int(step), float(value)) for step, value in recording.get("losses", {}).get(mode, [])]


def _saved(recording: dict) -> dict[str, int]:
    return {mode: len(_losses(recording, mode)) for mode in MODES}


def _interval_hint(recording: dict, mode: str) -> str:
    interval = recording.get("save_intervals", {}).get(mode)
    seen = recording.get("steps_seen", {}).get(mode, 0)
    return f"{mode} saved every {interval} steps of {seen}" if interval else f"{mode}: nothing saved"


# --------------------------------------------------------------------------- debugger rules


def vanishing_gradient(recording: dict, threshold: float = 0.0000001) -> Verdict:
    """IssuesFound at the first saved step where a layer's mean |gradient| is below `threshold`."""
    params = {"threshold": threshold}
    verdict = _verdicts("vanishing_gradient", params)
    entries = sorted(recording.get("gradients", []), key=lambda e: e["step"])
    if not entries:
        return verdict(
            NOT_ENOUGH,
            f"no gradients saved ({_interval_hint(recording, 'TRAIN')})",
            steps_had={"TRAIN": 0},
            steps_needed={"TRAIN": 1},
        )
    smallest = (math.inf, "", 0)
    for entry in entries:
        low = {name: s["mean_abs"] for name, s in entry["layers"].items() if s["mean_abs"] < threshold}
        if low:
            shown = ", ".join(f"{name} {value:.2e}" for name, value in list(low.items())[:3])
            more = f" and {len(low) - 3} more layers" if len(low) > 3 else ""
            return verdict(
                ISSUES,
                f"mean |gradient| below {threshold:g}: {shown}{more}",
                step=entry["step"],
                mode="TRAIN",
                steps_had={"TRAIN": len(entries)},
            )
        for name, s in entry["layers"].items():
            smallest = min(smallest, (s["mean_abs"], name, entry["step"]))
    return verdict(
        NO_ISSUES,
        f"{len(entries)} saved steps; smallest mean |gradient| {smallest[0]:.2e} ({smallest[1]}, step "
        f"{smallest[2]}) is above {threshold:g}",
        steps_had={"TRAIN": len(entries)},
    )


def _epoch_means(recording: dict, start_step: int) -> list[tuple[int, int, float, float]]:
    """Per epoch: (epoch, last saved TRAIN step, mean saved training loss, mean saved validation loss)."""
    train, valid = _losses(recording, "TRAIN"), _losses(recording, "EVAL")
    means = []
    for epoch in recording.get("epochs", []):
        t0, t1 = epoch["train_steps"]
        e0, e1 = epoch["eval_steps"]
        train_values = [(s, v) for s, v in train if t0 <= s < t1 and s >= start_step]
        valid_values = [v for s, v in valid if e0 <= s < e1]
        if train_values and valid_values:
            means.append(
                (
                    epoch["epoch"],
                    train_values[-1][0],
                    sum(v for _, v in train_values) / len(train_values),
                    sum(valid_values) / len(valid_values),
                )
            )
    return means


def overfit(recording: dict, start_step: int = 0, patience: int = 1, ratio_threshold: float = 0.1) -> Verdict:
    """(mean validation loss - mean training loss) / mean training loss above `ratio_threshold`.

    The means are taken per epoch, over the saved training losses of the epoch and the saved
    validation losses of the evaluation that follows it; `patience` counts consecutive such epochs.
    """
    params = {"start_step": start_step, "patience": patience, "ratio_threshold": ratio_threshold}
    verdict = _verdicts("overfit", params)
    means = _epoch_means(recording, start_step)
    if not means:
        return verdict(
            NOT_ENOUGH,
            "no epoch has both a saved training loss and a saved validation loss "
            f"({_interval_hint(recording, 'TRAIN')}; {_interval_hint(recording, 'EVAL')})",
            steps_had=_saved(recording),
            steps_needed={"TRAIN": 1, "EVAL": 1},
        )
    exceeded = 0
    worst = -math.inf
    for epoch, step, train, valid in means:
        ratio = (valid - train) / train if train > 1e-12 else (math.inf if valid > train else 0.0)
        worst = max(worst, ratio)
        exceeded = exceeded + 1 if ratio > ratio_threshold else 0
        if exceeded >= patience:
            return verdict(
                ISSUES,
                f"epoch {epoch + 1}: mean validation loss {valid:.4f} vs training {train:.4f}, "
                f"ratio {ratio:.3f} > {ratio_threshold} for {exceeded} epoch(s)",
                step=step,
                mode="TRAIN",
                steps_had=_saved(recording),
            )
    return verdict(
        NO_ISSUES,
        f"{len(means)} epochs compared; largest ratio {worst:.3f} <= {ratio_threshold}",
        steps_had=_saved(recording),
    )


def _stale_since(series: list[tuple[int, float]], patience: int, delta: float) -> tuple[int, float] | None:
    """The step at which the loss has not improved on its best by `delta` for `patience` saved steps."""
    best, stale = series[0][1], 0
    for step, value in series[1:]:
        if value < best - delta:
            best, stale = value, 0
        else:
            stale += 1
            if stale >= patience:
                return step, best
    return None


def overtraining(
    recording: dict, patience_train: int = 5, patience_validation: int = 10, delta: float = 0.01
) -> Verdict:
    """Validation loss (or training loss) no better than its best by `delta` for `patience_*` saved steps."""
    params = {"patience_train": patience_train, "patience_validation": patience_validation, "delta": delta}
    verdict = _verdicts("overtraining", params)
    needed = {"TRAIN": patience_train + 1, "EVAL": patience_validation + 1}
    series = {"TRAIN": _losses(recording, "TRAIN"), "EVAL": _losses(recording, "EVAL")}
    judged = [mode for mode in ("EVAL", "TRAIN") if len(series[mode]) >= needed[mode]]
    had = {mode: len(values) for mode, values in series.items()}
    if not judged:
        return verdict(
            NOT_ENOUGH,
            f"{had['EVAL']} validation and {had['TRAIN']} training losses saved; needs "
            f"{needed['EVAL']} or {needed['TRAIN']} ({_interval_hint(recording, 'EVAL')}; "
            f"{_interval_hint(recording, 'TRAIN')})",
            steps_had=had,
            steps_needed=needed,
        )
    names = {"EVAL": "validation", "TRAIN": "training"}
    patience = {"EVAL": patience_validation, "TRAIN": patience_train}
    for mode in judged:
        found = _stale_since(series[mode], patience[mode], delta)
        if found:
            step, best = found
            return verdict(
                ISSUES,
                f"{names[mode]} loss not below its best {best:.4f} by {delta} for {patience[mode]} saved "
                "steps: training longer no longer helps",
                step=step,
                mode=mode,
                steps_had=had,
            )
    unjudged = [f"{names[m]} (only {had[m]} saved)" for m in ("EVAL", "TRAIN") if m not in judged]
    return verdict(
        NO_ISSUES,
        f"{' and '.join(names[m] for m in judged)} loss kept improving"
        + (f"; not judged: {', '.join(unjudged)}" if unjudged else ""),
        steps_had=had,
    )


def poor_weight_initialization(
    recording: dict,
    threshold: float = 10.0,
    distribution_range: float = 0.001,
    patience: int = 5,
    steps: int = 10,
) -> Verdict:
    """Three checks on the saved training steps before `steps`, as AWS describes the rule.

    - the variance of ReLU inputs across layers: max / min above `threshold`;
    - the spread of the gradients (95th - 5th percentile of all layers' gradients together) below
      `distribution_range`;
    - the loss not improving for `patience` saved steps (only where that many were saved that early).
    """
    params = {
        "activation_inputs_regex": ".*relu_input",
        "threshold": threshold,
        "distribution_range": distribution_range,
        "patience": patience,
        "steps": steps,
    }
    verdict = _verdicts("poor_weight_initialization", params)
    early_activations = [
        a for a in recording.get("activations", []) if a["mode"] == "TRAIN" and a["step"] < steps
    ]
    early_gradients = [g for g in recording.get("gradients", []) if g["step"] < steps]
    early_losses = [(s, v) for s, v in _losses(recording, "TRAIN") if s < steps]
    checked, skipped = [], []
    for entry in early_activations:
        variances = {name: s["input_variance"] for name, s in entry["layers"].items()}
        if len(variances) < 2:
            continue
        checked.append("activation variance")
        low, high = min(variances.values()), max(variances.values())
        ratio = high / low if low > 0 else math.inf
        if ratio > threshold:
            return verdict(
                ISSUES,
                f"ReLU input variance differs {ratio:.3g}x across layers (> {threshold}): "
                f"{min(variances, key=variances.get)} {low:.3g}, "
                f"{max(variances, key=variances.get)} {high:.3g}",
                step=entry["step"],
                mode="TRAIN",
            )
    if not early_activations:
        skipped.append("activation variance (no ReLU inputs saved)")
    for entry in early_gradients:
        spread = entry["all"]["p95"] - entry["all"]["p5"]
        checked.append("gradient spread")
        if spread < distribution_range:
            return verdict(
                ISSUES,
                f"gradients' 5th-95th percentile spread {spread:.3g} < {distribution_range}",
                step=entry["step"],
                mode="TRAIN",
            )
    if len(early_losses) > patience:
        checked.append("loss")
        found = _stale_since(early_losses, patience, 0.0)
        if found:
            return verdict(
                ISSUES,
                f"loss did not decrease for {patience} saved steps in the first {steps}",
                step=found[0],
                mode="TRAIN",
            )
    else:
        skipped.append(f"loss ({len(early_losses)} saved of the first {steps} steps, needs {patience + 1})")
    had = {"TRAIN": len({e["step"] for e in early_gradients} | {s for s, _ in early_losses})}
    if not checked:
        return verdict(
            NOT_ENOUGH,
            f"no training step before step {steps} was saved ({_interval_hint(recording, 'TRAIN')})",
            steps_had=had,
            steps_needed={"TRAIN": 1},
        )
    return verdict(
        NO_ISSUES,
        f"checked {', '.join(sorted(set(checked)))}"
        + (f"; not checked: {', '.join(skipped)}" if skipped else ""),
        steps_had=had,
    )


def loss_not_decreasing(
    recording: dict,
    num_steps: int = 10,
    diff_percent: float = 0.1,
    increase_threshold_percent: float = 5.0,
    mode: str = "TRAIN",
) -> Verdict:
    """Every `num_steps` (at the next saved step), the loss must be `diff_percent` below the last check's.

    AWS's default mode is GLOBAL, which interleaves validation and test losses with training losses;
    here the training loss is judged, the loss being minimised. AWS does not say how
    `increase_threshold_percent` combines with `diff_percent`: any check that misses `diff_percent`
    fires, and the reason says whether the loss rose by more than `increase_threshold_percent`.
    """
    params = {
        "num_steps": num_steps,
        "diff_percent": diff_percent,
        "increase_threshold_percent": increase_threshold_percent,
        "mode": mode,
    }
    verdict = _verdicts("loss_not_decreasing", params)
    series = _losses(recording, mode)
    checks = 0
    if series:
        ref_step, ref = series[0]
        for step, value in series[1:]:
            if step - ref_step < num_steps:
                continue
            checks += 1
            decrease = (ref - value) / abs(ref) * 100 if ref else -math.inf
            if not math.isfinite(value) or decrease < diff_percent:
                how = (
                    f"rose {-decrease:.1f}% (more than the {increase_threshold_percent}% allowed)"
                    if -decrease > increase_threshold_percent
                    else f"changed by {-decrease:+.2f}% (needs a decrease of {diff_percent}%)"
                )
                return verdict(
                    ISSUES,
                    f"{mode} loss {value:.4f} at step {step} vs {ref:.4f} at step {ref_step}: {how}",
                    step=step,
                    mode=mode,
                    steps_had={mode: len(series)},
                )
            ref_step, ref = step, value
    if not checks:
        return verdict(
            NOT_ENOUGH,
            f"{len(series)} {mode} losses saved; needs 2 saved at least {num_steps} steps apart "
            f"({_interval_hint(recording, mode)})",
            steps_had={mode: len(series)},
            steps_needed={mode: 2},
        )
    return verdict(
        NO_ISSUES,
        f"{checks} checks over {len(series)} saved {mode} losses; each decreased by at least {diff_percent}%",
        steps_had={mode: len(series)},
    )


def exploding_tensor(recording: dict, only_nan: bool = False) -> Verdict:
    """A NaN (or, unless `only_nan`, an infinite) value in any saved loss, gradient, weight or activation.

    Gradients of a step the AMP gradient scaler skipped are left out: overflowing there is how the
    scaler finds its scale, and the step changes nothing.
    """
    params = {"only_nan": only_nan}
    verdict = _verdicts("exploding_tensor", params)
    key = "nan" if only_nan else "nonfinite"
    found: list[tuple[int, str, str]] = []
    for mode in MODES:
        for step, value in _losses(recording, mode):
            if math.isnan(value) or (not only_nan and math.isinf(value)):
                found.append((step, mode, "loss"))
    skipped = set(recording.get("amp_skipped_steps", []))
    for kind in ("gradients", "weights", "activations"):
        for entry in recording.get(kind, []):
            if kind == "gradients" and entry["step"] in skipped:
                continue
            for name, stats in entry["layers"].items():
                if stats.get(key, 0):
                    found.append((entry["step"], entry.get("mode", "TRAIN"), f"{kind[:-1]} {name}"))
    saved = _saved(recording)
    if found:
        step, mode, what = min(found)
        return verdict(
            ISSUES,
            f"{'NaN' if only_nan else 'non-finite'} {what} ({len(found)} tensors in all)",
            step=step,
            mode=mode,
            steps_had=saved,
        )
    if not any(saved.values()):
        return verdict(NOT_ENOUGH, "no step saved", steps_had=saved, steps_needed={"TRAIN": 1})
    return verdict(NO_ISSUES, "every saved tensor is finite", steps_had=saved)


def dead_relu(recording: dict, threshold_inactivity: float = 1.0, threshold_layer: float = 50.0) -> Verdict:
    """A layer where more than `threshold_layer` % of the ReLUs are active less than `threshold_inactivity` %.

    A ReLU here is one channel (convolutions) or one feature (linear layers): its activity is the
    percentage of its outputs in the batch that are above zero.
    """
    params = {"threshold_inactivity": threshold_inactivity, "threshold_layer": threshold_layer}
    verdict = _verdicts("dead_relu", params)
    entries = [a for a in recording.get("activations", []) if a["mode"] == "TRAIN"]
    if not entries:
        return verdict(
            NOT_ENOUGH,
            recording.get("activations_note")
            or f"no ReLU output saved ({_interval_hint(recording, 'TRAIN')})",
            steps_had={"TRAIN": 0},
            steps_needed={"TRAIN": 1},
        )
    worst = (0.0, "", 0)
    for entry in entries:
        for name, stats in entry["layers"].items():
            activity = stats["activity"]
            dead = 100.0 * sum(a < threshold_inactivity for a in activity) / max(len(activity), 1)
            worst = max(worst, (dead, name, entry["step"]))
            if dead > threshold_layer:
                return verdict(
                    ISSUES,
                    f"{dead:.0f}% of the ReLUs of {name} are active less than "
                    f"{threshold_inactivity}% of the time",
                    step=entry["step"],
                    mode="TRAIN",
                    steps_had={"TRAIN": len(entries)},
                )
    return verdict(
        NO_ISSUES,
        f"{len(entries)} saved steps; most dead: {worst[0]:.0f}% in {worst[1]} (step {worst[2]})",
        steps_had={"TRAIN": len(entries)},
    )


def class_imbalance(
    recording: dict, threshold_imbalance: float = 10, threshold_misprediction: float = 0.7, samples: int = 500
) -> Verdict:
    """Largest / smallest class count above `threshold_imbalance`, or a class mispredicted too often.

    Counts are the training labels; mispredictions those of the last validation pass (the trained
    model on data it did not fit), or of training when no validation was recorded.
    """
    params = {
        "threshold_imbalance": threshold_imbalance,
        "threshold_misprediction": threshold_misprediction,
        "samples": samples,
    }
    verdict = _verdicts("class_imbalance", params)
    labels = recording.get("labels", {})
    counts = [int(c) for c in labels.get("TRAIN", {}).get("counts", [])]
    names = recording.get("class_names") or [str(i) for i in range(len(counts))]
    total = sum(counts)
    if total < samples:
        return verdict(
            NOT_ENOUGH,
            f"{total} training labels seen; needs {samples}",
            steps_had={"TRAIN": total},
            steps_needed={"TRAIN": samples},
        )
    low, high = min(counts), max(counts)
    ratio = high / low if low else math.inf
    if ratio > threshold_imbalance:
        return verdict(
            ISSUES,
            f"class {names[counts.index(high)]} has {high} samples, {names[counts.index(low)]} {low}: "
            f"ratio {ratio:.1f} > {threshold_imbalance}",
        )
    judged = labels.get("EVAL") or labels.get("TRAIN")
    missed = [
        (1 - correct / count, name)
        for count, correct, name in zip(judged["counts"], judged["correct"], names, strict=True)
        if count
    ]
    bad = sorted((m for m in missed if m[0] > threshold_misprediction), reverse=True)
    if bad:
        shown = ", ".join(f"{name} {fraction:.0%}" for fraction, name in bad[:3])
        return verdict(
            ISSUES,
            f"{len(bad)} classes mispredicted more than {threshold_misprediction:.0%} of the time: {shown}",
        )
    return verdict(
        NO_ISSUES,
        f"{total} labels; largest/smallest class {ratio:.1f} <= {threshold_imbalance}; "
        f"no class mispredicted more than {threshold_misprediction:.0%}",
    )


DEBUGGER_RULES: dict[str, Callable[[dict], Verdict]] = {
    "vanishing_gradient": vanishing_gradient,
    "overfit": overfit,
    "overtraining": overtraining,
    "poor_weight_initialization": poor_weight_initialization,
    "loss_not_decreasing": loss_not_decreasing,
    "exploding_tensor": exploding_tensor,
    "dead_relu": dead_relu,
    "class_imbalance": class_imbalance,
}
# Rules that need activation statistics (forward hooks on the ReLUs).
ACTIVATION_RULES = frozenset({"poor_weight_initialization", "dead_relu"})


# --------------------------------------------------------------------------- profiler rules


def _gpu_series(profile: dict, key: str) -> dict[int, list[tuple[float, float]]]:
    series: dict[int, list[tuple[float, float]]] = {}
    for sample in profile.get("samples", []):
        for gpu in sample.get("gpus", []):
            if key in gpu:
                series.setdefault(gpu["index"], []).append((sample["t"], gpu[key]))
    return series


def _no_gpu(profile: dict) -> str:
    return profile.get("gpu_note") or "no GPU utilisation readings (no GPU, or NVML not available)"


def low_gpu_utilization(
    profile: dict,
    threshold_p95: float = 70,
    threshold_p5: float = 10,
    window: int = 500,
    patience: int = 1000,
    scan_interval_us: int = 60_000_000,
) -> Verdict:
    """Per GPU, at every scan: over the last `window` readings, p95 below `threshold_p95` (idle) or
    p95 above it with p5 below `threshold_p5` (fluctuating), once more than `patience` readings exist."""
    params = {
        "threshold_p95": threshold_p95,
        "threshold_p5": threshold_p5,
        "window": window,
        "patience": patience,
        "scan_interval_us": scan_interval_us,
    }
    verdict = _verdicts("LowGPUUtilization", params, "profiler")
    series = _gpu_series(profile, "utilization_percent")
    if not series:
        return verdict(NOT_ENOUGH, _no_gpu(profile))
    most = max(len(v) for v in series.values())
    if most <= patience:
        return verdict(
            NOT_ENOUGH,
            f"{most} utilisation readings; the rule waits for more than {patience} "
            f"({patience * profile.get('interval_millis', 500) / 1000:.0f} s at this interval)",
            steps_had={"samples": most},
            steps_needed={"samples": patience + 1},
        )
    scan = scan_interval_us / 1e6
    for index, readings in sorted(series.items()):
        start, end = readings[0][0], readings[-1][0]
        # AWS scans every scan_interval_us and once more at the end of the job.
        scans = [start + k * scan for k in range(1, int((end - start) // scan) + 1)] + [end]
        for scan_time in scans:
            values = [v for t, v in readings if t <= scan_time]
            if len(values) <= patience:
                continue
            p95, p5 = quantile(values[-window:], 0.95), quantile(values[-window:], 0.05)
            if p95 < threshold_p95 or p5 < threshold_p5:
                why = "under-used" if p95 < threshold_p95 else "fluctuating"
                return verdict(
                    ISSUES,
                    f"GPU {index} {why}: p95 {p95:.0f}% (threshold {threshold_p95}), p5 {p5:.0f}% "
                    f"(threshold {threshold_p5}) at {scan_time:.0f} s",
                    steps_had={"samples": len(readings)},
                )
    return verdict(
        NO_ISSUES,
        f"{len(series)} GPU(s), {most} readings; p95 >= {threshold_p95}% and p5 >= {threshold_p5}%",
        steps_had={"samples": most},
    )


def cpu_bottleneck(
    profile: dict,
    threshold: float = 50,
    gpu_threshold: float = 10,
    cpu_threshold: float = 90,
    patience: int = 100,
) -> Verdict:
    """Share of readings where a GPU is below `gpu_threshold` while a CPU core is above `cpu_threshold`."""
    params = {
        "threshold": threshold,
        "gpu_threshold": gpu_threshold,
        "cpu_threshold": cpu_threshold,
        "patience": patience,
    }
    verdict = _verdicts("CPUBottleneck", params, "profiler")
    readings = [s for s in profile.get("samples", []) if s.get("gpus") and "cpu_per_core" in s]
    readings = [s for s in readings if all("utilization_percent" in g for g in s["gpus"])]
    if not readings:
        return verdict(NOT_ENOUGH, _no_gpu(profile))
    if len(readings) <= patience:
        return verdict(
            NOT_ENOUGH,
            f"{len(readings)} readings; the rule waits for more than {patience}",
            steps_had={"samples": len(readings)},
            steps_needed={"samples": patience + 1},
        )
    bottlenecks = sum(
        min(g["utilization_percent"] for g in s["gpus"]) < gpu_threshold
        and max(s["cpu_per_core"]) > cpu_threshold
        for s in readings
    )
    share = 100 * bottlenecks / len(readings)
    outcome = ISSUES if share > threshold else NO_ISSUES
    return verdict(
        outcome,
        f"GPU idle while a CPU core was busy in {share:.0f}% of {len(readings)} readings "
        f"(threshold {threshold}%)",
        steps_had={"samples": len(readings)},
    )


def data_loading_bottleneck(profile: dict, threshold_percent: float = 50, patience: int = 10) -> Verdict:
    """Not an AWS rule: the training steps spent more than `threshold_percent` % waiting for the loader.

    The first step of each epoch is left out (the workers start then). This is why LowGPUUtilization
    fires on a GPU fed by too few decoding workers.
    """
    params = {"threshold_percent": threshold_percent, "patience": patience}
    verdict = _verdicts("DataLoadingBottleneck", params, "profiler")
    steps = [s for s in profile.get("steps", []) if s["mode"] == "TRAIN" and not s.get("first_of_epoch")]
    if len(steps) < patience:
        return verdict(
            NOT_ENOUGH,
            f"{len(steps)} timed training steps (after each epoch's first); needs {patience}",
            steps_had={"TRAIN": len(steps)},
            steps_needed={"TRAIN": patience},
        )
    data = sum(s["data_seconds"] for s in steps)
    compute = sum(s["compute_seconds"] for s in steps)
    share = 100 * data / max(data + compute, 1e-12)
    outcome = ISSUES if share > threshold_percent else NO_ISSUES
    return verdict(
        outcome,
        f"{share:.0f}% of training step time waiting for data ({data:.2f} s data, {compute:.2f} s compute, "
        f"{len(steps)} steps; threshold {threshold_percent}%)"
        + ("; more loader workers or pre-resized images would help" if outcome == ISSUES else ""),
        steps_had={"TRAIN": len(steps)},
    )


PROFILER_RULES: dict[str, Callable[[dict], Verdict]] = {
    "LowGPUUtilization": low_gpu_utilization,
    "CPUBottleneck": cpu_bottleneck,
    "DataLoadingBottleneck": data_loading_bottleneck,
}
# ProfilerReport is the report itself: its verdict sums up the profiler rules it ran.
REPORT_RULE = "ProfilerReport"
KNOWN_RULES = (*DEBUGGER_RULES, *PROFILER_RULES, REPORT_RULE)


def parse_rules(text: str) -> list[str]:
    """`"overfit, LowGPUUtilization"` -> the names, in order; unknown names are refused."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in KNOWN_RULES]
    if unknown:
        raise ValueError(
            f"unknown rule {', '.join(repr(n) for n in unknown)}; choose from {', '.join(KNOWN_RULES)}"
        )
    return list(dict.fromkeys(names))


def wants_profiler(names: list[str]) -> bool:
    return any(name in PROFILER_RULES or name == REPORT_RULE for name in names)


def evaluate_debugger_rules(names: list[str], recording: dict) -> list[Verdict]:
    return [DEBUGGER_RULES[name](recording) for name in names if name in DEBUGGER_RULES]


def evaluate_profiler_rules(names: list[str], profile: dict) -> list[Verdict]:
    """The profiler rules asked for, plus DataLoadingBottleneck whenever the profiler ran."""
    chosen = [name for name in PROFILER_RULES if name in names or name == "DataLoadingBottleneck"]
    verdicts = [PROFILER_RULES[name](profile) for name in chosen]
    if REPORT_RULE in names:
        verdicts.append(report_verdict(verdicts))
    return verdicts


def report_verdict(verdicts: list[Verdict], report_file: str = "profiler-report.html") -> Verdict:
    issues = [v.rule for v in verdicts if v.verdict == ISSUES]
    judged = [v.rule for v in verdicts if v.verdict != NOT_ENOUGH]
    if issues:
        verdict, reason = ISSUES, f"issues from {', '.join(issues)}"
    elif judged:
        verdict, reason = NO_ISSUES, f"no issues from {', '.join(judged)}"
    else:
        verdict, reason = NOT_ENOUGH, "no profiler rule had enough data"
    return Verdict(REPORT_RULE, verdict, f"{reason}; report: {report_file}", "profiler")
