"""The rules of SageMaker Debugger and Profiler, judged inside the training job on what it recorded.

Each function takes the recording (`recorder.Recorder.recording()`, or `profiler.Profiler.data()`) and
returns one `Verdict`. Names and default parameters are those AWS documents for the built-in rule of the
same name (SageMaker developer guide, "List of Debugger built-in rules"); AWS never published the
built-in rules' code, so each docstring quotes the sentences it follows and, where they leave a choice
open, says which reading is taken (and which other one was plausible). The same reading travels with
every verdict (`Verdict.reading`), so the report shows what was judged.

A verdict is `NoIssuesFound`, `IssuesFound` (at which step, in which mode, why) or `NotEnoughData` (the
saved steps it had, the ones it needs, or the setting that records what it reads). `NotEnoughData` is
this project's own verdict: SageMaker's rules end with NoIssuesFound when they cannot judge, which reads
as a pass. Where the documented test cannot tell a healthy run from a sick one on this network (a bias
whose gradient is zero by construction), `Verdict.caveat` says so.

Steps are numbered per mode, as smdebug numbers them and as the report's plots draw them: a verdict
names the first saved step at which its condition held, with that step's mode. Where a rule compares
modes (GLOBAL), saved steps are put in the order the job ran them (`global_step`).

Pure Python on purpose: the rules are unit-tested on synthetic series without torch.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

NO_ISSUES, ISSUES, NOT_ENOUGH = "NoIssuesFound", "IssuesFound", "NotEnoughData"
MODES = ("TRAIN", "EVAL", "PREDICT")
MODE_NAMES = {"TRAIN": "training", "EVAL": "validation", "PREDICT": "test", "GLOBAL": "every mode's"}


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
    # What was judged (parameters, modes, tensors) and the reading of AWS's page taken.
    reading: str = ""
    # Non-empty where the documented test cannot tell a healthy run from a sick one here: why.
    caveat: str = ""

    def log_line(self) -> str:
        """One greppable line per rule: `rule:overfit verdict=IssuesFound step=12 mode=EVAL reason=...`."""
        step = "-" if self.step is None else self.step
        mode = f" mode={self.mode}" if self.mode and self.step is not None else ""
        caveat = f" caveat={self.caveat}" if self.caveat else ""
        return f"rule:{self.rule} verdict={self.verdict} step={step}{mode} reason={self.reason}{caveat}"

    def to_json(self) -> dict:
        return asdict(self)


def _verdicts(rule: str, params: dict, kind: str = "debugger", reading: str = "") -> Callable[..., Verdict]:
    """`Verdict` with the rule's name, kind, parameters and reading: `verdict(ISSUES, reason, step=...)`."""
    return functools.partial(Verdict, rule, kind=kind, parameters=params, reading=reading)


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


def global_step(recording: dict, mode: str, step: int) -> int:
    """Where a mode's step falls among every step the job ran (smdebug's GLOBAL numbering).

    Each epoch ran its training steps, then its validation steps (`recording["epochs"]`); the test
    pass ran last. A step outside the recorded epochs goes after them, at its own number.
    """
    offset = 0
    for epoch in recording.get("epochs", []):
        for key, its_mode in (("train_steps", "TRAIN"), ("eval_steps", "EVAL")):
            first, end = epoch[key]
            if mode == its_mode and first <= step < end:
                return offset + step - first
            offset += end - first
    return offset + step


def _at(step: int, mode: str) -> str:
    return f"{MODE_NAMES.get(mode, mode)} step {step}"


def _zero_by_construction(recording: dict) -> set[str]:
    """Parameters whose gradient is zero up to rounding whatever the run does (recorder.py finds them:
    a bias followed by a BatchNorm, which subtracts each channel's batch mean and so the bias with it)."""
    return set(recording.get("zero_gradient_parameters", []))


def _construction_caveat(names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"fired only on {shown}: a bias followed by a BatchNorm, whose gradient is zero by construction "
        "(the BatchNorm subtracts the batch mean, and the bias with it); on this network the rule's "
        "documented test cannot tell a healthy run from a sick one, so this verdict says nothing of the run"
    )


