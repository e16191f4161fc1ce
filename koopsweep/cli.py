"""The `koopsweep` command line: parses options and calls the library; no logic of its own.

Heavy imports (torch, optuna, mlflow) happen inside the commands, so ``koopsweep --help`` and
``koopsweep plugins list`` start quickly.
"""

from __future__ import annotations

import json
import sys

import click

from koopsweep.errors import KoopsweepError


class _Group(click.Group):
    """Turns a `KoopsweepError` into a one-line message and its exit code (no traceback unless --debug)."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except KoopsweepError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="koopsweep")
def main(debug: bool) -> None:
    """Search Koopman-operator training accelerators with Optuna and measure, side by side with
    Adam and Adadelta, how much wall-clock time they really save. Results go to MLflow."""


# ----------------------------------------------------------------------------------------- plugins
@main.group()
def plugins() -> None:
    """Installed variants, tasks and fallback rules (built-in and third-party)."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--strict", is_flag=True, help="Exit with status 1 if any plugin is broken.")
@click.option(
    "--group",
    "groups",
    multiple=True,
    type=click.Choice(["variants", "tasks", "fallbacks"]),
    help="Only this group (repeatable).",
)
def plugins_list(as_json: bool, strict: bool, groups: tuple[str, ...]) -> None:
    """List every plugin with its distribution, version, status and search space."""
    from koopsweep import plugins as registry

    rows = registry.describe(list(groups) or None)
    if as_json:
        click.echo(json.dumps([row.to_json() for row in rows], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="koopsweep plugins")
        for column in ("group", "name", "distribution", "status", "search space / error"):
            table.add_column(column, overflow="fold")
        for row in rows:
            detail = row.error if row.status != "ok" else ", ".join(row.search_space) or "-"
            status = "[green]ok[/]" if row.status == "ok" else "[red]broken[/]"
            dist = f"{row.distribution or '?'} {row.version or ''}".strip()
            table.add_row(row.group, row.name, dist, status, detail)
        Console().print(table)
    if strict and any(row.status != "ok" for row in rows):
        sys.exit(1)
