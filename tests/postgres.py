"""A real PostgreSQL server owned by a test: the Debian ``postgresql`` binaries, a cluster in a temp folder owned
by the ``postgres`` user (``initdb`` refuses root), listening on a loopback port; stopped by PID."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.server import free_port, stop_process


def _bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: run scripts/setup.sh --test-deps")
    return versions[-1].parent


@dataclass
class Postgres:
    port: int
    proc: subprocess.Popen[bytes]
    counter: int = 0

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=sheesh dbname={database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://sheesh@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        self.counter += 1
        name = f"t{os.getpid()}_{self.counter}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    pg = pwd.getpwnam("postgres")
    folder = Path(tempfile.mkdtemp(prefix="sheesh-pg-"))
    os.chown(folder, pg.pw_uid, pg.pw_gid)
    data, port = folder / "data", free_port()
    as_postgres = {"user": pg.pw_uid, "group": pg.pw_gid, "cwd": folder}
    subprocess.run(
        [str(_bin() / "initdb"), "-D", str(data), "-A", "trust", "-U", "sheesh", "--no-sync", "-E", "UTF8"],
        check=True,
        capture_output=True,
        **as_postgres,  # type: ignore[arg-type]
    )
    log = open(folder / "postgres.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(_bin() / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder), "-h", "127.0.0.1",
         "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
        stdout=log, stderr=subprocess.STDOUT, **as_postgres,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={port} user=sheesh dbname=postgres", connect_timeout=2):
                    break
            except psycopg.OperationalError:
                assert proc.poll() is None and time.monotonic() < deadline, (folder / "postgres.log").read_text()
                time.sleep(0.1)
        yield Postgres(port, proc)
    finally:
        stop_process(proc, signal.SIGINT, 20)  # SIGINT: PostgreSQL's fast shutdown
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
