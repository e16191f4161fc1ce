"""`koopsweep ui`: the MLflow UI on the study's tracking store."""

from __future__ import annotations

import click

from koopsweep.cli._common import STORAGE_OPTION, quiet_optuna

@click.command("ui")
@click.argument("name", required=False)
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port of the MLflow UI.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless you say otherwise).")
@STORAGE_OPTION
def ui(name: str | None, port: int, host: str, storage: str | None) -> None:
    """Start the MLflow UI on the tracking store and print the runs page of study NAME.

    The tracking store is MLFLOW_TRACKING_URI, else the study spec's tracking_uri, else
    sqlite:///mlflow.db here. When it is already an MLflow server (http://...), only the URL is printed.
    Stop the UI with Ctrl-C.
    """
    from koopsweep import sweep, tracking

    spec_uri = None
    if name:
        quiet_optuna()
        _, spec = sweep.load_study(name, sweep.resolve_storage(storage))
        spec_uri = spec.tracking_uri
    uri = tracking.resolve_tracking_uri(spec_uri)
    if uri.startswith(("http://", "https://")):
        click.echo(tracking.runs_page_url(uri.rstrip("/"), uri, name))
        return
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C or a plain `kill` stops the server too (a shell may start us with SIGINT ignored).
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server = tracking.start_ui_server(uri, host=host, port=port)
    try:
        click.echo(tracking.runs_page_url(f"http://{host}:{port}", uri, name))
        click.echo("MLflow UI running; press Ctrl-C to stop it.", err=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        tracking.stop_server(server)
