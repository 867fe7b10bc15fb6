"""The Debugger rules that read tensors: gradients, weights and activations.

vanishing_gradient, poor_weight_initialization, exploding_tensor and dead_relu.

Each takes the recording (`recorder.Recorder.recording()`) and returns one `Verdict`; each docstring
quotes the AWS page it follows and names the reading taken (see rules.py).
"""

from __future__ import annotations

import math

from rule_verdict import (
    ISSUES,
    MODE_NAMES,
    MODES,
    NO_ISSUES,
    NOT_ENOUGH,
    Verdict,
    construction_caveat,
    global_step,
    interval_hint,
    losses,
    saved_steps,
    stale_since,
    step_name,
    verdict_of,
    zero_by_construction,
)


def vanishing_gradient(recording: dict, threshold: float = 0.0000001) -> Verdict:
    """AWS: "This rule detects if the gradients in a trial become extremely small or drop to a zero
    magnitude. If the mean of the absolute values of the gradients drops below a specified `threshold`,
    the rule returns True." Parameter: `threshold`, "the value at which the gradient is determined to be
    vanishing", default 0.0000001.

    Reading: the mean |gradient| of each saved gradient tensor (one per trained parameter), at each saved
    TRAIN step; IssuesFound at the first saved step where one is below `threshold`. The page offers no
    regex to leave tensors out, so every gradient is judged; where the only tensors below `threshold` are
    biases whose gradient is zero by construction (a bias followed by a BatchNorm), the verdict stays
    IssuesFound as documented and its caveat says that it means nothing for this run. (The other
    reading, a mean over all gradients pooled, would never see one layer vanish.)
    """
    params = {"threshold": threshold}
    reading = (
        f"mean |gradient| of each gradient tensor at each saved TRAIN step < threshold {threshold:g}; "
        "first such step (other reading: a mean over all gradients pooled, which one layer cannot move)"
    )
    verdict = verdict_of("vanishing_gradient", params, reading=reading)
    entries = sorted(recording.get("gradients", []), key=lambda e: e["step"])
    if not entries:
        return verdict(
            NOT_ENOUGH,
            f"no gradients saved ({interval_hint(recording, 'TRAIN')})",
            steps_had={"TRAIN": 0},
            steps_needed={"TRAIN": 1},
        )
    structural = zero_by_construction(recording)
    smallest = (math.inf, "", 0)
    for entry in entries:
        low = {name: s["mean_abs"] for name, s in entry["layers"].items() if s["mean_abs"] < threshold}
        if low:
            shown = ", ".join(f"{name} {value:.2e}" for name, value in list(low.items())[:3])
            more = f" and {len(low) - 3} more tensors" if len(low) > 3 else ""
            only_structural = all(name in structural for name in low)
            return verdict(
                ISSUES,
                f"mean |gradient| below {threshold:g} at {step_name(entry['step'], 'TRAIN')}: {shown}{more}",
                step=entry["step"],
                mode="TRAIN",
                steps_had={"TRAIN": len(entries)},
                caveat=construction_caveat(sorted(low)) if only_structural else "",
            )
        for name, s in entry["layers"].items():
            smallest = min(smallest, (s["mean_abs"], name, entry["step"]))
    return verdict(
        NO_ISSUES,
        f"{len(entries)} saved steps; smallest mean |gradient| {smallest[0]:.2e} ({smallest[1]}, step "
        f"{smallest[2]}) is above {threshold:g}",
        steps_had={"TRAIN": len(entries)},
    )


def _spread(stats: dict) -> float | None:
    if "p95" in stats and "p5" in stats:
        spread = stats["p95"] - stats["p5"]
        return spread if math.isfinite(spread) else None
    return None


