"""[data] url may be an s3:// URL (the schema allows it): `data prepare` and the notebook's data step fetch
it with boto3 as they fetch an http(s) URL. Offline, against moto's S3."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner
from conftest import PROJECT_ROOT, project_module
from launch_helpers import copy_project

moto = pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

data = project_module("workflow.dataset")
cli = project_module("cli")
ProjectConfig = project_module("config").ProjectConfig

BUCKET = "course-datasets"
KEY = "dogs/tiny.zip"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_dataset(tiny_dataset: Path, tmp_path: Path):
    """moto's S3 holding tiny_dataset zipped at s3://BUCKET/KEY; yields its URL."""
    archive = shutil.make_archive(str(tmp_path / "tiny"), "zip", tiny_dataset.parent, tiny_dataset.name)
    with mock.patch.dict("os.environ", FAKE_CREDENTIALS), moto.mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(archive, BUCKET, KEY)
        yield f"s3://{BUCKET}/{KEY}"


def test_prepare_downloads_an_s3_zip(s3_dataset: str, tiny_dataset: Path, tmp_path: Path) -> None:
    manifest = data.prepare(s3_dataset, tmp_path / "prepared")
    assert manifest.source == s3_dataset
    expected = {split: len(list((tiny_dataset / split).rglob("*.jpg"))) for split in data.SPLITS}
    assert {split: manifest.total(split) for split in data.SPLITS} == expected


def test_the_notebooks_data_step_reads_an_s3_url_from_the_config(s3_dataset: str, tmp_path: Path) -> None:
    project = copy_project(PROJECT_ROOT, tmp_path / "project")
    config_file = project / "config.toml"
    text = config_file.read_text(encoding="utf-8")
    url_line = next(line for line in text.splitlines() if line.startswith("url = "))
    config_file.write_text(text.replace(url_line, f'url = "{s3_dataset}"'), encoding="utf-8")
    config = ProjectConfig.load(project)
    manifest = data.prepared(config, tmp_path / "prepared")  # what the notebook's data cell calls
    assert manifest.total("train") > 0


@pytest.mark.parametrize(
    ("url", "reason"),
    [(f"s3://{BUCKET}/dogs/missing.zip", "no such object"), ("s3://no-such-bucket-here/x.zip", "no such")],
)
def test_a_missing_object_is_one_line_and_leaves_nothing(
    s3_dataset: str, tmp_path: Path, url: str, reason: str
) -> None:
    with pytest.raises(data.DataError) as raised:
        data.prepare(url, tmp_path / "prepared", download_dir=tmp_path / "downloads")
    assert str(raised.value).startswith(f"cannot download {url}: {reason}")
    assert "\n" not in str(raised.value)
    assert not any((tmp_path / "downloads").glob("*")), "no partial download is left behind"


def test_the_cli_prepares_from_s3(s3_dataset: str, tmp_path: Path) -> None:
    project = copy_project(PROJECT_ROOT, tmp_path / "project")
    result = CliRunner().invoke(
        cli.main, ["--project", str(project), "data", "prepare", s3_dataset, "--dest", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "manifest.json").is_file()
