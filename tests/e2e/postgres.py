"""A throwaway PostgreSQL cluster on loopback for the end-to-end tests of `--store postgres://`:
Debian's `postgresql` package (scripts/test installs it), `initdb` into a temp dir and `postgres`
on 127.0.0.1 and a free port, run as the `postgres` user when the tests run as root (PostgreSQL
refuses to run as root). One database per test (`Postgres.database`)."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bin_dir() -> Path:
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    assert dirs, ("PostgreSQL is not installed: apt-get install -y postgresql "
                  "(scripts/test does)")
    return Path(dirs[-1])


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """One cluster; `url(db)` is `postgres://postgres@127.0.0.1:PORT/db`."""

    def __init__(self, root: Path, listen: tuple[str, ...] = ()):
        self.root = root
        # Addresses besides loopback it listens on, and trusts connections from (their /24s).
        self.listen = listen
        self.bin = _bin_dir()
        self.data = root / "data"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._names = itertools.count()

    @classmethod
    def create(cls, listen: tuple[str, ...] = ()) -> "Postgres":
        """A new cluster, on loopback and on `listen` (IPv4 addresses)."""
        # Under /tmp itself: pytest's temp dirs sit in a directory only root may enter, and the
        # server runs as the `postgres` user.
        pg = cls(Path(tempfile.mkdtemp(prefix="ember-e2e-pg-")), listen)
        root = pg.root
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        subprocess.run(_as_server_user([str(pg.bin / "initdb"), "-A", "trust", "-U", "postgres",
                                        "-E", "UTF8", "--no-sync", "-D", str(pg.data)]),
                       check=True, stdout=subprocess.DEVNULL)
        with open(pg.data / "pg_hba.conf", "a") as hba:
            for address in listen:
                hba.write(f"host all all {address}/24 trust\n")
        pg.start()
        return pg

    def start(self) -> None:
        """Starts the server (again, after `stop`, on the same port)."""
        self.port = self.port or _free_port()
        self.proc = subprocess.Popen(
            _as_server_user([str(self.bin / "postgres"), "-D", str(self.data),
                             "-c", f"listen_addresses={','.join(('127.0.0.1', *self.listen))}", "-p", str(self.port),
                             "-k", str(self.root), "-c", "fsync=off"]),
            stdout=open(self.root / "log", "ab"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.psql("SELECT 1", check=False).returncode == 0:
                return
            assert self.proc.poll() is None, (self.root / "log").read_text()
            time.sleep(0.1)
        raise AssertionError(f"PostgreSQL did not start:\n{(self.root / 'log').read_text()}")

    def psql(self, sql: str, db: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", db, "-tAc", sql],
            capture_output=True, text=True, check=check)

    def database(self) -> str:
        """A new, empty database; its URL."""
        name = f"ember_e2e_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        """A fast shutdown (SIGINT): clients are disconnected."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(30)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
