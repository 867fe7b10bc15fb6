"""The in-job profiler: samples and verdicts on a CPU run, the data-loading verdict, the report, the trace.

GPU fields must be absent on a CPU machine, not zero: a zero reads as "an idle GPU" and would make
LowGPUUtilization judge a GPU that does not exist.
"""

from __future__ import annotations

import base64
import importlib
import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REQUIRED_SCRIPT_ARGS
from test_rules import mlp_builder, noisy_dataset
from torch import nn


@pytest.fixture(scope="module")
def training(training_source):
    sys.path.insert(0, str(training_source))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(training_source))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return noisy_dataset(tmp_path_factory.mktemp("profiler-data"), {"train": 8, "valid": 2, "test": 2})


def run(training, monkeypatch, tmp_path: Path, data: Path, *extra: str, model=None) -> Path:
    engine = training("engine")
    monkeypatch.setattr(engine, "build_model", model or mlp_builder(1.0))
    args = engine.get_args_parser("test").parse_args(
        [
            *REQUIRED_SCRIPT_ARGS,
            "--data_dir", str(data),
            "--model_dir", str(tmp_path / "model"),
            "--output_data_dir", str(tmp_path / "output"),
            "--checkpoint_dir", "",
            "--image_size", "32",
            "--pretrained", "false",
            "--finetune", "full",
            "--augment", "false",
            "--num_workers", "0",
            "--batch_size", "4",
            "--test_batch_size", "6",
            "--epochs", "2",
            "--profiler_interval_millis", "20",
            *extra,
        ]
    )  # fmt: skip
    engine.main(args, use_debugger=True, evaluate_test=True)
    return tmp_path / "output"


def verdicts(output: Path) -> dict[str, dict]:
    return {v["rule"]: v for v in json.loads((output / "rule_verdicts.json").read_text())["rules"]}


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
    judged = verdicts(output)
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


def test_a_slow_loader_is_a_data_loading_bottleneck(training, monkeypatch, dataset, tmp_path):
    data = training("data")

    class SlowImages(data.ImageFiles):
        def __getitem__(self, item):
            # 50 ms an image against a tiny MLP's compute: data-bound even on a loaded 2-core machine.
            time.sleep(0.05)
            return super().__getitem__(item)

    monkeypatch.setattr(training("engine"), "ImageFiles", SlowImages)
    judged = verdicts(run(training, monkeypatch, tmp_path, dataset, "--rules", "ProfilerReport"))
    assert judged["DataLoadingBottleneck"]["verdict"] == "IssuesFound", judged["DataLoadingBottleneck"]


def test_a_slow_network_is_not_a_data_loading_bottleneck(training, monkeypatch, dataset, tmp_path):
    build = mlp_builder(1.0)

    def slow_model(*args, **kwargs) -> nn.Module:
        model = build(*args, **kwargs)
        model[1].register_forward_pre_hook(lambda *_: time.sleep(0.03))
        return model

    judged = verdicts(
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
