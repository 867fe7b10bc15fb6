"""The Profiler rules judged in the job: LowGPUUtilization, CPUBottleneck, DataLoadingBottleneck.

Each takes the profile (`profiler.Profiler.data()`) and returns one `Verdict` (see rules.py).
"""

from __future__ import annotations

from rule_verdict import (
    ISSUES,
    NO_ISSUES,
    NOT_ENOUGH,
    Verdict,
    quantile,
    verdict_of,
)


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
    verdict = verdict_of("LowGPUUtilization", params, "profiler")
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
    verdict = verdict_of("CPUBottleneck", params, "profiler")
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
    verdict = verdict_of("DataLoadingBottleneck", params, "profiler")
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
