"""The `koopsweep` command line: parses options and calls the library; no logic of its own.

Heavy imports (torch, optuna, mlflow) happen inside the commands, so ``koopsweep --help`` and
``koopsweep plugins list`` start quickly.
"""

from __future__ import annotations

import click

from koopsweep.cli._bench import bench
from koopsweep.cli._data import data
from koopsweep.cli._plugins import plugins
from koopsweep.cli._study import study
from koopsweep.cli._ui import ui
from koopsweep.errors import KoopsweepError, redact


def _one_line(text: str) -> str:
    """A message on one line with every URL password masked (libraries' messages span several)."""
    return redact(" ".join(line.strip() for line in text.splitlines() if line.strip()))


class _Group(click.Group):
    """Turns a `KoopsweepError` into a one-line message and its exit code. Any other exception is a bug
    here or in a plugin: one line too, exit 1. With --debug, the full traceback instead (passwords masked
    there too)."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                import traceback

                click.echo(redact(traceback.format_exc()), err=True, nl=False)
            elif isinstance(exc, KoopsweepError):
                click.echo(f"Error: {_one_line(str(exc))}", err=True)
            else:
                message = f"unexpected {type(exc).__name__}: {_one_line(str(exc))}"
                click.echo(f"Error: {message} (run with --debug for the traceback)", err=True)
            ctx.exit(exc.exit_code if isinstance(exc, KoopsweepError) else 1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="koopsweep")
def main(debug: bool) -> None:
    """Search Koopman-operator training accelerators with Optuna and measure, side by side with
    Adam and Adadelta, how much wall-clock time they really save. Results go to MLflow."""


# One click group (or command) per noun, each in its own module.
for command in (plugins, study, bench, data, ui):
    main.add_command(command)

__all__ = ["main"]
