"""Helpers shared by the launcher tests: a disposable copy of the project, archives, request lookup."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path
from typing import Any

import botocore.session
import botocore.validate


def copy_project(project_root: Path, destination: Path) -> Path:
    """config.toml, classifier/, training/, inference/ and ray_serve/ in a fresh folder (its own .state/)."""
    destination.mkdir(parents=True)
    shutil.copy2(project_root / "config.toml", destination / "config.toml")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("classifier", "training", "inference", "ray_serve"):
        shutil.copytree(project_root / folder, destination / folder, ignore=ignore)
    return destination


def model_archive(path: Path) -> Path:
    """A model.tar.gz shaped like training's output (contents are stand-ins: nothing loads them here)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in (("model.pth", b"weights"), ("metadata.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def archive_names(path: Path) -> set[str]:
    with tarfile.open(path) as archive:
        return {name.removeprefix("./") for name in archive.getnames()}


def archive_text(path: Path, name: str) -> str:
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            if member.name.removeprefix("./") == name:
                return archive.extractfile(member).read().decode()
    raise KeyError(name)


def requirements(text: str) -> list[str]:
    """The package names a requirements.txt installs (comments and blank lines skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line.split("=")[0].split("<")[0].split(">")[0].strip() for line in lines if line]


def calls_of(calls: list[dict[str, Any]], operation: str) -> list[dict[str, Any]]:
    return [call["params"] for call in calls if call["operation"] == operation]


def only(calls: list[dict[str, Any]], operation: str) -> dict[str, Any]:
    found = calls_of(calls, operation)
    assert len(found) == 1, f"expected one {operation}, got {len(found)}"
    return found[0]


_SESSION = botocore.session.get_session()


def validation_errors(call: dict[str, Any]) -> str:
    """botocore's own check of the parameters against the service model ('' when valid)."""
    operation = _SESSION.get_service_model(call["service"]).operation_model(call["operation"])
    report = botocore.validate.ParamValidator().validate(call["params"], operation.input_shape)
    return report.generate_report() if report.has_errors() else ""


def s3_object(out_dir: Path, uri: str) -> Path:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return out_dir / "s3" / bucket / key
