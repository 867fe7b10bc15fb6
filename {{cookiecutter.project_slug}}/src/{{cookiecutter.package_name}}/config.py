"""The project's configuration: `config.toml` at the project root, read once into plain data."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

CONFIG_FILENAME = "config.toml"
# Set to point the CLI at a project from elsewhere (tests, notebooks in another folder).
PROJECT_DIR_ENV = "IMAGE_CLASSIFIER_PROJECT_DIR"


class ConfigError(Exception):
    """The config file is missing or holds a value the project cannot use."""


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) that holds config.toml.

    $IMAGE_CLASSIFIER_PROJECT_DIR wins when set.
    """
    if os.environ.get(PROJECT_DIR_ENV):
        root = Path(os.environ[PROJECT_DIR_ENV]).resolve()
        if not (root / CONFIG_FILENAME).is_file():
            raise ConfigError(f"${PROJECT_DIR_ENV} is {root}, which has no {CONFIG_FILENAME}")
        return root
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILENAME).is_file():
            return folder
    raise ConfigError(
        f"no {CONFIG_FILENAME} in {here} or any folder above it; run this inside the project "
        f"or set ${PROJECT_DIR_ENV}"
    )


@dataclass(frozen=True)
class ProjectConfig:
    """config.toml as loaded, plus where it was found.

    `data` is the parsed TOML document; the properties below name the parts
    code reads most, so a renamed key breaks in one place.
    """

    root: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, root: Path | None = None) -> ProjectConfig:
        root = find_project_root() if root is None else Path(root).resolve()
        path = root / CONFIG_FILENAME
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from None
        return cls(root=root, data=data)

    def section(self, name: str) -> dict[str, Any]:
        """A deep copy of one table, e.g. `section("aws")`; callers may change it freely."""
        try:
            return copy.deepcopy(self.data[name])
        except KeyError:
            raise ConfigError(f"{self.root / CONFIG_FILENAME} has no [{name}] table") from None

    @property
    def model(self) -> dict[str, Any]:
        return self.section("model")

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return self.section("hyperparameters")

    @property
    def aws(self) -> dict[str, Any]:
        return self.section("aws")

    def script_hyperparameters(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything hpo.py / train_model.py receive as `--name value`.

        The [hyperparameters] defaults plus the model settings the scripts need
        (backbone, num_classes, image_size, finetune, pretrained), then `overrides`.
        """
        model = self.model
        merged: dict[str, Any] = dict(self.hyperparameters)
        for key in ("backbone", "num_classes", "image_size", "finetune", "pretrained"):
            merged[key] = model[key]
        merged.update(overrides or {})
        return merged

    @property
    def data_dir(self) -> Path:
        """The prepared dataset: [data] local_dir, relative to the project root."""
        return self.root / self.section("data")["local_dir"]

    @property
    def training_dir(self) -> Path:
        return self.root / "training"

    @property
    def inference_dir(self) -> Path:
        return self.root / "inference"

    @property
    def state_dir(self) -> Path:
        """Where the CLI records what it created (tuning job, endpoint, ...): `.state/`, git-ignored."""
        return self.root / ".state"
