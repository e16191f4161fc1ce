"""Options and helpers shared by the command groups."""

from __future__ import annotations

import click

STORAGE_OPTION = click.option(
    "--storage",
    metavar="URL",
    help="Optuna storage: sqlite:///FILE.db, postgresql://USER@HOST/DB or FILE.log (journal). "
    "Default: $KOOPSWEEP_STORAGE, else the spec's, else sqlite:///koopsweep.db.",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
