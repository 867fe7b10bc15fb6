"""The training scripts' parts, in-process: parser, data checks, corrupt images, the feature cache.

The modules are imported from the staged training source directory, exactly what SageMaker runs.
"""

from __future__ import annotations

import ast
import errno
import io
import json
import random
import re
from pathlib import Path

import pytest
import torch
from conftest import REQUIRED_SCRIPT_ARGS, make_dataset, project_module, tiny_args
from PIL import Image
from torchvision.transforms import v2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("1", True), ("false", False), ("False", False), ("0", False)],
)
def test_str2bool_accepts_what_sagemaker_passes(training, text, expected):
    assert training("train_model").str2bool(text) is expected


def test_str2bool_refuses_anything_else(training):
    with pytest.raises(Exception, match="expected true, false, 1 or 0, got 'yes'"):
        training("train_model").str2bool("yes")


def test_paths_default_to_the_sagemaker_environment(training, monkeypatch, tmp_path):
    monkeypatch.setenv("SM_CHANNEL_TRAINING", "/data/training")
    monkeypatch.setenv("SM_MODEL_DIR", "/ml/model")
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", "/ml/output/data")
    monkeypatch.setenv("SM_NUM_GPUS", "4")
    monkeypatch.setenv("SM_HOSTS", '["algo-1","algo-2"]')
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-2")
    monkeypatch.delenv("SAGEMAKER_BASE_DIR", raising=False)
    args = training("train_model").get_args_parser("test").parse_args(REQUIRED_SCRIPT_ARGS)
    assert (args.data_dir, args.model_dir, args.output_data_dir) == (
        "/data/training",
        "/ml/model",
        "/ml/output/data",
    )
    assert args.checkpoint_dir == "/opt/ml/checkpoints"
    assert (args.num_gpus, args.hosts, args.current_host) == (4, ["algo-1", "algo-2"], "algo-2")
    assert args.pretrained is False  # "false", as the toolkit passes a boolean


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def _hook_calls(function: ast.FunctionDef) -> list[str]:
    """The methods called on `hook` inside `function`, in order."""
    return [
        node.func.attr
        for node in ast.walk(function)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "hook"
    ]


