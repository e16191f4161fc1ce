"""Errors that koopsweep reports to its users.

Every error a user can cause derives from `KoopsweepError`; the CLI prints its message on one line
(no traceback unless ``--debug``) and exits with ``exit_code``: 2 for bad input, 1 for a runtime failure.
"""

from __future__ import annotations


class KoopsweepError(Exception):
    """An error with a message meant for the user."""

    exit_code = 1


class UsageError(KoopsweepError):
    """Bad input: a spec file, an option, a name. Nothing was written."""

    exit_code = 2


class SpecError(UsageError):
    """A study spec is invalid; the message names the file, the field and the value."""


class PluginNotFoundError(UsageError, LookupError):
    """No plugin of that name is installed; the message lists the ones that are."""


class PluginValidationError(KoopsweepError):
    """A plugin does not fulfil its contract; the message names its entry point, distribution and version."""


class PluginLoadError(KoopsweepError):
    """A plugin raised while being imported; the original error is chained as ``__cause__``."""


class ParameterError(UsageError, ValueError):
    """A variant, fallback rule or task got a parameter value it cannot use."""
