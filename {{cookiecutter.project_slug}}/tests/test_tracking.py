"""Experiment tracking with MLflow, offline, in MLflow's own local store (an sqlite file in tmp_path).

One store (creating one runs MLflow's migrations: seconds); mlflow is imported only by the tests that read
a store, so the fast ones do not pay for it. The session's tiny `train --local` run (conftest's
shared_local_run, which test_report.py reads too) records into it and feeds the checks of what a run
holds, `runs` and the report's link; hpo.py runs twice in
this process with the names a tuning job's training jobs get, and their runs must sit under one parent; a
server that refuses connections costs one line, a few seconds, and no training.
conftest.py sets MLFLOW_TRACKING_URI empty for every other test, so their runs record nothing.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PROJECT_ROOT, SHARED_RUN_TRAINING, project_module, tiny_args

experiments = project_module("experiments")
schema = project_module("config").schema
# The session's shared run: debugger rules and profiler rules (its report among them).
TRACKED_TRAINING = SHARED_RUN_TRAINING
RULES = TRACKED_TRAINING["rules"]
ARN = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/team-server"


def needs_mlflow():
    return pytest.importorskip("mlflow", reason="the `tracking` extra (in `dev`) brings mlflow")


def client_of(uri: str):
    return needs_mlflow().MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def local_run(shared_local_run) -> tuple[str, Path]:
    """The session's tiny `train --local` of train_model.py (conftest.shared_local_run), recorded into its
    own local store (an sqlite file, as the project's mlflow.db; creating it runs MLflow's migrations)."""
    needs_mlflow()
    return shared_local_run.store, shared_local_run.run_dir


@pytest.fixture(scope="module")
def store(local_run) -> str:
    """The module's local store: the shared run's."""
    return local_run[0]


def runs_of(uri: str, experiment: str) -> list:
    client = client_of(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} in {uri}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def artifact_paths(uri: str, run_id: str) -> set[str]:
    client = client_of(uri)
    paths, folders = set(), [None]
    while folders:
        for item in client.list_artifacts(run_id, folders.pop()):
            (folders.append(item.path) if item.is_dir else paths.add(item.path))
    return paths


@pytest.mark.slow
def test_a_local_run_records_parameters_curves_verdicts_and_files(local_run, project_config, tmp_path):
    uri, run_dir = local_run
    (run,) = runs_of(uri, experiments.experiment_name(project_config))
    config_dir = run_dir / "opt_ml" / "input" / "config"
    job_name = json.loads(json.loads((config_dir / "hyperparameters.json").read_text())["sagemaker_job_name"])
    assert (run.info.run_name, run.info.status, run.data.tags["kind"]) == (job_name, "FINISHED", "training")
    params = run.data.params
    expected = project_config.script_hyperparameters(TRACKED_TRAINING)
    for name in ("lr", "batch_size", "epochs", "backbone", "image_size", "finetune", "rules"):
        assert params[name] == str(expected[name]), name

    client = client_of(uri)
    output = run_dir / "opt_ml" / "output" / "data"
    history = json.loads((output / "history.json").read_text())
    curve = client.get_metric_history(run.info.run_id, "validation_loss")
    assert [(m.step, round(m.value, 6)) for m in curve] == [
        (epoch, round(point["loss"], 6)) for epoch, point in enumerate(history["epochs"], start=1)
    ]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert run.data.metrics["test_accuracy"] == pytest.approx(history["test_accuracy"])
    recording = json.loads((output / "recording.json").read_text())
    saved = client.get_metric_history(run.info.run_id, "step_train_loss")
    assert sorted((m.step, round(m.value, 6)) for m in saved) == sorted(
        (step, round(value, 6)) for step, value in recording["losses"]["TRAIN"]
    )
    verdicts = json.loads((output / "rule_verdicts.json").read_text())["rules"]
    assert {v["rule"] for v in verdicts} >= set(RULES.split(","))
    for verdict in verdicts:
        assert run.data.tags[f"rule.{verdict['rule']}"] == verdict["verdict"]

    files = artifact_paths(uri, run.info.run_id)
    expected_files = {
        "history.json",
        "model/metadata.json",
        "rules/rule_verdicts.json",
        "profiler/profiler-report.html",
    }
    assert expected_files <= files, files
    metadata = Path(client.download_artifacts(run.info.run_id, "model/metadata.json", str(tmp_path)))
    assert json.loads(metadata.read_text()) == json.loads(
        (run_dir / "opt_ml" / "model" / "metadata.json").read_text()
    )


@pytest.mark.slow
def test_runs_lists_the_run_and_the_report_links_it_and_adds_its_pictures(
    local_run, project_config, tmp_path
):
    uri, run_dir = local_run
    cli = project_module("cli")
    report_module = project_module("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        listed = CliRunner().invoke(cli.main, ["--project", str(PROJECT_ROOT), "runs", "--json"])
        report = report_module.build_local_report(project_config, run_dir, reports_dir=tmp_path)
    assert listed.exit_code == 0, listed.output
    (row,) = [json.loads(line) for line in listed.output.splitlines()]
    (run,) = runs_of(uri, experiments.experiment_name(project_config))
    assert (row["run id"], row["kind"], row["status"]) == (run.info.run_id, "training", "FINISHED")
    assert row["valid loss"] == round(run.data.metrics["best_validation_loss"], 4)

    assert run.info.run_id in report.tracking and run.info.run_id in report.index_html.read_text()
    pictures = {f"report/{path.name}" for path in report.pictures.values()}
    assert pictures and pictures <= artifact_paths(uri, run.info.run_id)


@pytest.mark.slow
def test_tuning_jobs_runs_are_grouped_under_one_parent_named_after_the_tuning_job(
    training, tiny_dataset, tmp_path, monkeypatch, store
):
    """hpo.py twice, as two training jobs of tuning job `dogs-hpo-261206-1200` (SageMaker's names)."""
    uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tuning-test")
    train_model = training("train_model")
    tuning_job = "dogs-hpo-261206-1200"
    for index, lr in enumerate(("0.01", "0.001"), start=1):
        monkeypatch.setenv("TRAINING_JOB_NAME", f"{tuning_job}-{index:03d}-0a1b2c3{index}")
        args = tiny_args(train_model, tiny_dataset, tmp_path / f"job{index}", "--lr", lr)
        train_model.main(args, use_debugger=False, evaluate_test=False, tuning=True)

    runs = runs_of(uri, "tuning-test")
    parents = [run for run in runs if run.data.tags.get("kind") == "tuning job"]
    children = [run for run in runs if run.data.tags.get("kind") == "tuning"]
    assert len(runs) == 3 and len(parents) == 1, [(r.info.run_name, r.data.tags.get("kind")) for r in runs]
    (parent,) = parents
    assert parent.info.run_name == tuning_job and parent.data.tags["sagemaker.tuning_job_name"] == tuning_job
    assert [run.data.tags["mlflow.parentRunId"] for run in children] == [parent.info.run_id] * 2
    assert [run.data.params["lr"] for run in children] == ["0.01", "0.001"]
    assert all("validation_loss" in run.data.metrics for run in children)


@pytest.mark.slow
def test_an_unreachable_server_costs_one_line_and_training_goes_on(
    training, tiny_dataset, tmp_path, monkeypatch, capfd, caplog
):
    needs_mlflow()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TRAINING_JOB_NAME", "dogs-train-unreachable")
    train_model = training("train_model")
    real_start, trackers = train_model.start_tracking, []

    def timed_start(*args, **kwargs):
        started = time.perf_counter()
        trackers.append((real_start(*args, **kwargs), time.perf_counter() - started))
        return trackers[-1][0]

    monkeypatch.setattr(train_model, "start_tracking", timed_start)
    result = train_model.main(tiny_args(train_model, tiny_dataset, tmp_path), use_debugger=False)
    out, err = capfd.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("tracking:")]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], lines
    assert not [line for line in err.splitlines() if "mlflow" in line.lower()], err[-2000:]
    retries = [r for r in caplog.records if r.name.startswith(("urllib3", "mlflow")) and r.levelno >= 30]
    assert not retries, [r.getMessage() for r in retries]
    ((tracker, gave_up),) = trackers
    assert not tracker.active and gave_up < 20, gave_up  # MLflow's own retries would take minutes
    assert result["epochs_run"] == 1 and (tmp_path / "model" / "metadata.json").is_file()


