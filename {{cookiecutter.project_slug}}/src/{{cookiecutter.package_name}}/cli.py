"""The command line: thin click commands over the package's plain functions.

Every command that touches AWS takes `--dry-run [--out DIR]`: it then runs the
same code against an offline AWS and writes DIR/requests.json and DIR/s3/.
Heavy imports (the SageMaker SDK, torch, moto) happen inside the commands, so
`--help` stays fast. Expected failures end with one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import ConfigError, ProjectConfig

console = Console()


def _expected_error_types() -> tuple[type[BaseException], ...]:
    from .aws import AwsSetupError
    from .data import DataError
    from .launcher import LaunchError

    types: list[type[BaseException]] = [ConfigError, AwsSetupError, DataError, LaunchError]
    try:
        import botocore.exceptions

        types += [botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError]
    except ImportError:  # pragma: no cover - boto3 is a dependency
        pass
    try:
        from .local_endpoint import LocalEndpointError
        from .local_training import LocalTrainingError

        types += [LocalEndpointError, LocalTrainingError]
    except ImportError:
        pass
    return tuple(types)


class ProjectGroup(click.Group):
    """Turns the package's expected errors into one-line `click.ClickException`s."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as error:
            if isinstance(error, _expected_error_types()):
                message = " ".join(str(error).split())
                raise click.ClickException(message) from None
            raise


def _config(ctx: click.Context) -> ProjectConfig:
    """config.toml, loaded on first use so that `<command> --help` works outside a project."""
    root = ctx.find_root()
    if not isinstance(root.obj, ProjectConfig):
        root.obj = ProjectConfig.load(root.obj)
    return root.obj


def _dry_run_dir(config: ProjectConfig, dry_run: bool, out: Path | None, command: str) -> Path | None:
    if not dry_run:
        return None
    return Path(out) if out else config.root / "dry-run" / command


def _report_dry_run(folder: Path) -> None:
    from .dryrun import S3_FOLDER, load_requests

    calls = load_requests(folder)
    table = Table(title=f"dry run: {len(calls)} AWS calls (nothing was sent)")
    table.add_column("#", justify="right")
    table.add_column("service")
    table.add_column("operation")
    for number, call in enumerate(calls, 1):
        table.add_row(str(number), call["service"], call["operation"])
    console.print(table)
    uploads = sorted(path for path in (folder / S3_FOLDER).rglob("*") if path.is_file())
    for path in uploads:
        console.print(f"  uploaded  s3://{path.relative_to(folder / S3_FOLDER).as_posix()}")
    console.print(f"requests: {folder / 'requests.json'}   objects: {folder / S3_FOLDER}/")


