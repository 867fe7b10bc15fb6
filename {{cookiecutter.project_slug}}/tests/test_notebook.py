"""train_and_deploy.ipynb: SDK constructions written out, values from config.toml, run offline."""

from __future__ import annotations

import copy
import json
import re

import nbclient
import nbformat
import pytest
from conftest import PACKAGE, PROJECT_ROOT, offline_notebook_environment, project_module, sdk_module

NOTEBOOK = PROJECT_ROOT / "train_and_deploy.ipynb"
MAX_CODE_LINES = 40
# Spelled in pieces: this file is itself rendered by the template engine.
JINJA_MARKERS = ("{" + "{", "{" + "%", "cookie" + "cutter")

pytestmark = pytest.mark.skipif(not NOTEBOOK.exists(), reason="rendered without the notebook")
# The notebook writes out the objects of the SDK generation the project uses ([aws] sagemaker_sdk).
SDK_V3 = project_module("config").ProjectConfig.load(PROJECT_ROOT).aws.get("sagemaker_sdk") == "v3"


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_notebook_is_valid_stripped_and_runs_on_python3(notebook):
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata.kernelspec.name == "python3"
    for cell in code_cells(notebook):
        assert cell.outputs == [] and cell.execution_count is None


def test_notebook_is_rendered_into_plain_python(notebook):
    # Rendered once by the template (the package's name); nothing of the template engine is left.
    for cell in notebook.cells:
        for marker in JINJA_MARKERS:
            assert marker not in cell.source, cell.source
    sources = "\n".join(cell.source for cell in code_cells(notebook))
    assert f"from {PACKAGE} import" in sources
    assert "import_module" not in sources


# What a reviewer grades, as the SDK spells it (AWS's sagemaker-examples notebooks write these out).
SDK_CONSTRUCTIONS = (
    "ContinuousParameter(",
    "CategoricalParameter(",
    "HyperparameterTuner(",
) + (
    (
        "ModelTrainer(",
        "SourceCode(",
        "Compute(",
        "StoppingCondition(",
        "CheckpointConfig(",
        "HyperparameterTuner(\n    model_trainer=tuning_trainer,",
        "ModelBuilder(",
    )
    if SDK_V3
    else (
        "PyTorch(",
        "Rule.sagemaker(",
        "ProfilerRule.sagemaker(",
        "getattr(rule_configs, name)()",
        "DebuggerHookConfig(",
        "ProfilerConfig(",
        "PyTorchModel(",
        'IdentitySerializer("image/jpeg")',
    )
)
# The package's builders of SDK objects: the notebook writes the construction out instead of calling these.
HIDDEN_BUILDERS = (
    "tuning_estimator(",
    "training_estimator(",
    "pytorch_estimator(",
    "sagemaker_api.tuner(",
    "sagemaker_api_v3.tuner(",
    "debugger_settings(",
    "debugger_rules(",
    "sagemaker_api.hyperparameter_ranges(",
    "sagemaker_api_v3.hyperparameter_ranges(",
    "pytorch_model(",
    "model_trainer(",
    "model_builder(",
    "deploy_arguments(",
    "launch_tuning(",
    "launch_training(",
    "deploy_model(",
)
# A keyword given a number or an instance type in a construction is a value that belongs in config.toml.
LITERAL_VALUE = re.compile(r"\b(?!max_length\b)\w+=\s*(-?\d|[\"']ml\.)")


def test_cells_write_out_each_sdk_construction_with_values_from_the_config(notebook):
    """Every SDK object the course grades is constructed in a cell with the SDK's own constructor, and
    its values come from config.toml: no number or instance type is typed into a construction."""
    code = "\n".join(cell.source for cell in code_cells(notebook))
    for construction in SDK_CONSTRUCTIONS:
        assert construction in code, construction
    for builder in HIDDEN_BUILDERS:
        assert builder not in code, builder
    for cell in code_cells(notebook):
        assert len(cell.source.splitlines()) <= MAX_CODE_LINES, cell.source
        assert "boto3" not in cell.source
        if any(construction in cell.source for construction in SDK_CONSTRUCTIONS):
            literal = LITERAL_VALUE.search(cell.source)
            assert literal is None, literal.group(0)


def test_a_reviewer_finds_every_step_of_the_sagemaker_api(notebook):
    """The course's checklist: ranges and objective, estimator and tuner fitted, best job, rules and
    hook configuration, training fitted, debugging output plotted, profiler report shown, deploy, predict
    as image/jpeg, delete."""
    code = "\n".join(cell.source for cell in code_cells(notebook))
    shared = (
        "hyperparameter_ranges = {",
        'objective_metric_name=tuning["objective_metric_name"]',
        "tuner = HyperparameterTuner(",
        "best_hyperparameters",
        'figures["loss"]',
        "srcdoc",
    )
    if SDK_V3:
        steps = (
            "tuning_trainer = ModelTrainer(",
            "tuner.tune(",
            "tuner.best_training_job()",
            "sagemaker_api_v3.where_judged(config)",  # the rules are judged in the job: it says so
            "trainer = ModelTrainer(",
            "TrainingJob.create(",
            "model_builder = ModelBuilder(",
            "model_builder.build(",
            "model_builder.deploy(",
            'predictor.invoke(body=images[0].read_bytes(), content_type="image/jpeg"',
            "predictor.delete()",
        )
    else:
        steps = (
            "estimator = PyTorch(",
            "tuner.fit(",
            "tuner.best_training_job()",
            "tuner.best_estimator().hyperparameters()",
            "rules.append(Rule.sagemaker(",
            "hook_config = DebuggerHookConfig(",
            "profiler_config = ProfilerConfig(",
            "debugger_hook_config=hook_config",
            "profiler_config=profiler_config",
            "estimator.fit(",
            "model = PyTorchModel(",
            "model.deploy(",
            'predictor.predict(images[0].read_bytes(), initial_args={"ContentType": "image/jpeg"})',
            "predictor.delete_endpoint()",
        )
    for expected in shared + steps:
        assert expected in code, expected


