"""Which SageMaker SDK generation sends the requests: the one place the choice is made.

config.toml's `[aws] sagemaker_sdk` names it: "v2" (`sagemaker_api`, the course's estimator API) or "v3"
(`sagemaker_api_v3`, ModelTrainer and ModelBuilder). Both modules have the same functions, and the project's
pyproject installs the SDK of its generation; the two cannot share an environment (v3 replaces v2's
`sagemaker` package), so a mismatch is reported here as one line instead of an ImportError deep in a command.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from ..config import ConfigError, ProjectConfig

SDK_MODULES = {"v2": "sagemaker_api", "v3": "sagemaker_api_v3"}


def generation(config: ProjectConfig) -> str:
    """ "v2" or "v3": config.toml's `[aws] sagemaker_sdk`."""
    return config.aws.get("sagemaker_sdk", "v2")


def sagemaker_api(config: ProjectConfig) -> ModuleType:
    """The SDK module of config.toml's generation, checked against the installed `sagemaker`."""
    chosen = generation(config)
    try:
        installed = importlib.metadata.version("sagemaker")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is None or installed.split(".")[0] != chosen.removeprefix("v"):
        found = f"sagemaker {installed} is installed" if installed else "the sagemaker SDK is not installed"
        raise ConfigError(
            f'[aws] sagemaker_sdk is "{chosen}", but {found}: run `pip install -e .` in a fresh environment '
            "(the project's pyproject pins the SDK of its generation)"
        )
    return importlib.import_module(f".{SDK_MODULES[chosen]}", __package__)
