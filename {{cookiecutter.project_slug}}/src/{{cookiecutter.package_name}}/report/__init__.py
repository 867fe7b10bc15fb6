"""What a training run says about itself, as a folder a person opens: `reports/<run>/index.html`.

One module per job, in the order a report is made:

- `fetch`: a training job's description and output archives from S3, or a local run's folder (bounded);
- `series`: the numbers behind the pictures (epochs, steps, classes, profiler) and what verdicts mean;
- `figures`: the pictures, drawn with matplotlib (the `debug` extra);
- `int8`: the int8 model's figures and what the configured endpoint would serve (model_fn's own rule);
- `pages`: `index.html` and `summary.md`;
- `build`: the entry points that assemble them (`build_report`, `build_local_report`, `build_job_report`,
  and `training_report`, SageMaker's view that the notebook shows).

The names below are those the CLI, the notebook, checks/writeup.py, report/tables.py and the tests use.
"""

from ..config import schema
from .build import TrainingReport, build_job_report, build_local_report, build_report, training_report
from .fetch import (
    NOT_EVALUATED_OFFLINE,
    NOT_EVALUATED_YET,
    OUTPUT_FILES,
    ReportError,
    Verdict,
    console_url,
    extract_outputs,
    job_artifacts,
    latest_training_job,
    output_archive_uri,
    read_output,
    rule_verdicts,
)
from .figures import (
    SAVE_INTERVAL_KEYS,
    confusion_figure,
    gradient_figure,
    loss_figure,
    saving_note,
    utilisation_figure,
)
from .int8 import int8_facts
from .pages import FIGURE_TITLES, Report, epoch_rows, sagemaker_rows, verdict_rows, write_report
from .series import (
    MAX_PLOT_POINTS,
    RULE_ADVICE,
    EpochPoint,
    best_and_worst,
    class_accuracies,
    class_insight,
    class_names,
    confusion_matrix,
    downsample,
    epoch_points,
    reading_lines,
    rule_insights,
)

__all__ = [
    "FIGURE_TITLES",
    "MAX_PLOT_POINTS",
    "NOT_EVALUATED_OFFLINE",
    "NOT_EVALUATED_YET",
    "OUTPUT_FILES",
    "RULE_ADVICE",
    "SAVE_INTERVAL_KEYS",
    "EpochPoint",
    "Report",
    "ReportError",
    "TrainingReport",
    "Verdict",
    "best_and_worst",
    "build_job_report",
    "build_local_report",
    "build_report",
    "class_accuracies",
    "class_insight",
    "class_names",
    "confusion_figure",
    "confusion_matrix",
    "console_url",
    "downsample",
    "epoch_points",
    "epoch_rows",
    "extract_outputs",
    "gradient_figure",
    "int8_facts",
    "job_artifacts",
    "latest_training_job",
    "loss_figure",
    "output_archive_uri",
    "read_output",
    "reading_lines",
    "rule_insights",
    "rule_verdicts",
    "sagemaker_rows",
    "saving_note",
    "schema",
    "training_report",
    "utilisation_figure",
    "verdict_rows",
    "write_report",
]
