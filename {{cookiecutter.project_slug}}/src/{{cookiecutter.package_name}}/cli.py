"""The command line: thin click commands over the launcher's plain functions.

Every command that touches AWS takes `--dry-run`: it then opens the same session on the offline AWS,
whose record lives in `dry-run/` (or `--dry-run-dir`) and carries over from one command to the next, so
`tune --dry-run`, `train --dry-run`, `deploy --dry-run`, `predict --dry-run`, `teardown --dry-run` chain
as they do for real. Heavy modules (the SageMaker SDK, torch, moto) are imported inside the commands
that use them, so `--help` stays fast. Expected failures end with one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__, extras
from .config import ProjectConfig, schema
from .context import CAPTURED, AwsSetupError

if TYPE_CHECKING:
    from .session import Session

# soft_wrap: job names and s3:// URIs stay whole on one line, to copy and to grep.
console = Console(soft_wrap=True)


# The errors that end a command with their one-line message: "module.Class". An error can only have
# been raised once its module was imported, so the handler finds each class in sys.modules instead of
# importing anything: an import here could itself fail (a local part whose extra is not installed, as
# after `pip install -e .`) and would replace the user's error with that traceback.
_EXPECTED_ERRORS = (
    f"{__package__}.config.ConfigError",
    f"{__package__}.context.AwsSetupError",
    f"{__package__}.extras.MissingExtraError",
    f"{__package__}.data.DataError",
    f"{__package__}.launcher.LaunchError",
    f"{__package__}.local_endpoint.LocalEndpointError",
    f"{__package__}.local_training.LocalTrainingError",
    f"{__package__}.experiments.TrackingError",
    "botocore.exceptions.BotoCoreError",
    "botocore.exceptions.ClientError",
)


def _is_expected(error: BaseException) -> bool:
    for qualified_name in _EXPECTED_ERRORS:
        module_name, _, class_name = qualified_name.rpartition(".")
        module = sys.modules.get(module_name)
        if module is not None and isinstance(error, getattr(module, class_name)):
            return True
    return False


class ProjectGroup(click.Group):
    """Lists commands in the order of the flow; turns expected errors into one-line `ClickException`s."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as error:
            if _is_expected(error):
                message = getattr(error, "summary", None) or " ".join(str(error).split())
                raise click.ClickException(message) from None
            raise


def _config(ctx: click.Context) -> ProjectConfig:
    """config.toml, loaded (and validated) on first use so that `<command> --help` works outside a project."""
    root = ctx.find_root()
    if not isinstance(root.obj, ProjectConfig):
        root.obj = ProjectConfig.load(root.obj)
    return root.obj


@contextlib.contextmanager
def _session(config: ProjectConfig, dry_run: bool, dry_run_dir: Path | None) -> Iterator[Session]:
    """The command's session; after a dry run, the table of what it captured."""
    from .session import open_session

    with open_session(config, dry_run=dry_run, folder=dry_run_dir) as session:
        yield session
    if session.offline is not None:
        _report_dry_run(session)


def _report_dry_run(session: Session) -> None:
    from .dryrun import REQUESTS_FILENAME, S3_FOLDER

    assert session.offline is not None
    calls = session.offline.calls
    table = Table(title=f"dry run: {len(calls)} AWS calls {CAPTURED} (nothing was sent)")
    table.add_column("#", justify="right")
    table.add_column("service")
    table.add_column("operation")
    for number, call in enumerate(calls, 1):
        table.add_row(str(number), call["service"], call["operation"])
    console.print(table)
    folder = session.offline.folder
    console.print(f"requests: {folder / REQUESTS_FILENAME}   offline S3: {folder / S3_FOLDER}/")


def _claim_run_dir(run_dir: Path, overwrite: bool) -> bool:
    """An earlier local run in `run_dir` is replaced only when the user says so (asked, or --overwrite);
    one that was interrupted is resumed from its checkpoint (True) unless --overwrite."""
    from .local_training import interrupted_run

    earlier = run_dir / "model.tar.gz"
    if overwrite:
        return False
    if not earlier.exists():
        return interrupted_run(run_dir) is not None
    question = f"{run_dir} holds an earlier run ({earlier.name}); replace it?"
    if sys.stdin.isatty() and click.confirm(question, default=False):
        return False
    raise click.ClickException(
        f"{run_dir} holds an earlier run: pass --run-dir <new folder> to keep it, "
        "or --overwrite to replace it"
    )


