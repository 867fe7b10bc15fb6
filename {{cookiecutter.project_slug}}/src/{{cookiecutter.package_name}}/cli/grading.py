"""Is the project sound and the hand-in complete? `check` (graders, CI) and `handin` (students)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..config import ProjectConfig
from .shared import console, preflight_table


@click.command()
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
    from ..checks import project_check
    from ..config import find_project_root

    # Not project_config(ctx): a config that does not load is one of the results, not the end of the command.
    given = ctx.find_root().obj
    root = given.root if isinstance(given, ProjectConfig) else Path(given) if given else find_project_root()
    try:
        project_check.selected(only)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--only") from None

    def show(result: project_check.CheckResult) -> None:
        if as_json:
            click.echo(json.dumps(result.record()))
        elif console.is_terminal:
            console.print(f"{result.status:>4}  {result.name}", style=_CHECK_STYLES[result.status])

    results = project_check.run_checks(root, fast=fast, only=only, on_result=show)
    if not as_json:
        table = Table(title=f"check: {root}")
        for column in ("check", "result", "seconds", "detail"):
            table.add_column(column, justify="right" if column == "seconds" else "left")
        for result in results:
            style = _CHECK_STYLES[result.status]
            table.add_row(result.name, f"[{style}]{result.status}[/]", f"{result.seconds:.1f}", result.detail)
        console.print(table)
    if not project_check.passed(results):
        failed = ", ".join(result.name for result in results if result.status == project_check.FAIL)
        if not as_json:
            console.print(f"[red]failed:[/] {failed}")
        ctx.exit(1)


_CHECK_STYLES = {"pass": "green", "fail": "bold red", "skip": "dim"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line: name, status, detail.")
@click.option("--offline", is_flag=True, help="Ask AWS nothing: the endpoint and the cost are not checked.")
@click.pass_context
def handin(ctx: click.Context, as_json: bool, offline: bool) -> None:
    """Check the hand-in is complete: the notebook ran without errors, WRITEUP.md is filled in, the
    screenshots and scripts are there, no endpoint is left running; and the cost so far.

    Exits with status 1 when an item fails (a warning does not). Nothing is written into the project.
    """
    from ..checks import handin as handin_module
    from ..config import find_project_root

    # Not project_config(ctx): a config that does not load still leaves the files to check.
    given = ctx.find_root().obj
    root = given.root if isinstance(given, ProjectConfig) else Path(given) if given else find_project_root()
    items = handin_module.run_handin(root, offline=offline)
    if as_json:
        for item in items:
            click.echo(json.dumps(item.record()))
    else:
        console.print(preflight_table(items, f"hand-in: {root}"))
    failed = handin_module.failed(items)
    if not as_json:
        if failed:
            console.print(f"[red]incomplete:[/] {escape(', '.join(item.name for item in failed))}")
        else:
            console.print("[green]complete[/]: every item is there (warnings are worth a look)")
    ctx.exit(1 if failed else 0)
