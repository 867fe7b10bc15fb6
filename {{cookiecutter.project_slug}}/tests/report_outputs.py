"""Synthetic outputs shaped like what training/train_model.py writes, and the checks every report test makes
of a written page."""

from __future__ import annotations

import io
import json
import tarfile
from html.parser import HTMLParser
from pathlib import Path

from conftest import project_module
from PIL import Image

report = project_module("report")


JOB = "dog-train-2026-01-01-00-00-00-000"
OUTPUT = "s3://bucket/prefix/output"
CLASSES = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]


# --- synthetic outputs, as the training job writes them ------------------------------------------


def verdicts_document() -> dict:
    return {
        "version": 1,
        "rules": [
            {"rule": "loss_not_decreasing", "verdict": "IssuesFound", "reason": "loss rose\nby 3%",
             "kind": "debugger", "step": 40, "mode": "TRAIN", "steps_had": {}, "steps_needed": {},
             "parameters": {"num_steps": 10, "diff_percent": 0.1},
             "reading": "TRAIN losses checked every 10 steps", "caveat": ""},
            {"rule": "overfit", "verdict": "NoIssuesFound", "reason": "within 10%", "kind": "debugger",
             "step": None, "mode": None, "steps_had": {}, "steps_needed": {}, "parameters": {}},
            {"rule": "overtraining", "verdict": "NotEnoughData", "reason": "3 saved EVAL steps; needs 11",
             "kind": "debugger", "step": None, "mode": "EVAL", "steps_had": {"EVAL": 3},
             "steps_needed": {"EVAL": 11}, "parameters": {}},
            {"rule": "DataLoadingBottleneck", "verdict": "IssuesFound",
             "reason": "72% of training step time waiting for data", "kind": "profiler", "step": None,
             "mode": None, "steps_had": {}, "steps_needed": {}, "parameters": {}},
        ],
    }  # fmt: skip


