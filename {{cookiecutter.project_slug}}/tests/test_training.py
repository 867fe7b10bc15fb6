"""The training scripts' parts, in-process: parser, data checks, corrupt images, the feature cache.

The modules are imported from the staged training source directory, exactly what SageMaker runs.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_dataset
from PIL import Image


@pytest.fixture(scope="module")
def training(training_source):
    """Import a module of the staged training sources: `training("engine")`."""
    sys.path.insert(0, str(training_source))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(training_source))


def tiny_args(training, data_dir: Path, tmp_path: Path, *extra: str):
    engine = training("engine")
    return engine.get_args_parser("test").parse_args(
        [
            "--data_dir",
            str(data_dir),
            "--model_dir",
            str(tmp_path / "model"),
            "--output_data_dir",
            str(tmp_path / "output"),
            "--checkpoint_dir",
            str(tmp_path / "checkpoints"),
            "--epochs",
            "1",
            "--batch_size",
            "6",
            "--test_batch_size",
            "6",
            "--image_size",
            "32",
            "--pretrained",
            "false",
            "--num_workers",
            "0",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("1", True), ("false", False), ("False", False), ("0", False)],
)
def test_str2bool_accepts_what_sagemaker_passes(training, text, expected):
    assert training("engine").str2bool(text) is expected


def test_str2bool_refuses_anything_else(training):
    with pytest.raises(Exception, match="expected true, false, 1 or 0, got 'yes'"):
        training("engine").str2bool("yes")


def test_paths_default_to_the_sagemaker_environment(training, monkeypatch, tmp_path):
    monkeypatch.setenv("SM_CHANNEL_TRAINING", "/data/training")
    monkeypatch.setenv("SM_MODEL_DIR", "/ml/model")
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", "/ml/output/data")
    monkeypatch.setenv("SM_NUM_GPUS", "4")
    monkeypatch.setenv("SM_HOSTS", '["algo-1","algo-2"]')
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-2")
    monkeypatch.delenv("SAGEMAKER_BASE_DIR", raising=False)
    args = training("engine").get_args_parser("test").parse_args(["--pretrained", "False"])
    assert (args.data_dir, args.model_dir, args.output_data_dir) == (
        "/data/training",
        "/ml/model",
        "/ml/output/data",
    )
    assert args.checkpoint_dir == "/opt/ml/checkpoints"
    assert (args.num_gpus, args.hosts, args.current_host) == (4, ["algo-1", "algo-2"], "algo-2")
    assert args.pretrained is False


def test_objective_line_is_read_by_the_configured_regex(training, project_config):
    regex = project_config.section("tuning")["objective_metric_regex"]
    line = training("engine").objective_line(0.1234567, 0.5)
    assert line == "validation:loss=0.123457 validation:accuracy=0.500000"
    assert float(re.search(regex, line).group(1)) == pytest.approx(0.123457)


def test_classes_are_sorted_folder_names_identical_across_splits(training, tiny_dataset):
    class_names, splits = training("data").discover_splits(tiny_dataset, num_classes=3)
    assert class_names == ["001.Class_001", "002.Class_002", "003.Class_003"]
    for files in splits.values():
        assert {label for path, label in files.samples} == {0, 1, 2}
        assert all(path.parent.name == class_names[label] for path, label in files.samples)


def test_a_class_missing_from_a_split_is_refused(training, tmp_path):
    data_dir = make_dataset(
        tmp_path / "data", num_classes=3, images_per_class={"train": 1, "valid": 1, "test": 1}
    )
    for image in (data_dir / "valid" / "002.Class_002").iterdir():
        image.unlink()
    with pytest.raises(
        training("data").DatasetLayoutError, match=r"valid/ has no images of class 002.Class_002"
    ):
        training("data").discover_splits(data_dir)


def test_a_class_count_that_disagrees_with_num_classes_is_refused(training, tiny_dataset):
    with pytest.raises(
        training("data").DatasetLayoutError, match="num_classes is 133 but .* has 3 class folders"
    ):
        training("data").discover_splits(tiny_dataset, num_classes=133)


def test_training_loader_gives_serving_tensors(training, tiny_dataset):
    """Workers ship uint8, the batch is scaled on the device: the result equals EvalPreset's tensor."""
    data, presets = training("data"), training("classifier.presets")
    preset = presets.EvalPreset(32)
    _, splits = data.discover_splits(tiny_dataset)
    loader = data.make_loader(
        data.ImageFiles(splits["valid"], preset.uint8),
        4,
        shuffle=False,
        seed=0,
        num_workers=0,
        distributed=False,
        pin_memory=False,
    )
    batch = next(iter(loader))
    expected = torch.stack([preset(Image.open(path)) for path, _ in splits["valid"].samples[:4]])
    assert batch.inputs.dtype == torch.uint8
    assert torch.equal(preset.scaling(batch.inputs), expected)


def test_corrupt_and_truncated_images_are_skipped_counted_and_reported(training, tmp_path, capsys):
    data_dir = make_dataset(tmp_path / "data", num_classes=3)
    (data_dir / "train" / "001.Class_001" / "garbage.jpg").write_bytes(b"not an image at all")
    good = (data_dir / "valid" / "002.Class_002").iterdir().__next__().read_bytes()
    (data_dir / "valid" / "002.Class_002" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    result = training("engine").main(tiny_args(training, data_dir, tmp_path))
    assert result["skipped_images"] == 2
    out = capsys.readouterr().out
    assert "skipped images: 2 could not be decoded" in out
    assert "garbage.jpg" in out and "truncated.jpg" in out
    assert (tmp_path / "model" / "model.pth").is_file()


def test_bad_settings_are_refused_before_training(training, tiny_dataset, tmp_path):
    with pytest.raises(SystemExit, match="unknown optimizer 'adm'; choose adamw, sgd"):
        training("engine").main(tiny_args(training, tiny_dataset, tmp_path, "--optimizer", "adm"))
    with pytest.raises(SystemExit, match="feature_cache=true needs finetune=head"):
        training("engine").main(
            tiny_args(training, tiny_dataset, tmp_path, "--feature_cache", "true", "--finetune", "full")
        )


def test_feature_cache_trains_the_same_head_as_decoding_every_epoch(training, tiny_dataset, tmp_path):
    """Head mode without augmentation: cached features must give the same model, not an approximation."""
    artifact = training("classifier.artifact")
    models = {}
    for cached in ("false", "true"):
        out = tmp_path / cached
        args = tiny_args(
            training,
            tiny_dataset,
            out,
            "--finetune",
            "head",
            "--augment",
            "false",
            "--feature_cache",
            cached,
            "--epochs",
            "2",
            "--lr",
            "0.01",
        )
        training("engine").main(args)
        models[cached], _ = artifact.load_artifact(out / "model")
    uncached, cached = models["false"].state_dict(), models["true"].state_dict()
    assert not torch.equal(
        uncached["fc.weight"],
        training("classifier.backbones")
        .build_model("resnet18", 3, finetune="head")
        .state_dict()["fc.weight"],
    )
    for name, tensor in uncached.items():
        torch.testing.assert_close(cached[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
