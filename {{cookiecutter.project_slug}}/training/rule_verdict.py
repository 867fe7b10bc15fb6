"""A rule's verdict, and what every rule reads from a recording: losses per mode, saved steps, steps' order.

Shared by tensor_rules.py, loss_rules.py and profiler_rules.py; rules.py (the registry) says how
the verdicts are read. Pure Python: the rules are unit-tested on synthetic series without torch.
"""

from __future__ import annotations

import functools
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


def verdict_of(rule: str, params: dict, kind: str = "debugger", reading: str = "") -> Callable[..., Verdict]:
    """`Verdict` with the rule's name, kind, parameters and reading: `verdict(ISSUES, reason, step=...)`."""
    return functools.partial(Verdict, rule, kind=kind, parameters=params, reading=reading)


def quantile(values: list[float], q: float) -> float:
    """numpy.quantile's default (linear interpolation), without numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def losses(recording: dict, mode: str) -> list[tuple[int, float]]:
    return [(int(step), float(value)) for step, value in recording.get("losses", {}).get(mode, [])]


def saved_steps(recording: dict) -> dict[str, int]:
    return {mode: len(losses(recording, mode)) for mode in MODES}


def interval_hint(recording: dict, mode: str) -> str:
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


def step_name(step: int, mode: str) -> str:
    return f"{MODE_NAMES.get(mode, mode)} step {step}"


def zero_by_construction(recording: dict) -> set[str]:
    """Parameters whose gradient is zero up to rounding whatever the run does (recorder.py finds them:
    a bias followed by a BatchNorm, which subtracts each channel's batch mean and so the bias with it)."""
    return set(recording.get("zero_gradient_parameters", []))


def construction_caveat(names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"fired only on {shown}: a bias followed by a BatchNorm, whose gradient is zero by construction "
        "(the BatchNorm subtracts the batch mean, and the bias with it); on this network the rule's "
        "documented test cannot tell a healthy run from a sick one, so this verdict says nothing of the run"
    )


def weights_unchanged(recording: dict, first: tuple, second: tuple) -> bool:
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


def stale_since(series: list[tuple[int, float]], patience: int, delta: float) -> tuple[int, float] | None:
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
