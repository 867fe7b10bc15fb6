"""`data`: prepare a folder-per-class dataset, generate a synthetic one, or upload it to S3."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .shared import command_session, console, dry_run_options, project_config


@click.group()
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
    from ..workflow import dataset as data_module

    config = project_config(ctx)
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
    from ..workflow import dataset as data_module

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
    from ..workflow import launcher

    config = project_config(ctx)
    with command_session(config, dry_run, dry_run_dir) as session:
        result = launcher.upload_data(config, session, data_dir)
        console.print(
            f"{result.destination}: {len(result.uploaded)} uploaded, {len(result.skipped)} unchanged"
        )
