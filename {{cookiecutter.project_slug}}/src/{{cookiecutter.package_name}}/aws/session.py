"""One session of work on SageMaker: where the calls go, and what this project has created.

The caller builds it once (`open_session`) and hands it to every launcher function, so a dry run is
the same code as a real one, only backed by the offline AWS:

- real: the account (`sagemaker_api.connect`), the record in `.state/`;
- dry run: moto (`dryrun.offline_aws`) with its own persistent record in `dry-run/` (`dry-run/aws/`
  for the requests and the offline S3, `dry-run/state/` for what was "created"), so
  tune -> train -> deploy -> predict -> teardown chain in dry runs exactly as they do for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ProjectConfig
from . import sdk
from .context import AwsContext
from .state import ProjectState

if TYPE_CHECKING:
    from .offline import OfflineAws

DRY_RUN_FOLDER = "dry-run"


@dataclass
class Session:
    aws: AwsContext
    state: ProjectState
    # The dry run's record (requests, journal, offline S3); None on a real account.
    offline: OfflineAws | None = None

    @property
    def dry_run(self) -> bool:
        return self.offline is not None


def dry_run_folder(config: ProjectConfig, folder: Path | None = None) -> Path:
    """Where a dry run keeps its record: `folder`, or `dry-run/` in the project."""
    return Path(folder) if folder else config.root / DRY_RUN_FOLDER


def session_state(
    config: ProjectConfig, *, dry_run: bool = False, folder: Path | None = None
) -> ProjectState:
    """The record a session would use, readable without opening one (no credentials needed)."""
    return ProjectState(dry_run_folder(config, folder) / "state" if dry_run else config.state_dir)


@contextmanager
def open_session(
    config: ProjectConfig, *, dry_run: bool = False, folder: Path | None = None
) -> Iterator[Session]:
    """A session on the account, or (`dry_run`) on the offline AWS recorded in `dry_run_folder(...)`."""
    state = session_state(config, dry_run=dry_run, folder=folder)
    if not dry_run:
        yield Session(sdk.sagemaker_api(config).connect(config), state)
        return
    # moto is imported for dry runs only: a real run neither loads nor needs the stand-in.
    from .offline import offline_aws

    with offline_aws(dry_run_folder(config, folder) / "aws", config) as offline:
        yield Session(offline.context, state, offline)
