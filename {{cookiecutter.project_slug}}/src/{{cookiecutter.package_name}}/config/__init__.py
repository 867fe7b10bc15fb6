"""The project's configuration: `config.toml` at the project root, read once and checked against the schema.

The schema (every key, its type and what it allows) is `config/schema.py`, shared with the
render hook; `ProjectConfig.load` refuses a file that does not fit it, in
one line naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from . import schema, validation

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

CONFIG_FILENAME = "config.toml"
# Set to point the CLI at a project from elsewhere (tests, notebooks in another folder).
PROJECT_DIR_ENV = "IMAGE_CLASSIFIER_PROJECT_DIR"


class ConfigError(Exception):
    """The config file is missing or holds a value the project cannot use."""


# How many problems one message lists before it says "and N more".
_PROBLEMS_SHOWN = 3
# config.toml is a page of settings (about 6 KB); a file far larger is not one, and is refused unread.
MAX_CONFIG_BYTES = 1 << 20


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


def parse_toml(path: Path) -> dict[str, Any]:
    """The TOML document at `path`; ConfigError, in one line, for anything the reader cannot take.

    Bounded: at most MAX_CONFIG_BYTES are read, and what Python's reader refuses beyond TOML's own
    grammar (arrays nested deeper than its recursion allows, integers of over 4,300 digits) is an
    error naming the file rather than a traceback.
    """
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"{path} cannot be read ({error.strerror or error})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is over {MAX_CONFIG_BYTES >> 10} KB; a config file is a page of settings")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: an array or table is nested too deeply to read") from None
    except ValueError as error:  # e.g. an integer of more than 4,300 digits
        raise ConfigError(f"{path} holds a value Python cannot read: {str(error).split(':')[0]}") from None


@dataclass(frozen=True)
class ProjectConfig:
    """config.toml as loaded, plus where it was found.

    `data` is the parsed TOML document; the properties below name the parts
    code reads most, so a renamed key breaks in one place. `settings` is the same
    document typed by the schema (frozen dataclasses): `config.settings.model.backbone`,
    `config.settings.tuning.max_jobs`, `config.settings.hyperparameters.lr`.
    """

    root: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, root: Path | None = None) -> ProjectConfig:
        root = find_project_root() if root is None else Path(root).resolve()
        path = root / CONFIG_FILENAME
        data = parse_toml(path)
        config = cls(root=root, data=data)
        config.settings  # noqa: B018 - validate now, so every command refuses a bad file before it starts
        return config

    @cached_property
    def settings(self) -> schema.Settings:
        """config.toml typed by config/schema.py; ConfigError when it does not fit."""
        try:
            return schema.parse(self.data)
        except validation.SchemaError as error:
            texts = [problem.text() for problem in error.problems]
            more = len(texts) - _PROBLEMS_SHOWN
            shown = "; ".join(texts[:_PROBLEMS_SHOWN]) + (f"; and {more} more" if more > 0 else "")
            raise ConfigError(f"{self.root / CONFIG_FILENAME}: {shown}") from None

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