def _parse_hyperparameters(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--hp lr=0.01 --hp backbone=resnet50` -> {"lr": 0.01, "backbone": "resnet50"} (JSON values parsed).

    A value for a key of [hyperparameters] or [model] must fit the schema as config.toml's would
    (`--hp lr=NaN` or `epochs=1e30` would otherwise reach the job and fail there, billed)."""
    from .config import schema

    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--hp")
        try:
            parsed[name] = json.loads(value)
        except (ValueError, RecursionError):
            parsed[name] = value
        problem = schema.hyperparameter_problem(name, parsed[name])
        if problem:
            raise click.BadParameter(f"{name} = {schema.show(parsed[name])}: {problem}", param_hint="--hp")
    return parsed


def _check_batch_size(config: ProjectConfig, overrides: dict[str, Any]) -> None:
    """The batch size `--hp` leaves (its own or config.toml's) must fit the network it leaves: a rule
    between keys, so checked once they are merged."""
    from .config import schema

    merged = config.script_hyperparameters(overrides)
    problem = schema.batch_size_problem(merged["batch_size"], merged["finetune"], merged["backbone"])
    if problem:
        raise click.BadParameter(problem, param_hint="--hp")


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """click's FloatRange lets nan through (every comparison with it is false)."""
    if value is not None and value != value:
        raise click.BadParameter("must be a number, not nan")
    return value


def _options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Several click options as one decorator; `--help` lists them in the order given."""

    def decorate(command: Any) -> Any:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


dry_run_options = _options(
    click.option(
        "--dry-run", is_flag=True, help="Capture every request on an offline AWS; nothing is sent or run."
    ),
    click.option(
        "--dry-run-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Dry run: where its record is kept (default: dry-run/ in the project).",
    ),
)


_PREFLIGHT_STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def _preflight_table(checks: list[Any], title: str) -> Table:
    table = Table(title=title)
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for check in checks:
        style = _PREFLIGHT_STYLES[check.status]
        table.add_row(escape(check.name), f"[{style}]{check.status}[/]", escape(check.detail))
    return table


def _before_launch(
    config: ProjectConfig, session: Session, command: str, skip_preflight: bool, yes: bool
) -> None:
    """`preflight` for `command` (a fail stops it), then the budget (over it stops it, unless --yes)."""
    from . import launcher, preflight

    if not skip_preflight:
        checks = preflight.run(config, session, command)
        console.print(_preflight_table(checks, f"preflight for {command}"))
        failed = preflight.failed(checks)
        if failed:
            names = ", ".join(check.name for check in failed)
            raise click.ClickException(
                f"preflight failed ({names}): fix what the table says, or pass --skip-preflight"
            )
    problem = launcher.budget_problem(config, session, command)
    if problem and not yes:
        raise click.ClickException(problem)
    if problem:
        console.print(f"[yellow]note[/]: --yes: {escape(problem.split(': raise')[0])}")


@dataclass(frozen=True)
class Launch:
    """The options of the commands that start what costs money (tune, train, deploy), as one value."""

    skip_preflight: bool
    yes: bool
    dry_run: bool
    dry_run_dir: Path | None

    @contextlib.contextmanager
    def session(self, config: ProjectConfig, command: str | None) -> Iterator[Session]:
        """`_session()`, once `command` has passed `preflight` and the budget (None: it starts nothing, so
        neither is checked)."""
        with _session(config, self.dry_run, self.dry_run_dir) as session:
            if command is not None:
                _before_launch(config, session, command, self.skip_preflight, self.yes)
            yield session


def launch_options(command: Any) -> Any:
    """--skip-preflight, --yes and the dry-run options, given to the command as one `launch: Launch`."""

    @functools.wraps(command)
    def with_launch(
        *args: Any, skip_preflight: bool, yes: bool, dry_run: bool, dry_run_dir: Path | None, **kwargs: Any
    ) -> Any:
        return command(*args, launch=Launch(skip_preflight, yes, dry_run, dry_run_dir), **kwargs)

    return _options(
        click.option(
            "--skip-preflight",
            is_flag=True,
            help="Do not run `preflight`'s checks (account, quotas, images) first.",
        ),
        click.option(
            "--yes", is_flag=True, help="Launch even when the estimate goes over [budget] usd in config.toml."
        ),
        dry_run_options,
    )(with_launch)


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
@click.option(
    "--resize",
    type=click.IntRange(min=0),
    help="Shorter side of the written images (JPEG, upright); default: the eval preset's resize size "
    "for [model] image_size (256 for 224); 0: copy the originals.",
)
@click.pass_context
def data_prepare(ctx: click.Context, source: str, dest: Path | None, resize: int | None) -> None:
    """Check SOURCE (zip URL or path, or folder-per-class dataset) and write train/valid/test + manifest."""
    from . import data as data_module

    config = _config(ctx)
    destination = dest or config.data_dir
    options = data_module.prepare_options(config)
    if resize is not None:
        options["resize_to"] = resize or None
    manifest = data_module.prepare(source, destination, **options)
    table = Table(title=f"{destination} ({len(manifest.classes)} classes)")
    for column in ("split", "images"):
        table.add_column(column)
    for split in data_module.SPLITS:
        table.add_row(split, str(manifest.total(split)))
    console.print(table)
    shrunk = f"resized to a shorter side of {manifest.resized_to} px" if manifest.resized_to else "copied"
    console.print(
        f"images {shrunk}: {manifest.source_bytes / 1e6:,.1f} MB read, "
        f"{manifest.written_bytes / 1e6:,.1f} MB written (what `data upload` sends and every job downloads)"
    )
    listed = destination / data_module.MANIFEST_FILENAME
    shown = 20  # lines of each list; all of it is in the manifest
    for items, what, detail in (
        (manifest.excluded, "left out (they do not decode, or are over Pillow's pixel limit)", "reason"),
        (manifest.renamed, "renamed (their name was taken in their folder)", "written_as"),
    ):
        if items:
            console.print(f"[yellow]{len(items)} images {what}[/], all listed in {listed}:")
        for item in items[:shown]:
            console.print(f"  {escape(item['path'])}: {escape(item[detail])}")
        if len(items) > shown:
            console.print(f"  ... and {len(items) - shown} more")
    expected = config.model["num_classes"]
    if len(manifest.classes) != expected:
        # Said now, naming the key: training would otherwise stop on it after the instance was paid for.
        console.print(
            f"[bold yellow]mismatch[/]: {source} has {len(manifest.classes)} classes, config.toml says "
            f"{expected}: set \\[model] num_classes = {len(manifest.classes)} in "
            f"{config.root / 'config.toml'} before training"
        )


@data.command("synthetic")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--classes", "num_classes", type=click.IntRange(2, 1000), default=3, show_default=True)
@click.option("--size", default="48x40", show_default=True, help="Image width x height in pixels.")
@click.option("--per-class", default="6,2,2", show_default=True, help="Images per class in train,valid,test.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
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
    if len(counts) != 3 or not all(0 <= count <= 10_000 for count in counts) or counts[0] == 0:
        raise click.BadParameter(
            f"{per_class!r} is not three numbers train,valid,test (train 1 to 10000, the others 0 to 10000)",
            param_hint="--per-class",
        )
    if not (8 <= width <= 4096 and 8 <= height <= 4096):
        raise click.BadParameter(f"{size!r}: each side must be 8 to 4096 pixels", param_hint="--size")
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
def data_upload(ctx: click.Context, data_dir: Path | None, dry_run: bool, dry_run_dir: Path | None) -> None:
    """Copy DATA_DIR (default: [data] local_dir) to s3://<bucket>/<prefix>/data/, skipping unchanged files."""
    from . import launcher

    config = _config(ctx)
    with _session(config, dry_run, dry_run_dir) as session:
        result = launcher.upload_data(config, session, data_dir)
        console.print(
            f"{result.destination}: {len(result.uploaded)} uploaded, {len(result.skipped)} unchanged"
        )


# --- tuning and training --------------------------------------------------------------------------


@main.command()
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the tuning job to finish.")
@click.option(
    "--attach", is_flag=True, help="Start nothing: wait for the last tuning job and record its best."
)
@launch_options
@click.pass_context
def tune(ctx: click.Context, wait: bool, attach: bool, launch: Launch) -> None:
    """Tune lr and batch size over hpo.py; records the best hyperparameters for `train`."""
    from . import launcher

    config = _config(ctx)
    with launch.session(config, None if attach else "tune") as session:
        if attach:
            result = launcher.attach_tuning(config, session, wait=wait)
        else:
            result = launcher.tune(config, session, wait=wait)
        console.print(f"tuning job {result.tuning_job_name}: {result.status}")
        if result.best_training_job:
            console.print(
                f"best training job {result.best_training_job} (objective {result.objective_value})"
            )
            console.print_json(data=result.best_hyperparameters)


@main.command()
@click.option(
    "--local", is_flag=True, help="Run train_model.py on this machine under the SageMaker training toolkit."
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="--local: dataset folder; default: [data] local_dir.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="--local: where the run writes its tree, log and model.tar.gz; default: runs/local.",
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
@click.option("--overwrite", is_flag=True, help="--local: replace an earlier run in the folder, unasked.")
@launch_options
@click.pass_context
def train(
    ctx: click.Context,
    local: bool,
    data_dir: Path | None,
    run_dir: Path | None,
    hp_pairs: tuple[str, ...],
    tuned: bool,
    wait: bool,
    overwrite: bool,
    launch: Launch,
) -> None:
    """Train train_model.py with the debugger and profiler rules (or locally with --local)."""
    from . import launcher

    config = _config(ctx)
    overrides = _parse_hyperparameters(hp_pairs)
    _check_batch_size(config, overrides)
    if local:
        # Before the run folder is claimed (which may ask to replace an earlier run) and announced.
        extras.require("local", "train --local")
        from .local_training import run_local_training
        from .state import ProjectState

        hyperparameters = launcher.training_hyperparameters(
            config, ProjectState(config.state_dir), overrides, use_tuned=tuned
        )
        run_dir = run_dir or config.root / "runs" / "local"
        resume = _claim_run_dir(run_dir, overwrite)
        if resume:
            console.print(f"resuming the interrupted run in {run_dir} (--overwrite starts it over)")
        console.print(f"training locally into {run_dir} (log: {run_dir / 'training.log'})")
        model = run_local_training(
            config,
            data_dir or config.data_dir,
            run_dir,
            hyperparameters,
            resume=resume,
        )
        console.print(f"model: {model}")
        return
    with launch.session(config, "train") as session:
        result = launcher.train(config, session, hyperparameters=overrides, use_tuned=tuned, wait=wait)
        for note in result.notes:
            console.print(f"[yellow]note[/]: {note}")
        console.print(f"training job {result.training_job_name}: {result.status}")
        console.print(f"model: {result.model_data}")


@main.command()
@click.option("--job", "training_job_name", help="Training job; default: the last one `train` started.")
@click.option("--local", is_flag=True, help="Report on a local run (`train --local`); no AWS calls.")
@click.option(
    "--run-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="--local: the run folder (default: runs/local), or a folder holding an extracted output.tar.gz.",
)
@click.option(
    "--out",
    "reports_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where reports go (default: reports/ in the project); each run gets <out>/<run>/.",
)
@click.option(
    "--write-up",
    is_flag=True,
    help="Also fill in WRITEUP.md: tuning, verdicts, pictures, endpoint query, screenshots to take.",
)
@dry_run_options
@click.pass_context
def report(
    ctx: click.Context,
    training_job_name: str | None,
    local: bool,
    run_dir: Path | None,
    reports_dir: Path | None,
    write_up: bool,
    dry_run: bool,
    dry_run_dir: Path | None,
) -> None:
    """Rule verdicts, curves, confusion matrix, profiler report and what an endpoint would serve (int8 or
    float, and why) of a run, as reports/<run>/index.html."""
    from . import report as report_module
    from . import tables

    config = _config(ctx)
    if run_dir is not None and not local:
        raise click.UsageError("--run-dir goes with --local")
    if local:
        result = report_module.build_local_report(config, run_dir, reports_dir=reports_dir)
    else:
        from .session import session_state

        recorded = session_state(config, dry_run=dry_run, folder=dry_run_dir)
        # Read before connecting: "nothing recorded" needs no credentials.
        name = training_job_name or report_module.latest_training_job(recorded)
        with _session(config, dry_run, dry_run_dir) as session:
            result = report_module.build_job_report(
                config, session, name, reports_dir=reports_dir, progress=console.is_terminal
            )
    if result.captured:
        console.print(f"training job {result.run} was {CAPTURED} (dry run): it has no outputs to report")
        return
    rows = report_module.verdict_rows(result) or [{"rule": "none", "reason": "the run judged no rules"}]
    console.print(tables.rich_table(rows, f"{result.run}: rule verdicts (judged in the job)"))
    if result.sagemaker_verdicts:
        console.print(tables.rich_table(report_module.sagemaker_rows(result), "SageMaker's built-in rules"))
    if result.int8 is not None:
        console.print("[bold]int8 endpoint:[/]")
        for label, text in report_module.int8_facts(result.int8):
            # Escaped: a reason quotes an exception's message, brackets and all.
            console.print(f"  {escape(label)}: {escape(text)}", highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    console.print(f"report: {result.index_html}")
    console.print(f"summary for a write-up: {result.summary_path}")
    if write_up:
        from .session import session_state
        from .writeup import GENERATED_FILENAME
        from .writeup import write_up as write_writeup

        written = write_writeup(config, session_state(config, dry_run=dry_run, folder=dry_run_dir), result)
        console.print(f"write-up: {written}")
        if written.name == GENERATED_FILENAME:
            console.print("  (WRITEUP.md holds your edits, so it was left alone; merge what you need)")


@main.command()
@click.option("--server", is_flag=True, help="Read [tracking] server_arn's MLflow, not the local store.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Newest N runs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line, newest first.")
@click.pass_context
def runs(ctx: click.Context, server: bool, limit: int, as_json: bool) -> None:
    """The recorded MLflow runs (training, tuning and their tuning jobs) with their key metrics."""
    from . import experiments, tables

    extras.require("tracking", "runs")
    config = _config(ctx)
    rows = experiments.list_runs(config, server=server, limit=limit)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    where = experiments.store_uri(config, server)
    if not rows:
        console.print(f"no runs recorded in {where} (experiment {experiments.experiment_name(config)})")
        return
    shown = [experiments.table_row(row) for row in rows]
    console.print(
        tables.rich_table(shown, f"MLflow runs of {experiments.experiment_name(config)} in {where}")
    )
    if not server:
        console.print(f"to browse them: {experiments.UI_COMMAND} (in {config.root})")


# --- deployment and prediction --------------------------------------------------------------------


@main.command()
@click.option(
    "--model-data", help="model.tar.gz: an s3:// URI or a local file; default: the last trained model."
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the endpoint is InService, then invoke it once with a sample image.",
)
@click.option(
    "--teardown-on-failure/--keep-on-failure",
    default=None,
    help="When the first invocation fails: delete the endpoint, or keep it; default: ask (or keep).",
)
@launch_options
@click.pass_context
def deploy(
    ctx: click.Context, model_data: str | None, wait: bool, teardown_on_failure: bool | None, launch: Launch
) -> None:
    """Deploy the model behind an endpoint (inference.py, image bytes in, JSON out) and prove it answers."""
    from . import launcher

    config = _config(ctx)
    with launch.session(config, "deploy") as session:
        deployment = launcher.deploy(config, session, model_data, wait=wait)
        suffix = f" ({CAPTURED})" if session.dry_run else ""
        console.print(f"endpoint {deployment.endpoint_name} (model {deployment.model_name}){suffix}")
        if not wait:
            console.print("not invoked (--no-wait): try it with `predict` once it is InService")
            return
        check = launcher.verify_endpoint(config, session, deployment.endpoint_name)
        if check.ok:
            console.print(f"first invocation with {escape(check.sample)}: {escape(check.detail)}")
            return
        console.print(
            f"[bold red]the endpoint did not answer[/] its first invocation ({escape(check.sample)}): "
            + escape(check.detail)
        )
        console.print(f"last lines of the CloudWatch log {check.log_group}:")
        for line in check.log_tail:
            console.print(f"  {line}", markup=False, highlight=False)
        if teardown_on_failure is None and sys.stdin.isatty():
            teardown_on_failure = click.confirm(
                "Delete this endpoint, its config and model now?", default=True
            )
        if teardown_on_failure:
            for kind, name, outcome in launcher.teardown_deployment(session, deployment):
                console.print(f"{kind} {name}: {outcome}")
            kept = "deleted"
        else:
            kept = "kept; `teardown` deletes it"
    raise click.ClickException(f"endpoint {deployment.endpoint_name} does not answer ({kept})")


def _print_predictions(results: list[dict[str, Any]]) -> None:
    from . import tables

    for result in results:
        # The path as a line of its own: a table title would wrap it to the table's width.
        console.print(f"[bold]{result['image']}[/bold]", soft_wrap=True)
        if result.get("note"):
            console.print(f"  [yellow]note[/]: {escape(result['note'])}")
        if "status" in result:
            console.print(f"  {result['status']}: no model answered")
            continue
        console.print(tables.rich_table(tables.prediction_rows(result)))


@main.command()
# Not click's exists/dir_okay checks: `payload` refuses every path that is not a regular file, or too
# large to send, in one line naming it, for both targets.
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
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
    dry_run_dir: Path | None,
) -> None:
    """Send IMAGES to the endpoint and print the top-k classes.

    A photo over the endpoint's request limit (6 MB; 4 MB serverless) is shrunk to a JPEG that fits, for
    the SageMaker endpoint and `--local` alike."""
    from . import payload

    config = _config(ctx)
    limit = payload.body_limit(config)
    try:  # before a server or an AWS session is asked anything
        payload.check_image_files(images, limit)
    except payload.ImageFileError as error:
        raise click.ClickException(str(error)) from None
    if local:
        from .local_endpoint import invoke_local

        _print_predictions(invoke_local(url, list(images), top_k=top_k, body_limit=limit))
        return
    from . import launcher

    with _session(config, dry_run, dry_run_dir) as session:
        _print_predictions(
            launcher.predict(config, session, list(images), endpoint_name=endpoint_name, top_k=top_k)
        )


@main.command()
@click.option(
    "--model-data",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A local model.tar.gz (from `train --local`).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--server",
    type=click.Choice(schema.ENDPOINT_SERVERS),
    help="What serves inference.py, as on the endpoint; default: [endpoint] server.",
)
@click.pass_context
def serve(ctx: click.Context, model_data: Path, host: str, port: int, server: str | None) -> None:
    """Serve a model.tar.gz locally with inference.py, like the endpoint (Ctrl-C stops)."""
    from . import payload

    config = _config(ctx)
    if (server or config.settings.endpoint.server) == "ray_serve":
        from .local_ray import serve as serve_under_ray

        serve_under_ray(model_data, host=host, port=port, project_root=config.root)
        return
    from .local_endpoint import serve as serve_locally

    limit = payload.body_limit(config)  # the configured endpoint's request limit
    serve_locally(model_data, host=host, port=port, project_root=config.root, max_request_bytes=limit)


# --- cost, IAM, status, teardown ------------------------------------------------------------------


@main.command()
@click.option(
    "--endpoint-hours",
    type=click.FloatRange(min=0, max=24 * 366),
    callback=_finite,
    help="Hours the endpoint stays up; default: [budget] endpoint_hours.",
)
@click.option("--offline", is_flag=True, help="Cached or config.toml prices only: ask no AWS API.")
@click.pass_context
def cost(ctx: click.Context, endpoint_hours: float | None, offline: bool) -> None:
    """Estimate tuning + training + endpoint cost (upper bound) and compare it with [budget] usd."""
    from . import costs, pricing

    config = _config(ctx)
    boto_session = None
    if not offline:
        import boto3

        boto_session = boto3.Session(region_name=config.aws["region"])
    prices = pricing.hourly_prices(config, costs.wanted_prices(config), boto_session=boto_session)
    lines = costs.estimate(config, endpoint_hours, prices)
    table = Table(title="Cost in USD, at most")
    for column in ("step", "instance", "instance-hours", "USD/hour", "USD (at most)", "price from"):
        table.add_column(column, justify="right" if "USD" in column or "hours" in column else "left")
    for line in lines:
        table.add_row(
            line.step,
            line.instance_type,
            f"{line.instance_hours:.1f}",
            f"{line.usd_per_hour:.3f}",
            f"{line.usd:.2f}",
            escape(line.source),
        )
    total = costs.total(lines)
    table.add_row("total", "", "", "", f"{total:.2f}", "")
    console.print(table)
    console.print(
        "Upper bound: every job runs to max_run_seconds. Spot jobs cost less; built-in rules are free."
    )
    budget = config.settings.budget.usd
    if budget:
        verdict = "within it" if total <= budget else f"[bold red]over it by {total - budget:.2f} USD[/]"
        console.print(
            f"\\[budget] usd = {budget:g}: the estimate is {verdict} "
            "(tune, train and deploy each check their own step plus what was spent so far)"
        )


@main.command("preflight")
@click.option(
    "--for", "command", type=click.Choice(["tune", "train", "deploy"]), help="Only what this command needs."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line: name, status, detail.")
@dry_run_options
@click.pass_context
def preflight_command(
    ctx: click.Context, command: str | None, as_json: bool, dry_run: bool, dry_run_dir: Path | None
) -> None:
    """Check the account, quotas, images and support dates before anything costs money (exit 1 on a fail)."""
    from . import preflight
    from .session import open_session

    config = _config(ctx)
    try:
        # Not _session(): with --json, stdout carries only the records.
        with open_session(config, dry_run=dry_run, folder=dry_run_dir) as session:
            checks = preflight.run(config, session, command)
    except AwsSetupError as error:
        checks = preflight.setup_failure(error)
    if as_json:
        for check in checks:
            click.echo(json.dumps(check.record()))
    else:
        where = " (dry run: the offline AWS)" if dry_run else ""
        console.print(_preflight_table(checks, f"preflight for {command or 'tune, train, deploy'}{where}"))
    ctx.exit(preflight.exit_code(checks))


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


# Whose resources status and teardown reach (launcher.scope_of), and the dry-run options.
owner_options = _options(
    click.option(
        "--owner",
        help="One owner's resources (a student or team id), found by tags; default: [project] owner.",
    ),
    click.option(
        "--all-owners", is_flag=True, help="Every owner's resources of this template, found by tags (staff)."
    ),
    dry_run_options,
)


@main.command()
@owner_options
@click.pass_context
def status(
    ctx: click.Context, owner: str | None, all_owners: bool, dry_run: bool, dry_run_dir: Path | None
) -> None:
    """List what this project (or --owner, --all-owners) has on AWS, what is running and its cost so far."""
    from . import launcher
    from .session import session_state

    config = _config(ctx)
    scope = launcher.scope_of(config, owner, all_owners)
    recorded = session_state(config, dry_run=dry_run, folder=dry_run_dir)
    try:
        with _session(config, dry_run, dry_run_dir) as session:
            records = launcher.status(config, session, owner=owner, all_owners=all_owners)
    except AwsSetupError as error:
        if recorded.resources() or owner or all_owners:
            raise
        # Nothing here to look up, and no account to ask about tagged resources: say both, calmly.
        console.print(f"nothing recorded in {recorded.folder}; to look for tagged resources too: {error}")
        return
    if not records:
        console.print(f"nothing found for {scope.describe()} (local record and tags)")
        return
    table = Table(title=f"resources of {scope.describe()}")
    for column in ("kind", "name", "owner", "status", "created", "USD so far", "price from"):
        table.add_column(column, justify="right" if column.startswith("USD") else "left")
    running = 0.0
    for item in records:
        usd = "" if item["usd"] is None else f"{item['usd']:.2f}"
        table.add_row(
            item["kind"],
            item["name"],
            item.get("owner") or "",
            item["status"],
            item.get("created", ""),
            usd,
            escape(item["price_source"]),
        )
        running += item["usd"] or 0.0
    console.print(table)
    live = [item for item in records if item["status"] in launcher.RUNNING_STATUSES + ("InService",)]
    console.print(f"running now: {len(live)}; cost so far: {running:.2f} USD (from start and end times)")


@main.command()
@click.option("--stop-jobs", is_flag=True, help="Also stop tuning and training jobs still running.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@owner_options
@click.pass_context
def teardown(
    ctx: click.Context,
    stop_jobs: bool,
    yes: bool,
    owner: str | None,
    all_owners: bool,
    dry_run: bool,
    dry_run_dir: Path | None,
) -> None:
    """Delete the endpoints, endpoint configs and models of this project (found in the local record and by
    tags, so a fresh clone finds them too), or of --owner / --all-owners (they cost money while up)."""
    from . import launcher

    config = _config(ctx)
    scope = launcher.scope_of(config, owner, all_owners)
    question = f"Delete the endpoints, endpoint configs and models of {scope.describe()}?"
    if all_owners and not yes and not click.confirm(question + " This reaches every owner's resources."):
        raise click.exceptions.Abort()
    if not (yes or dry_run or all_owners) and not click.confirm(question):
        raise click.exceptions.Abort()
    with _session(config, dry_run, dry_run_dir) as session:
        actions = launcher.teardown(config, session, stop_jobs=stop_jobs, owner=owner, all_owners=all_owners)
        for kind, name, outcome in actions:
            console.print(f"{kind} {name}: {outcome}")
        if not actions:
            console.print("nothing to tear down")


# --- checking a project (graders, CI) -------------------------------------------------------------


@main.command()
@click.option("--fast", is_flag=True, help="Skip the checks that train and serve (minutes on a CPU).")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON record per line: name, status, seconds, detail."
)
@click.option(
    "--only", multiple=True, metavar="NAME", help="Run this check (and what it needs) only; repeatable."
)
@click.pass_context
def check(ctx: click.Context, fast: bool, as_json: bool, only: tuple[str, ...]) -> None:
    """Check the project as a grader would: scripts, notebook, config, dry runs, local training, serving.

    Exits with status 1 when a check fails. Nothing is written into the project.
    """
    from . import checks
    from .config import find_project_root

    # Not _config(ctx): a config that does not load is one of the results, not the end of the command.
    given = ctx.find_root().obj
    root = given.root if isinstance(given, ProjectConfig) else Path(given) if given else find_project_root()
    try:
        checks.selected(only)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--only") from None

    def show(result: checks.CheckResult) -> None:
        if as_json:
            click.echo(json.dumps(result.record()))
        elif console.is_terminal:
            console.print(f"{result.status:>4}  {result.name}", style=_CHECK_STYLES[result.status])

    results = checks.run_checks(root, fast=fast, only=only, on_result=show)
    if not as_json:
        table = Table(title=f"check: {root}")
        for column in ("check", "result", "seconds", "detail"):
            table.add_column(column, justify="right" if column == "seconds" else "left")
        for result in results:
            style = _CHECK_STYLES[result.status]
            table.add_row(result.name, f"[{style}]{result.status}[/]", f"{result.seconds:.1f}", result.detail)
        console.print(table)
    if not checks.passed(results):
        failed = ", ".join(result.name for result in results if result.status == checks.FAIL)
        if not as_json:
            console.print(f"[red]failed:[/] {failed}")
        ctx.exit(1)


_CHECK_STYLES = {"pass": "green", "fail": "bold red", "skip": "dim"}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line: name, status, detail.")
@click.option("--offline", is_flag=True, help="Ask AWS nothing: the endpoint and the cost are not checked.")
@click.pass_context
def handin(ctx: click.Context, as_json: bool, offline: bool) -> None:
    """Check the hand-in is complete: the notebook ran without errors, WRITEUP.md is filled in, the
    screenshots and scripts are there, no endpoint is left running; and the cost so far.

    Exits with status 1 when an item fails (a warning does not). Nothing is written into the project.
    """
    from . import handin as handin_module
    from .config import find_project_root

    # Not _config(ctx): a config that does not load still leaves the files to check.
    given = ctx.find_root().obj
    root = given.root if isinstance(given, ProjectConfig) else Path(given) if given else find_project_root()
    items = handin_module.run_handin(root, offline=offline)
    if as_json:
        for item in items:
            click.echo(json.dumps(item.record()))
    else:
        console.print(_preflight_table(items, f"hand-in: {root}"))
    failed = handin_module.failed(items)
    if not as_json:
        if failed:
            console.print(f"[red]incomplete:[/] {escape(', '.join(item.name for item in failed))}")
        else:
            console.print("[green]complete[/]: every item is there (warnings are worth a look)")
    ctx.exit(1 if failed else 0)
