"""Databases for storage tests: a real PostgreSQL server per test run, a fresh database per test.

Where the server comes from, in order:
1. `TEST_POSTGRES_DSN` (e.g. `postgresql://postgres@127.0.0.1:5432/postgres`): an existing server whose
   role may CREATE DATABASE. Unreachable is an error, not a skip: somebody asked for it.
2. PostgreSQL binaries (`initdb`, `pg_ctl`; Debian's `postgresql` package puts them in
   /usr/lib/postgresql/<version>/bin): a throwaway cluster in a temp dir, listening on 127.0.0.1 only,
   trust auth, fsync off; stopped and removed when the run ends. As root it runs as the `postgres`
   system user (initdb refuses root), via `runuser`.
3. Otherwise PostgreSQL tests are skipped, saying how to get a server.

Test modules import the fixtures they use (`from tests.doubles.postgres import database_url, ...`).
The server is cached at module level because each importing module registers its own copy of a
session fixture; the cluster is still started once per run and stopped at the end of the run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.ports import free_port

DSN_ENV = "TEST_POSTGRES_DSN"
_HOW_TO_GET_ONE = (
    f"no PostgreSQL server: set {DSN_ENV} to a server's DSN, or install the binaries "
    "(Debian/Ubuntu: apt-get install -y postgresql) so the tests can start a throwaway cluster"
)


def _sqlalchemy_url(dsn: str) -> str:
    url = make_url(dsn)
    return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _libpq_url(dsn: str, database: str | None = None) -> str:
    url = make_url(dsn).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


@dataclass
class PostgresServer:
    admin_dsn: str  # SQLAlchemy URL of the maintenance database

    def create_database(self) -> str:
        name = f"vw_test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(_libpq_url(self.admin_dsn), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return _sqlalchemy_url(make_url(self.admin_dsn).set(database=name).render_as_string(hide_password=False))

    def drop_database(self, url: str) -> None:
        name = make_url(url).database
        with psycopg.connect(_libpq_url(self.admin_dsn), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _find_bin_dir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0), reverse=True
    )
    for directory in candidates:
        if Path(directory, "initdb").exists() and Path(directory, "pg_ctl").exists():
            return Path(directory)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


class _Cluster:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="voice-worker-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = 0
        self._as_user: str | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.base, ignore_errors=True)
                pytest.skip("running as root and there is no 'postgres' system user to run initdb as")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self._as_user = "postgres"

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_user is not None:
            cmd = ["runuser", "-u", self._as_user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base)

    def _fail(self, what: str, proc: subprocess.CompletedProcess[str]) -> None:
        log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr[-2000:]}\n{log}")

    def start(self) -> str:
        proc = self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N"
        )
        if proc.returncode != 0:
            self._fail("initdb", proc)
        for _ in range(3):
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
            )
            proc = self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
            )
            if proc.returncode == 0:
                return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._fail("pg_ctl start", proc)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)


_server: PostgresServer | None = None


def _obtain(config: pytest.Config) -> PostgresServer:
    global _server
    if _server is not None:
        return _server
    dsn = os.environ.get(DSN_ENV)
    if dsn:
        server = PostgresServer(admin_dsn=_sqlalchemy_url(dsn))
        with psycopg.connect(_libpq_url(server.admin_dsn), connect_timeout=10):
            pass
    else:
        bin_dir = _find_bin_dir()
        if bin_dir is None:
            pytest.skip(_HOW_TO_GET_ONE)
        cluster = _Cluster(bin_dir)
        try:
            server = PostgresServer(admin_dsn=cluster.start())
        except BaseException:
            cluster.stop()
            raise
        config.add_cleanup(cluster.stop)
    _server = server
    return server


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    return _obtain(request.config)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against an SQLite file (in a directory that does not exist yet) and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'records.db'}"
    return str(request.getfixturevalue("postgres_url"))
