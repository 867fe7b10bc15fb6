"""The steps of train_and_deploy.ipynb as a few calls, so that each cell of the notebook stays short.

Tables are pandas DataFrames and figures matplotlib Figures built without pyplot, so a notebook shows
each once (after `%matplotlib inline`).

`Workflow.start(dry_run=False)` works on the AWS account through the launcher (what it creates is
recorded in `.state/`, as with the CLI). `Workflow.start(dry_run=True)` runs the same steps offline:

- every AWS call goes to one offline (moto) session; the requests are written to
  `<dry-run folder>/aws/requests.json` when the session ends (`teardown`);
- the dataset is a small generated one (a few classes of tiny images);
- tuning and training are requested, not run; instead train_model.py runs here for one epoch on the
  small dataset, with the debugger hook on, so the report has loss curves and the endpoint a model;
- the endpoint is the local one (`local_endpoint`) on a free port, serving that model.

The dry-run folder is `dry-run/notebook/` in the project, or $NOTEBOOK_DRY_RUN_DIR.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import threading
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from matplotlib.figure import Figure

from . import costs, launcher
from . import data as data_module
from . import report as report_module
from .aws import AwsContext, connect, offline
from .config import ProjectConfig
from .state import ProjectState

if TYPE_CHECKING:
    from .local_endpoint import LocalEndpoint

# rich's progress bars (download, upload) ask for ipywidgets in Jupyter; without it they print plainly.
warnings.filterwarnings("ignore", message='install "ipywidgets" for Jupyter support')

DRY_RUN_DIR_ENV = "NOTEBOOK_DRY_RUN_DIR"
# The dry run's dataset and training: small enough for a laptop CPU in well under a minute.
DRY_RUN_CLASSES = 3
DRY_RUN_IMAGE_SIZE = 64
DRY_RUN_IMAGES_PER_CLASS = (8, 4, 2)  # train, valid, test
DRY_RUN_HYPERPARAMETERS = {
    "epochs": 1,
    "batch_size": 4,
    "test_batch_size": 8,
    "image_size": DRY_RUN_IMAGE_SIZE,
    "num_classes": DRY_RUN_CLASSES,
    "pretrained": False,  # no weights download
    "num_workers": 0,
}
# Save the loss at every step, so one short epoch still draws a curve.
DRY_RUN_SAVE_INTERVAL = 1
TRAINING_LOG_TAIL = 6
# What a dry run writes in its folder (and removes there when it starts again): nothing else is touched.
DRY_RUN_PARTS = ("aws", "state", "data", "training")


def _table(rows: list[dict[str, Any]], index: str | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    return frame.set_index(index) if index and not frame.empty else frame


def _fields(pairs: dict[str, Any]) -> pd.DataFrame:
    """A two-column table (field, value) of a few named facts."""
    return _table([{"field": key, "value": value} for key, value in pairs.items()], index="field")


def dry_run_config(config: ProjectConfig) -> ProjectConfig:
    """The config the dry run's local training uses: the debugger saves every step."""
    debugger = {
        **config.section("debugger"),
        "train_save_interval": DRY_RUN_SAVE_INTERVAL,
        "eval_save_interval": DRY_RUN_SAVE_INTERVAL,
    }
    return replace(config, data={**config.data, "debugger": debugger})


