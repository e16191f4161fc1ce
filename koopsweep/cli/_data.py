"""`koopsweep data`: data sets that some tasks read from a folder."""

from __future__ import annotations

import click

@click.group("data")
def data() -> None:
    """Data sets that some tasks read from a folder (nothing downloads unless you ask here)."""


@data.command("download")
@click.argument("dataset", type=click.Choice(["mnist"]))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where to put the files (default: $KOOPSWEEP_DATA/mnist, else ./data/mnist).")
@click.option("--overwrite", is_flag=True, help="Download again even when the files are there.")
def data_download(dataset: str, data_dir: str | None, overwrite: bool) -> None:
    """Download DATASET's files (the four MNIST IDX files, checked against their MD5 sums)."""
    from koopsweep.tasks._mnist import download_mnist, resolve_mnist_dir

    folder = resolve_mnist_dir(data_dir or "")
    paths = download_mnist(folder, overwrite=overwrite, log=lambda message: click.echo(message, err=True))
    click.echo(f"{len(paths)} files in {folder}")
