"""The servers a scaled Open WebUI deployment stands on, started and stopped by the tests:
Redis (websocket manager and shared state) and PostgreSQL (the database every worker shares).

Each listens on 127.0.0.1 on a free port, keeps its files in a temporary directory of its own,
and is gone, files included, after `stop()`. A missing server program fails the test that
needs it: CI must run those tests (`scripts/_setup.sh` installs both from Debian's packages).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.owui import free_port, start_logged, stop_process_group


def _missing(program: str, package: str) -> None:
    pytest.fail(
        f"{program} is missing. The multi-worker test needs Debian's {package}: "
        f"`apt-get install {package}` (scripts/test installs it when run as root).",
        pytrace=False,
    )


# ==========================================================================================
# Redis
# ==========================================================================================


class RedisServer:
    """One redis-server on 127.0.0.1, no persistence, in its own process group."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "redis.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> None:
        path = shutil.which("redis-server") or _missing("redis-server", "redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [str(path), "--bind", "127.0.0.1", "--port", str(self.port)]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self._proc = start_logged(argv, self.log_path, "redis-server", self._pong, timeout)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc)


# ==========================================================================================
# PostgreSQL
# ==========================================================================================


def postgres_bin() -> Path:
    """The directory of initdb/pg_ctl: on PATH, else Debian's versioned directory."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        _missing("PostgreSQL's initdb", "postgresql")
    return Path(candidates[-1]).parent


class PostgresServer:
    """A throwaway PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl start` on a free port.

    PostgreSQL refuses to run as root, so as root the cluster belongs to Debian's `postgres`
    user (its temp dir lies outside pytest's root-only tree so that user can reach it).
    """

    DATABASE = "openwebui"
    USER = "owui"

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="mmc-postgres-"))
        self.data = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self._run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                _missing("The `postgres` user", "postgresql")
            self._run_as = "postgres"
            shutil.chown(self.workdir, "postgres", "postgres")
        self.started = False

    @property
    def url(self) -> str:
        """What Open WebUI's DATABASE_URL takes; psycopg 3 is the driver Open WebUI installs."""
        return f"postgresql+psycopg://{self.USER}@127.0.0.1:{self.port}/{self.DATABASE}"

    def _run(self, *argv: str, timeout: float = 120.0) -> str:
        result = subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            user=self._run_as,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.USER, "--auth=trust", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.workdir}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w",
                  "start")  # fmt: skip
        self.started = True
        self.query(f"CREATE DATABASE {self.DATABASE}", database="postgres")

    def query(self, sql: str, *params: object, database: str | None = None) -> list[tuple]:
        """Rows of one statement (autocommit), through psycopg, Open WebUI's own driver."""
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={self.USER} dbname={database or self.DATABASE}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def stop(self) -> None:
        """Stops the cluster and removes its files."""
        try:
            if self.started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
                self.started = False
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