@dataclass
class Workflow:
    """One notebook session: the config, where AWS calls go, where results are recorded."""

    config: ProjectConfig
    dry_run: bool
    aws: AwsContext
    state: ProjectState
    data_dir: Path
    # Dry run only: where everything offline is written, and what the local steps made.
    workdir: Path | None = None
    model_archive: Path | None = None
    endpoint: LocalEndpoint | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    @classmethod
    def start(cls, dry_run: bool, project_root: Path | None = None) -> Workflow:
        """Load config.toml (found from the current folder upwards); open the AWS session or its stand-in."""
        config = ProjectConfig.load(project_root)
        if not dry_run:
            return cls(
                config,
                False,
                connect(config),
                ProjectState(config.state_dir),
                config.data_dir,
            )
        workdir = Path(os.environ.get(DRY_RUN_DIR_ENV) or config.root / "dry-run" / "notebook").resolve()
        for part in DRY_RUN_PARTS:  # each run starts from nothing, as on a fresh account
            shutil.rmtree(workdir / part, ignore_errors=True)
        stack = contextlib.ExitStack()
        context = stack.enter_context(offline(config, workdir / "aws"))
        return cls(
            config, True, context, ProjectState(workdir / "state"), workdir / "data", workdir, _stack=stack
        )

    def session_table(self) -> pd.DataFrame:
        return _fields(
            {
                "mode": "dry run (offline, nothing is sent to AWS)" if self.dry_run else "AWS account",
                "project": self.config.section("project")["name"],
                "backbone": self.config.model["backbone"],
                "region": self.aws.region,
                "bucket": self.aws.bucket,
                "prefix": self.aws.prefix,
                "execution role": self.aws.role_arn,
                "records": self.workdir if self.dry_run else self.state.path,
            }
        )

    # --- data -------------------------------------------------------------------------------------

    def prepare_data(self) -> data_module.Manifest:
        """Dry run: generate the small dataset. Otherwise download and check the dataset once."""
        if self.dry_run:
            width_height = (DRY_RUN_IMAGE_SIZE, DRY_RUN_IMAGE_SIZE)
            return data_module.synthetic(
                self.data_dir,
                num_classes=DRY_RUN_CLASSES,
                size=width_height,
                per_class=DRY_RUN_IMAGES_PER_CLASS,
            )
        if (self.data_dir / data_module.MANIFEST_FILENAME).is_file():
            return data_module.read_manifest(self.data_dir)
        return data_module.prepare(
            self.config.section("data")["url"], self.data_dir, **data_module.prepare_options(self.config)
        )

    def upload_data(self) -> data_module.UploadResult:
        return data_module.upload(self.config, self.data_dir, aws=self.aws)

    # --- tuning and training ----------------------------------------------------------------------

    def tune(self) -> launcher.TuningResult:
        """Start the tuning job and (on AWS) wait for it; a dry run only captures the request."""
        return launcher.tune(self.config, wait=not self.dry_run, aws=self.aws, state=self.state)

    def tuning_table(self, result: launcher.TuningResult) -> pd.DataFrame:
        facts: dict[str, Any] = {
            "tuning job": result.tuning_job_name,
            "status": result.status,
            "best training job": result.best_training_job,
            "objective value": result.objective_value,
            "best hyperparameters": result.best_hyperparameters or None,
        }
        request = self.captured_request("CreateHyperParameterTuningJob")
        if request:
            facts.update(_tuning_request_summary(request))
        return _fields(facts)

    def train(self) -> launcher.TrainingResult:
        """The training job with the debugger rules and profiler (a dry run requests it, then trains here)."""
        result = launcher.train(self.config, wait=not self.dry_run, aws=self.aws, state=self.state)
        if self.dry_run:
            self.model_archive = self._train_locally()
        return result

    def _train_locally(self) -> Path:
        from .local_training import run_local_training

        assert self.workdir is not None
        run_dir = self.workdir / "training"
        log = io.StringIO()
        # The whole log is in training.log; the notebook shows its end.
        with contextlib.redirect_stdout(log):
            archive = run_local_training(
                dry_run_config(self.config),
                self.data_dir,
                run_dir,
                DRY_RUN_HYPERPARAMETERS,
                debugger=self.debugger_on,
            )
        print(*log.getvalue().splitlines()[-TRAINING_LOG_TAIL:], sep="\n")
        print(f"local training: {archive} (log: {run_dir / 'training.log'})")
        return archive

    @property
    def debugger_on(self) -> bool:
        return self.config.section("debugger")["rule_set"] != "none"

    def training_table(self, result: launcher.TrainingResult) -> pd.DataFrame:
        facts = {
            "training job": result.training_job_name,
            "status": result.status,
            "model": result.model_data,
            "hyperparameters": result.hyperparameters,
            "rule set": self.config.section("debugger")["rule_set"],
        }
        if self.dry_run:
            facts["local model (dry run)"] = self.model_archive
            facts["local hyperparameters (dry run)"] = DRY_RUN_HYPERPARAMETERS
        return _fields(facts)

    # --- report -----------------------------------------------------------------------------------

    def report(self, training: launcher.TrainingResult) -> report_module.TrainingReport:
        """Rule verdicts and locations of the job; loss curves from S3 (or the dry run's local training)."""
        if not self.dry_run:
            return report_module.training_report(self.aws, training.training_job_name)
        assert self.workdir is not None
        tensors = report_module.local_tensors_dir(self.workdir / "training")
        return report_module.training_report(
            self.aws, training.training_job_name, tensors=tensors, curves=self.debugger_on
        )

    @staticmethod
    def verdicts_table(result: report_module.TrainingReport) -> pd.DataFrame:
        rows = [asdict(verdict) for verdict in result.verdicts]
        return _table(rows or [{"rule": "none: [debugger] rule_set is none"}], index="rule")

    def report_locations(self, result: report_module.TrainingReport) -> pd.DataFrame:
        artifacts = result.artifacts
        facts = asdict(artifacts)
        if artifacts.profiler_report:
            facts["profiler report in the console"] = report_module.console_url(
                artifacts.profiler_report, self.aws.region
            )
        return _fields(facts)

    # --- endpoint ---------------------------------------------------------------------------------

    def deploy(self, training: launcher.TrainingResult) -> Any:
        """Create the model, endpoint config and endpoint; a dry run also starts the local endpoint."""
        model_data = self.model_archive if self.dry_run else training.model_data
        deployment = launcher.deploy(
            self.config, model_data, wait=not self.dry_run, aws=self.aws, state=self.state
        )
        if self.dry_run:
            self._start_local_endpoint()
        return deployment

    def _start_local_endpoint(self) -> None:
        from .local_endpoint import make_server

        assert self.model_archive is not None
        # One log line per request is noise in a notebook; errors still show.
        logging.getLogger(make_server.__module__).setLevel(logging.WARNING)
        self.endpoint = make_server(self.model_archive, port=0, project_root=self.config.root)
        threading.Thread(target=self.endpoint.serve_forever, name="local-endpoint", daemon=True).start()
        print(f"dry run: the local endpoint answers at {self.endpoint.url}/invocations")

    def test_images(self, count: int = 3) -> list[Path]:
        """The first test image of `count` classes spread over the test set."""
        folders = sorted(path for path in (self.data_dir / "test").iterdir() if path.is_dir())
        step = max(len(folders) // count, 1)
        images = []
        for folder in folders[::step][:count]:
            files = sorted(
                path for path in folder.iterdir() if path.suffix.lower() in (".jpg", ".jpeg", ".png")
            )
            images += files[:1]
        return images

    def predict(self, images: list[Path], top_k: int = 3) -> list[dict[str, Any]]:
        """Each image's top-k classes, from the endpoint (a dry run asks the local one)."""
        top_k = min(top_k, self._num_classes())
        if self.dry_run:
            from .local_endpoint import invoke_local

            assert self.endpoint is not None, "deploy first"
            return invoke_local(self.endpoint.url, images, top_k=top_k)
        return launcher.predict(self.config, images, top_k=top_k, aws=self.aws, state=self.state)

    def _num_classes(self) -> int:
        return DRY_RUN_CLASSES if self.dry_run else self.config.model["num_classes"]

    def teardown(self) -> pd.DataFrame:
        """Delete the endpoint, its config and the model; a dry run also stops the local endpoint and
        writes its record of requests."""
        actions = launcher.teardown(self.config, aws=self.aws, state=self.state)
        if self.endpoint is not None:
            self.endpoint.shutdown()
            self.endpoint.server_close()
            self.endpoint = None
        if self.dry_run:
            self._stack.close()
            assert self.workdir is not None
            print(f"dry run: every request is in {self.workdir / 'aws' / 'requests.json'}")
        return _table([{"kind": kind, "name": name, "result": outcome} for kind, name, outcome in actions])

    # --- the dry run's record ---------------------------------------------------------------------

    def captured_request(self, operation: str) -> dict[str, Any] | None:
        """The last request of this kind sent to the offline AWS (None on a real account)."""
        if self.aws.offline is None:
            return None
        matches = [call["params"] for call in self.aws.offline.calls if call["operation"] == operation]
        return matches[-1] if matches else None


# --- tables and figures ---------------------------------------------------------------------------


def _decoded(value: str) -> Any:
    """The SDK sends hyperparameters JSON-encoded (`'"resnet18"'`); show them decoded."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _tuning_request_summary(request: dict[str, Any]) -> dict[str, Any]:
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
    return {
        "requested: objective": f"{objective['Type']} {objective['MetricName']}",
        "requested: strategy": tuning.get("Strategy"),
        "requested: jobs (in parallel)": (
            f"{limits['MaxNumberOfTrainingJobs']} ({limits['MaxParallelTrainingJobs']})"
        ),
        "requested: ranges": "; ".join(ranges),
        "requested: instances per job": f"{resources.get('InstanceCount')} x {resources.get('InstanceType')}",
        "requested: fixed hyperparameters": launcher.clean_hyperparameters(
            definition["StaticHyperParameters"]
        ),
    }


def counts_table(manifest: data_module.Manifest) -> pd.DataFrame:
    return _table(
        [
            {"split": split, "classes": len(manifest.counts.get(split, {})), "images": manifest.total(split)}
            for split in data_module.SPLITS
        ],
        index="split",
    )


def cost_table(config: ProjectConfig, endpoint_hours: float = 24.0) -> pd.DataFrame:
    """The upper-bound cost of each step from config.toml's instance types and [prices]."""
    lines = costs.estimate(config, endpoint_hours=endpoint_hours)
    rows = [
        {
            "step": line.step,
            "instance": line.instance_type,
            "instance-hours": round(line.instance_hours, 1),
            "USD/hour": line.usd_per_hour,
            "USD (at most)": round(line.usd, 2),
        }
        for line in lines
    ]
    rows.append({"step": "total", "USD (at most)": round(costs.total(lines), 2)})
    return _table(rows, index="step").fillna("")


def ranges_table(config: ProjectConfig) -> pd.DataFrame:
    """[tuning.ranges.*]: what the tuner tries."""
    ranges = config.section("tuning").get("ranges", {})
    return _table([{"hyperparameter": name, **spec} for name, spec in ranges.items()], index="hyperparameter")


def predictions_table(predictions: list[dict[str, Any]]) -> pd.DataFrame:
    return _table(
        [
            {
                "image": Path(result["image"]).name,
                "rank": rank,
                "breed": row.get("label", row.get("class_name")),
                "probability": round(row["probability"], 4),
            }
            for result in predictions
            for rank, row in enumerate(result["top_k"], 1)
        ]
    )


def show_predictions(predictions: list[dict[str, Any]]) -> Figure:
    """Each image with its top-k classes and their probabilities underneath."""
    from PIL import Image

    figure = Figure(figsize=(3.2 * max(len(predictions), 1), 4.2), layout="constrained")
    for position, result in enumerate(predictions, 1):
        axes = figure.add_subplot(1, len(predictions), position)
        with Image.open(result["image"]) as image:
            axes.imshow(image.convert("RGB"))
        axes.set_axis_off()
        axes.set_title(Path(result["image"]).parent.name, fontsize=9)
        lines = [
            f"{row.get('label', row.get('class_name'))}: {row['probability']:.2f}" for row in result["top_k"]
        ]
        axes.text(0.5, -0.04, "\n".join(lines), transform=axes.transAxes, ha="center", va="top", fontsize=9)
    return figure
