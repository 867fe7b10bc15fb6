"""Profiling inside the training job: system samples, per-step timing, a report, an optional trace.

- `SystemSampler`: a daemon thread that reads, every `interval_millis`, CPU use (overall and per
  core, from /proc/stat), memory (/proc/meminfo) and, through NVML where a GPU and `pynvml` are
  present, each GPU's utilisation and memory. On a machine without them the GPU fields are absent,
  never zero: a zero would read as "idle GPU".
- `Profiler` (an `Observer`): the sampler plus, per step, the time spent waiting for the loader and
  the time spent computing (the loop syncs on `loss.item()` each step, so host time includes the GPU's).
- `write_report`: `profiler-report.html`, one self-contained file (plots inline as base64 PNG when
  matplotlib imports, tables otherwise), readable offline: the steps it timed and which of them the
  rules judged, the verdicts, a summary, the plots, and recommendations drawn from the verdicts.
- `TorchTrace`: a `torch.profiler` trace of a few training steps for TensorBoard (off by default).
"""

from __future__ import annotations

import base64
import html
import io
import threading
import time
from pathlib import Path

import torch
from recorder import Observer
from rule_verdict import Verdict, quantile


def _cpu_times() -> list[tuple[int, int]] | None:
    """(busy, total) jiffies for all CPUs together, then each core; None where /proc/stat is missing."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    times = []
    for line in lines:
        if not line.startswith("cpu"):
            break
        values = [int(v) for v in line.split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        times.append((sum(values) - idle, sum(values)))
    return times


def _memory() -> dict[str, float]:
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    except OSError:
        return {}
    total = int(fields["MemTotal"].split()[0]) / 1024
    available = int(fields.get("MemAvailable", fields["MemFree"]).split()[0]) / 1024
    return {
        "memory_used_mb": round(total - available, 1),
        "memory_percent": round(100 * (1 - available / total), 1),
    }


class _Nvml:
    """Each GPU's utilisation and memory via NVML; `note` says why not where it cannot."""

    def __init__(self) -> None:
        self.handles: list = []
        self.note: str | None = None
        if not torch.cuda.is_available():
            self.note = "no GPU on this machine"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as error:  # ImportError, or an NVMLError from a driver without NVML
            self.note = f"GPU present but NVML not usable ({type(error).__name__}: {error})"

    def read(self) -> list[dict]:
        gpus = []
        for index, handle in enumerate(self.handles):
            rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": index,
                    "utilization_percent": float(rates.gpu),
                    "memory_used_mb": round(memory.used / 2**20, 1),
                    "memory_total_mb": round(memory.total / 2**20, 1),
                }
            )
        return gpus


class SystemSampler(threading.Thread):
    def __init__(self, interval_millis: int) -> None:
        super().__init__(name="system-sampler", daemon=True)
        self.interval = interval_millis / 1000
        self.samples: list[dict] = []
        self.stopped = threading.Event()
        self.nvml = _Nvml()
        self.started_at = time.time()
        self._start = time.perf_counter()
        self._last = _cpu_times()

    def sample(self) -> None:
        reading: dict = {"t": round(time.perf_counter() - self._start, 3)}
        now = _cpu_times()
        if now and self._last:
            percent = [
                round(100 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else 0.0
                for (b0, t0), (b1, t1) in zip(self._last, now, strict=True)
            ]
            reading["cpu_percent"], reading["cpu_per_core"] = percent[0], percent[1:]
        self._last = now
        reading.update(_memory())
        if self.nvml.handles:
            reading["gpus"] = self.nvml.read()
        self.samples.append(reading)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.sample()
            except Exception as error:  # a sampler must never take the training down
                print(f"profiler: sampling stopped ({type(error).__name__}: {error})", flush=True)
                return

    def stop(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=5)


class Profiler(Observer):
    """System samples in the background, data/compute time per step in the loop."""

    def __init__(self, interval_millis: int) -> None:
        self.interval_millis = interval_millis
        self.sampler = SystemSampler(interval_millis)
        self.steps: list[dict] = []
        self._first, self._epoch = False, 0
        self.sampler.start()

    def begin_pass(self, mode: str, epoch: int, first_step: int) -> None:
        self._first, self._epoch = True, epoch

    def end_step(self, mode, step, loss, logits, labels, data_seconds, compute_seconds) -> None:
        self.steps.append(
            {
                "mode": mode,
                "epoch": self._epoch,
                "step": step,
                "data_seconds": round(data_seconds, 6),
                "compute_seconds": round(compute_seconds, 6),
                "first_of_epoch": self._first,
            }
        )
        self._first = False

    def close(self) -> None:
        self.sampler.stop()

    def data(self) -> dict:
        """profiler.json: the samples and step timings the profiler rules and the report read."""
        return {
            "version": 1,
            "interval_millis": self.interval_millis,
            "started_at": self.sampler.started_at,
            "cpu_count": len(self.sampler._last or [None, None]) - 1,
            "gpu_count": len(self.sampler.nvml.handles),
            "gpu_note": self.sampler.nvml.note,
            "samples": self.sampler.samples,
            "steps": self.steps,
        }


class TorchTrace(Observer):
    """`torch.profiler` over training steps 2 .. 1 + `steps` of the first epoch (one warm-up step)."""

    def __init__(self, steps: int, trace_dir: Path) -> None:
        self.trace_dir = trace_dir
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profile = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=0, warmup=1, active=steps, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(trace_dir)),
            record_shapes=True,
        )
        self.remaining = steps + 1
        self.running = False

    def begin_step(self, mode: str, step: int) -> None:
        if mode == "TRAIN" and self.remaining > 0 and not self.running:
            self.profile.start()
            self.running = True

    def end_step(self, mode, step, loss, logits, labels, data_seconds, compute_seconds) -> None:
        if mode == "TRAIN" and self.running:
            self.profile.step()
            self.remaining -= 1
            if self.remaining == 0:
                self.close()

    def close(self) -> None:
        if self.running:
            self.profile.stop()
            self.running = False
            print(f"profiler: torch.profiler trace in {self.trace_dir} (tensorboard --logdir)", flush=True)


