"""SDK v2 and SDK v3 send the same SageMaker requests for the same configuration.

One configuration is rendered twice, differing only in `[aws] sagemaker_sdk`; each render runs `tune`, `train`
and `deploy` as dry runs under the Python of an environment holding its SDK generation (the two cannot share
one: v3 replaces v2's `sagemaker` package). The CreateHyperParameterTuningJob, CreateTrainingJob, CreateModel,
CreateEndpointConfig and CreateEndpoint requests are then compared field by field. Every field that still
differs must match a row of ALLOWED_DIFFERENCES, which says why; a new difference fails the test.

A second configuration, in the same renders, then runs `train` and `deploy` again with what the first leaves
at its defaults (SECOND_CONFIGURATION): an endpoint on AWS's Ray Serve image (a GPU one, so its host image
too), a managed MLflow server for the jobs' environment, and [debugger.rule_parameters] for the in-job rules.
Hyperparameters are compared as the script receives them: v2 JSON-encodes each value for the image's training
toolkit, which decodes it ('"head"' reaches the script as head), and v3's driver sends the plain text.

The v2 side runs in this test's own Python; the v3 side in $SDK_V3_PYTHON (scripts/setup-env.sh builds it
in CI). Without it the test is skipped, and says so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomllib
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
V3_PYTHON = os.environ.get("SDK_V3_PYTHON", "")
COMPARED = (
    "CreateHyperParameterTuningJob",
    "CreateTrainingJob",
    "CreateModel",
    "CreateEndpointConfig",
    "CreateEndpoint",
)
# A field path (operation.Field.Sub, list items as [n]) pattern, and why the two generations may differ there.
ALLOWED_DIFFERENCES: tuple[tuple[str, str], ...] = (
    (
        r"CreateTrainingJob\.AlgorithmSpecification\.(ContainerEntrypoint|ContainerArguments)(\[\d+\])?",
        "v3's ModelTrainer starts its own driver (sm_drivers/sm_train.sh) instead of the image's "
        "training toolkit; the driver then runs the same entry point with the same hyperparameters",
    ),
    (
        r"CreateTrainingJob\.InputDataConfig(\[\d+\].*)?",
        "v3 ships the code as two extra input channels (code, sm_drivers) instead of a sourcedir.tar.gz "
        "named in the hyperparameters; the data channel is the same",
    ),
    (
        r"CreateTrainingJob\.HyperParameters\.sagemaker_(program|submit_directory|container_log_level|region|job_name)",
        "v2's script-mode hyperparameters (entry point, code archive, log level, region, job name) for the "
        "image's training toolkit; v3's driver reads the entry point from its code channel instead",
    ),
    (
        r"CreateTrainingJob\.(DebugHookConfig|DebugRuleConfigurations|ProfilerConfig|ProfilerRuleConfigurations)"
        r"(\..*|\[\d+\].*)?",
        "v2 switches the hook and profiler off explicitly; v3 has no Debugger or Profiler fields "
        '(the rules are judged in the job, [debugger] evaluation = "in_job")',
    ),
    (
        r"CreateTrainingJob\.(OutputDataConfig\.CompressionType|CheckpointConfig\.LocalPath)",
        "v3 writes out the service's own defaults (GZIP, /opt/ml/checkpoints) that v2 leaves implicit",
    ),
    (
        r"CreateTrainingJob\.EnableManagedSpotTraining|CreateTrainingJob\.RetryStrategy.*",
        "v2 sends spot = false explicitly; v3 leaves it out (the same default)",
    ),
    (
        r"CreateHyperParameterTuningJob\.TrainingJobDefinition\.StaticHyperParameters\.sagemaker_"
        r"(submit_directory|container_log_level|region|estimator_class_name|estimator_module)",
        "each SDK names the code archive's key (v2 code/<job>/source/, v3 <base>/tuning-*/); "
        "v2 adds its estimator's class and log level for its own attach(), v3 does not",
    ),
    (
        r"CreateHyperParameterTuningJob\.TrainingJobDefinition\.InputDataConfig(\[\d+\].*)?",
        "v3 adds its sm_drivers channel (unused by the framework image, which runs sagemaker_program)",
    ),
    (
        r"CreateHyperParameterTuningJob\.TrainingJobDefinition\.(OutputDataConfig\.CompressionType"
        r"|EnableManagedSpotTraining|AlgorithmSpecification\.MetricDefinitions.*)",
        "service defaults written out by one side only; the metric definitions are sent on the tuning job's "
        "objective either way",
    ),
    (
        r"CreateHyperParameterTuningJob\.TrainingJobDefinition\.StaticHyperParameters\.pretrained",
        "a boolean: v3's tuner writes str(True) ('True'), v2 JSON ('true'); train_model.py's str2bool reads "
        "either case",
    ),
    (
        r"CreateHyperParameterTuningJob\.TrainingJobDefinition\.StaticHyperParameters\.sagemaker_(program|job_name)",
        "v2 names the entry point and job for the image's training toolkit; v3's driver reads the entry "
        "point from its code channel",
    ),
    (
        r"CreateHyperParameterTuningJob\.TrainingJobDefinition\.(HyperParameterTuningResourceConfig|ResourceConfig)"
        r"\.\w+",
        "the same machines, in the field each SDK fills: "
        "v2 HyperParameterTuningResourceConfig, v3 ResourceConfig",
    ),
    (
        r"CreateTrainingJob\.AlgorithmSpecification\.EnableSageMakerMetricsTimeSeries",
        "v2 asks for SageMaker Metrics' time series of the metric definitions; v3 sends the same definitions "
        "without it (the console's charts read CloudWatch either way)",
    ),
    (
        r"CreateModel\.PrimaryContainer\.(ModelDataUrl|Environment\.SAGEMAKER_SUBMIT_DIRECTORY)",
        "each SDK names its own key for the repacked model.tar.gz (the code is inside it either way)",
    ),
    (
        r"CreateModel\.PrimaryContainer\.Environment\.SAGEMAKER_(CONTAINER_LOG_LEVEL|REGION)",
        "v2 sets the serving toolkit's log level and region; the toolkit's defaults apply under v3",
    ),
    (
        r"Create(EndpointConfig|Model)\.(Tags.*|EnableNetworkIsolation|ProductionVariants\[0\]\.VariantName)",
        "tag order and written-out defaults (network isolation off, variant AllTraffic)",
    ),
)


def _render(folder: Path, generation: str) -> Path:
    return Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            output_dir=str(folder),
            extra_context={"sagemaker_sdk": generation, "include_notebook": "no"},
        )
    )


TRACKING_SERVER = "arn:aws:sagemaker:us-east-1:111122223333:mlflow-tracking-server/cohort"
# (old line of config.toml, new line) for the second configuration; each old line must be in the render.
SECOND_CONFIGURATION = (
    ('server = "torchserve"', 'server = "ray_serve"'),
    ('server_arn = ""', f'server_arn = "{TRACKING_SERVER}"'),
    ('[instances.endpoint]\ntype = "ml.m5.large"', '[instances.endpoint]\ntype = "ml.g4dn.xlarge"'),
    (
        '# [debugger.rule_parameters.loss_not_decreasing]\n# mode = "TRAIN"',
        '[debugger.rule_parameters.loss_not_decreasing]\nmode = "EVAL"\nnum_steps = 12',
    ),
)


def _second_configuration(config: str) -> str:
    for old, new in SECOND_CONFIGURATION:
        assert old in config, f"the render's config.toml has no {old!r}"
        config = config.replace(old, new, 1)
    return config


def _captured(project: Path, python: str, commands: tuple[str, ...]) -> dict[str, dict]:
    """Each compared operation's request from dry runs of `commands`, run by `python`."""
    package = project.name.replace("-", "_")
    record = project / "dry-run" / "aws"
    environment = {**os.environ, "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}"}
    requests: dict[str, dict] = {}
    for command in commands:
        subprocess.run(
            [python, "-m", package, command, "--dry-run", "--skip-preflight", "--yes"],
            cwd=project,
            env=environment,
            check=True,
            capture_output=True,
            timeout=240,
        )
        for call in json.loads((record / "requests.json").read_text()):
            if call["operation"] in COMPARED:
                requests[call["operation"]] = call["params"]
    return requests


