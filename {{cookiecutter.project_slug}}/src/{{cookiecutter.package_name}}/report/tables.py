"""Tables and figures of the workflow's results, shared by the CLI (rich) and the notebook (pandas).

Each `*_rows` function turns a result into a list of dicts (one per row, columns in order) and each
`*_facts` into a dict of named facts; `rich_table`, `frame` and `fields` draw them for a terminal or a
notebook. Figures are matplotlib Figures built without pyplot, so a notebook shows each once.
pandas, matplotlib and rich are imported by the functions that draw with them: the CLI never needs the
first two, the notebook never the third.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ProjectConfig
from ..workflow import costs
from ..workflow.synthetic import SPLITS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from rich.table import Table

    from ..aws.session import Session
    from ..workflow.dataset import Manifest
    from ..workflow.launcher import TrainingResult, TuningResult
    from . import TrainingReport

Rows = list[dict[str, Any]]


def rich_table(rows: Rows, title: str | None = None) -> Table:
    from rich.table import Table

    table = Table(title=title)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(column) is None else str(row.get(column)) for column in columns))
    return table


def frame(rows: Rows, index: str | None = None) -> pd.DataFrame:
    import pandas as pd

    table = pd.DataFrame(rows)
    return table.set_index(index) if index and not table.empty else table


def fields(pairs: dict[str, Any]) -> pd.DataFrame:
    """A two-column table (field, value) of a few named facts."""
    return frame([{"field": key, "value": value} for key, value in pairs.items()], index="field")


# --- before anything runs -------------------------------------------------------------------------


def session_facts(config: ProjectConfig, session: Session) -> dict[str, Any]:
    aws = session.aws
    return {
        "mode": "dry run (offline: requests are captured, not run)" if session.dry_run else "AWS account",
        "project": config.section("project")["name"],
        "backbone": config.model["backbone"],
        "region": aws.region,
        "bucket": aws.bucket,
        "prefix": aws.prefix,
        "execution role": aws.role_arn,
        "records": session.state.folder,
    }


def cost_rows(config: ProjectConfig, endpoint_hours: float = 24.0) -> Rows:
    """The upper-bound cost of each step from config.toml's instance types and [prices], and the total."""
    lines = costs.estimate(config, endpoint_hours=endpoint_hours)
    rows: Rows = [
        {
            "step": line.step,
            "instance": line.instance_type,
            "instance-hours": f"{line.instance_hours:.1f}",
            "USD/hour": f"{line.usd_per_hour:.3f}",
            "USD (at most)": f"{line.usd:.2f}",
        }
        for line in lines
    ]
    rows.append({"step": "total", "USD (at most)": f"{costs.total(lines):.2f}"})
    return rows


def counts_rows(manifest: Manifest) -> Rows:
    return [
        {"split": split, "classes": len(manifest.counts.get(split, {})), "images": manifest.total(split)}
        for split in SPLITS
    ]


def ranges_rows(config: ProjectConfig) -> Rows:
    """[tuning.ranges.*]: what the tuner tries."""
    ranges = config.section("tuning").get("ranges", {})
    return [{"hyperparameter": name, **spec} for name, spec in ranges.items()]


