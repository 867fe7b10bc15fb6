"""The notebook's SDK constructions and the command line send SageMaker the same requests.

The notebook writes out each SDK call (v2: `PyTorch(...)`, `HyperparameterTuner(...)`, `PyTorchModel(...)`,
`deploy`; v3: `ModelTrainer(...)`, `HyperparameterTuner(model_trainer=...)`, `ModelBuilder(...)`) with values
read from config.toml; `tune`, `train` and `deploy` build theirs in sagemaker_api (or sagemaker_api_v3). Both
are captured by dry runs and compared field by field, ignoring only the generated names (they carry
timestamps), so the two cannot drift apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest
from click.testing import CliRunner
from conftest import NO_ACCOUNT, PROJECT_ROOT, offline_notebook_environment, project_module
from launch_helpers import copy_project

NOTEBOOK = PROJECT_ROOT / "train_and_deploy.ipynb"
COMPARED = (
    "CreateHyperParameterTuningJob",
    "CreateTrainingJob",
    "CreateModel",
    "CreateEndpointConfig",
    "CreateEndpoint",
)
# Cells that send none of these: a dry run's local training and serving, and what reads a job's results.
SKIPPED_TAGS = {"local", "results"}
# Generated from the slug and the time: they differ between any two runs, and are all that may differ.
GENERATED_NAMES = {
    "HyperParameterTuningJobName": "<tuning job>",
    "TrainingJobName": "<training job>",
    "ModelName": "<model>",
    "EndpointConfigName": "<endpoint config>",
    "EndpointName": "<endpoint>",
}
# Folders SDK v3 names itself from the time, for what it uploads (neither the notebook nor the command line
# chooses them; SageMaker reads the URIs as they are sent):
SDK_PICKED_NAMES = (
    # HyperparameterTuner.tune() uploads the code and drivers under `tuning-<unix time>/`.
    (re.compile(r"/tuning-\d{10}/"), "/tuning-<time>/"),
    # ModelTrainer names its upload folder `<base_job_name>-<yyyymmddHHMMSS>` (its own job name, which both
    # replace with the project's when they send the request).
    (re.compile(r"-\d{14}/input/"), "-<time>/input/"),
)
# The tag that records when a resource was made (aws/tagging.py): the time, not a choice.
TIME_TAG = project_module("aws.tagging").CREATED_TAG

pytestmark = [
    pytest.mark.skipif(not NOTEBOOK.exists(), reason="rendered without the notebook"),
    pytest.mark.slow,
]


def named_apart(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The compared requests by operation, each generated name replaced by what it names."""
    found = [call for call in calls if call["operation"] in COMPARED]
    names = {
        call["params"][field]: label
        for call in found
        for field, label in GENERATED_NAMES.items()
        if field in call["params"]
    }
    text = json.dumps(found)
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(name, names[name])
    for picked, label in SDK_PICKED_NAMES:
        text = picked.sub(label, text)
    requests: dict[str, dict[str, Any]] = {}
    for call in comparable(json.loads(text)):
        assert call["operation"] not in requests, f"two {call['operation']} requests"
        requests[call["operation"]] = call["params"]
    return requests


def comparable(value: Any) -> Any:
    """`value` without what may differ between two runs that ask for the same thing: the time tag's value,
    and the order of the hook's collections (the SDK gathers them in a set, whose order varies between
    processes; SageMaker reads them by name)."""
    if isinstance(value, dict):
        if value.get("Key") == TIME_TAG and set(value) == {"Key", "Value"}:
            return {"Key": TIME_TAG, "Value": "<time>"}
        return {
            key: sorted(comparable(item), key=json.dumps)
            if key == "CollectionConfigurations"
            else comparable(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value


def fields(value: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a request by its path, e.g. `AlgorithmSpecification.TrainingInputMode`."""
    if isinstance(value, dict):
        leaves: dict[str, Any] = {}
        for key, item in value.items():
            leaves.update(fields(item, f"{path}.{key}" if path else key))
        return leaves or {path: {}}
    if isinstance(value, list):
        leaves = {}
        for index, item in enumerate(value):
            leaves.update(fields(item, f"{path}[{index}]"))
        return leaves or {path: []}
    return {path: value}


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    left, right = fields(ours), fields(theirs)
    return [
        f"{path}: notebook {left.get(path, '<absent>')!r}, command line {right.get(path, '<absent>')!r}"
        for path in sorted(set(left) | set(right))
        if left.get(path, "<absent>") != right.get(path, "<absent>")
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """One copy of the project for both, so that both read the same config.toml."""
    return copy_project(PROJECT_ROOT, tmp_path_factory.mktemp("requests") / "project")


@pytest.fixture(scope="module")
def notebook_requests(project, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """The notebook's SageMaker cells, executed top to bottom as a dry run."""
    dry_run_dir = tmp_path_factory.mktemp("notebook-dry-run")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells = [
        cell for cell in notebook.cells if not SKIPPED_TAGS & set(cell.metadata.get("tags", []))
    ]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in NO_ACCOUNT.items():
            patch.delenv(name, raising=False) if value is None else patch.setenv(name, value)
        offline_notebook_environment(patch, dry_run_dir)
        nbclient.NotebookClient(
            notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(project)}}
        ).execute()
    return named_apart(project_module("aws.offline").load_requests(dry_run_dir / "aws"))


@pytest.fixture(scope="module")
def command_line_requests(project, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """`tune`, `train` and `deploy`, each its own command, chained through one dry-run record."""
    dry_run_dir = tmp_path_factory.mktemp("cli-dry-run")
    cli = project_module("cli")
    for command in ("tune", "train", "deploy"):
        result = CliRunner().invoke(
            cli.main,
            ["--project", str(project), command, "--dry-run", "--dry-run-dir", str(dry_run_dir)],
            env=NO_ACCOUNT,
        )
        assert result.exit_code == 0, f"{command}: {result.output}"
    # Each command's session rewrites requests.json; the journal keeps every Create call of all three.
    journal = json.loads((dry_run_dir / "aws" / project_module("aws.offline").JOURNAL_FILENAME).read_text())
    return named_apart(journal)


@pytest.mark.parametrize("operation", COMPARED)
def test_the_notebook_and_the_command_line_send_the_same_request(
    operation, notebook_requests, command_line_requests
):
    assert operation in notebook_requests and operation in command_line_requests
    found = differences(notebook_requests[operation], command_line_requests[operation])
    assert not found, f"{operation} differs:\n" + "\n".join(found)
