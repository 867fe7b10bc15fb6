"""`data prepare`, `data synthetic`, `data upload`: layout, manifest, corrupt images, skipping."""

from __future__ import annotations

import ast
import errno
import http.server
import inspect
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PACKAGE, project_module
from launch_helpers import copy_project
from PIL import Image

data = project_module("workflow.dataset")
dataset_source = project_module("workflow.dataset_source")
cli = project_module("cli")
data_commands = project_module("cli.dataset")
job_commands = project_module("cli.jobs")
cli_shared = project_module("cli.shared")
open_session = project_module("aws.session").open_session
ProjectConfig = project_module("config").ProjectConfig
local_training = project_module("local.training_run")


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


# --- nothing lost or half-written -------------------------------------------------------------------


def solid(folder: Path, name: str, colour: tuple[int, int, int], image_format: str, size=(48, 40)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(folder / name, format=image_format)


def distance(first: tuple[float, ...], second: tuple[float, ...]) -> float:
    return sum((a - b) ** 2 for a, b in zip(first, second, strict=True))


def mean_colour(path: Path) -> tuple[float, ...]:
    with Image.open(path) as image:
        pixels = list(image.convert("RGB").getdata())
    return tuple(sum(channel) / len(pixels) for channel in zip(*pixels, strict=True))


def colliding_dataset(root: Path) -> dict[tuple[float, ...], str]:
    """Every split and class; in train/a, four images whose names differ only in suffix or its case.
    Each image has its own colour: the colour says which input an output came from."""
    colours: dict[tuple[float, ...], str] = {}
    names = [("dog.png", "PNG"), ("dog.jpg", "JPEG"), ("dog.JPG", "JPEG"), ("dog.webp", "WEBP")]
    for split in data.SPLITS:
        for class_index, name in enumerate(("a", "b")):
            files = names if (split, name) == ("train", "a") else [("other.jpg", "JPEG")]
            for index, (file_name, image_format) in enumerate(files):
                colour = (40 * index + 10, 100 * class_index + 20, 60 * data.SPLITS.index(split) + 30)
                solid(root / split / name, file_name, colour, image_format)
                colours[colour] = f"{split}/{name}/{file_name}"
    return colours


# Copied, only dog.jpg meets a name taken (dog.JPG, where case does not count); resized, every image is
# written as .jpg, so three of the four are renamed.
@pytest.mark.parametrize(("resize_to", "renamed"), [(None, 1), (20, 3)], ids=["copied", "resized"])
def test_every_input_image_is_one_output_when_names_collide(tmp_path, resize_to, renamed):
    colours = colliding_dataset(tmp_path / "source")
    manifest = data.prepare(tmp_path / "source", tmp_path / "out", resize_to=resize_to)
    outputs = [path for path in (tmp_path / "out").rglob("*") if path.is_file() and path.suffix != ".json"]
    # One file per input, names distinct even where case does not count (macOS, Windows).
    assert len(outputs) == len(colours)
    assert len({path.relative_to(tmp_path / "out").as_posix().lower() for path in outputs}) == len(outputs)
    found = set()
    for path in outputs:  # each output is the input of the nearest colour (JPEG shifts it a little)
        colour = mean_colour(path)
        nearest = min(colours, key=lambda candidate: distance(candidate, colour))
        assert distance(nearest, colour) < 50, path
        found.add(colours[nearest])
    assert found == set(colours.values())
    # The manifest counts what is on disk, and names what was renamed.
    for split in data.SPLITS:
        for name in manifest.classes:
            assert manifest.counts[split][name] == len(list((tmp_path / "out" / split / name).iterdir()))
    assert len(manifest.renamed) == renamed and {item["path"] for item in manifest.renamed} < set(
        colours.values()
    )
    again = data.prepare(tmp_path / "source", tmp_path / "again", resize_to=resize_to)
    assert again.renamed == manifest.renamed  # the same names every run


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims `width` x `height` pixels (and holds no pixels)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_oversize_and_undecodable_images_are_skipped_and_listed_never_a_traceback(
    project_root, tiny_dataset, tmp_path
):
    source = tmp_path / "source"
    shutil.copytree(tiny_dataset, source)
    folder = source / "train" / "001.Class_001"
    png_header_only(folder / "huge.png", 30_000, 30_000)  # 900 megapixels: over Pillow's limit
    (folder / "noise.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "empty.webp").write_bytes(b"")
    result = CliRunner().invoke(
        cli.main,
        ["--project", str(project_root), "data", "prepare", str(source), "--dest", str(tmp_path / "out")],
    )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    manifest = data.read_manifest(tmp_path / "out")
    reasons = {item["path"].rsplit("/", 1)[1]: item["reason"] for item in manifest.excluded}
    assert sorted(reasons) == ["empty.webp", "huge.png", "noise.jpg"]
    assert reasons["huge.png"].startswith("DecompressionBombError")
    text = " ".join(result.stdout.split())
    assert "3 images left out" in text and all(f"train/001.Class_001/{name}" in text for name in reasons)
    assert manifest.counts["train"]["001.Class_001"] == 6


def test_an_error_that_stops_prepare_leaves_no_partial_dest(
    project_root, tiny_dataset, tmp_path, monkeypatch
):
    copied = []

    def disk_fills_up(source, target):
        if len(copied) == 5:
            Path(target).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(target)
        return shutil.copyfile(source, target)

    monkeypatch.setattr(data.shutil, "copy2", disk_fills_up)
    out = tmp_path / "parent" / "out"
    arguments = ["--project", str(project_root), "data", "prepare", str(tiny_dataset), "--dest", str(out)]
    result = CliRunner().invoke(cli.main, [*arguments, "--resize", "0"])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: No space left on device while preparing {out}")
    assert not out.exists() and list(out.parent.iterdir()) == []  # no staging folder left either


def test_a_full_disk_stops_prepare_in_one_line_and_leaves_nothing(small_disk, tmp_path):
    source = tmp_path / "source"
    for index in range(4):  # 12 images of ~190 KB of noise: more than the disk holds
        for split in data.SPLITS:
            folder = source / split / f"c{index % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3)).save(folder / f"{index}.png")
    with pytest.raises(data.DataError) as failure:
        data.prepare(source, small_disk / "out")
    assert "No space left on device" in str(failure.value) and "\n" not in str(failure.value)
    assert list(small_disk.iterdir()) == []


def test_prepare_refuses_a_dest_that_is_not_empty_naming_a_real_option(project_root, tiny_dataset, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(
        cli.main,
        [
            "--project",
            str(project_root),
            "data",
            "prepare",
            str(tiny_dataset),
            "--dest",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 1
    named = re.findall(r"--[a-z][a-z-]*", result.stderr)
    prepare_options = {
        option for param in data_commands.data.commands["prepare"].params for option in param.opts
    }
    assert named and set(named) <= prepare_options
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def click_options(command) -> set[str]:
    options = {option for param in command.params for option in (*param.opts, *param.secondary_opts)}
    for sub in getattr(command, "commands", {}).values():
        options |= click_options(sub)
    return options


def test_every_option_named_in_a_data_or_training_message_exists():
    """Messages of the dataset modules, local/training_run.py and the data and train commands name only
    real options."""
    sources = [inspect.getsource(data), inspect.getsource(dataset_source), inspect.getsource(local_training)]
    sources += [
        inspect.getsource(function)
        for function in (
            data_commands.data_prepare.callback,
            data_commands.data_synthetic.callback,
            data_commands.data_upload.callback,
            job_commands.train.callback,
            cli_shared.claim_run_dir,
        )
    ]
    named = set()
    for source in sources:
        tree = ast.parse(inspect.cleandoc(source) if source.startswith(" ") else source)
        # Docstrings describe (SageMaker's `--name value`); messages are every other string.
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                named |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", node.value))
    assert "--dest" in named and "--overwrite" in named  # the scan finds them
    assert named <= click_options(cli.main), named - click_options(cli.main)


def write_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return path


def dataset_members(tiny_dataset: Path) -> dict[str, bytes]:
    return {
        f"set/{p.relative_to(tiny_dataset).as_posix()}": p.read_bytes() for p in tiny_dataset.rglob("*.jpg")
    }


def test_a_zip_bomb_is_refused_in_one_line_before_anything_is_written(tiny_dataset, tmp_path, monkeypatch):
    bomb = write_zip(
        tmp_path / "bomb.zip", {**dataset_members(tiny_dataset), "set/train/x/big.bmp": bytes(64 << 20)}
    )
    assert bomb.stat().st_size < 1 << 20  # 64 MiB of zeros in well under 1 MiB
    monkeypatch.setattr(zipfile.ZipFile, "extract", lambda *a, **k: pytest.fail("extracted"))
    started = time.perf_counter()
    with pytest.raises(data.DataError) as failure:
        data.prepare(bomb, tmp_path / "out")
    took = time.perf_counter() - started
    message = str(failure.value)
    assert "\n" not in message and "set/train/x/big.bmp expands" in message and "not extracted" in message
    assert took < 2, took  # read from the zip's directory, nothing decompressed
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("limit", "value", "words"),
    [
        ("MAX_ZIP_MEMBERS", 10, "files; at most 10"),
        ("MAX_ZIP_MEMBER_BYTES", 100, "no image needs more than 100"),
    ],
)
def test_zip_member_count_and_size_are_bounded(tiny_dataset, tmp_path, monkeypatch, limit, value, words):
    archive = write_zip(tmp_path / "set.zip", dataset_members(tiny_dataset), zipfile.ZIP_STORED)
    monkeypatch.setattr(dataset_source, limit, value)
    with pytest.raises(data.DataError, match=re.escape(words)):
        data.prepare(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_zip_larger_than_the_free_space_is_refused():
    members = [zipfile.ZipInfo("a.jpg"), zipfile.ZipInfo("b.jpg")]
    for member in members:
        member.file_size = member.compress_size = 600
    with pytest.raises(data.DataError, match="expands to 1,200 bytes, over 1,000"):
        dataset_source.check_zip_bounds(Path("set.zip"), members, free_bytes=1000)
    dataset_source.check_zip_bounds(Path("set.zip"), members, free_bytes=1200)


def test_zip_slip_members_stay_inside(tiny_dataset, tmp_path, monkeypatch):
    scratch = tmp_path / "deep" / "er" / "scratch"
    scratch.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where prepare extracts
    inside = "set/train/001.Class_001/"
    members = {
        **dataset_members(tiny_dataset),
        inside + "../" * 6 + "climbed.jpg": b"x",  # extracted as set/train/001.Class_001/climbed.jpg
        "/" + inside + "rooted.jpg": b"x",  # as set/train/001.Class_001/rooted.jpg, not under /
    }
    manifest = data.prepare(write_zip(tmp_path / "set.zip", members), tmp_path / "out")
    # Inside the dataset, where they are found not to decode: nothing was written outside the scratch folder.
    excluded = sorted(item["path"] for item in manifest.excluded)
    assert excluded == ["train/001.Class_001/climbed.jpg", "train/001.Class_001/rooted.jpg"]
    assert not [path for path in tmp_path.rglob("*.jpg") if path.name in ("climbed.jpg", "rooted.jpg")]
    assert not Path("/" + inside + "rooted.jpg").exists()


@pytest.mark.parametrize("layout", ["folder per class", "splits"])
def test_an_empty_class_folder_is_named_in_one_line_not_dropped(tiny_dataset, tmp_path, layout, project_root):
    source = tmp_path / "source"
    if layout == "splits":
        shutil.copytree(tiny_dataset, source)
        (source / "valid" / "004.Class_004").mkdir()
        empty = "valid/004.Class_004"
    else:
        shutil.copytree(tiny_dataset / "train", source)
        (source / "004.Class_004").mkdir()
        (source / "004.Class_004" / ".DS_Store").write_bytes(b"\0")
        empty = "004.Class_004"
    result = CliRunner().invoke(
        cli.main,
        ["--project", str(project_root), "data", "prepare", str(source), "--dest", str(tmp_path / "out")],
    )
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"1 class folder(s) of {source} hold no images ({empty})" in line
    assert not (tmp_path / "out").exists()


def test_a_class_left_without_images_in_a_split_is_refused(tmp_path):
    """Training refuses a class missing from a split: prepare says so first, and writes nothing."""
    for name, count in (("a", 10), ("b", 10), ("c", 1)):
        for index in range(count):
            solid(tmp_path / "source" / name, f"{index}.jpg", (index * 30, 0, 0), "JPEG")
    with pytest.raises(data.DataError, match=r"no images left for valid/c, test/c"):
        data.prepare(tmp_path / "source", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def solid_jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("set/train/001.Class_001/dup.jpg", "set/train/001.Class_001/dup.jpg"),  # zip allows one name twice
        ("set/train/001.Class_001/dup.jpg", "set/train/001.Class_001/DUP.JPG"),  # one file on macOS, Windows
        ("set/train/001.Class_001/dup.jpg", "set\\train\\001.Class_001\\dup.jpg"),  # one file on Windows
    ],
    ids=["twice", "case", "separator"],
)
def test_a_zip_with_two_members_extracted_to_one_file_is_refused_in_one_line_naming_them(
    tiny_dataset, tmp_path, monkeypatch, first, second
):
    archive = tmp_path / "set.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(archive, "w") as zipped:
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name, and writes it
        for name, payload in dataset_members(tiny_dataset).items():
            zipped.writestr(name, payload)
        zipped.writestr(first, solid_jpeg((250, 0, 0)))
        zipped.writestr(second, solid_jpeg((0, 0, 250)))
    monkeypatch.setattr(zipfile.ZipFile, "extract", lambda *a, **k: pytest.fail("extracted"))
    with pytest.raises(data.DataError) as failure:
        data.prepare(archive, tmp_path / "out")
    message = str(failure.value)
    assert "\n" not in message and "not extracted" in message
    assert repr(first) in message and repr(second) in message
    assert not (tmp_path / "out").exists()


class FailingServer(http.server.BaseHTTPRequestHandler):
    """Each download fails its own way. /cut.zip and /stall.zip promise 100,000 bytes and send 1,000:
    the first then closes the connection, the second goes silent for a second; anything else is a 404."""

    def do_GET(self) -> None:
        if self.path not in ("/cut.zip", "/stall.zip"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"PK" + bytes(998))
        self.wfile.flush()
        if self.path == "/stall.zip":
            time.sleep(1)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_base():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FailingServer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("cut.zip", "the connection closed after 1,000 of 100,000 bytes"),
        ("stall.zip", "timed out"),
        ("missing.zip", "HTTP 404"),
    ],
)
def test_a_failed_http_download_is_one_line_and_leaves_no_part_file(
    http_base, tmp_path, monkeypatch, name, reason
):
    monkeypatch.setattr(dataset_source, "DOWNLOAD_TIMEOUT_SECONDS", 0.2)
    url = f"{http_base}/{name}"
    with pytest.raises(data.DataError) as failure:
        data.prepare(url, tmp_path / "out", download_dir=tmp_path / "downloads")
    assert str(failure.value).startswith(f"cannot download {url}: {reason}")
    assert "\n" not in str(failure.value)
    # Neither a .part nor a truncated zip that the next prepare would take for the dataset.
    assert list((tmp_path / "downloads").iterdir()) == []
    assert not (tmp_path / "out").exists()


# Runs `data.prepare(SOURCE, DEST)` in a process of its own that stops at the first image, as on a long
# dataset, to be killed there.
STALLED_PREPARE = f"""
import sys, time
from pathlib import Path
from {PACKAGE}.workflow import dataset as data
data.check_image = lambda path: time.sleep(600)
data.prepare(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def test_a_killed_prepares_staging_folder_is_removed_by_the_next_in_one_line(
    project_root, tiny_dataset, tmp_path, capsys
):
    out = tmp_path / "parent" / "out"
    source_path = os.pathsep.join([str(project_root / "src"), str(project_root)])
    environment = {**os.environ, "PYTHONPATH": source_path}
    stalled = subprocess.Popen(
        [sys.executable, "-c", STALLED_PREPARE, str(tiny_dataset), str(out)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(".out.partial-*")):
        assert stalled.poll() is None, stalled.communicate()[1].decode()
        assert time.monotonic() < deadline, "the stalled prepare made no staging folder"
        time.sleep(0.05)
    stalled.kill()  # SIGKILL: no finally runs
    stalled.communicate()
    (killed,) = out.parent.glob(".out.partial-*")
    running = Path(tempfile.mkdtemp(prefix=data.staging_prefix(out), dir=out.parent))  # this live process's
    manifest = data.prepare(tiny_dataset, out)
    assert manifest.total("train") == 18
    assert not killed.exists() and running.is_dir()
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "removed" in line]  # not progress
    assert line.startswith(f"removed what a killed earlier prepare of {out} left: {killed.name}")
    assert sorted(out.parent.iterdir()) == sorted([out, running])