def test_train_model_shows_the_course_pieces_and_hpo_imports_its_loop(training_source):
    """A reviewer finds the network, train(), test() with the hook's modes, the hook's creation and
    registration, main() and the parser in train_model.py itself; hpo.py runs that loop, no copy."""
    script = ast.parse((training_source / "train_model.py").read_text())
    functions = _functions(script)
    assert {"net", "train", "test", "create_hook", "main", "get_args_parser"} <= set(functions)
    assert _hook_calls(functions["train"])[:1] == ["set_mode"]
    assert _hook_calls(functions["test"])[:1] == ["set_mode"]
    main_calls = {
        node.func.id
        for node in ast.walk(functions["main"])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert {"net", "create_hook", "test"} <= main_calls
    assert {"register_module", "register_loss"} <= set(_hook_calls(functions["main"]))

    hpo = ast.parse((training_source / "hpo.py").read_text())
    assert not _functions(hpo), "hpo.py defines its own functions: the loop belongs to train_model.py"
    imported = [node for node in hpo.body if isinstance(node, ast.ImportFrom)]
    assert [(node.module, sorted(a.name for a in node.names)) for node in imported] == [
        ("train_model", ["get_args_parser", "main"])
    ]


def test_objective_line_is_read_by_the_configured_regex(training, project_config):
    regex = project_config.section("tuning")["objective_metric_regex"]
    line = training("epoch").objective_line(0.1234567, 0.5)
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


def jpeg_or_png(size: tuple[int, int], image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    project_module("workflow.synthetic").make_image(0.3, size, random.Random(0)).save(
        buffer, format=image_format
    )
    return buffer.getvalue()


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_train_preset_is_exactly_torchvisions_random_crop_and_flip(training, image_format):
    """The box is drawn from the header before decoding; the crop is still torchvision's, seed for seed."""
    preset = training("classifier.presets").TrainPreset(32)
    reference = v2.Compose(
        [v2.PILToTensor(), v2.RandomResizedCrop(32, antialias=True), v2.RandomHorizontalFlip()]
    )
    body = jpeg_or_png((64, 48), image_format)
    for seed in range(20):
        torch.manual_seed(seed)
        ours = preset.uint8(Image.open(io.BytesIO(body)))
        torch.manual_seed(seed)
        assert torch.equal(ours, reference(Image.open(io.BytesIO(body)).convert("RGB")))


def test_training_batches_are_channels_last_and_scale_to_the_planar_values(training, tiny_dataset):
    """Training crops are stored pixel-interleaved and stacked as such; scaling reads either layout alike."""
    data, presets = training("data"), training("classifier.presets")
    preset = presets.TrainPreset(32)
    _, splits = data.discover_splits(tiny_dataset)
    items = [data.ImageFiles(splits["train"], preset.uint8)[(index, index)] for index in range(5)]
    batch = data.collate_skipping_failures([*items, (None, 0, 99)])
    assert batch.inputs.is_contiguous(memory_format=torch.channels_last)
    assert batch.failed == [99]
    planar = torch.stack([crop.contiguous() for crop, _, _ in items])
    assert planar.is_contiguous() and torch.equal(batch.inputs, planar)
    scaled, expected = preset.scaling(batch.inputs), preset.scaling(planar)
    assert scaled.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(scaled, expected, atol=1e-6)
    one = preset.scaling(items[0][0])  # a single interleaved image, as the endpoint would scale it
    assert torch.allclose(one, expected[0], atol=1e-6)


def test_a_large_crop_of_a_jpeg_is_decoded_at_reduced_scale_with_the_same_detail(training):
    presets = training("classifier.presets")
    body = jpeg_or_png((256, 192))
    box = (40, 30, 40 + 160, 30 + 130)  # 130 px tall: a quarter-scale decode still spans 32 px
    image = Image.open(io.BytesIO(body))
    reduced = presets.resized_crop(image, box, 32)
    assert image.size == (64, 48)  # the JPEG decoder skipped three quarters of each side
    full = Image.open(io.BytesIO(body)).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR, box=box)
    difference = (reduced.float() - v2.functional.pil_to_tensor(full).float()).abs()
    assert difference.mean() < 0.75  # of 255: resampling noise; the box moved by 4 px differs by 1.1


def test_a_truncated_jpeg_fails_augmentation_with_pillows_error(training):
    body = jpeg_or_png((64, 48))
    with pytest.raises(OSError):  # what ImageFiles catches to skip and report the file
        training("classifier.presets").TrainPreset(32).uint8(Image.open(io.BytesIO(body[: len(body) // 2])))


def test_corrupt_and_truncated_images_are_skipped_counted_and_reported(training, tmp_path, capsys):
    data_dir = make_dataset(tmp_path / "data", num_classes=3)
    (data_dir / "train" / "001.Class_001" / "garbage.jpg").write_bytes(b"not an image at all")
    good = (data_dir / "valid" / "002.Class_002").iterdir().__next__().read_bytes()
    (data_dir / "valid" / "002.Class_002" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    train_model = training("train_model")
    result = train_model.main(tiny_args(train_model, data_dir, tmp_path))
    assert result["skipped_images"] == 2
    out = capsys.readouterr().out
    assert "skipped images: 2 could not be decoded" in out
    assert "garbage.jpg" in out and "truncated.jpg" in out
    assert (tmp_path / "model" / "model.pth").is_file()


def test_bad_settings_are_refused_before_training(training, tiny_dataset, tmp_path):
    train_model = training("train_model")
    with pytest.raises(SystemExit, match="unknown optimizer 'adm'; choose adamw, sgd"):
        train_model.main(tiny_args(train_model, tiny_dataset, tmp_path, "--optimizer", "adm"))
    with pytest.raises(SystemExit, match="feature_cache=true needs finetune=head"):
        train_model.main(
            tiny_args(train_model, tiny_dataset, tmp_path, "--feature_cache", "true", "--finetune", "full")
        )


def test_feature_cache_trains_the_same_head_as_decoding_every_epoch(training, tiny_dataset, tmp_path):
    """Head mode without augmentation: cached features must give the same model, not an approximation.
    The rules that read ReLUs and labels judge both runs or say which setting would let them."""
    train_model, artifact = training("train_model"), training("classifier.artifact")
    models, verdicts = {}, {}
    for cached in ("false", "true"):
        out = tmp_path / cached
        args = tiny_args(
            train_model, tiny_dataset, out,
            "--finetune", "head", "--augment", "false", "--feature_cache", cached,
            "--epochs", "2", "--lr", "0.01", "--rules", "dead_relu,class_imbalance",
            "--rule_parameters", '{"class_imbalance": {"samples": 30}}',
        )  # fmt: skip
        train_model.main(args, use_debugger=True)
        models[cached], _ = artifact.load_artifact(out / "model")
        written = json.loads((out / "output" / "rule_verdicts.json").read_text())["rules"]
        verdicts[cached] = {v["rule"]: v for v in written}
    # Head-only: the frozen resnet18's ReLUs run at every step and are judged.
    assert verdicts["false"]["dead_relu"]["verdict"] in ("NoIssuesFound", "IssuesFound")
    # Cached features: no ReLU runs while training; the verdict names the setting that records them.
    assert verdicts["true"]["dead_relu"]["verdict"] == "NotEnoughData"
    assert "set feature_cache = false" in verdicts["true"]["dead_relu"]["reason"]
    for cached in ("false", "true"):  # 2 epochs of 18 training labels, cached or not
        assert verdicts[cached]["class_imbalance"]["verdict"] != "NotEnoughData", verdicts[cached]
    uncached, cached = models["false"].state_dict(), models["true"].state_dict()
    assert not torch.equal(
        uncached["fc.weight"],
        training("classifier.backbones")
        .build_model("resnet18", 3, finetune="head")
        .state_dict()["fc.weight"],
    )
    for name, tensor in uncached.items():
        torch.testing.assert_close(cached[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_the_pixel_cache_trains_the_model_of_decoding_every_epoch(training, tiny_dataset, tmp_path, capsys):
    """Augmented full finetuning: epochs after the first crop from kept pixels, drawing the same numbers."""
    train_model, artifact = training("train_model"), training("classifier.artifact")
    models = {}
    for budget in ("0", "1"):
        out = tmp_path / budget
        train_model.main(
            tiny_args(train_model, tiny_dataset, out, "--pixel_cache_gb", budget, "--epochs", "3")
        )
        models[budget], _ = artifact.load_artifact(out / "model")
    log = capsys.readouterr().out
    assert "pixel cache: off (pixel_cache_gb=0)" in log
    assert "pixel cache, train: 18 of 18 images" in log and "pixel cache, valid: 6 of 6 images" in log
    decoded, kept = models["0"].state_dict(), models["1"].state_dict()
    for name, tensor in decoded.items():
        assert torch.equal(kept[name], tensor), name


def test_debugger_log_names_the_real_reason_smdebug_did_not_import(training):
    debugger = training("debugger")
    missing = ModuleNotFoundError("No module named 'smdebug'", name="smdebug")
    assert debugger.import_failure(missing).startswith("smdebug is not installed")
    broken = AttributeError("`np.float_` was removed")
    assert debugger.import_failure(broken) == (
        "smdebug is installed but cannot be imported: AttributeError: `np.float_` was removed"
    )


def test_full_finetuning_drops_a_last_training_batch_of_one_image(training, tmp_path):
    """BatchNorm in training mode cannot normalise one image: 9 = 2 x 4 + 1 images train in two batches."""
    train_model = training("train_model")
    data_dir = make_dataset(
        tmp_path / "data", num_classes=3, images_per_class={"train": 3, "valid": 1, "test": 1}
    )
    args = tiny_args(train_model, data_dir, tmp_path / "run", "--finetune", "full", "--batch_size", "4")
    result = train_model.main(args)  # raised "Expected more than 1 value per channel when training" before
    assert result["epochs_run"] == 1
    history = (tmp_path / "run" / "output" / "history.json").read_text()
    assert '"validation_loss"' in history


def test_only_a_last_batch_of_one_is_dropped_and_only_when_asked(training):
    data = training("data")

    def batches(items: int, drop: bool) -> int:
        loader = data.make_loader(
            [None] * items,
            4,
            shuffle=True,
            seed=0,
            num_workers=0,
            distributed=False,
            pin_memory=False,
            drop_last_single=drop,
        )
        return len(loader)

    assert [batches(n, True) for n in (8, 9, 10, 1)] == [2, 2, 3, 1]
    assert [batches(n, False) for n in (8, 9, 10, 1)] == [2, 3, 3, 1]


def test_atomic_save_removes_its_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from classifier import artifact

    target = tmp_path / "best.pth"
    artifact.atomic_save({"epoch": 1}, target)

    def half_written(obj, stream, *args, **kwargs):
        stream.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="No space left"):
        artifact.atomic_save({"epoch": 2}, target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best.pth"]
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}


@pytest.mark.parametrize("failing", ["best.pth", "checkpoint.pth", "model.pth"])
def test_a_full_disk_while_saving_is_one_line_and_leaves_no_partial_file(
    training, tiny_dataset, tmp_path, monkeypatch, failing
):
    train_model = training("train_model")
    save = torch.save

    def disk_fills_up(obj, stream, *args, **kwargs):
        if Path(getattr(stream, "name", str(stream))).name == failing + ".tmp":
            stream.write(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, stream, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(SystemExit) as stopped:
        train_model.main(tiny_args(train_model, tiny_dataset, tmp_path))
    message = str(stopped.value)
    assert message.startswith(f"cannot save {tmp_path}/") and "\n" not in message
    assert "No space left on device; free space in" in message
    assert not list(tmp_path.rglob("*.tmp"))