def test_without_a_tracking_uri_nothing_is_tracked_or_said(training, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = training("tracking").start_tracking(None, tuning=False, enabled=True)
    assert not tracker.active and capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("training_job", "tuning_job"),
    [
        ("dogs-hpo-261206-1200-001-0a1b2c3d", "dogs-hpo-261206-1200"),
        ("dogs-hpo-261206-1200-120-ffffffff", "dogs-hpo-261206-1200"),
        ("dogs-train-2026-12-06-12-00-01-123", None),  # a training job's name (sagemaker_api.job_name)
        ("local-20261206-120001", None),
    ],
)
def test_the_tuning_job_is_read_from_the_training_jobs_name(training, training_job, tuning_job):
    assert training("tracking").tuning_job_of(training_job) == tuning_job


def with_tracking(config, **tracking):
    return dataclasses.replace(
        config, data={**config.data, "tracking": {**config.data["tracking"], **tracking}}
    )


def test_only_a_configured_server_reaches_the_jobs_and_the_iam_policies(project_config):
    sagemaker_jobs = project_module("aws.sagemaker_jobs")  # the jobs' environment, whichever SDK sends it
    iam = project_module("checks.iam")
    assert project_config.settings.tracking.server_arn == ""  # the default: the jobs install and log nothing
    assert "MLFLOW_TRACKING_URI" not in sagemaker_jobs.job_environment(project_config)
    assert not any(
        s.get("Sid") == "MlflowTracking" for s in iam.execution_role_policy(project_config)["Statement"]
    )

    configured = with_tracking(project_config, server_arn=ARN, experiment="team/dogs")
    wanted = {"MLFLOW_TRACKING_URI": ARN, "MLFLOW_EXPERIMENT_NAME": "team/dogs"}
    assert wanted.items() <= sagemaker_jobs.job_environment(configured).items()
    operations = [("sagemaker", "CreateTrainingJob")]
    for policy in (iam.execution_role_policy(configured), iam.user_policy(configured, operations)):
        (statement,) = [s for s in policy["Statement"] if s.get("Sid") == "MlflowTracking"]
        assert statement["Action"] == ["sagemaker-mlflow:*"] and statement["Resource"] == ARN


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:sagemaker:us-east-1:123456789012:endpoint/team-server",
        "http://mlflow.example.com",
        "arn:aws:sagemaker:us-east-1:1234:mlflow-app/app-1",
    ],
)
def test_a_server_arn_that_is_not_an_mlflow_one_is_refused_by_name(project_config, arn):
    problems = schema.validate(with_tracking(project_config, server_arn=arn).data)
    assert len(problems) == 1 and "[tracking] server_arn" in problems[0].text(), [p.text() for p in problems]
