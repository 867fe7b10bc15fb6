"""The Debugger rules that read losses and predictions.

overfit, overtraining, loss_not_decreasing and class_imbalance.

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
    global_step,
    interval_hint,
    losses,
    saved_steps,
    stale_since,
    step_name,
    verdict_of,
    weights_unchanged,
)


def overfit(recording: dict, start_step: int = 0, patience: int = 1, ratio_threshold: float = 0.1) -> Verdict:
    """AWS: "This rule detects if your model is being overfit to the training data by comparing the
    validation and training losses." `ratio_threshold`: "The maximum ratio of the difference between the
    mean validation loss and mean training loss to the mean training loss. If this threshold is exceeded
    for a `patience` number of steps, the model is being overfit" (default 0.1); `patience`: "The number
    of steps for which the `ratio_threshold` is allowed to exceed the value set" (default 1);
    `start_step`: "The step from which to start comparing the validation and training loss" (default 0).

    Reading: at each saved EVAL step, the mean validation loss is that of the saved validation losses of
    the current validation pass so far, and the mean training loss that of the saved training losses
    (TRAIN steps >= `start_step`) of the training pass before it; the ratio (valid - train) / train must
    exceed `ratio_threshold` at `patience` consecutive saved EVAL steps. IssuesFound names the EVAL step
    where the count reached `patience`. Another plausible reading compares whole-epoch means and counts
    patience in epochs (this project's earlier reading); AWS says steps.
    """
    params = {"start_step": start_step, "patience": patience, "ratio_threshold": ratio_threshold}
    reading = (
        f"(mean validation loss of the pass so far - mean training loss of the pass before) / mean "
        f"training loss > {ratio_threshold} at {patience} consecutive saved EVAL step(s); TRAIN steps "
        f">= {start_step} (other reading: whole-epoch means, patience in epochs)"
    )
    verdict = verdict_of("overfit", params, reading=reading)
    train = [(s, v) for s, v in losses(recording, "TRAIN") if s >= start_step]
    valid = losses(recording, "EVAL")
    passes = [(e["train_steps"], e["eval_steps"]) for e in recording.get("epochs", [])]
    exceeded, worst, compared = 0, -math.inf, 0
    for (t0, t1), (e0, e1) in passes:
        train_values = [v for s, v in train if t0 <= s < t1]
        if not train_values:
            continue
        train_mean = sum(train_values) / len(train_values)
        so_far: list[float] = []
        for step, value in ((s, v) for s, v in valid if e0 <= s < e1):
            so_far.append(value)
            valid_mean = sum(so_far) / len(so_far)
            compared += 1
            if train_mean > 1e-12:
                ratio = (valid_mean - train_mean) / train_mean
            else:
                ratio = math.inf if valid_mean > train_mean else 0.0
            worst = max(worst, ratio)
            exceeded = exceeded + 1 if ratio > ratio_threshold else 0
            if exceeded >= patience:
                return verdict(
                    ISSUES,
                    f"at {step_name(step, 'EVAL')}: mean validation loss {valid_mean:.4f} vs training "
                    f"{train_mean:.4f}, ratio {ratio:.3f} > {ratio_threshold} for {exceeded} saved "
                    "validation step(s)",
                    step=step,
                    mode="EVAL",
                    steps_had=saved_steps(recording),
                )
    if not compared:
        return verdict(
            NOT_ENOUGH,
            f"no saved validation step follows a training pass with a saved loss at step >= {start_step} "
            f"({interval_hint(recording, 'TRAIN')}; {interval_hint(recording, 'EVAL')})",
            steps_had=saved_steps(recording),
            steps_needed={"TRAIN": 1, "EVAL": patience},
        )
    return verdict(
        NO_ISSUES,
        f"{compared} saved validation steps compared; largest ratio {worst:.3f} <= {ratio_threshold}",
        steps_had=saved_steps(recording),
    )


def overtraining(
    recording: dict, patience_train: int = 5, patience_validation: int = 10, delta: float = 0.01
) -> Verdict:
    """AWS: "This rule detects if the model is being overtrained." `patience_train`: "The number of
    steps to wait before the training loss is considered to not to be improving anymore" (default 5);
    `patience_validation`: the same for the validation loss (default 10); `delta`: "The minimum
    threshold by how much the error should improve before it is considered as a new optimum" (default
    0.01 on the current page; the page's archived 2020-2022 text, awsdocs/amazon-sagemaker-developer-guide,
    gave 0.1).

    Reading: per mode, over the saved losses in order, a loss counts as a new optimum when it is below
    the best so far by more than `delta` (loss units); the mode stalls at the saved step where
    `patience_*` saved steps in a row brought none. Both TRAIN and EVAL are judged (each where it has
    `patience + 1` saved losses) and IssuesFound names whichever stalled first in the order the job
    ran them. Patience counts saved steps (the rule is invoked at each saved step); counting step
    numbers instead would be the other reading.
    """
    params = {"patience_train": patience_train, "patience_validation": patience_validation, "delta": delta}
    reading = (
        f"TRAIN loss no new optimum (better by > {delta}) for {patience_train} saved steps, or EVAL loss "
        f"for {patience_validation}; the earlier of the two in the job's order (other reading: patience "
        "in step numbers, not saved steps)"
    )
    verdict = verdict_of("overtraining", params, reading=reading)
    needed = {"TRAIN": patience_train + 1, "EVAL": patience_validation + 1}
    series = {"TRAIN": losses(recording, "TRAIN"), "EVAL": losses(recording, "EVAL")}
    judged = [mode for mode in ("EVAL", "TRAIN") if len(series[mode]) >= needed[mode]]
    had = {mode: len(values) for mode, values in series.items()}
    if not judged:
        return verdict(
            NOT_ENOUGH,
            f"{had['EVAL']} validation and {had['TRAIN']} training losses saved; needs "
            f"{needed['EVAL']} or {needed['TRAIN']} ({interval_hint(recording, 'EVAL')}; "
            f"{interval_hint(recording, 'TRAIN')})",
            steps_had=had,
            steps_needed=needed,
        )
    patience = {"EVAL": patience_validation, "TRAIN": patience_train}
    stalls = []
    for mode in judged:
        found = stale_since(series[mode], patience[mode], delta)
        if found:
            stalls.append((global_step(recording, mode, found[0]), mode, *found))
    if stalls:
        _, mode, step, best = min(stalls)
        return verdict(
            ISSUES,
            f"{MODE_NAMES[mode]} loss not below its best {best:.4f} by more than {delta} for "
            f"{patience[mode]} saved steps, at {step_name(step, mode)}: training longer no longer helps",
            step=step,
            mode=mode,
            steps_had=had,
        )
    unjudged = [f"{MODE_NAMES[m]} (only {had[m]} saved)" for m in ("EVAL", "TRAIN") if m not in judged]
    return verdict(
        NO_ISSUES,
        f"{' and '.join(MODE_NAMES[m] for m in judged)} loss kept improving"
        + (f"; not judged: {', '.join(unjudged)}" if unjudged else ""),
        steps_had=had,
    )


LOSS_MODES = ("EVAL", "TRAIN", "GLOBAL")


def _mode_series(recording: dict, mode: str) -> list[tuple[int, float, str, int]]:
    """(step in `mode`'s numbering for the comparison, loss, the loss's own mode, its own step)."""
    if mode != "GLOBAL":
        return [(s, v, mode, s) for s, v in losses(recording, mode)]
    every = [(global_step(recording, m, s), v, m, s) for m in MODES for s, v in losses(recording, m)]
    return sorted(every)


def _checks(series: list[tuple[int, float, str, int]], num_steps: int) -> int:
    count, ref = 0, None
    for entry in series:
        if ref is None or entry[0] - ref[0] >= num_steps:
            count += ref is not None
            ref = entry
    return count


def loss_not_decreasing(
    recording: dict,
    num_steps: int = 10,
    diff_percent: float = 0.1,
    increase_threshold_percent: float = 5.0,
    mode: str | None = None,
) -> Verdict:
    """AWS: "This rule detects when the loss is not decreasing in value at an adequate rate."
    `num_steps`: "Rule evaluation happens every `num_steps`. The rule compares the loss for this step
    with the loss at a step which is at least `num_steps` behind the current step." (default 10);
    `diff_percent`: "The minimum percentage difference by which the loss should decrease between
    `num_steps`" (default 0.1); `increase_threshold_percent`: "The maximum threshold percent that loss
    is allowed to increase in case loss has been increasing" (default 5); `mode`: "If this is not
    passed, the rule checks in order by default for the mode.EVAL, then mode.TRAIN, and then
    mode.GLOBAL" (the table gives GLOBAL as the default value).

    Reading:
    - mode not set: the first of EVAL, TRAIN, GLOBAL whose saved losses allow one check (the prose's
      order; the table's GLOBAL default is the last resort of that order). GLOBAL puts every mode's
      saved losses in the order the job ran them, numbered by `global_step`;
    - checks: at the first saved step `num_steps` or more after the last check (AWS's example: saved
      every 3 steps, num_steps 10, step 21 is compared with step 9, then 33 with 21);
    - a check where the loss fell fails when it fell by less than `diff_percent` %; a check where it
      rose fails when the loss is more than `increase_threshold_percent` % above the loss at the last
      check before it began to rise ("in case loss has been increasing"). The other plausible reading,
      any check missing `diff_percent` fails, leaves `increase_threshold_percent` without effect.
    IssuesFound names the first failing check's step, in the loss's own mode. In EVAL (and GLOBAL) two
    compared losses can be of different validation batches under the same weights: such a check cannot
    tell whether training helps, and a verdict resting on one says so in its caveat.
    """
    params = {
        "num_steps": num_steps,
        "diff_percent": diff_percent,
        "increase_threshold_percent": increase_threshold_percent,
        "mode": mode,
    }
    candidates = [mode] if mode else list(LOSS_MODES)
    checkable = [m for m in candidates if _checks(_mode_series(recording, m), num_steps)]
    with_losses = [m for m in candidates if _mode_series(recording, m)]
    chosen = (checkable or with_losses or candidates)[0]
    reading = (
        f"{chosen} losses{'' if mode else ' (mode not set: first of EVAL, TRAIN, GLOBAL with a check)'}; "
        f"checked every {num_steps} steps: a fall must be >= {diff_percent}%, a rise may reach "
        f"{increase_threshold_percent}% above where it began (other reading: any check short of "
        f"{diff_percent}% fails)"
    )
    verdict = verdict_of("loss_not_decreasing", params, reading=reading)
    series = _mode_series(recording, chosen)
    had = {m: len(_mode_series(recording, m)) for m in candidates if m in MODES} or {chosen: len(series)}
    checks = 0
    if series:
        ref = series[0]
        rise_base = ref  # the last check before the loss began to rise
        for entry in series[1:]:
            if entry[0] - ref[0] < num_steps:
                continue
            checks += 1
            _, value, its_mode, its_step = entry
            ref_value = ref[1]
            failed, how = False, ""
            if not math.isfinite(value):
                failed, how = True, "is not finite"
            elif value > ref_value:
                rise = (value - rise_base[1]) / abs(rise_base[1]) * 100 if rise_base[1] else math.inf
                failed = rise > increase_threshold_percent
                how = (
                    f"rose {rise:.1f}% above {rise_base[1]:.4f} at {step_name(rise_base[3], rise_base[2])} "
                    f"(allowed: {increase_threshold_percent}%)"
                )
            else:
                fall = (ref_value - value) / abs(ref_value) * 100 if ref_value else 0.0
                failed = fall < diff_percent
                how = f"fell {fall:.3f}% (needs {diff_percent}%)"
                rise_base = entry
            if failed:
                same_weights = weights_unchanged(recording, ref, entry)
                return verdict(
                    ISSUES,
                    f"{MODE_NAMES[its_mode]} loss {value:.4f} at {step_name(its_step, its_mode)} vs "
                    f"{ref_value:.4f} at {step_name(ref[3], ref[2])}: {how}",
                    step=its_step,
                    mode=its_mode,
                    steps_had=had,
                    caveat=(
                        "the two losses are of different batches under the same weights (no training "
                        "step ran between them): this check cannot tell whether training helps; "
                        'set [debugger.rule_parameters.loss_not_decreasing] mode = "TRAIN" to judge the '
                        "training loss"
                    )
                    if same_weights
                    else "",
                )
            ref = entry
    if not checks:
        return verdict(
            NOT_ENOUGH,
            f"{len(series)} {chosen} losses saved; needs 2 saved at least {num_steps} steps apart "
            f"({interval_hint(recording, chosen if chosen in MODES else 'TRAIN')})",
            steps_had=had,
            steps_needed={chosen: 2},
        )
    return verdict(
        NO_ISSUES,
        f"{checks} checks over {len(series)} saved {chosen} losses; each fell by at least {diff_percent}% "
        f"or rose less than {increase_threshold_percent}%",
        steps_had=had,
    )


def class_imbalance(
    recording: dict,
    threshold_imbalance: float = 10.0,
    threshold_misprediction: float = 0.7,
    samples: int = 500,
) -> Verdict:
    """AWS: "It counts the occurrences per class. If the ratio of number of samples between smallest and
    largest class is larger than the `threshold_imbalance`, an error is thrown." and "If a fraction of
    mispredictions for a certain class is above `threshold_misprediction`, an error is thrown."
    `samples`: "The number of labels that have to be processed before an imbalance is evaluated"
    (defaults 10, 0.7, 500).

    Reading (AWS does not say which modes or which window): class counts are every training label the
    job saw (the sampling the model learned from); mispredictions are those of the last validation pass
    (the trained model on images it did not fit), or of all training steps when no validation ran.
    Both are counted at every step, not only saved ones (two saved batches could not judge 133
    classes), so the rule judges once, at the end, and names no step.
    """
    params = {
        "threshold_imbalance": threshold_imbalance,
        "threshold_misprediction": threshold_misprediction,
        "samples": samples,
    }
    labels = recording.get("labels", {})
    judged_mode = "EVAL" if labels.get("EVAL") else "TRAIN"
    reading = (
        f"largest/smallest class count over all TRAIN labels > {threshold_imbalance}, or a class "
        f"mispredicted > {threshold_misprediction:.0%} in the last {judged_mode} pass; judged at the end "
        f"after {samples} labels (AWS names no modes or window)"
    )
    verdict = verdict_of("class_imbalance", params, reading=reading)
    counts = [int(c) for c in labels.get("TRAIN", {}).get("counts", [])]
    names = recording.get("class_names") or [str(i) for i in range(len(counts))]
    total = sum(counts)
    if total < samples:
        return verdict(
            NOT_ENOUGH,
            f"{total} training labels seen; needs {samples}"
            + ("" if counts else " (no label counts recorded)"),
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
            mode="TRAIN",
        )
    judged = labels.get(judged_mode)
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
            f"{len(bad)} classes mispredicted more than {threshold_misprediction:.0%} of the time in the "
            f"last {MODE_NAMES[judged_mode]} pass: {shown}",
            mode=judged_mode,
        )
    return verdict(
        NO_ISSUES,
        f"{total} labels; largest/smallest class {ratio:.1f} <= {threshold_imbalance}; "
        f"no class mispredicted more than {threshold_misprediction:.0%}",
    )
