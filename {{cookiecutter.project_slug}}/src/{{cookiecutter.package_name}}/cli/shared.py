"""What every command shares: the console, one-line errors, config and session, the common options.

Expected failures end a command with one line, never a traceback (`ProjectGroup`); config.toml is
loaded on first use, so `<command> --help` works outside a project; the commands that start what
costs money take `--skip-preflight`, `--yes` and the dry-run options as one `Launch` value.
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

from ..aws.context import CAPTURED
from ..config import ProjectConfig, validation

if TYPE_CHECKING:
    from ..aws.session import Session

# soft_wrap: job names and s3:// URIs stay whole on one line, to copy and to grep.
console = Console(soft_wrap=True)
# The project's package (this module is its .cli.shared).
_ROOT = __package__.rpartition(".")[0]


# The errors that end a command with their one-line message: "module.Class". An error can only have
# been raised once its module was imported, so the handler finds each class in sys.modules instead of
# importing anything: an import here could itself fail (a local part whose extra is not installed, as
# after `pip install -e .`) and would replace the user's error with that traceback.
_EXPECTED_ERRORS = (
    f"{_ROOT}.config.ConfigError",
    f"{_ROOT}.aws.context.AwsSetupError",
    f"{_ROOT}.extras.MissingExtraError",
    f"{_ROOT}.workflow.dataset_source.DataError",
    f"{_ROOT}.workflow.launcher.LaunchError",
    f"{_ROOT}.local.endpoint.LocalEndpointError",
    f"{_ROOT}.local.training_run.LocalTrainingError",
    f"{_ROOT}.experiments.TrackingError",
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


def project_config(ctx: click.Context) -> ProjectConfig:
    """config.toml, loaded (and validated) on first use so that `<command> --help` works outside a project."""
    root = ctx.find_root()
    if not isinstance(root.obj, ProjectConfig):
        root.obj = ProjectConfig.load(root.obj)
    return root.obj


@contextlib.contextmanager
def command_session(config: ProjectConfig, dry_run: bool, dry_run_dir: Path | None) -> Iterator[Session]:
    """The command's session; after a dry run, the table of what it captured."""
    from ..aws.session import open_session

    with open_session(config, dry_run=dry_run, folder=dry_run_dir) as session:
        yield session
    if session.offline is not None:
        report_dry_run(session)


def report_dry_run(session: Session) -> None:
    from ..aws.offline import REQUESTS_FILENAME, S3_FOLDER

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


def claim_run_dir(run_dir: Path, overwrite: bool) -> bool:
    """An earlier local run in `run_dir` is replaced only when the user says so (asked, or --overwrite);
    one that was interrupted is resumed from its checkpoint (True) unless --overwrite."""
    from ..local.training_run import interrupted_run

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


def parse_hyperparameters(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--hp lr=0.01 --hp backbone=resnet50` -> {"lr": 0.01, "backbone": "resnet50"} (JSON values parsed).

    A value for a key of [hyperparameters] or [model] must fit the schema as config.toml's would
    (`--hp lr=NaN` or `epochs=1e30` would otherwise reach the job and fail there, billed)."""
    from ..config import schema

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
            raise click.BadParameter(
                f"{name} = {validation.show(parsed[name])}: {problem}", param_hint="--hp"
            )
    return parsed


def check_batch_size(config: ProjectConfig, overrides: dict[str, Any]) -> None:
    """The batch size `--hp` leaves (its own or config.toml's) must fit the network it leaves: a rule
    between keys, so checked once they are merged."""
    from ..config import schema

    merged = config.script_hyperparameters(overrides)
    problem = schema.batch_size_problem(merged["batch_size"], merged["finetune"], merged["backbone"])
    if problem:
        raise click.BadParameter(problem, param_hint="--hp")


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """click's FloatRange lets nan through (every comparison with it is false)."""
    if value is not None and value != value:
        raise click.BadParameter("must be a number, not nan")
    return value


def options(*decorators: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Several click options as one decorator; `--help` lists them in the order given."""

    def decorate(command: Any) -> Any:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


dry_run_options = options(
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


def preflight_table(checks: list[Any], title: str) -> Table:
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
    from ..checks import preflight
    from ..workflow import resources

    if not skip_preflight:
        checks = preflight.run(config, session, command)
        console.print(preflight_table(checks, f"preflight for {command}"))
        failed = preflight.failed(checks)
        if failed:
            names = ", ".join(check.name for check in failed)
            raise click.ClickException(
                f"preflight failed ({names}): fix what the table says, or pass --skip-preflight"
            )
    problem = resources.budget_problem(config, session, command)
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
        """`command_session()`, once `command` has passed `preflight` and the budget (None: it starts
        nothing, so neither is checked)."""
        with command_session(config, self.dry_run, self.dry_run_dir) as session:
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

    return options(
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
