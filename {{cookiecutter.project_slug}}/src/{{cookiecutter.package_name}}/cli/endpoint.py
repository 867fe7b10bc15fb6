"""`deploy`, `predict` (SageMaker or the local endpoint) and `serve` (the endpoint on this machine)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from ..aws.context import CAPTURED
from ..config import aws_tables
from .shared import Launch, command_session, console, dry_run_options, launch_options, project_config


@click.command()
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
    from ..workflow import launcher, resources

    config = project_config(ctx)
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
            for kind, name, outcome in resources.teardown_deployment(session, deployment):
                console.print(f"{kind} {name}: {outcome}")
            kept = "deleted"
        else:
            kept = "kept; `teardown` deletes it"
    raise click.ClickException(f"endpoint {deployment.endpoint_name} does not answer ({kept})")


def _print_predictions(results: list[dict[str, Any]]) -> None:
    from ..report import tables

    for result in results:
        # The path as a line of its own: a table title would wrap it to the table's width.
        console.print(f"[bold]{result['image']}[/bold]", soft_wrap=True)
        if result.get("note"):
            console.print(f"  [yellow]note[/]: {escape(result['note'])}")
        if "status" in result:
            console.print(f"  {result['status']}: no model answered")
            continue
        console.print(tables.rich_table(tables.prediction_rows(result)))


@click.command()
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
    from ..workflow import payload

    config = project_config(ctx)
    limit = payload.body_limit(config)
    try:  # before a server or an AWS session is asked anything
        payload.check_image_files(images, limit)
    except payload.ImageFileError as error:
        raise click.ClickException(str(error)) from None
    if local:
        from ..local.endpoint import invoke_local

        _print_predictions(invoke_local(url, list(images), top_k=top_k, body_limit=limit))
        return
    from ..workflow import launcher

    with command_session(config, dry_run, dry_run_dir) as session:
        _print_predictions(
            launcher.predict(config, session, list(images), endpoint_name=endpoint_name, top_k=top_k)
        )


@click.command()
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
    type=click.Choice(aws_tables.ENDPOINT_SERVERS),
    help="What serves inference.py, as on the endpoint; default: [endpoint] server.",
)
@click.pass_context
def serve(ctx: click.Context, model_data: Path, host: str, port: int, server: str | None) -> None:
    """Serve a model.tar.gz locally with inference.py, like the endpoint (Ctrl-C stops)."""
    from ..workflow import payload

    config = project_config(ctx)
    if (server or config.settings.endpoint.server) == "ray_serve":
        from ..local.ray_endpoint import serve as serve_under_ray

        serve_under_ray(model_data, host=host, port=port, project_root=config.root)
        return
    from ..local.endpoint import serve as serve_locally

    limit = payload.body_limit(config)  # the configured endpoint's request limit
    serve_locally(model_data, host=host, port=port, project_root=config.root, max_request_bytes=limit)