# --------------------------------------------------------------------------- debugger rules


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
    verdict = _verdicts("vanishing_gradient", params, reading=reading)
    entries = sorted(recording.get("gradients", []), key=lambda e: e["step"])
    if not entries:
        return verdict(
            NOT_ENOUGH,
            f"no gradients saved ({_interval_hint(recording, 'TRAIN')})",
            steps_had={"TRAIN": 0},
            steps_needed={"TRAIN": 1},
        )
    structural = _zero_by_construction(recording)
    smallest = (math.inf, "", 0)
    for entry in entries:
        low = {name: s["mean_abs"] for name, s in entry["layers"].items() if s["mean_abs"] < threshold}
        if low:
            shown = ", ".join(f"{name} {value:.2e}" for name, value in list(low.items())[:3])
            more = f" and {len(low) - 3} more tensors" if len(low) > 3 else ""
            only_structural = all(name in structural for name in low)
            return verdict(
                ISSUES,
                f"mean |gradient| below {threshold:g} at {_at(entry['step'], 'TRAIN')}: {shown}{more}",
                step=entry["step"],
                mode="TRAIN",
                steps_had={"TRAIN": len(entries)},
                caveat=_construction_caveat(sorted(low)) if only_structural else "",
            )
        for name, s in entry["layers"].items():
            smallest = min(smallest, (s["mean_abs"], name, entry["step"]))
    return verdict(
        NO_ISSUES,
        f"{len(entries)} saved steps; smallest mean |gradient| {smallest[0]:.2e} ({smallest[1]}, step "
        f"{smallest[2]}) is above {threshold:g}",
        steps_had={"TRAIN": len(entries)},
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
    verdict = _verdicts("overfit", params, reading=reading)
    train = [(s, v) for s, v in _losses(recording, "TRAIN") if s >= start_step]
    valid = _losses(recording, "EVAL")
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
                    f"at {_at(step, 'EVAL')}: mean validation loss {valid_mean:.4f} vs training "
                    f"{train_mean:.4f}, ratio {ratio:.3f} > {ratio_threshold} for {exceeded} saved "
                    "validation step(s)",
                    step=step,
                    mode="EVAL",
                    steps_had=_saved(recording),
                )
    if not compared:
        return verdict(
            NOT_ENOUGH,
            f"no saved validation step follows a training pass with a saved loss at step >= {start_step} "
            f"({_interval_hint(recording, 'TRAIN')}; {_interval_hint(recording, 'EVAL')})",
            steps_had=_saved(recording),
            steps_needed={"TRAIN": 1, "EVAL": patience},
        )
    return verdict(
        NO_ISSUES,
        f"{compared} saved validation steps compared; largest ratio {worst:.3f} <= {ratio_threshold}",
        steps_had=_saved(recording),
    )


def _stale_since(series: list[tuple[int, float]], patience: int, delta: float) -> tuple[int, float] | None:
    """The step at which the loss has not improved on its best by more than `delta` for `patience`
    saved steps, and that best."""
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
    verdict = _verdicts("overtraining", params, reading=reading)
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
    patience = {"EVAL": patience_validation, "TRAIN": patience_train}
    stalls = []
    for mode in judged:
        found = _stale_since(series[mode], patience[mode], delta)
        if found:
            stalls.append((global_step(recording, mode, found[0]), mode, *found))
    if stalls:
        _, mode, step, best = min(stalls)
        return verdict(
            ISSUES,
            f"{MODE_NAMES[mode]} loss not below its best {best:.4f} by more than {delta} for "
            f"{patience[mode]} saved steps, at {_at(step, mode)}: training longer no longer helps",
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
    verdict = _verdicts("poor_weight_initialization", params, reading=reading)
    structural = _zero_by_construction(recording)
    early_activations = [
        a for a in recording.get("activations", []) if a["mode"] == "TRAIN" and a["step"] < steps
    ]
    early_gradients = [g for g in recording.get("gradients", []) if g["step"] < steps]
    early_losses = [(s, v) for s, v in _losses(recording, "TRAIN") if s < steps]
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
                    _construction_caveat(names) if only_structural else "",
                )
            )
            break
    if len(early_losses) > patience:
        checked.append("loss")
        found = _stale_since(early_losses, patience, 0.0)
        if found:
            findings.append((found[0], f"loss did not decrease for {patience} saved steps", ""))
    else:
        skipped.append(f"loss ({len(early_losses)} saved of the first {steps} steps, needs {patience + 1})")
    had = {"TRAIN": len({e["step"] for e in early_gradients} | {s for s, _ in early_losses})}
    if findings:
        step, reason, caveat = min(findings)
        return verdict(
            ISSUES,
            f"at {_at(step, 'TRAIN')}: {reason}",
            step=step,
            mode="TRAIN",
            steps_had=had,
            caveat=caveat,
        )
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


LOSS_MODES = ("EVAL", "TRAIN", "GLOBAL")


def _mode_series(recording: dict, mode: str) -> list[tuple[int, float, str, int]]:
    """(step in `mode`'s numbering for the comparison, loss, the loss's own mode, its own step)."""
    if mode != "GLOBAL":
        return [(s, v, mode, s) for s, v in _losses(recording, mode)]
    every = [(global_step(recording, m, s), v, m, s) for m in MODES for s, v in _losses(recording, m)]
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
    verdict = _verdicts("loss_not_decreasing", params, reading=reading)
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
                    f"rose {rise:.1f}% above {rise_base[1]:.4f} at {_at(rise_base[3], rise_base[2])} "
                    f"(allowed: {increase_threshold_percent}%)"
                )
            else:
                fall = (ref_value - value) / abs(ref_value) * 100 if ref_value else 0.0
                failed = fall < diff_percent
                how = f"fell {fall:.3f}% (needs {diff_percent}%)"
                rise_base = entry
            if failed:
                same_weights = _same_weights(recording, ref, entry)
                return verdict(
                    ISSUES,
                    f"{MODE_NAMES[its_mode]} loss {value:.4f} at {_at(its_step, its_mode)} vs "
                    f"{ref_value:.4f} at {_at(ref[3], ref[2])}: {how}",
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
            f"({_interval_hint(recording, chosen if chosen in MODES else 'TRAIN')})",
            steps_had=had,
            steps_needed={chosen: 2},
        )
    return verdict(
        NO_ISSUES,
        f"{checks} checks over {len(series)} saved {chosen} losses; each fell by at least {diff_percent}% "
        f"or rose less than {increase_threshold_percent}%",
        steps_had=had,
    )