# --------------------------------------------------------------------------- the report


def step_counts(profile: dict) -> dict[str, int]:
    """How many steps of each kind were timed. The rules and the summary judge the training steps that
    are not the first of an epoch (that one includes the loader's start-up), so every figure in the
    report names which of these sets it shows."""
    steps = profile.get("steps") or []
    train = [s for s in steps if s["mode"] == "TRAIN"]
    return {
        "all": len(steps),
        "train": len(train),
        "first_of_epoch": sum(1 for s in train if s.get("first_of_epoch")),
        "judged": sum(1 for s in train if not s.get("first_of_epoch")),
        "eval": sum(1 for s in steps if s["mode"] == "EVAL"),
        "predict": sum(1 for s in steps if s["mode"] == "PREDICT"),
    }


def _counts_sentence(counts: dict[str, int]) -> str:
    return (
        f"{counts['all']} timed steps: {counts['train']} training, {counts['eval']} validation, "
        f"{counts['predict']} test. Of the {counts['train']} training steps, {counts['first_of_epoch']} "
        f"are the first of an epoch (they include the loader's start-up); the rules and the summary judge "
        f"the other {counts['judged']}."
    )


# What to change when a profiler rule finds an issue, in the scripts' hyperparameters (config.toml's
# [hyperparameters] passes each key to train_model.py as `--key value`).
REMEDIES = {
    "LowGPUUtilization": "the GPU waited: raise batch_size, or train on a smaller (cheaper) GPU instance",
    "CPUBottleneck": (
        "the CPU held the GPU back: set feature_cache=true (with finetune=head) so the frozen backbone runs "
        "once, or choose an instance with more vCPUs"
    ),
    "DataLoadingBottleneck": (
        "steps waited for images: raise num_workers, or set pixel_cache_gb so decoded images stay in "
        "memory after the first epoch"
    ),
}


def recommendations(profile: dict, verdicts: list[Verdict]) -> list[str]:
    """What to do next, from the verdicts and the numbers above them: one sentence each."""
    advice = []
    for verdict in verdicts:
        if verdict.verdict == "IssuesFound" and verdict.rule in REMEDIES:
            advice.append(f"{verdict.rule}: {REMEDIES[verdict.rule]}.")
    unjudged = [v.rule for v in verdicts if v.verdict == "NotEnoughData"]
    if unjudged:
        advice.append(
            f"{', '.join(unjudged)} could not judge this run (NotEnoughData, this project's own verdict; "
            "SageMaker's built-in rules say NoIssuesFound when they cannot judge): "
            + (
                "it had no GPU; train on a GPU instance (ml.g4dn.xlarge or larger) to have them judged."
                if not profile.get("gpu_count")
                else "run more epochs for more samples and steps."
            )
        )
    train = [s for s in profile.get("steps") or [] if s["mode"] == "TRAIN" and not s.get("first_of_epoch")]
    data = sum(s["data_seconds"] for s in train)
    compute = sum(s["compute_seconds"] for s in train)
    if not any(a.startswith("DataLoadingBottleneck") for a in advice) and data + compute > 0:
        share = 100 * data / (data + compute)
        advice.append(
            f"Waiting for data took {share:.0f}% of the {len(train)} judged training steps' time: "
            + ("the loader keeps up." if share < 10 else "raising num_workers may still shorten the steps.")
        )
    if not any(v.verdict == "IssuesFound" for v in verdicts):
        advice.insert(
            0, "No profiler rule found an issue" + (": nothing needs changing." if not unjudged else ".")
        )
    return advice


