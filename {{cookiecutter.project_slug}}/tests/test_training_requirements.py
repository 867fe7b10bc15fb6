"""training/requirements.txt installed as the training toolkit installs it, into an image-like environment.

The PyTorch 2.8 training image has numpy 2.3/2.4, pandas 3, scipy, scikit-learn, protobuf 6 and
Pillow; installing the requirements must leave it on numpy 2, without a dependency conflict, with
every import working. torch is left out (too big to download here); the requirements must not pull
it either. Needs PyPI.
"""

from __future__ import annotations

import subprocess
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


def pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_requirements_keep_a_numpy_2_image_intact(project_root, tmp_path):
    venv.create(tmp_path / "image", with_pip=True)
    python = tmp_path / "image" / "bin" / "python"
    installed = pip(python, "install", "-q", *IMAGE)
    assert installed.returncode == 0, installed.stderr[-3000:]
    before = pip(python, "freeze").stdout

    result = pip(python, "install", "-r", str(project_root / "training" / "requirements.txt"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "dependency conflicts" not in result.stdout + result.stderr
    check = pip(python, "check")
    assert check.returncode == 0, check.stdout
    assert pip(python, "freeze").stdout == before  # nothing downgraded, nothing added
    code = "import " + ", ".join(IMPORTS) + "; import numpy; print(numpy.__version__)"
    imported = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.splitlines()[-1].startswith("2.4")  # the SDK prints config notes first
