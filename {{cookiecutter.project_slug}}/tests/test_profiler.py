"""The in-job profiler: samples and verdicts on a CPU run, the data-loading verdict, the report, the trace.

GPU fields must be absent on a CPU machine, not zero: a zero reads as "an idle GPU" and would make
LowGPUUtilization judge a GPU that does not exist.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest
import torch
from test_rules import mlp_builder, mlp_run, noisy_dataset, rule_verdicts
from torch import nn


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return noisy_dataset(tmp_path_factory.mktemp("profiler-data"), {"train": 8, "valid": 2, "test": 2})


def run(training, monkeypatch, tmp_path: Path, data: Path, *extra: str, model=None) -> Path:
    """Two epochs of batches of 4, sampled every 20 ms; returns the output data directory."""
    return mlp_run(
        training, monkeypatch, tmp_path, data,
        "--batch_size", "4", "--epochs", "2", "--profiler_interval_millis", "20", *extra,
        model=model,
    )  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU records")
def test_cpu_run_samples_the_system_without_gpu_fields(training, monkeypatch, dataset, tmp_path, capsys):
    output = run(
        training, monkeypatch, tmp_path, dataset, "--rules", "LowGPUUtilization,CPUBottleneck,ProfilerReport"
    )
    profile = json.loads((output / "profiler.json").read_text())
    assert profile["samples"], "the sampler thread recorded nothing"
    assert all("gpus" not in sample for sample in profile["samples"])
    assert profile["gpu_count"] == 0 and profile["gpu_note"] == "no GPU on this machine"
    assert {"t", "cpu_percent", "cpu_per_core", "memory_percent"} <= set(profile["samples"][-1])
    assert {s["mode"] for s in profile["steps"]} == {"TRAIN", "EVAL", "PREDICT"}
    judged = rule_verdicts(output)
    assert judged["LowGPUUtilization"]["verdict"] == "NotEnoughData"
    assert judged["CPUBottleneck"]["verdict"] == "NotEnoughData"
    assert judged["ProfilerReport"]["verdict"] in ("NoIssuesFound", "IssuesFound")
    assert re.search(
        r"^rule:LowGPUUtilization verdict=NotEnoughData step=- reason=no GPU", capsys.readouterr().out, re.M
    )
    report = (output / "profiler-report.html").read_text()
    assert "LowGPUUtilization" in report and "DataLoadingBottleneck" in report
    images = re.findall(r"src='data:image/png;base64,([^']+)'", report)
    assert images and all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert "http" not in report  # readable offline: nothing fetched
    # Its figures agree: the steps it says it timed are the steps in profiler.json, and the training
    # steps the rules judged are the number DataLoadingBottleneck's reason gives.
    steps = profile["steps"]
    train = [s for s in steps if s["mode"] == "TRAIN"]
    judged_steps = [s for s in train if not s["first_of_epoch"]]
    counts = re.search(r"(\d+) timed steps: (\d+) training, .* the other (\d+)\.", report)
    assert counts and [int(n) for n in counts.groups()] == [len(steps), len(train), len(judged_steps)]
    assert f"{len(judged_steps)} steps; threshold" in judged["DataLoadingBottleneck"]["reason"]
    assert f"({len(judged_steps)} judged steps)" in report  # the summary's step rows
    # It ends with what to do: here, that the GPU rules need a GPU to judge anything.
    advice = report.split("<h2>Recommendations</h2>", 1)[1]
    assert "LowGPUUtilization, CPUBottleneck could not judge this run" in advice
    assert "train on a GPU instance" in advice


def test_a_slow_loader_is_a_data_loading_bottleneck(training, monkeypatch, dataset, tmp_path):
    data = training("data")

    class SlowImages(data.ImageFiles):
        def __getitem__(self, item):
            # 0.12 s a training image, ~0.5 s a step: waiting that does not shrink with the machine's
            # load, while a step's compute grows with it (about 0.25 s on two cores under a load of 7).
            if self.files.name == "train":
                time.sleep(0.12)
            return super().__getitem__(item)

    monkeypatch.setattr(training("loaders"), "ImageFiles", SlowImages)
    output = run(training, monkeypatch, tmp_path, dataset, "--rules", "ProfilerReport")
    judged = rule_verdicts(output)
    assert judged["DataLoadingBottleneck"]["verdict"] == "IssuesFound", judged["DataLoadingBottleneck"]
    advice = (output / "profiler-report.html").read_text().split("<h2>Recommendations</h2>", 1)[1]
    assert "DataLoadingBottleneck: steps waited for images: raise num_workers" in advice


def test_a_slow_network_is_not_a_data_loading_bottleneck(training, monkeypatch, dataset, tmp_path):
    build = mlp_builder(1.0)

    def slow_model(*args, **kwargs) -> nn.Module:
        model = build(*args, **kwargs)
        model[1].register_forward_pre_hook(lambda *_: time.sleep(0.03))
        return model

    judged = rule_verdicts(
        run(training, monkeypatch, tmp_path, dataset, "--rules", "ProfilerReport", model=slow_model)
    )
    assert judged["DataLoadingBottleneck"]["verdict"] == "NoIssuesFound", judged["DataLoadingBottleneck"]


def test_torch_profiler_traces_a_few_steps_for_tensorboard(training, monkeypatch, dataset, tmp_path):
    output = run(training, monkeypatch, tmp_path, dataset, "--torch_profiler_steps", "2")
    assert list((output / "torch_profiler").glob("*.pt.trace.json"))
    assert not (output / "rule_verdicts.json").exists()  # no rules asked for: none judged


def test_low_gpu_utilization_follows_aws_parameters(training):
    rules = training("rules")

    def profile(utilisation: list[float]) -> dict:
        samples = [
            {"t": i * 0.5, "gpus": [{"index": 0, "utilization_percent": u}]}
            for i, u in enumerate(utilisation)
        ]
        return {"interval_millis": 500, "samples": samples}

    assert rules.low_gpu_utilization(profile([30.0] * 1001)).verdict == "IssuesFound"
    assert rules.low_gpu_utilization(profile([95.0] * 1001)).verdict == "NoIssuesFound"
    fluctuating = rules.low_gpu_utilization(profile([95.0, 95.0, 0.0, 95.0, 95.0] * 201))
    assert fluctuating.verdict == "IssuesFound" and "fluctuating" in fluctuating.reason
    waiting = rules.low_gpu_utilization(profile([30.0] * 1000))  # patience: more than 1000 readings
    assert waiting.verdict == "NotEnoughData" and waiting.steps_needed == {"samples": 1001}
