"""The command line: `main`, with each stage's commands from its own module, in the order of the flow.

Thin click commands over the workflow's plain functions: dataset.py (`data`), jobs.py (`tune`,
`train`, `report`, `runs`), endpoint.py (`deploy`, `predict`, `serve`), account.py (`cost`,
`preflight`, `iam-policy`, `status`, `teardown`), grading.py (`check`, `handin`); shared.py holds
what they share.

Every command that touches AWS takes `--dry-run`: it then opens the same session on the offline AWS,
whose record lives in `dry-run/` (or `--dry-run-dir`) and carries over from one command to the next, so
`tune --dry-run`, `train --dry-run`, `deploy --dry-run`, `predict --dry-run`, `teardown --dry-run` chain
as they do for real. Heavy modules (the SageMaker SDK, torch, moto) are imported inside the commands
that use them, so `--help` stays fast. Expected failures end with one line, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import __version__
from . import account, dataset, endpoint, grading, jobs
from .shared import ProjectGroup, console

__all__ = ["console", "main"]


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


# In the order of the flow: `--help` lists them so (ProjectGroup.list_commands).
for command in (
    dataset.data,
    jobs.tune,
    jobs.train,
    jobs.report,
    jobs.runs,
    endpoint.deploy,
    endpoint.predict,
    endpoint.serve,
    account.cost,
    account.preflight_command,
    account.iam_policy,
    account.status,
    account.teardown,
    grading.check,
    grading.handin,
):
    main.add_command(command)
