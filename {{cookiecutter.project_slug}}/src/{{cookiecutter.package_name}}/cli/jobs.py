"""`tune`, `train` (on SageMaker or `--local`), and what a run leaves: `report`, `runs`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from .. import extras
from ..aws.context import CAPTURED
from .shared import (
    Launch,
    check_batch_size,
    claim_run_dir,
    command_session,
    console,
    dry_run_options,
    launch_options,
    parse_hyperparameters,
    project_config,
)


@click.command()
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the tuning job to finish.")
@click.option(
    "--attach", is_flag=True, help="Start nothing: wait for the last tuning job and record its best."
)
@launch_options
@click.pass_context
def tune(ctx: click.Context, wait: bool, attach: bool, launch: Launch) -> None:
    """Tune lr and batch size over hpo.py; records the best hyperparameters for `train`."""
    from ..workflow import launcher

    config = project_config(ctx)
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


@click.command()
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
    from ..workflow import launcher

    config = project_config(ctx)
    overrides = parse_hyperparameters(hp_pairs)
    check_batch_size(config, overrides)
    if local:
        # Before the run folder is claimed (which may ask to replace an earlier run) and announced.
        extras.require("local", "train --local")
        from ..aws.state import ProjectState
        from ..local.training_run import run_local_training

        hyperparameters = launcher.training_hyperparameters(
            config, ProjectState(config.state_dir), overrides, use_tuned=tuned
        )
        run_dir = run_dir or config.root / "runs" / "local"
        resume = claim_run_dir(run_dir, overwrite)
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


@click.command()
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
    from .. import report as report_module
    from ..report import tables

    config = project_config(ctx)
    if run_dir is not None and not local:
        raise click.UsageError("--run-dir goes with --local")
    if local:
        result = report_module.build_local_report(config, run_dir, reports_dir=reports_dir)
    else:
        from ..aws.session import session_state

        recorded = session_state(config, dry_run=dry_run, folder=dry_run_dir)
        # Read before connecting: "nothing recorded" needs no credentials.
        name = training_job_name or report_module.latest_training_job(recorded)
        with command_session(config, dry_run, dry_run_dir) as session:
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
        from ..aws.session import session_state
        from ..checks.writeup import GENERATED_FILENAME
        from ..checks.writeup import write_up as write_writeup

        written = write_writeup(config, session_state(config, dry_run=dry_run, folder=dry_run_dir), result)
        console.print(f"write-up: {written}")
        if written.name == GENERATED_FILENAME:
            console.print("  (WRITEUP.md holds your edits, so it was left alone; merge what you need)")


@click.command()
@click.option("--server", is_flag=True, help="Read [tracking] server_arn's MLflow, not the local store.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Newest N runs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line, newest first.")
@click.pass_context
def runs(ctx: click.Context, server: bool, limit: int, as_json: bool) -> None:
    """The recorded MLflow runs (training, tuning and their tuning jobs) with their key metrics."""
    from .. import experiments
    from ..report import tables

    extras.require("tracking", "runs")
    config = project_config(ctx)
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
