"""`koopsweep plugins`: what is installed."""

from __future__ import annotations

import json
import sys

import click

@click.group("plugins")
def plugins() -> None:
    """Installed variants, tasks, fallback rules and optimizers (built-in and third-party)."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--strict", is_flag=True, help="Exit with status 1 if any plugin is broken.")
@click.option(
    "--group",
    "groups",
    multiple=True,
    type=click.Choice(["variants", "tasks", "fallbacks", "optimizers"]),
    help="Only this group (repeatable).",
)
def plugins_list(as_json: bool, strict: bool, groups: tuple[str, ...]) -> None:
    """List every plugin with its distribution, version, status and search space."""
    from koopsweep import plugins as registry

    rows = registry.describe(list(groups) or None)
    broken = [row for row in rows if row.status != "ok"]
    if as_json:
        click.echo(json.dumps([row.to_json() for row in rows], indent=2))
    else:
        _print_plugin_table(rows)
        if broken:
            click.echo(
                f"{len(broken)} broken plugin(s); 'koopsweep plugins list --json' shows the full errors.", err=True
            )
    if strict and broken:
        sys.exit(1)


#: Longest error shown in the table; the full one is in --json (a traceback-like message folded into a
#: narrow column is unreadable).
_TABLE_ERROR_CHARS = 160


def _short_error(error: str) -> str:
    line = error.strip().splitlines()[0] if error.strip() else "broken"
    return line if len(line) <= _TABLE_ERROR_CHARS else line[: _TABLE_ERROR_CHARS - 1].rstrip() + "…"


def _print_plugin_table(rows: list) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="koopsweep plugins")
    for column in ("group", "name", "distribution", "status"):
        table.add_column(column, no_wrap=True)  # short: the last column takes what room is left
    table.add_column("search space / error", overflow="fold")
    for row in rows:
        if row.status == "ok":
            detail = "\n".join(f"{k} {v}" for k, v in row.search_space_summary.items()) or "-"
            status = Text("ok", style="green")
        else:
            detail = _short_error(row.error_summary or row.error or "")
            status = Text("broken", style="red")
        dist = f"{row.distribution or '?'}\n{row.version or ''}".strip()
        # Text, not markup strings: an error like "list[str]" must not be read as a style tag.
        table.add_row(Text(row.group), Text(row.name), Text(dist), status, Text(detail))
    Console().print(table)