def recording_document(epochs: int = 3, steps_per_epoch: int = 10, confusion=None) -> dict:
    confusion = confusion or [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    train_losses = [[s, 2.0 - 0.04 * s] for s in range(0, epochs * steps_per_epoch, 2)]
    eval_losses = [[s, 1.5 - 0.1 * s] for s in range(epochs * 2)]
    return {
        "version": 1,
        "save_intervals": {"TRAIN": 2, "EVAL": 1, "PREDICT": 1},
        "steps_seen": {"TRAIN": epochs * steps_per_epoch, "EVAL": epochs * 2, "PREDICT": 1},
        "class_names": CLASSES,
        "losses": {"TRAIN": train_losses, "EVAL": eval_losses, "PREDICT": [[0, 0.9]]},
        "epochs": [
            {
                "epoch": e,
                "train_steps": [e * steps_per_epoch, (e + 1) * steps_per_epoch],
                "eval_steps": [2 * e, 2 * e + 2],
                "train_loss": 1.8 - 0.3 * e,
                "train_accuracy": 0.4 + 0.2 * e,
                "eval_loss": 1.4 - 0.1 * e,
                "eval_accuracy": 0.5 + 0.1 * e,
            }
            for e in range(epochs)
        ],
        "gradients": [
            {
                "step": s,
                "layers": {
                    "conv.weight": {"mean_abs": 1e-3 / (1 + s), "variance": 1e-6, "nonfinite": 0, "nan": 0},
                    "fc.weight": {"mean_abs": 1e-2 / (1 + s), "variance": 1e-5, "nonfinite": 0, "nan": 0},
                },
                "all": {"p5": -0.01, "p95": 0.01},
            }
            for s in range(0, epochs * steps_per_epoch, 2)
        ],
        "weights": [],
        "activations": [],
        "labels": {
            "TRAIN": {"counts": [10, 10, 10], "correct": [5, 6, 7]},
            "PREDICT": {
                "counts": [sum(row) for row in confusion],
                "correct": [confusion[i][i] for i in range(len(confusion))],
                "confusion": confusion,
            },
        },
        "test": {"loss": 0.9, "accuracy": 5 / 6, "images": 6},
    }


def profile_document(samples: int = 20, gpu: bool = False) -> dict:
    return {
        "version": 1,
        "interval_millis": 500,
        "gpu_count": 1 if gpu else 0,
        "gpu_note": None if gpu else "no GPU on this machine",
        "samples": [
            {
                "t": 0.5 * i,
                "cpu_percent": 50.0 + i % 7,
                "memory_percent": 30.0,
                **({"gpus": [{"index": 0, "utilization_percent": 20.0}]} if gpu else {}),
            }
            for i in range(samples)
        ],
        "steps": [
            {"mode": "TRAIN", "epoch": 0, "step": i, "data_seconds": 0.03, "compute_seconds": 0.01,
             "first_of_epoch": i == 0}
            for i in range(12)
        ],
    }  # fmt: skip


def write_outputs(folder: Path, **recording_options) -> Path:
    """An output data folder (SM_OUTPUT_DATA_DIR) with every file the report reads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rule_verdicts.json").write_text(json.dumps(verdicts_document()))
    (folder / "recording.json").write_text(json.dumps(recording_document(**recording_options)))
    (folder / "profiler.json").write_text(json.dumps(profile_document()))
    (folder / "profiler-report.html").write_text(
        "<!DOCTYPE html><html><body><h1>Profiler report</h1></body></html>"
    )
    (folder / "history.json").write_text(
        json.dumps({"epochs": [{"loss": 1.4, "accuracy": 0.5}], "test_accuracy": 5 / 6, "test_loss": 0.9})
    )
    return folder


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("href", "src") and value]


def assert_self_contained(index: Path) -> list[str]:
    """Every href/src of index.html is a file in the report folder: it reads offline."""
    parser = Links()
    parser.feed(index.read_text(encoding="utf-8"))
    assert parser.links
    for link in parser.links:
        assert "://" not in link and not link.startswith(("/", "//", "data:")), link
        assert (index.parent / link).is_file(), link
    return parser.links


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def description(**extra) -> dict:
    """DescribeTrainingJob after the rules ran (the SDK added and named the report rule itself)."""
    return {
        "TrainingJobName": JOB,
        "TrainingJobStatus": "Completed",
        "OutputDataConfig": {"S3OutputPath": OUTPUT},
        "ModelArtifacts": {"S3ModelArtifacts": f"{OUTPUT}/{JOB}/output/model.tar.gz"},
        "DebugHookConfig": {"S3OutputPath": "s3://bucket/prefix/debug-output"},
        "ProfilerConfig": {"S3OutputPath": "s3://bucket/prefix/profiler-output"},
        "DebugRuleConfigurations": [
            {"RuleConfigurationName": "LossNotDecreasing"},
            {"RuleConfigurationName": "Overfit"},
        ],
        "DebugRuleEvaluationStatuses": [
            {
                "RuleConfigurationName": "LossNotDecreasing",
                "RuleEvaluationStatus": "IssuesFound",
                "StatusDetails": "RuleEvaluationConditionMet:\n Evaluation of the rule   LossNotDecreasing",
            },
        ],
        "ProfilerRuleConfigurations": [{"RuleConfigurationName": "ProfilerReport-1645031653"}],
        "ProfilerRuleEvaluationStatuses": [
            {"RuleConfigurationName": "ProfilerReport-1645031653", "RuleEvaluationStatus": "NoIssuesFound"}
        ],
        **extra,
    }


def output_archive(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """output.tar.gz as SageMaker packs SM_OUTPUT_DATA_DIR (members relative to it), plus `extra`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def create_job(session, name: str) -> str:
    """A training job in the offline AWS (moto), as `train --dry-run` would leave it; its output path."""
    output_path = session.aws.s3_uri("output")
    session.aws.client("sagemaker").create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": "123.dkr.ecr.us-east-1.amazonaws.com/pytorch:2.8",
            "TrainingInputMode": "File",
        },
        RoleArn=session.aws.role_arn,
        OutputDataConfig={"S3OutputPath": output_path},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )
    session.state.record("training-job", name, model_data=f"{output_path}/{name}/output/model.tar.gz")
    return output_path


def put_output(session, output_path: str, name: str, archive: bytes) -> None:
    bucket, _, prefix = output_path.removeprefix("s3://").partition("/")
    session.aws.client("s3").put_object(
        Bucket=bucket, Key=f"{prefix}/{name}/output/output.tar.gz", Body=archive
    )