def _parse_hyperparameters(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--hp lr=0.01 --hp backbone=resnet50` -> {"lr": 0.01, "backbone": "resnet50"} (JSON values parsed)."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--hp")
        try:
            parsed[name] = json.loads(value)
        except ValueError:
            parsed[name] = value
    return parsed


def dry_run_options(command: Any) -> Any:
    command = click.option(
        "--out", type=click.Path(path_type=Path), help="Dry run: where to write requests.json and s3/."
    )(command)
    return click.option(
        "--dry-run", is_flag=True, help="Run offline against a mocked AWS and record every request."
    )(command)


@click.group(cls=ProjectGroup)
@click.option(
    "--project",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Project folder (holding config.toml); default: this folder or $IMAGE_CLASSIFIER_PROJECT_DIR.",
)
@click.version_option(version=__version__, message="%(version)s")
@click.pass_context
def main(ctx: click.Context, project: Path | None) -> None:
    """Finetune an image classifier on AWS SageMaker: data, tune, train, deploy, predict, teardown."""
    ctx.obj = project


# --- data -----------------------------------------------------------------------------------------


@main.group()
def data() -> None:
    """Prepare, generate or upload the dataset."""


@data.command("prepare")
@click.argument("source")
@click.option("--dest", type=click.Path(path_type=Path), help="Output folder; default: [data] local_dir.")
@click.option("--resize", type=click.IntRange(min=16), help="Also shrink images to this shorter side (JPEG).")
@click.pass_context
def data_prepare(ctx: click.Context, source: str, dest: Path | None, resize: int | None) -> None:
    """Check SOURCE (zip URL or path, or folder-per-class dataset) and write train/valid/test + manifest."""
    from . import data as data_module

    config = _config(ctx)
    destination = dest or config.data_dir
    manifest = data_module.prepare(
        source, destination, resize_to=resize, **data_module.prepare_options(config)
    )
    table = Table(title=f"{destination} ({len(manifest.classes)} classes)")
    for column in ("split", "images"):
        table.add_column(column)
    for split in data_module.SPLITS:
        table.add_row(split, str(manifest.total(split)))
    console.print(table)
    for item in manifest.excluded:
        console.print(f"[yellow]excluded[/] {item['path']}: {item['reason']}")


@data.command("synthetic")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--classes", "num_classes", type=click.IntRange(min=2), default=3, show_default=True)
@click.option("--size", default="48x40", show_default=True, help="Image width x height in pixels.")
@click.option("--per-class", default="6,2,2", show_default=True, help="Images per class in train,valid,test.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_synthetic(out: Path, num_classes: int, size: str, per_class: str, seed: int) -> None:
    """Generate a small dataset in OUT (one colour per class), for demos and dry runs."""
    from . import data as data_module

    try:
        width, height = (int(part) for part in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{size!r} is not WIDTHxHEIGHT", param_hint="--size") from None
    try:
        counts = tuple(int(part) for part in per_class.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3:
        raise click.BadParameter(
            f"{per_class!r} is not three numbers train,valid,test", param_hint="--per-class"
        )
    manifest = data_module.synthetic(
        out, num_classes=num_classes, size=(width, height), per_class=counts, seed=seed
    )
    console.print(
        f"{out}: {len(manifest.classes)} classes, "
        + ", ".join(f"{split} {manifest.total(split)}" for split in data_module.SPLITS)
    )


@data.command("upload")
@click.argument("data_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@dry_run_options
@click.pass_context
def data_upload(ctx: click.Context, data_dir: Path | None, dry_run: bool, out: Path | None) -> None:
    """Copy DATA_DIR (default: [data] local_dir) to s3://<bucket>/<prefix>/data/, skipping unchanged files."""
    from . import data as data_module

    config = _config(ctx)
    folder = _dry_run_dir(config, dry_run, out, "data-upload")
    result = data_module.upload(config, data_dir, dry_run_dir=folder)
    console.print(f"{result.destination}: {len(result.uploaded)} uploaded, {len(result.skipped)} unchanged")
    if folder:
        _report_dry_run(folder)


# --- tuning and training --------------------------------------------------------------------------


@main.command()
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the tuning job to finish.")
@click.option(
    "--attach", is_flag=True, help="Start nothing: wait for the last tuning job and record its best."
)
@dry_run_options
@click.pass_context
def tune(ctx: click.Context, wait: bool, attach: bool, dry_run: bool, out: Path | None) -> None:
    """Tune lr and batch size over hpo.py; records the best hyperparameters for `train`."""
    from . import launcher

    config = _config(ctx)
    folder = _dry_run_dir(config, dry_run, out, "tune")
    if attach:
        result = launcher.attach_tuning(config, wait=wait)
    else:
        result = launcher.tune(config, wait=wait, dry_run_dir=folder)
    console.print(f"tuning job {result.tuning_job_name}: {result.status}")
    if result.best_training_job:
        console.print(f"best training job {result.best_training_job} (objective {result.objective_value})")
        console.print_json(data=result.best_hyperparameters)
    if folder:
        _report_dry_run(folder)


@main.command()
@click.option(
    "--local", is_flag=True, help="Run train_model.py on this machine under the SageMaker contract."
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="--local: dataset folder; default: [data] local_dir.",
)
@click.option(
    "--hp", "hp_pairs", multiple=True, metavar="KEY=VALUE", help="Override a hyperparameter (repeatable)."
)
@click.option(
    "--tuned/--no-tuned", default=True, show_default=True, help="Use the best tuned hyperparameters."
)
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Stream the job's logs until it ends."
)
@click.option("--debugger", is_flag=True, help="--local: run with the smdebug hook.")
@dry_run_options
@click.pass_context
def train(
    ctx: click.Context,
    local: bool,
    data_dir: Path | None,
    hp_pairs: tuple[str, ...],
    tuned: bool,
    wait: bool,
    debugger: bool,
    dry_run: bool,
    out: Path | None,
) -> None:
    """Train train_model.py with the debugger and profiler rules (or locally with --local)."""
    from . import launcher

    config = _config(ctx)
    overrides = _parse_hyperparameters(hp_pairs)
    if tuned:
        overrides = {**launcher.best_hyperparameters(config), **overrides}
    if local:
        from .local_training import run_local_training

        data_dir = data_dir or config.data_dir
        model = run_local_training(
            config, data_dir, out or config.root / "runs" / "local", overrides, debugger=debugger
        )
        console.print(f"model: {model}")
        return
    folder = _dry_run_dir(config, dry_run, out, "train")
    result = launcher.train(config, hyperparameters=overrides, use_tuned=False, wait=wait, dry_run_dir=folder)
    console.print(f"training job {result.training_job_name}: {result.status}")
    console.print(f"model: {result.model_data}")
    if folder:
        _report_dry_run(folder)


@main.command()
@click.option("--job", "training_job_name", help="Training job; default: the last one `train` started.")
@click.option(
    "--local", is_flag=True, help="Only plot the tensors of `train --local --debugger`; no AWS calls."
)
@click.option(
    "--tensors", help="Debugger output to read: a folder or s3:// URI; default: the job's (or runs/local's)."
)
@click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Save the loss curves as this PNG file."
)
@click.pass_context
def report(
    ctx: click.Context, training_job_name: str | None, local: bool, tensors: str | None, plot: Path | None
) -> None:
    """Rule verdicts, loss curves and the profiler report's location of a training job."""
    from . import report as report_module
    from .aws import connect
    from .state import ProjectState

    config = _config(ctx)
    if local:
        source = tensors or str(report_module.local_tensors_dir(config.root / "runs" / "local"))
    else:
        name = training_job_name or report_module.latest_training_job(ProjectState(config.state_dir))
        context = connect(config)
        result = report_module.training_report(context, name, curves=False)
        table = Table(title=f"training job {name}: {result.status}")
        for column in ("rule", "kind", "verdict", "details"):
            table.add_column(column)
        for verdict in result.verdicts:
            table.add_row(verdict.rule, verdict.kind, verdict.status, verdict.details)
        console.print(table)
        artifacts = result.artifacts
        if artifacts.profiler_report:
            console.print(f"profiler report: {artifacts.profiler_report}")
            link = report_module.console_url(artifacts.profiler_report, context.region)
            console.print(f"  in the console: {link}")
        console.print(f"rule output: {artifacts.rule_output}")
        source = tensors or artifacts.debugger_output
        if source is None:
            console.print("no debugger output: the job ran without the debugger hook")
            return
    curves = report_module.loss_curves(source)
    for curve in curves:
        console.print(
            f"{curve.mode.lower()} loss ({curve.tensor}): {len(curve.steps)} steps saved, "
            f"{curve.values[0]:.4f} at step {curve.steps[0]} -> "
            f"{curve.values[-1]:.4f} at step {curve.steps[-1]}"
        )
    if not curves:
        console.print(f"no loss values saved in {source}")
    if plot:
        plot.parent.mkdir(parents=True, exist_ok=True)
        report_module.plot_loss_curves(curves, title=f"loss per step: {source}").savefig(plot, dpi=120)
        console.print(f"loss curves: {plot}")


# --- deployment and prediction --------------------------------------------------------------------


@main.command()
@click.option(
    "--model-data", help="model.tar.gz: an s3:// URI or a local file; default: the last trained model."
)
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until the endpoint is InService."
)
@dry_run_options
@click.pass_context
def deploy(ctx: click.Context, model_data: str | None, wait: bool, dry_run: bool, out: Path | None) -> None:
    """Deploy the model behind a real-time endpoint (inference.py, raw image bytes in, JSON out)."""
    from . import launcher

    config = _config(ctx)
    folder = _dry_run_dir(config, dry_run, out, "deploy")
    deployment = launcher.deploy(config, model_data, wait=wait, dry_run_dir=folder)
    console.print(f"endpoint {deployment.endpoint_name} (model {deployment.model_name})")
    if folder:
        _report_dry_run(folder)


def _print_predictions(results: list[dict[str, Any]]) -> None:
    for result in results:
        # The path as a line of its own: a table title would wrap it to the table's width.
        console.print(f"[bold]{result['image']}[/bold]", soft_wrap=True)
        table = Table()
        table.add_column("breed")
        table.add_column("probability", justify="right")
        for row in result["top_k"]:
            table.add_row(str(row.get("label", row.get("class_name"))), f"{row['probability']:.3f}")
        console.print(table)


@main.command()
@click.argument(
    "images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--endpoint", "endpoint_name", help="Endpoint name; default: the last one deployed.")
@click.option("--local", is_flag=True, help="Ask the local endpoint started by `serve`.")
@click.option(
    "--url", default="http://127.0.0.1:8080", show_default=True, help="--local: the endpoint's URL."
)
@dry_run_options
@click.pass_context
def predict(
    ctx: click.Context,
    images: tuple[Path, ...],
    top_k: int,
    endpoint_name: str | None,
    local: bool,
    url: str,
    dry_run: bool,
    out: Path | None,
) -> None:
    """Send IMAGES (JPEG/PNG) to the endpoint and print the top-k breeds."""
    config = _config(ctx)
    if local:
        from .local_endpoint import invoke_local

        _print_predictions(invoke_local(url, list(images), top_k=top_k))
        return
    from . import launcher

    folder = _dry_run_dir(config, dry_run, out, "predict")
    _print_predictions(
        launcher.predict(config, list(images), endpoint_name=endpoint_name, top_k=top_k, dry_run_dir=folder)
    )
    if folder:
        _report_dry_run(folder)


@main.command()
@click.option(
    "--model-data",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A local model.tar.gz (from `train --local`).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.pass_context
def serve(ctx: click.Context, model_data: Path, host: str, port: int) -> None:
    """Serve a model.tar.gz locally with inference.py, like the endpoint (Ctrl-C stops)."""
    from .local_endpoint import serve as serve_locally

    serve_locally(model_data, host=host, port=port, project_root=_config(ctx).root)


# --- cost, IAM, status, teardown ------------------------------------------------------------------


@main.command()
@click.option("--endpoint-hours", type=click.FloatRange(min=0), default=24.0, show_default=True)
@click.pass_context
def cost(ctx: click.Context, endpoint_hours: float) -> None:
    """Estimate tuning + training + endpoint cost from config.toml (upper bound, approximate prices)."""
    from . import costs

    lines = costs.estimate(_config(ctx), endpoint_hours=endpoint_hours)
    table = Table(title="Approximate cost in USD (on-demand prices from \\[prices] in config.toml)")
    for column in ("step", "instance", "instance-hours", "USD/hour", "USD"):
        table.add_column(column, justify="left" if column in ("step", "instance") else "right")
    for line in lines:
        table.add_row(
            line.step,
            line.instance_type,
            f"{line.instance_hours:.1f}",
            f"{line.usd_per_hour:.3f}",
            f"{line.usd:.2f}",
        )
    table.add_row("total", "", "", "", f"{costs.total(lines):.2f}")
    console.print(table)
    console.print(
        "Upper bound: every job runs to max_run_seconds. Spot jobs cost less; built-in rules are free."
    )


@main.command("iam-policy")
@click.option(
    "--for",
    "principal",
    type=click.Choice(["user", "role"]),
    default="user",
    show_default=True,
    help="user: who runs this CLI; role: the SageMaker execution role.",
)
@click.pass_context
def iam_policy(ctx: click.Context, principal: str) -> None:
    """Print a least-privilege IAM policy (the user's is derived from the calls the dry runs make)."""
    import logging

    from . import iam

    config = _config(ctx)
    if principal == "user":
        logging.getLogger("sagemaker").setLevel(logging.WARNING)
        # The steps' progress bars go to stderr: stdout carries only the policy JSON.
        with contextlib.redirect_stdout(sys.stderr):
            policy = iam.user_policy(config)
    else:
        policy = iam.execution_role_policy(config)
    click.echo(json.dumps(policy, indent=2))


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """List what this project created on AWS and what is still running."""
    from . import launcher

    records = launcher.status(_config(ctx))
    if not records:
        console.print("nothing recorded in .state/ yet")
        return
    table = Table(title="resources created by this project")
    for column in ("kind", "name", "status", "created"):
        table.add_column(column)
    for item in records:
        table.add_row(item["kind"], item["name"], item["status"], item.get("created", ""))
    console.print(table)


@main.command()
@click.option("--stop-jobs", is_flag=True, help="Also stop tuning and training jobs still running.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@dry_run_options
@click.pass_context
def teardown(ctx: click.Context, stop_jobs: bool, yes: bool, dry_run: bool, out: Path | None) -> None:
    """Delete the endpoint, endpoint config and model this project created (they cost money while up)."""
    from . import launcher

    config = _config(ctx)
    folder = _dry_run_dir(config, dry_run, out, "teardown")
    if not (yes or folder) and not click.confirm(
        "Delete this project's endpoints, endpoint configs and models?"
    ):
        raise click.exceptions.Abort()
    actions = launcher.teardown(config, stop_jobs=stop_jobs, dry_run_dir=folder)
    for kind, name, outcome in actions:
        console.print(f"{kind} {name}: {outcome}")
    if not actions:
        console.print("nothing to tear down")
    if folder:
        _report_dry_run(folder)