def poor_weight_initialization(
    recording: dict,
    threshold: float = 10.0,
    distribution_range: float = 0.001,
    patience: int = 5,
    steps: int = 10,
) -> Verdict:
    """AWS: "This rule checks the variance of activation inputs across layers, the distribution of
    gradients, and the loss convergence for the initial steps to determine if a neural network has been
    poorly initialized." `threshold`: "If the ratio between minimum and maximum variance of weights per
    layer exceeds the `threshold` at a step, the rule returns True" (default 10.0); `distribution_range`:
    "If the minimum difference between 5th and 95th percentiles of the gradient distribution is less than
    the `distribution_range`, the rule returns True" (default 0.001); `patience`: "The number of steps to
    wait until the loss is considered to be no longer decreasing" (default 5); `steps`: "The number of
    steps this rule analyzes" (default 10); `activation_inputs_regex` default ".*relu_input".

    Reading, on the saved TRAIN steps before `steps`:
    - variance: of the inputs of each ReLU (what `activation_inputs_regex` selects; the table's "weights
      per layer" is read as the activations the description and the regex name), max / min across
      layers above `threshold`;
    - gradients: the 95th - 5th percentile spread of each saved gradient tensor, and the smallest of
      them below `distribution_range` ("the minimum difference"; pooling every layer's gradients into one
      distribution is the other reading, and gives a much larger spread on common networks). Tensors
      whose gradient is zero by construction are judged too (no regex leaves them out); a verdict that
      rests on them only carries a caveat;
    - loss: no decrease for `patience` saved steps in a row (judged where `patience + 1` were saved).
    IssuesFound names the first saved step at which one of the three held.
    """
    params = {
        "activation_inputs_regex": ".*relu_input",
        "threshold": threshold,
        "distribution_range": distribution_range,
        "patience": patience,
        "steps": steps,
    }
    reading = (
        f"TRAIN steps < {steps}: ReLU input variance max/min across layers > {threshold}; smallest "
        f"per-tensor gradient 5th-95th percentile spread < {distribution_range}; loss not decreasing "
        f"for {patience} saved steps; first step any held (other reading: one spread of all gradients "
        "pooled, far wider)"
    )
    verdict = verdict_of("poor_weight_initialization", params, reading=reading)
    structural = zero_by_construction(recording)
    early_activations = [
        a for a in recording.get("activations", []) if a["mode"] == "TRAIN" and a["step"] < steps
    ]
    early_gradients = [g for g in recording.get("gradients", []) if g["step"] < steps]
    early_losses = [(s, v) for s, v in losses(recording, "TRAIN") if s < steps]
    findings: list[tuple[int, str, str]] = []  # (step, reason, caveat)
    checked, skipped = [], []
    for entry in early_activations:
        variances = {name: s["input_variance"] for name, s in entry["layers"].items()}
        variances = {name: v for name, v in variances.items() if math.isfinite(v)}
        if len(variances) < 2:
            continue
        checked.append("activation variance")
        low, high = min(variances.values()), max(variances.values())
        ratio = high / low if low > 0 else math.inf
        if ratio > threshold:
            findings.append(
                (
                    entry["step"],
                    f"ReLU input variance differs {ratio:.3g}x across layers (> {threshold}): "
                    f"{min(variances, key=variances.get)} {low:.3g}, "
                    f"{max(variances, key=variances.get)} {high:.3g}",
                    recording.get("activations_caveat") or "",
                )
            )
            break
    if not checked:
        skipped.append(f"activation variance ({recording.get('activations_note') or 'no ReLU inputs saved'})")
    for entry in early_gradients:
        spreads = {
            name: spread for name, stats in entry["layers"].items() if (spread := _spread(stats)) is not None
        }
        if not spreads and (pooled := _spread(entry.get("all", {}))) is not None:
            spreads = {"all gradients (pooled; an older recording)": pooled}
        if not spreads:
            continue
        checked.append("gradient spread")
        narrow = sorted((spread, name) for name, spread in spreads.items() if spread < distribution_range)
        if narrow:
            names = [name for _, name in narrow]
            only_structural = all(name in structural for name in names)
            findings.append(
                (
                    entry["step"],
                    f"smallest 5th-95th percentile gradient spread {narrow[0][0]:.3g} ({narrow[0][1]}) < "
                    f"{distribution_range}; {len(narrow)} of {len(spreads)} gradient tensors below",
                    construction_caveat(names) if only_structural else "",
                )
            )
            break
    if len(early_losses) > patience:
        checked.append("loss")
        found = stale_since(early_losses, patience, 0.0)
        if found:
            findings.append((found[0], f"loss did not decrease for {patience} saved steps", ""))
    else:
        skipped.append(f"loss ({len(early_losses)} saved of the first {steps} steps, needs {patience + 1})")
    had = {"TRAIN": len({e["step"] for e in early_gradients} | {s for s, _ in early_losses})}
    if findings:
        step, reason, caveat = min(findings)
        return verdict(
            ISSUES,
            f"at {step_name(step, 'TRAIN')}: {reason}",
            step=step,
            mode="TRAIN",
            steps_had=had,
            caveat=caveat,
        )
    if not checked:
        return verdict(
            NOT_ENOUGH,
            f"no training step before step {steps} was saved ({interval_hint(recording, 'TRAIN')})",
            steps_had=had,
            steps_needed={"TRAIN": 1},
        )
    return verdict(
        NO_ISSUES,
        f"checked {', '.join(sorted(set(checked)))}"
        + (f"; not checked: {', '.join(skipped)}" if skipped else ""),
        steps_had=had,
    )


