"""`data prepare`, `data synthetic`, `data upload`: layout, manifest, corrupt images, skipping."""

from __future__ import annotations

import json
import shutil
import zipfile

import pytest
from click.testing import CliRunner
from conftest import project_module
from launch_helpers import copy_project
from PIL import Image

data = project_module("data")
cli = project_module("cli")
open_session = project_module("session").open_session
ProjectConfig = project_module("config").ProjectConfig


def test_prepare_keeps_the_splits_and_excludes_corrupt_images(tiny_dataset, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_dataset, source)
    broken = source / "train" / "002.Class_002" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    manifest = data.prepare(source, tmp_path / "prepared")
    assert manifest.counts["train"]["002.Class_002"] == 6
    assert manifest.counts["valid"]["001.Class_001"] == 2
    assert [item["path"] for item in manifest.excluded] == ["train/002.Class_002/broken.jpg"]
    assert not (tmp_path / "prepared" / "train" / "002.Class_002" / "broken.jpg").exists()
    written = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert written["counts"] == manifest.counts


def test_prepare_splits_a_zipped_folder_per_class_by_ratio_with_a_fixed_seed(tiny_dataset, tmp_path):
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for image in (tiny_dataset / "train").rglob("*.jpg"):
            zipped.write(image, f"flat/{image.parent.name}/{image.name}")
    first = data.prepare(archive, tmp_path / "a", ratios=(0.5, 0.25, 0.25), seed=1)
    second = data.prepare(archive, tmp_path / "b", ratios=(0.5, 0.25, 0.25), seed=1)
    assert first.counts == second.counts
    assert sorted(p.name for p in (tmp_path / "a" / "valid").rglob("*.jpg")) == sorted(
        p.name for p in (tmp_path / "b" / "valid").rglob("*.jpg")
    )
    # Per class of 6: 3 train, round(1.5) = 2 valid, the remaining 1 test.
    assert [first.total(split) for split in data.SPLITS] == [9, 6, 3]


def test_prepare_can_shrink_the_images(tiny_dataset, tmp_path):
    data.prepare(tiny_dataset, tmp_path / "small", resize_to=20)
    for image in (tmp_path / "small").rglob("*.jpg"):
        with Image.open(image) as opened:
            assert min(opened.size) == 20


def test_prepare_refuses_what_is_not_a_dataset(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(data.DataError, match="neither train/valid/test"):
        data.prepare(tmp_path / "empty", tmp_path / "out")


def test_synthetic_command_writes_the_requested_dataset(project_root, tmp_path):
    result = CliRunner().invoke(
        cli.main,
        [
            "--project",
            str(project_root),
            "data",
            "synthetic",
            str(tmp_path / "demo"),
            "--classes",
            "4",
            "--size",
            "32x24",
            "--per-class",
            "3,1,2",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = data.read_manifest(tmp_path / "demo")
    assert len(manifest.classes) == 4
    assert [manifest.total(split) for split in data.SPLITS] == [12, 4, 8]
    with Image.open(next((tmp_path / "demo" / "train").rglob("*.jpg"))) as image:
        assert image.size == (32, 24)


def test_upload_skips_files_already_there_and_unchanged(project_root, tiny_dataset, tmp_path):
    config = ProjectConfig.load(copy_project(project_root, tmp_path / "project"))
    with open_session(config, dry_run=True, folder=tmp_path / "out") as session:
        first = data.upload(session.aws, tiny_dataset)
        second = data.upload(session.aws, tiny_dataset)
    # A later dry-run session finds the offline S3 as the last one left it: nothing to upload again.
    with open_session(config, dry_run=True, folder=tmp_path / "out") as session:
        third = data.upload(session.aws, tiny_dataset)
        aws = session.aws
    files = [path for path in tiny_dataset.rglob("*") if path.is_file()]
    assert len(first.uploaded) == len(files) and not first.skipped
    assert not second.uploaded and len(second.skipped) == len(files)
    assert not third.uploaded and len(third.skipped) == len(files)
    assert first.destination == aws.s3_uri("data") + "/"
    key = first.uploaded[0]
    assert (tmp_path / "out" / "aws" / "s3" / aws.bucket / key).is_file()