def _both_captured(
    v2_project: Path, v3_project: Path, commands: tuple[str, ...]
) -> tuple[dict[str, dict], dict[str, dict]]:
    """`_captured` for both generations at once (separate projects and processes): half the wall time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        v2 = pool.submit(_captured, v2_project, sys.executable, commands)
        v3 = pool.submit(_captured, v3_project, V3_PYTHON, commands)
        return v2.result(), v3.result()


def _fields(value: object, path: str) -> dict[str, object]:
    if isinstance(value, dict):
        return {
            key: item
            for name, inner in value.items()
            for key, item in _fields(inner, f"{path}.{name}").items()
        }
    if isinstance(value, list):
        return {
            key: item for n, inner in enumerate(value) for key, item in _fields(inner, f"{path}[{n}]").items()
        }
    return {path: value}


# Timestamps inside names and keys differ between any two runs, whatever the SDK.
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{3}|\d{6}-\d{4}|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"
)


_RECEIVED_AS_TEXT = re.compile(r".*(HyperParameters\.\w+|CategoricalParameterRanges\[\d+\]\.Values\[\d+\])")


def _as_received(value: object) -> object:
    """A hyperparameter as the script receives it: a JSON-encoded string ('"head"', v2's toolkit decodes
    it) as its text; anything else (40, a JSON object) as sent."""
    try:
        decoded = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return value
    return decoded if isinstance(decoded, str) else value


def _normalised(path: str, value: object) -> object:
    if _RECEIVED_AS_TEXT.fullmatch(path):
        value = _as_received(value)
    return _TIMESTAMP.sub("<time>", value) if isinstance(value, str) else value


def differences(v2: dict[str, dict], v3: dict[str, dict]) -> dict[str, tuple[object, object]]:
    """Every field path whose value differs between the generations (missing on one side: None)."""
    found = {}
    for operation in COMPARED:
        left, right = _fields(v2.get(operation), operation), _fields(v3.get(operation), operation)
        for path in sorted(set(left) | set(right)):
            if _normalised(path, left.get(path)) != _normalised(path, right.get(path)):
                found[path] = (left.get(path), right.get(path))
    return found


def unexplained(found: dict[str, tuple[object, object]]) -> dict[str, tuple[object, object]]:
    return {
        path: values
        for path, values in found.items()
        if not any(re.fullmatch(pattern, path) for pattern, _ in ALLOWED_DIFFERENCES)
    }


def test_an_unexplained_difference_is_caught():
    # The comparison itself: a changed instance type is no allowed difference, a toolkit hyperparameter is.
    v2 = {"CreateTrainingJob": {"ResourceConfig": {"InstanceType": "ml.g4dn.xlarge"}, "HyperParameters": {}}}
    v3 = {"CreateTrainingJob": {"ResourceConfig": {"InstanceType": "ml.m5.large"}, "HyperParameters": {}}}
    v2["CreateTrainingJob"]["HyperParameters"]["sagemaker_program"] = '"train_model.py"'
    # A value the script receives alike is no difference; a parameter one side lacks is unexplained.
    v2["CreateTrainingJob"]["HyperParameters"].update(finetune='"head"', epochs="5", rules='"a,b"')
    v3["CreateTrainingJob"]["HyperParameters"].update(finetune="head", epochs="5", rule_parameters="{}")
    assert list(unexplained(differences(v2, v3))) == [
        "CreateTrainingJob.HyperParameters.rule_parameters",
        "CreateTrainingJob.HyperParameters.rules",
        "CreateTrainingJob.ResourceConfig.InstanceType",
    ]


@pytest.mark.skipif(not V3_PYTHON, reason="$SDK_V3_PYTHON names no SDK v3 environment (scripts/setup-env.sh)")
def test_both_generations_send_the_same_requests(tmp_path):
    v2_project = _render(tmp_path / "v2", "v2")
    v3_project = _render(tmp_path / "v3", "v3")
    # The same configuration: the v3 render's, on the v2 render's training image (v3's default, an Amazon
    # Linux 2023 image, is in no v2 table), with only the generation switched back.
    v3_default = (v3_project / "config.toml").read_text()
    images = {
        project: tomllib.loads((project / "config.toml").read_text())["images"]["training"]
        for project in (v2_project, v3_project)
    }
    shared = v3_default.replace(
        f'framework_version = "{images[v3_project]["framework_version"]}"',
        f'framework_version = "{images[v2_project]["framework_version"]}"',
        1,
    ).replace(
        f'py_version = "{images[v3_project]["py_version"]}"',
        f'py_version = "{images[v2_project]["py_version"]}"',
        1,
    )
    v2_config = shared.replace('sagemaker_sdk = "v3"', 'sagemaker_sdk = "v2"')
    (v3_project / "config.toml").write_text(shared)
    (v2_project / "config.toml").write_text(v2_config)

    all_commands = ("tune", "train", "deploy")
    v2, v3 = _both_captured(v2_project, v3_project, all_commands)
    assert set(v2) == set(v3) == set(COMPARED)
    _assert_explained(v2, v3)

    # The second configuration; the v3 render back on its own default training image.
    (v2_project / "config.toml").write_text(_second_configuration(v2_config))
    (v3_project / "config.toml").write_text(_second_configuration(v3_default))
    second = ("train", "deploy")
    v2, v3 = _both_captured(v2_project, v3_project, second)
    _assert_explained(v2, v3, also=(r"CreateTrainingJob\.AlgorithmSpecification\.TrainingImage",))
    training_images = [
        requests["CreateTrainingJob"]["AlgorithmSpecification"]["TrainingImage"] for requests in (v2, v3)
    ]
    assert "amzn2023" in training_images[1] and "amzn2023" not in training_images[0], training_images
    # What the second configuration is for reached both generations' requests.
    for requests in (v2, v3):
        assert "/ray:serve-ml-sagemaker-cuda" in requests["CreateModel"]["PrimaryContainer"]["Image"]
        assert requests["CreateEndpointConfig"]["ProductionVariants"][0]["InferenceAmiVersion"]
        environment = requests["CreateTrainingJob"]["Environment"]
        assert environment["MLFLOW_TRACKING_URI"] == TRACKING_SERVER
        rule_parameters = _as_received(requests["CreateTrainingJob"]["HyperParameters"]["rule_parameters"])
        assert json.loads(rule_parameters) == {"loss_not_decreasing": {"mode": "EVAL", "num_steps": 12}}


def _assert_explained(v2: dict[str, dict], v3: dict[str, dict], also: tuple[str, ...] = ()) -> None:
    """Every difference is in ALLOWED_DIFFERENCES, or matches a pattern of `also` (a configuration's own)."""
    left = {
        path: values
        for path, values in unexplained(differences(v2, v3)).items()
        if not any(re.fullmatch(pattern, path) for pattern in also)
    }
    assert not left, "differences with no reason in ALLOWED_DIFFERENCES:\n" + "\n".join(
        f"{path}: v2 {values[0]!r} / v3 {values[1]!r}" for path, values in left.items()
    )


# The v3 render's launcher-side tests, in the v3 environment (no torch: what needs the training or serving
# code runs in the v2 renders' suites, on the same files). Tests of v2's own request layout skip themselves.
V3_LAUNCHER_TESTS = ("tests/test_dryrun.py", "tests/test_preflight.py")


@pytest.mark.skipif(not V3_PYTHON, reason="$SDK_V3_PYTHON names no SDK v3 environment (scripts/setup-env.sh)")
def test_a_v3_render_passes_its_launcher_tests_with_sdk_v3(tmp_path):
    project = _render(tmp_path, "v3")
    environment = {**os.environ, "PYTHONPATH": f"{project / 'src'}{os.pathsep}{project}"}
    result = subprocess.run(
        [V3_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", *V3_LAUNCHER_TESTS],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