def _same_weights(recording: dict, first: tuple, second: tuple) -> bool:
    """Whether no training step ran between two saved non-training losses (same weights)."""
    if first[2] == "TRAIN" or second[2] == "TRAIN":
        return False
    low, high = sorted(
        (global_step(recording, first[2], first[3]), global_step(recording, second[2], second[3]))
    )
    for epoch in recording.get("epochs", []):
        t0, _ = epoch["train_steps"]
        if low < global_step(recording, "TRAIN", t0) <= high:
            return False
    return bool(recording.get("epochs")) or first[2] == second[2] == "PREDICT"


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
    verdict = _verdicts("exploding_tensor", params, reading=reading)
    key = "nan" if only_nan else "nonfinite"
    found: list[tuple[int, int, str, str]] = []  # (global step, step, mode, what)
    for mode in MODES:
        for step, value in _losses(recording, mode):
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
    saved = _saved(recording)
    if found:
        _, step, mode, what = min(found)
        return verdict(
            ISSUES,
            f"{'NaN' if only_nan else 'non-finite'} {what} at {_at(step, mode)} ({len(found)} in all)",
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
    verdict = _verdicts("dead_relu", params, reading=reading)
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
                    f"at {_at(entry['step'], 'TRAIN')}: {dead:.0f}% of the ReLUs of {name} are active less "
                    f"than {threshold_inactivity}% of the time",
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
    verdict = _verdicts("class_imbalance", params, reading=reading)
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


DEBUGGER_RULES: dict[str, Callable[..., Verdict]] = {
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
# Parameters AWS documents that the recording cannot honour: it names its tensors by module, not by
# smdebug's collections, so these stay at what the rule judges (every saved tensor of its kind).
FIXED_PARAMETERS = frozenset(
    {
        "activation_inputs_regex",
        "tensor_regex",
        "collection_names",
        "use_losses_collection",
        "labels_regex",
        "predictions_regex",
        "argmax",
    }
)


def settable_parameters(rule: str) -> dict[str, object]:
    """The parameters of an in-job debugger rule that `rule_parameters` may set, with their defaults."""
    signature = inspect.signature(DEBUGGER_RULES[rule])
    return {name: p.default for name, p in list(signature.parameters.items())[1:]}


def parse_rule_parameters(text: str) -> dict[str, dict]:
    """`--rule_parameters` (JSON, `{"overfit": {"patience": 3}}`) -> checked per-rule keyword arguments.

    config/schema.py checks config.toml's [debugger.rule_parameters] fully (ranges, choices); this
    refuses what would make a rule fail in the job: unknown rules or names, values of the wrong type."""
    try:
        document = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise ValueError(f"rule_parameters is not JSON ({error.msg})") from None
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise ValueError(
            'rule_parameters must be a JSON object of objects, e.g. {"overfit": {"patience": 3}}'
        )
    for rule, values in document.items():
        if rule not in DEBUGGER_RULES:
            raise ValueError(
                f"rule_parameters names {rule!r}; parameters can be set for {', '.join(DEBUGGER_RULES)}"
            )
        allowed = settable_parameters(rule)
        for name, value in values.items():
            if name not in allowed:
                raise ValueError(
                    f"rule_parameters: {rule} has no parameter {name!r}; it takes {', '.join(allowed)}"
                )
            default = allowed[name]
            fits = (
                isinstance(value, bool)
                if isinstance(default, bool)
                else isinstance(value, int) and not isinstance(value, bool)
                if isinstance(default, int)
                else isinstance(value, (int, float)) and not isinstance(value, bool)
                if isinstance(default, float)
                else value is None or value in LOSS_MODES
            )
            if not fits:
                raise ValueError(
                    f"rule_parameters: {rule} {name} = {value!r} is not of the kind of {default!r}"
                )
    return document


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


def evaluate_debugger_rules(
    names: list[str], recording: dict, parameters: dict[str, dict] | None = None
) -> list[Verdict]:
    """The debugger rules of `names`, each with its `parameters` (`parse_rule_parameters`)."""
    parameters = parameters or {}
    return [
        DEBUGGER_RULES[name](recording, **parameters.get(name, {}))
        for name in names
        if name in DEBUGGER_RULES
    ]


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
