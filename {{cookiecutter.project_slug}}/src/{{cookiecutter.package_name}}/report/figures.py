"""Drawing the report's figures (matplotlib's object API, no pyplot state; the `debug` extra)."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .fetch import ReportError
from .series import MODES, ClassAccuracy, EpochPoint, _number, downsample, step_series

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


MODE_TITLES = {"TRAIN": "training", "EVAL": "validation"}
# config.toml's [debugger] key that sets how often each mode's losses (and gradients) are saved.
SAVE_INTERVAL_KEYS = {"TRAIN": "train_save_interval", "EVAL": "eval_save_interval"}
# What the [debug] extra brings; named in the error when it is missing.
DEBUG_EXTRA = "pip install -e '.[debug]'"
# Classes the confusion matrix labels on its axes (133 labels would be unreadable).
MAX_LABELLED_CLASSES = 30


# --- pictures -------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError(f"the report's pictures need matplotlib: {DEBUG_EXTRA}") from None
    return Figure(figsize=(width, height), layout="constrained")


def _empty(axes: Axes, text: str) -> None:
    axes.set_axis_off()
    axes.text(0.5, 0.5, text, ha="center", va="center", wrap=True)


def _epoch_ticks(axes: Axes, epochs: Sequence[float]) -> None:
    """Whole epochs on the x axis; one epoch gets one tick with room either side, not 0.96 .. 1.04."""
    from matplotlib.ticker import MaxNLocator

    if not epochs:
        return
    low, high = min(epochs), max(epochs)
    if high - low < 1:
        axes.set_xlim(low - 0.5, high + 0.5)
        axes.set_xticks(sorted({round(low), round(high)}))
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _plot(
    axes: Axes, xs: Sequence[float], ys: Sequence[float | None], *, join: bool = True, **style: Any
) -> None:
    """A line with markers where points are few (a single point still shows); `join=False`: markers only."""
    points = downsample([(x, y) for x, y in zip(xs, ys, strict=True) if y is not None])
    if not points:
        return
    few = len(points) <= 30
    if not join:
        style["linestyle"] = "none"
    axes.plot(
        [x for x, _ in points], [y for _, y in points], marker="o" if few or not join else None,
        markersize=4, **style,
    )  # fmt: skip


def loss_figure(points: Sequence[EpochPoint], recording: dict[str, Any] | None = None) -> Figure:
    """Left: per-epoch training and validation loss (and accuracy, right-hand axis) on one epoch axis,
    so over-fitting shows as the curves parting. Right: the loss of every saved step, both modes."""
    figure = _figure(11, 3.8)
    left, right = figure.subplots(1, 2)
    epochs = [p.epoch for p in points]
    if any(p.training_loss is not None or p.validation_loss is not None for p in points):
        _plot(left, epochs, [p.training_loss for p in points], label="training loss", color="C0")
        _plot(left, epochs, [p.validation_loss for p in points], label="validation loss", color="C1")
        left.set_xlabel("epoch")
        left.set_ylabel("cross-entropy loss")
        left.grid(alpha=0.3)
        lines, labels = left.get_legend_handles_labels()
        if any(p.training_accuracy is not None or p.validation_accuracy is not None for p in points):
            accuracy = left.twinx()
            _plot(
                accuracy,
                epochs,
                [p.training_accuracy for p in points],
                label="training accuracy",
                color="C0",
                linestyle="--",
            )
            _plot(
                accuracy,
                epochs,
                [p.validation_accuracy for p in points],
                label="validation accuracy",
                color="C1",
                linestyle="--",
            )
            accuracy.set_ylabel("accuracy (fraction right)")
            accuracy.set_ylim(0, 1.02)
            more_lines, more_labels = accuracy.get_legend_handles_labels()
            lines, labels = lines + more_lines, labels + more_labels
        # Below the axes: four entries inside would sit on the curves.
        left.legend(lines, labels, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8)
        _epoch_ticks(left, epochs)
        left.set_title("Loss and accuracy per epoch")
    else:
        _empty(left, "no per-epoch losses were recorded")
    series = step_series(recording)
    if series:
        in_epochs = all(flag for _, _, flag in series.values())
        for mode, (xs, ys, _) in series.items():
            # Fewer saved points than epochs: a line between them would draw a curve nobody measured.
            join = len(xs) >= max(len(epochs), 2)
            _plot(right, xs, ys, join=join, label=f"{MODE_TITLES[mode]} ({_interval(recording, mode)})")
        if in_epochs:
            from matplotlib.ticker import MaxNLocator

            right.set_xlabel("epoch (each epoch's steps spread over it)")
            right.set_xlim(0, max([*epochs, *(max(xs) for xs, _, _ in series.values())]) + 0.1)
            right.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            right.set_xlabel("step (counted per mode)")
        right.set_ylabel("cross-entropy loss")
        right.grid(alpha=0.3)
        right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8)
        right.set_title("Loss at the saved steps")
        _caption(figure, saving_note(recording, tuple(m for m in MODES if m in series)))
    else:
        _empty(right, "no step losses were recorded (no debugger rule ran)")
    return figure


def _interval(recording: dict[str, Any] | None, mode: str) -> str:
    every = ((recording or {}).get("save_intervals") or {}).get(mode)
    return "every step" if every == 1 else f"every {every} steps" if every else "saved steps"


def saving_note(recording: dict[str, Any] | None, modes: Sequence[str] = MODES) -> str:
    """One sentence under a picture of saved steps: how many were saved of how many, and the
    config.toml setting that gives more points (`[debugger] train_save_interval = 100`)."""
    recording = recording or {}
    parts, sparse = [], []
    for mode in modes:
        every = (recording.get("save_intervals") or {}).get(mode)
        seen = (recording.get("steps_seen") or {}).get(mode)
        saved = len((recording.get("losses") or {}).get(mode) or [])
        if not every:
            continue
        of = f" of {seen}" if seen else ""
        parts.append(
            f"{saved}{of} {MODE_TITLES[mode]} steps saved ([debugger] {SAVE_INTERVAL_KEYS[mode]} = {every})"
        )
        if every > 1:
            sparse.append(SAVE_INTERVAL_KEYS[mode])
    if not parts:
        return ""
    if not sparse:
        return f"{'; '.join(parts)}: every step is drawn."
    return f"{'; '.join(parts)}. A smaller {' / '.join(sparse)} in config.toml gives more points."


def _caption(figure: Figure, text: str) -> None:
    """A sentence under the whole figure, wrapped to its width (about 15 characters per inch at 8 pt)."""
    if text:
        width = int(figure.get_figwidth() * 15)
        figure.supxlabel(textwrap.fill(text, width), fontsize=8, color="#444")


def _step_axis(axes: Axes, steps: Sequence[float], seen: int | None) -> None:
    """Training steps from 0 to the last one the run took, whole numbers: one saved step sits at its place
    in the run rather than in the middle of an axis from -0.04 to 0.04."""
    from matplotlib.ticker import MaxNLocator

    if not steps:
        return
    high = max(max(steps), (seen or 0) - 1)
    pad = max(0.5, 0.03 * high)
    axes.set_xlim(min(0.0, min(steps)) - pad, high + pad)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def gradient_figure(recording: dict[str, Any] | None) -> Figure | None:
    """Mean |gradient| per layer over the saved training steps (median, range, the last layer), and
    the spread of all gradient values (5th and 95th percentiles); None when no gradient was recorded."""
    entries = downsample((recording or {}).get("gradients") or [])
    if not entries:
        return None
    figure = _figure(11, 3.5)
    left, right = figure.subplots(1, 2)
    steps = [float(e["step"]) for e in entries]
    per_step = [[_number(s.get("mean_abs")) for s in e.get("layers", {}).values()] for e in entries]
    per_step = [[v for v in values if v is not None and v > 0] for values in per_step]
    kept = [(x, values) for x, values in zip(steps, per_step, strict=True) if values]
    if kept:
        xs = [x for x, _ in kept]
        low, high = [min(v) for _, v in kept], [max(v) for _, v in kept]
        if len(kept) > 1:
            left.fill_between(xs, low, high, alpha=0.2, label="range over layers")
        else:  # one step: a band of no width would not show
            left.vlines(xs, low, high, linewidth=8, alpha=0.2, label="range over layers")
        _plot(left, xs, [statistics.median(v) for _, v in kept], label="median layer")
        last = list(entries[-1].get("layers", {}))[-1:] or []
        if last:
            values = [_number(e.get("layers", {}).get(last[0], {}).get("mean_abs")) for e in entries]
            _plot(left, steps, [v if v and v > 0 else None for v in values], label=f"{last[0]} (last layer)")
        left.set_yscale("log")
        left.set_ylabel("mean |gradient| (log scale)")
        left.legend(loc="best", fontsize=8)
    else:
        _empty(left, "every recorded gradient was zero or not finite")
    seen = ((recording or {}).get("steps_seen") or {}).get("TRAIN")
    left.set_title("Mean |gradient| per layer")
    left.set_xlabel("training step")
    left.grid(alpha=0.3)
    _step_axis(left, steps, seen)
    _plot(right, steps, [_number((e.get("all") or {}).get("p95")) for e in entries], label="95th percentile")
    _plot(right, steps, [_number((e.get("all") or {}).get("p5")) for e in entries], label="5th percentile")
    right.set_title("Spread of gradient values")
    right.set_xlabel("training step")
    right.set_ylabel("gradient value")
    right.grid(alpha=0.3)
    right.legend(loc="best", fontsize=8)
    _step_axis(right, steps, seen)
    _caption(figure, saving_note(recording, ("TRAIN",)))
    return figure


def utilisation_figure(profile: dict[str, Any] | None) -> Figure | None:
    """CPU and memory (and each GPU where one was present) over the run; None without samples."""
    samples = downsample((profile or {}).get("samples") or [])
    if not samples:
        return None
    figure = _figure(11, 3.2)
    axes = figure.subplots()
    times = [float(s.get("t", 0.0)) for s in samples]
    _plot(axes, times, [_number(s.get("cpu_percent")) for s in samples], label="CPU (all cores)")
    _plot(axes, times, [_number(s.get("memory_percent")) for s in samples], label="memory")
    # GPU lines only where the sampler saw a GPU: a line at zero would read as "idle GPU".
    for index in range(int((profile or {}).get("gpu_count") or 0)):
        values = [
            next(
                (_number(g.get("utilization_percent")) for g in s.get("gpus", []) if g.get("index") == index),
                None,
            )
            for s in samples
        ]
        _plot(axes, times, values, label=f"GPU {index}")
    axes.set_ylim(0, 105)
    axes.set_xlabel("seconds since the start of training")
    axes.set_ylabel("% in use")
    axes.set_title("Utilisation over time")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    return figure


def confusion_figure(matrix: list[list[int]], names: Sequence[str]) -> Figure:
    """Test images per (true, predicted) class; counts written in the cells when the classes are few."""
    size = len(matrix)
    side = min(max(4.0, 0.25 * size + 2), 14)
    figure = _figure(side + 1, side)
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues", interpolation="nearest")
    from matplotlib.ticker import MaxNLocator

    colorbar = figure.colorbar(image, ax=axes, shrink=0.8, label="test images")
    colorbar.locator = MaxNLocator(integer=True)  # counts: no 0.5 images
    colorbar.update_ticks()
    if size <= MAX_LABELLED_CLASSES:
        axes.set_xticks(range(size), [str(n)[:20] for n in names], rotation=90, fontsize=7)
        axes.set_yticks(range(size), [str(n)[:20] for n in names], fontsize=7)
    peak = max((max(row) for row in matrix), default=0)
    if size <= 15:
        for row in range(size):
            for column in range(size):
                value = matrix[row][column]
                axes.text(
                    column, row, str(value), ha="center", va="center", fontsize=8,
                    color="white" if value > peak / 2 else "black",
                )  # fmt: skip
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"Confusion matrix of the test set ({sum(map(sum, matrix))} images)")
    return figure


def class_accuracy_figure(classes: Sequence[ClassAccuracy], shown: int = 15) -> Figure:
    """Accuracy per class on the test set: every class when they are few, else the best and worst `shown`."""
    judged = sorted((c for c in classes if c.images), key=lambda c: (c.accuracy or 0.0, c.name))
    if len(judged) > 2 * shown:
        judged = judged[:shown] + judged[-shown:]
        title = f"Test accuracy of the {shown} worst and {shown} best classes"
    else:
        title = "Test accuracy per class"
    figure = _figure(7, max(2.5, 0.22 * len(judged) + 1))
    axes = figure.subplots()
    axes.barh(range(len(judged)), [c.accuracy or 0.0 for c in judged], color="C2")
    axes.set_yticks(range(len(judged)), [f"{c.name[:28]} ({c.images})" for c in judged], fontsize=7)
    axes.set_xlim(0, 1)
    axes.set_xlabel("accuracy (test images in brackets)")
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    return figure
