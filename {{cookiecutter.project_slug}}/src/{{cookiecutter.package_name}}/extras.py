"""The optional extras of pyproject.toml, and the one-line error of a command that needs one not installed.

`pip install -e .` (SageMaker Studio, where the containers train and serve) installs the launcher only;
the commands that train or serve on this machine need `local` (the report's pictures need `debug`, which
report/figures.py says itself), and `runs` needs `tracking` (local runs without it are not recorded, and say
so). Their modules import those packages inside the functions that use them, so every other command, and
every error message, works without them.
"""

from __future__ import annotations

import importlib.util

# The top-level modules an extra brings (pyproject.toml's [project.optional-dependencies]) that a command
# checks for before it starts.
EXTRAS: dict[str, tuple[str, ...]] = {
    "local": (
        "torch",
        "torchvision",
        "sagemaker_training",
        "sagemaker_inference",
        "sagemaker_pytorch_serving_container",
        "waitress",
        "onnx",
        "onnxscript",
        "onnxruntime",
    ),
    # `serve --server ray_serve`: the package deploy ships for AWS's Ray Serve container, run here.
    "ray": ("ray",),
    # MLflow (its local store and UI) and the plugin that reaches SageMaker's managed MLflow by ARN.
    "tracking": ("mlflow", "sagemaker_mlflow"),
}

# The package's own modules (named under the package) that exist for one extra and import it at their
# top (the local server is waitress); only a command that has called `require` for that extra imports them.
EXTRA_MODULES: dict[str, str] = {"local.http_server": "local"}


class MissingExtraError(Exception):
    """A command needs an extra that is not installed."""


def install_command(extra: str) -> str:
    return f"pip install -e '.[{extra}]'"


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found without importing them)."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, command: str) -> None:
    """Raise `MissingExtraError` naming the extra and how to install it, unless all of it is installed."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(
            f"{command} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"{install_command(extra)}"
        )
