"""Errors that koopsweep reports to its users.

Every error a user can cause derives from `KoopsweepError`; the CLI prints its message on one line
(no traceback unless ``--debug``) and exits with ``exit_code``: 2 for bad input, 1 for a runtime failure,
75 when the study's database stayed unreachable past the worker's retry bound.
"""

from __future__ import annotations

import re


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


class StorageUnavailable(KoopsweepError):
    """The study's database did not answer for longer than the worker's ``--storage-retry`` bound; the
    results the worker could not write are kept locally and written by the next run."""

    #: EX_TEMPFAIL (sysexits.h): a temporary failure, try again later; distinct from a bug or bad input.
    exit_code = 75


class ParameterError(UsageError, ValueError):
    """A variant, fallback rule or task got a parameter value it cannot use."""


#: A URL in free text: its scheme, then everything up to whitespace or a quote. A password may itself
#: hold '@', '/' or '#' when the user did not percent-encode it, so the user part ends at the *last* '@'.
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"<>]*)")
#: libpq and others also take a password as a query parameter (``?password=...``).
_QUERY_SECRET = re.compile(r"(?i)(?P<key>[?&;](?:password|passwd|pwd)=)[^&;\s'\"<>]*")


def _mask_url(match: re.Match) -> str:
    rest = match["rest"]
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return match["scheme"] + _QUERY_SECRET.sub(r"\g<key>***", rest)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``
    (``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``).

    It works on free text, not on one parsed URL, so that it also covers messages that quote a URL
    which does not parse. When in doubt it masks too much (an '@' in a path) rather than too little.
    """
    return _URL.sub(_mask_url, text)
