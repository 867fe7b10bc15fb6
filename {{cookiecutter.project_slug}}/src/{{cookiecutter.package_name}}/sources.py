"""Stage the source directories SageMaker uploads.

training/ and inference/ each hold their entry points and requirements.txt;
both need the shared `classifier` package. Staging copies one of them plus
`classifier/` into a fresh folder, which is then exactly what is uploaded
(`sourcedir.tar.gz`, or `code/` inside the repacked `model.tar.gz`) and what
local runs execute.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

SourceRole = Literal["training", "inference"]
SHARED_PACKAGE = "classifier"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".DS_Store")


def stage_sources(project_root: Path, role: SourceRole, destination: Path) -> Path:
    """Copy `<project_root>/<role>/` and `<project_root>/classifier/` into `destination`.

    `destination` must not exist yet; it is returned for convenience.
    """
    project_root = Path(project_root)
    source = project_root / role
    if not source.is_dir():
        raise FileNotFoundError(f"{source} does not exist")
    destination = Path(destination)
    shutil.copytree(source, destination, ignore=_IGNORED)
    shutil.copytree(project_root / SHARED_PACKAGE, destination / SHARED_PACKAGE, ignore=_IGNORED)
    return destination
