"""training/requirements.txt against the PyTorch 2.8 training image, as the training toolkit installs it.

The image has numpy 2.3/2.4, pandas 3, scipy, scikit-learn, protobuf 6, Pillow and the SageMaker SDK;
the toolkit runs `pip install -r requirements.txt` into it before the entry point. Two checks:

- resolution (every run, seconds): pip resolves the requirements for Python 3.12 with the image's
  packages as constraints. A requirement that needs another numpy or protobuf (smdebug 1.0.34 needs
  protobuf <= 3.20.3) fails here, and torch must not be pulled in (the image has its own build);
- installation (slow tier, some 20 s, only when the file requires anything): an image-like environment
  is built, the requirements are installed into it, and nothing it had may change and every import
  must still work.

Needs the package index (PyPI, or the mirror pip is configured with).
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

# What the image has before our requirements go in (versions as in the PyTorch 2.8 DLC, issue 10).
IMAGE = [
    "numpy>=2.4,<2.5",
    "pandas>=3,<4",
    "scipy",
    "scikit-learn",
    "protobuf>=6,<7",
    "pillow",
    "sagemaker<3",
]
IMPORTS = [
    "numpy",
    "pandas",
    "scipy.sparse",
    "sklearn.linear_model",
    "google.protobuf",
    "PIL.Image",
    "sagemaker",
]
IMAGE_PYTHON = "3.12"
# Packages the image brings in its own builds (CUDA, the DLC's patches): never to be installed over.
IMAGE_BUILDS = {"torch", "torchvision", "torchaudio"}


def pip(python: Path | str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def resolve_for_the_image(requirements: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """pip's resolution of `requirements` for the image's Python, its packages as constraints."""
    constraints = tmp_path / "image-constraints.txt"
    constraints.write_text("\n".join(IMAGE) + "\n", encoding="utf-8")
    report = tmp_path / "report.json"
    result = pip(
        sys.executable,
        "install",
        "--dry-run",
        "--ignore-installed",
        "--only-binary=:all:",
        "--python-version",
        IMAGE_PYTHON,
        # pip before 23.3 (23.2.1 comes with Python 3.11's venv) refuses --python-version without
        # --target, even in a dry run; nothing is written there.
        "--target",
        str(tmp_path / "not-written"),
        "--report",
        str(report),
        "-r",
        str(requirements),
        "-c",
        str(constraints),
    )
    return result, json.loads(report.read_text()) if report.is_file() else {}


def test_requirements_resolve_within_the_image_and_leave_its_torch_alone(project_root, tmp_path):
    result, report = resolve_for_the_image(project_root / "training" / "requirements.txt", tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    pulled = {item["metadata"]["name"].lower() for item in report["install"]}
    assert not pulled & IMAGE_BUILDS, f"would install {sorted(pulled & IMAGE_BUILDS)} over the image's build"


def test_the_resolution_check_refuses_smdebug_for_its_protobuf_pin(tmp_path):
    """The check catches the requirement this project deliberately left out (see requirements.txt)."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("smdebug==1.0.34\n", encoding="utf-8")
    result, _ = resolve_for_the_image(requirements, tmp_path)
    assert result.returncode != 0
    assert "protobuf" in result.stdout + result.stderr


@pytest.mark.slow
def test_requirements_keep_a_numpy_2_image_intact(project_root, tmp_path):
    requirements = project_root / "training" / "requirements.txt"
    if not requirement_lines(requirements):
        pytest.skip("training/requirements.txt requires nothing: there is nothing to install")
    # A venv without a pip of its own: this environment's pip works on it (`--python`, pip 22.3 and later),
    # seconds faster than seeding the pip `venv` brings and than that pip's own installs. --no-compile:
    # byte-compiling every installed module (botocore, scipy, pandas, the SDK) is a third of an install's
    # CPU time, and changes nothing checked here (Python compiles what it imports).
    venv.create(tmp_path / "image", with_pip=False)
    python = tmp_path / "image" / "bin" / "python"

    def image_pip(*args: str) -> subprocess.CompletedProcess:
        return pip(sys.executable, "--python", str(python), *args)

    installed = image_pip("install", "-q", "--no-compile", *IMAGE)
    assert installed.returncode == 0, installed.stderr[-3000:]
    before = image_pip("freeze").stdout
    assert "numpy==2.4" in before, before  # the image's packages are in the venv, not only pip's own

    result = image_pip("install", "--no-compile", "-r", str(requirements))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "dependency conflicts" not in result.stdout + result.stderr
    check = image_pip("check")
    assert check.returncode == 0, check.stdout
    changed = set(before.splitlines()) - set(image_pip("freeze").stdout.splitlines())
    assert not changed, f"installing the requirements changed {sorted(changed)}"  # additions are fine
    code = "import " + ", ".join(IMPORTS) + "; import numpy; print(numpy.__version__)"
    imported = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.splitlines()[-1].startswith("2.4")  # the SDK prints config notes first