def exploding_tensor(recording: dict, only_nan: bool = False) -> Verdict:
    """AWS: "This rule detects whether the tensors emitted during training have non-finite values,
    either infinite or NaN (not a number). If a non-finite value is detected, the rule returns True."
    `only_nan`: "True to monitor the base_trial tensors only for NaN values and not for infinity"
    (default False).

    Reading: every saved loss (all modes), gradient, weight and ReLU activation; IssuesFound names the
    first saved step, in the order the job ran them, that held one, with its mode (a training step
    that went non-finite is never reported at a later validation step). Gradients of a step the AMP
    gradient scaler skipped are left out: overflowing there is how the scaler finds its scale, and the
    step changes nothing (smdebug's hook saves gradients after the scaler's check too).
    """
    params = {"only_nan": only_nan}
    reading = (
        f"{'NaN' if only_nan else 'NaN or infinite'} in any saved loss (all modes), gradient, weight or "
        "ReLU activation; first in the job's order"
    )
    verdict = verdict_of("exploding_tensor", params, reading=reading)
    key = "nan" if only_nan else "nonfinite"
    found: list[tuple[int, int, str, str]] = []  # (global step, step, mode, what)
    for mode in MODES:
        for step, value in losses(recording, mode):
            if math.isnan(value) or (not only_nan and math.isinf(value)):
                found.append((global_step(recording, mode, step), step, mode, f"{MODE_NAMES[mode]} loss"))
    skipped = set(recording.get("amp_skipped_steps", []))
    for kind in ("gradients", "weights", "activations"):
        for entry in recording.get(kind, []):
            if kind == "gradients" and entry["step"] in skipped:
                continue
            mode = entry.get("mode", "TRAIN")
            for name, stats in entry["layers"].items():
                if stats.get(key, 0):
                    found.append(
                        (
                            global_step(recording, mode, entry["step"]),
                            entry["step"],
                            mode,
                            f"{kind[:-1]} {name}",
                        )
                    )
    saved = saved_steps(recording)
    if found:
        _, step, mode, what = min(found)
        return verdict(
            ISSUES,
            f"{'NaN' if only_nan else 'non-finite'} {what} at {step_name(step, mode)} ({len(found)} in all)",
            step=step,
            mode=mode,
            steps_had=saved,
        )
    if not any(saved.values()):
        return verdict(NOT_ENOUGH, "no step saved", steps_had=saved, steps_needed={"TRAIN": 1})
    return verdict(NO_ISSUES, "every saved tensor is finite", steps_had=saved)


def dead_relu(recording: dict, threshold_inactivity: float = 1.0, threshold_layer: float = 50.0) -> Verdict:
    """AWS: "This rule detects when the percentage of rectified linear unit (ReLU) activation functions
    in a trial are considered dead because their activation activity has dropped below a threshold. If
    the percent of inactive ReLUs in a layer is greater than the `threshold_layer` value of inactive
    ReLUs, the rule returns True." `threshold_inactivity`: "If the ReLU is active less than the
    `threshold_inactivity`, it is considered to be dead" (default 1.0); `threshold_layer` default 50.0.

    Reading: a ReLU is one channel (convolutions) or one feature (linear layers) of a ReLU layer's
    output; its activity is the percentage of its outputs in the saved batch above zero. At each saved
    TRAIN step, a layer where more than `threshold_layer` % of its ReLUs are active less than
    `threshold_inactivity` % fires; the first such step is named. With finetune = "head" the frozen
    backbone's ReLUs are judged (they run at every step); with feature_cache = true no ReLU runs while
    training, and the verdict names the setting that records them.
    """
    params = {"threshold_inactivity": threshold_inactivity, "threshold_layer": threshold_layer}
    reading = (
        f"per ReLU layer at each saved TRAIN step: > {threshold_layer}% of its channels active in < "
        f"{threshold_inactivity}% of the batch's outputs; first such step"
    )
    verdict = verdict_of("dead_relu", params, reading=reading)
    entries = [a for a in recording.get("activations", []) if a["mode"] == "TRAIN"]
    if not entries:
        return verdict(
            NOT_ENOUGH,
            recording.get("activations_note")
            or f"no ReLU output saved ({interval_hint(recording, 'TRAIN')})",
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
                    f"at {step_name(entry['step'], 'TRAIN')}: {dead:.0f}% of the ReLUs of {name} are active "
                    f"less than {threshold_inactivity}% of the time",
                    step=entry["step"],
                    mode="TRAIN",
                    steps_had={"TRAIN": len(entries)},
                )
    return verdict(
        NO_ISSUES,
        f"{len(entries)} saved steps; most dead: {worst[0]:.0f}% in {worst[1]} (step {worst[2]})",
        steps_had={"TRAIN": len(entries)},
    )