def _decoded(value: str) -> Any:
    """The SDK sends hyperparameters JSON-encoded (`'"resnet18"'`); show them decoded."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def tuning_request_summary(request: dict[str, Any]) -> dict[str, Any]:
    """The parts of a CreateHyperParameterTuningJob request a reader checks, one line each."""
    tuning = request["HyperParameterTuningJobConfig"]
    definition = request["TrainingJobDefinition"]
    objective = tuning["HyperParameterTuningJobObjective"]
    limits = tuning["ResourceLimits"]
    resources = definition.get("HyperParameterTuningResourceConfig") or definition.get("ResourceConfig", {})
    ranges = []
    for kind, items in tuning["ParameterRanges"].items():
        for item in items:
            if kind.startswith("Categorical"):
                ranges.append(f"{item['Name']} in {', '.join(str(_decoded(v)) for v in item['Values'])}")
            else:
                scaling = item.get("ScalingType", "Auto")
                ranges.append(f"{item['Name']} from {item['MinValue']} to {item['MaxValue']} ({scaling})")
    static = {
        name: _decoded(value)
        for name, value in definition["StaticHyperParameters"].items()
        if not name.startswith(("sagemaker_", "_tuning"))
    }
    return {
        "requested: objective": f"{objective['Type']} {objective['MetricName']}",
        "requested: strategy": tuning.get("Strategy"),
        "requested: jobs (in parallel)": (
            f"{limits['MaxNumberOfTrainingJobs']} ({limits['MaxParallelTrainingJobs']})"
        ),
        "requested: ranges": "; ".join(ranges),
        "requested: instances per job": f"{resources.get('InstanceCount')} x {resources.get('InstanceType')}",
        "requested: fixed hyperparameters": static,
    }


def tuning_facts(result: TuningResult, session: Session) -> dict[str, Any]:
    """The tuning job's outcome; in a dry run, a summary of the captured request instead."""
    facts: dict[str, Any] = {
        "tuning job": result.tuning_job_name,
        "status": result.status,
        "best training job": result.best_training_job,
        "objective value": result.objective_value,
        "best hyperparameters": result.best_hyperparameters or None,
    }
    if session.offline is not None:
        requests = session.offline.requests("CreateHyperParameterTuningJob")
        facts.update(tuning_request_summary(requests[-1]))
    return facts


def training_facts(config: ProjectConfig, result: TrainingResult) -> dict[str, Any]:
    return {
        "training job": result.training_job_name,
        "status": result.status,
        "model": result.model_data,
        "hyperparameters": result.hyperparameters,
        "rules": ", ".join(config.section("debugger")["rules"]) or "none",
        "judged": config.section("debugger")["evaluation"],
    }


# --- after training -------------------------------------------------------------------------------


def verdict_rows(report: TrainingReport) -> Rows:
    return [asdict(verdict) for verdict in report.verdicts] or [
        {"rule": "none", "details": "[debugger] rules is empty"}
    ]


def location_rows(report: TrainingReport, region: str) -> list[tuple[str, str]]:
    """(label, location) of what the job and its rules wrote; parts that were off are left out."""
    from . import console_url

    artifacts = report.artifacts
    rows = [(name.replace("_", " "), value) for name, value in asdict(artifacts).items() if value]
    if artifacts.profiler_report:
        rows.append(("profiler report in the console", console_url(artifacts.profiler_report, region)))
    return rows


# --- predictions ----------------------------------------------------------------------------------


def prediction_rows(result: dict[str, Any]) -> Rows:
    """One image's top-k answer: rank, class, probability."""
    return [
        {
            "rank": rank,
            "class": row.get("label", row.get("class_name")),
            "probability": f"{row['probability']:.3f}",
        }
        for rank, row in enumerate(result["top_k"], 1)
    ]


def predictions_rows(predictions: list[dict[str, Any]]) -> Rows:
    return [
        {"image": Path(result["image"]).name, **row}
        for result in predictions
        for row in prediction_rows(result)
    ]


def predictions_figure(predictions: list[dict[str, Any]]) -> Figure:
    """Each image with its top-k classes and their probabilities underneath."""
    from matplotlib.figure import Figure
    from PIL import Image

    figure = Figure(figsize=(3.2 * max(len(predictions), 1), 4.2), layout="constrained")
    for position, result in enumerate(predictions, 1):
        axes = figure.add_subplot(1, len(predictions), position)
        with Image.open(result["image"]) as image:
            axes.imshow(image.convert("RGB"))
        axes.set_axis_off()
        axes.set_title(Path(result["image"]).parent.name, fontsize=9)
        lines = [f"{row['class']}: {row['probability']}" for row in prediction_rows(result)]
        axes.text(0.5, -0.04, "\n".join(lines), transform=axes.transAxes, ha="center", va="top", fontsize=9)
    return figure
