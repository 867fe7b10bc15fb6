"""What the account allows, costs and holds: `cost`, `preflight`, `iam-policy`, `status`, `teardown`."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..aws.context import AwsSetupError
from .shared import (
    command_session,
    console,
    dry_run_options,
    finite,
    options,
    preflight_table,
    project_config,
)


@click.command()
@click.option(
    "--endpoint-hours",
    type=click.FloatRange(min=0, max=24 * 366),
    callback=finite,
    help="Hours the endpoint stays up; default: [budget] endpoint_hours.",
)
@click.option("--offline", is_flag=True, help="Cached or config.toml prices only: ask no AWS API.")
@click.pass_context
def cost(ctx: click.Context, endpoint_hours: float | None, offline: bool) -> None:
    """Estimate tuning + training + endpoint cost (upper bound) and compare it with [budget] usd."""
    from ..aws import pricing
    from ..workflow import costs

    config = project_config(ctx)
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


@click.command("preflight")
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
    from ..aws.session import open_session
    from ..checks import preflight

    config = project_config(ctx)
    try:
        # Not command_session(): with --json, stdout carries only the records.
        with open_session(config, dry_run=dry_run, folder=dry_run_dir) as session:
            checks = preflight.run(config, session, command)
    except AwsSetupError as error:
        checks = preflight.setup_failure(error)
    if as_json:
        for check in checks:
            click.echo(json.dumps(check.record()))
    else:
        where = " (dry run: the offline AWS)" if dry_run else ""
        console.print(preflight_table(checks, f"preflight for {command or 'tune, train, deploy'}{where}"))
    ctx.exit(preflight.exit_code(checks))


@click.command("iam-policy")
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

    from ..checks import iam

    config = project_config(ctx)
    if principal == "user":
        logging.getLogger("sagemaker").setLevel(logging.WARNING)
        # The steps' progress bars go to stderr: stdout carries only the policy JSON.
        with contextlib.redirect_stdout(sys.stderr):
            policy = iam.user_policy(config)
    else:
        policy = iam.execution_role_policy(config)
    click.echo(json.dumps(policy, indent=2))


# Whose resources status and teardown reach (resources.scope_of), and the dry-run options.
owner_options = options(
    click.option(
        "--owner",
        help="One owner's resources (a student or team id), found by tags; default: [project] owner.",
    ),
    click.option(
        "--all-owners", is_flag=True, help="Every owner's resources of this template, found by tags (staff)."
    ),
    dry_run_options,
)


@click.command()
@owner_options
@click.pass_context
def status(
    ctx: click.Context, owner: str | None, all_owners: bool, dry_run: bool, dry_run_dir: Path | None
) -> None:
    """List what this project (or --owner, --all-owners) has on AWS, what is running and its cost so far."""
    from ..aws.session import session_state
    from ..workflow import resources

    config = project_config(ctx)
    scope = resources.scope_of(config, owner, all_owners)
    recorded = session_state(config, dry_run=dry_run, folder=dry_run_dir)
    try:
        with command_session(config, dry_run, dry_run_dir) as session:
            records = resources.status(config, session, owner=owner, all_owners=all_owners)
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
    live = [item for item in records if item["status"] in resources.RUNNING_STATUSES + ("InService",)]
    console.print(f"running now: {len(live)}; cost so far: {running:.2f} USD (from start and end times)")


@click.command()
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
    from ..workflow import resources

    config = project_config(ctx)
    scope = resources.scope_of(config, owner, all_owners)
    question = f"Delete the endpoints, endpoint configs and models of {scope.describe()}?"
    if all_owners and not yes and not click.confirm(question + " This reaches every owner's resources."):
        raise click.exceptions.Abort()
    if not (yes or dry_run or all_owners) and not click.confirm(question):
        raise click.exceptions.Abort()
    with command_session(config, dry_run, dry_run_dir) as session:
        actions = resources.teardown(config, session, stop_jobs=stop_jobs, owner=owner, all_owners=all_owners)
        for kind, name, outcome in actions:
            console.print(f"{kind} {name}: {outcome}")
        if not actions:
            console.print("nothing to tear down")
