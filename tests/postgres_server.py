"""Fixtures for a real, throwaway PostgreSQL server.

`.ci/run` starts one and exports its URL as ``KOOPSWEEP_TEST_POSTGRES_URL``; without it (a plain
``pytest``) the session starts its own with the same script, `.ci/postgres`, and stops it at the end.
Each test gets a fresh database on that server, as a plain ``postgresql://`` URL.
"""

import os
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

URL_ENV = "KOOPSWEEP_TEST_POSTGRES_URL"
SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "postgres"


def _start_server(prefix: str) -> tuple[str, str]:
    """Start a server with `.ci/postgres` in a new folder; returns the folder and the server's URL."""
    # Not under pytest's tmp_path: that folder is private to root, and the server runs as postgres.
    folder = tempfile.mkdtemp(prefix=prefix)
    started = subprocess.run(["bash", str(SCRIPT), "start", folder], capture_output=True, text=True)
    if started.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop", folder], capture_output=True)
        pytest.fail(f"could not start PostgreSQL with {SCRIPT}: {started.stderr.strip()}", pytrace=False)
    return folder, started.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def postgres_server():
    """The admin URL of a running PostgreSQL server (its ``postgres`` database, superuser)."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    folder, url = _start_server("koopsweep-pg-")
    try:
        yield url
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", folder], check=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database for this test (``postgresql://...``); dropped afterwards."""
    import psycopg

    name = f"koopsweep_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(postgres_server)._replace(path=f"/{name}"))
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        # Workers a test killed may still hold connections until the server notices.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class OwnPostgres:
    """A PostgreSQL server of one test's own, which the test may take down and bring back up (an outage)
    without disturbing the session's shared server."""

    def __init__(self, folder: str, url: str) -> None:
        self.folder, self.url = folder, url

    def _script(self, action: str) -> None:
        subprocess.run(["bash", str(SCRIPT), action, self.folder], check=True, capture_output=True)

    def down(self) -> None:
        self._script("down")

    def up(self) -> None:
        self._script("up")


@pytest.fixture
def own_postgres():
    """A throwaway PostgreSQL server for this test alone (`OwnPostgres`: ``.url``, ``.down()``, ``.up()``)."""
    folder, url = _start_server("koopsweep-pg-own-")
    try:
        yield OwnPostgres(folder, url)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", folder], check=True)  # a server left down is just removed