def _summary_rows(profile: dict) -> list[tuple[str, str, str, str, str]]:
    rows = []

    def add(label: str, values: list[float], unit: str) -> None:
        if values:
            rows.append(
                (
                    label,
                    *(f"{quantile(values, q):.1f}{unit}" for q in (0.05, 0.5, 0.95)),
                    f"{max(values):.1f}{unit}",
                )
            )

    samples = profile["samples"]
    add("CPU (all cores)", [s["cpu_percent"] for s in samples if "cpu_percent" in s], "%")
    add("memory", [s["memory_percent"] for s in samples if "memory_percent" in s], "%")
    for index in range(profile.get("gpu_count", 0)):
        gpus = [g for s in samples for g in s.get("gpus", []) if g["index"] == index]
        add(f"GPU {index} utilisation", [g["utilization_percent"] for g in gpus], "%")
        add(f"GPU {index} memory", [g["memory_used_mb"] for g in gpus], " MB")
    train = [s for s in profile["steps"] if s["mode"] == "TRAIN" and not s["first_of_epoch"]]
    judged = f" ({len(train)} judged steps)"
    add(f"training step: waiting for data{judged}", [1000 * s["data_seconds"] for s in train], " ms")
    add(f"training step: computing{judged}", [1000 * s["compute_seconds"] for s in train], " ms")
    return rows


def _plots(profile: dict) -> list[tuple[str, str]]:
    """(title, base64 PNG) per figure; none where matplotlib does not import."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    figures = []

    def png(fig) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    samples = profile["samples"]
    if samples:
        fig, ax = plt.subplots(figsize=(8, 3))
        times = [s["t"] for s in samples]
        ax.plot(times, [s.get("cpu_percent", float("nan")) for s in samples], label="CPU")
        ax.plot(times, [s.get("memory_percent", float("nan")) for s in samples], label="memory")
        for index in range(profile.get("gpu_count", 0)):
            values = [
                next((g["utilization_percent"] for g in s.get("gpus", []) if g["index"] == index), None)
                for s in samples
            ]
            ax.plot(times, [float("nan") if v is None else v for v in values], label=f"GPU {index}")
        ax.set(
            xlabel="seconds since the start of training", ylabel="% used", ylim=(0, 105), title="utilisation"
        )
        if len(samples) < 30:  # few samples: markers, so a single one still shows
            for line in ax.get_lines():
                line.set_marker("o")
                line.set_markersize(3)
        ax.legend(loc="upper right")
        figures.append(("Utilisation over time", png(fig)))
    train = [s for s in profile["steps"] if s["mode"] == "TRAIN"]
    if train:
        # Every timed training step is a bar; the first of each epoch (left out of the rules) is hatched.
        counts = step_counts(profile)
        fig, ax = plt.subplots(figsize=(8, 3))
        index = [s["step"] for s in train]
        data = [1000 * s["data_seconds"] for s in train]
        compute = [1000 * s["compute_seconds"] for s in train]
        ax.bar(index, data, label="waiting for data", width=0.9, color="C0")
        ax.bar(index, compute, bottom=data, label="computing", width=0.9, color="C1")
        first = [
            (x, d + c) for x, d, c, s in zip(index, data, compute, train, strict=True) if s["first_of_epoch"]
        ]
        if first:
            ax.bar(
                [x for x, _ in first], [h for _, h in first], width=0.9, fill=False, hatch="//",
                edgecolor="black", linewidth=0, label="first of an epoch (not judged)",
            )  # fmt: skip
        ax.set(
            xlabel="training step",
            ylabel="milliseconds",
            title=f"time per training step ({counts['train']} steps; {counts['judged']} judged)",
        )
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="upper right", fontsize=8)
        figures.append(("Data loading versus computing", png(fig)))
    return figures


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


# A plain string, not an f-string: its braces stay single (and this folder is rendered by Jinja).
STYLE = (
    "body { font-family: sans-serif; max-width: 60em; margin: 2em auto }"
    " table { border-collapse: collapse }"
    " td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: left }"
)


def write_report(path: Path, profile: dict, verdicts: list[Verdict]) -> Path:
    """One HTML file with everything inline: verdicts, a utilisation summary, the plots."""
    verdict_rows = [(v.rule, v.verdict, v.reason) for v in verdicts]
    plots = _plots(profile)
    figures = (
        "".join(
            f"<h2>{html.escape(title)}</h2>"
            f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
            for title, data in plots
        )
        or "<p>(matplotlib is not installed here: tables only)</p>"
    )
    advice = (
        "<ul>" + "".join(f"<li>{html.escape(a)}</li>" for a in recommendations(profile, verdicts)) + "</ul>"
    )
    gpu = (
        f"{profile['gpu_count']} GPU(s)"
        if profile.get("gpu_count")
        else html.escape(profile.get("gpu_note") or "")
    )
    text = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Profiler report</title>
<style>{STYLE}</style></head><body>
<h1>Profiler report</h1>
<p>{len(profile["samples"])} system samples every {profile["interval_millis"]} ms; {gpu}.</p>
<p>{html.escape(_counts_sentence(step_counts(profile)))}</p>
<h2>Rules</h2>{_table(("rule", "verdict", "reason"), verdict_rows)}
<h2>Summary</h2>{_table(("metric", "p5", "median", "p95", "max"), _summary_rows(profile))}
{figures}
<h2>Recommendations</h2>{advice}
</body></html>
"""
    path.write_text(text, encoding="utf-8")
    return path
