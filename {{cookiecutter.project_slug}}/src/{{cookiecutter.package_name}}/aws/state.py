"""What this project created on AWS, recorded in `.state/resources.json` (git-ignored).

`status` and `teardown` read it to know what is theirs; `train` reads the best
tuned hyperparameters from it and `deploy` the last trained model. Only names
and S3 URIs are stored: no credentials, no account-wide listings.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

STATE_FILENAME = "resources.json"

# Kinds of resources, in the order teardown deletes them.
ENDPOINT = "endpoint"
ENDPOINT_CONFIG = "endpoint-config"
MODEL = "model"
TRAINING_JOB = "training-job"
TUNING_JOB = "tuning-job"
RESOURCE_KINDS = (ENDPOINT, ENDPOINT_CONFIG, MODEL, TRAINING_JOB, TUNING_JOB)


class ProjectState:
    """A small JSON document: `resources` (list of records) and `values` (named facts)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / STATE_FILENAME

    def _load(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"resources": [], "values": {}}
        return json.loads(self.path.read_text(encoding="utf-8"))

    def _save(self, document: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        temporary.replace(self.path)

    def record(self, kind: str, name: str, **details: Any) -> None:
        """Remember that this project created `name` (a job, model, endpoint config or endpoint)."""
        if kind not in RESOURCE_KINDS:
            raise ValueError(f"unknown resource kind {kind!r}; choose one of {', '.join(RESOURCE_KINDS)}")
        document = self._load()
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        document["resources"].append({"kind": kind, "name": name, "created": created, **details})
        self._save(document)

    def resources(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [item for item in self._load()["resources"] if kind is None or item["kind"] == kind]

    def latest(self, kind: str) -> dict[str, Any] | None:
        records = self.resources(kind)
        return records[-1] if records else None

    def forget(self, kind: str, name: str) -> None:
        document = self._load()
        document["resources"] = [
            item for item in document["resources"] if not (item["kind"] == kind and item["name"] == name)
        ]
        self._save(document)

    def set_value(self, key: str, value: Any) -> None:
        document = self._load()
        document["values"][key] = value
        self._save(document)

    def value(self, key: str, default: Any = None) -> Any:
        return self._load()["values"].get(key, default)