def test_no_placeholder_is_left_for_the_reader(notebook):
    for cell in notebook.cells:
        assert "<project command>" not in cell.source, cell.source


def test_first_code_cell_is_the_dry_run_switch_and_the_last_tears_down(notebook):
    cells = code_cells(notebook)
    assert re.search(r"^DRY_RUN = .*NOTEBOOK_DRY_RUN", cells[0].source, re.MULTILINE)
    deletion = "predictor.delete()" if SDK_V3 else "predictor.delete_endpoint()"
    assert deletion in cells[-1].source and "resources.teardown(" in cells[-1].source
    assert notebook.cells[-2].cell_type == "markdown" and "Tear down" in notebook.cells[-2].source


def test_cost_table_total_matches_the_estimate(project_config):
    tables = project_module("report.tables")
    costs = project_module("workflow.costs")
    table = tables.frame(tables.cost_rows(project_config, endpoint_hours=5), index="step")
    expected = costs.total(costs.estimate(project_config, endpoint_hours=5))
    assert float(table.loc["total", "USD (at most)"]) == pytest.approx(round(expected, 2))
    assert list(table.index) == ["tuning", "training", "endpoint", "total"]


def _outputs_text(cell) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            # A busy kernel may send one print in several pieces: joined as printed.
            parts.append(output.text)
        else:
            data = output.get("data", {})
            parts.append(f"\n{data.get('text/plain', '')}\n{data.get('text/html', '')}\n")
    return "".join(parts)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_offline(notebook, tmp_path, monkeypatch):
    dry_run_dir = tmp_path / "dry-run"
    offline_notebook_environment(monkeypatch, dry_run_dir)  # the kernel inherits this process's environment
    executed = copy.deepcopy(notebook)
    nbclient.NotebookClient(
        executed, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(PROJECT_ROOT)}}
    ).execute()

    cells = code_cells(executed)
    assert all(cell.execution_count for cell in cells)
    assert not [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    figures = [output for cell in cells for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 2  # the loss curves and the predictions

    text = "\n".join(_outputs_text(cell) for cell in cells)
    assert "dry run (offline" in text
    # Displays show values: no object addresses, no NaN in a table, no stray traceback, no false line.
    # (The embedded profiler report is a page of its own, checked by the report's tests.)
    shown = "\n".join(_outputs_text(cell) for cell in cells if "srcdoc" not in cell.source)
    for wrong in (" at 0x", "NaN", "Traceback", "Error:", "no hook: [debugger] has no rules"):
        at = shown.find(wrong)
        assert at < 0, f"{wrong!r} shown: ...{shown[max(at - 400, 0) : at + 200]}..."
    config = project_module("config").ProjectConfig.load(PROJECT_ROOT)
    sagemaker_api = sdk_module()
    if sagemaker_api.rule_set(config).profiler:
        assert "not evaluated offline" in text
    rules = config.section("debugger")["rules"]
    # One line per rule saying where it is judged on this image and account, and why.
    for line in sagemaker_api.where_judged(config):
        assert line in text
    if rules:  # the local run judged them in the job: real verdicts, and the profiler report shown inline
        verdict_cell = next(cell for cell in cells if "report.verdict_rows" in cell.source)
        assert re.search(r"NoIssuesFound|IssuesFound|NotEnoughData", _outputs_text(verdict_cell))
        log = (dry_run_dir / "training" / "training.log").read_text()
        assert "parent_forward_event" not in log and "SMDebug error" not in log
        # The job's log says once which rules it judges itself.
        (line,) = [line for line in log.splitlines() if "rules judged in this job by rules.py: " in line]
        if config.section("debugger")["evaluation"] != "sagemaker":
            assert all(name in line.split("rules judged in this job by rules.py: ")[1] for name in rules)
    if "ProfilerReport" in rules:
        profiler_cell = next(cell for cell in cells if "srcdoc" in cell.source)
        # The page itself, not a path to it: an exported HTML of the notebook shows it.
        assert "<iframe srcdoc=" in _outputs_text(profiler_cell)
        assert "&lt;html" in _outputs_text(profiler_cell)
    # The predictions name the generated classes (readable names, as the endpoint answers them).
    prediction_cell = next(cell for cell in cells if "predictions_rows" in cell.source)
    assert re.search(r"Class 00[123]", _outputs_text(prediction_cell))

    calls = json.loads((dry_run_dir / "aws" / "requests.json").read_text())
    operations = [call["operation"] for call in calls]
    for operation in (
        "CreateHyperParameterTuningJob",
        "CreateTrainingJob",
        "CreateEndpoint",
        "DeleteEndpoint",
        "DeleteEndpointConfig",
        "DeleteModel",
    ):
        assert operation in operations
    # Teardown ran last and left nothing recorded as running.
    state = json.loads((dry_run_dir / "state" / "resources.json").read_text())
    assert not [
        item for item in state["resources"] if item["kind"] in ("endpoint", "endpoint-config", "model")
    ]
    assert (dry_run_dir / "training" / "model.tar.gz").is_file()
