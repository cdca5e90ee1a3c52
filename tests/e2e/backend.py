"""Which store and blob backends the servers under test use: `EMBER_E2E_BACKEND`.

- `embedded` (the default): every server keeps its metadata in SQLite and its code packages in
  files under its data dir, as `ember serve` does with no flags.
- `postgres+s3`: the session starts ONE throwaway PostgreSQL cluster (postgres.py) and ONE
  SeaweedFS (seaweed.py, `weed server -s3`), shared by every server, and each data dir gets a
  database and a bucket prefix of its own: `ember serve --store postgres://…/<db> --blobs
  s3://ember-e2e/<prefix>?endpoint=…&region=…` with the store's credentials in its environment.
  So servers stay as independent of each other as they are with their own data dirs, and a
  server restarted on a data dir (the durability and crash tests) comes back on the same database
  and prefix. `postgres` and `s3` switch one of the two alone (to tell which one a failure
  needs).

A test (or helper) that chooses its own backend with `--store` or `--blobs` keeps what it chose,
and gets neither flag from here: a bucket prefix is only coherent with one database (the store's
collection deletes what its own rows no longer name), so the two are switched together or not at
all. `ember` CLI commands given `--data-dir D` get
`EMBER_STORE` of D's database, as an operator would pass `--store`. Tests whose subject is the
embedded layout itself are marked `embedded_only("why")` and deselected (and listed) by the
shared-backend pass (conftest.py)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

VARIABLE = "EMBER_E2E_BACKEND"
CHOICES = ("embedded", "postgres+s3", "postgres", "s3")


def choice() -> str:
    """The backend this run asked for; an unknown value fails loudly."""
    value = os.environ.get(VARIABLE, "").strip() or "embedded"
    if value not in CHOICES:
        raise ValueError(f"{VARIABLE}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def _has_flag(args: tuple[str, ...], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


class SharedBackend:
    """One PostgreSQL cluster and/or one SeaweedFS for the whole session; a database and a
    prefix per data dir."""

    def __init__(self, postgres: bool, s3: bool):
        self.pg = None
        self.seaweed = None
        self._lock = threading.Lock()
        # data dir (resolved) -> the name of its database and prefix
        self._names: dict[Path, str] = {}
        self._next = 0
        # data dirs whose servers chose their own backend: `ember` commands on them get nothing
        self._own: set[Path] = set()
        self._seaweed_dir: Path | None = None
        if postgres:
            from postgres import Postgres

            self.pg = Postgres.create()
        if s3:
            from seaweed import Seaweed

            self._seaweed_dir = Path(tempfile.mkdtemp(prefix="ember-e2e-s3-"))
            try:
                self.seaweed = Seaweed(self._seaweed_dir / "weed")
            except BaseException:
                self.close()
                raise

    def _name(self, data_dir: Path) -> str:
        """The database and prefix of `data_dir`, made on first use."""
        key = Path(os.path.abspath(data_dir))
        with self._lock:
            name = self._names.get(key)
            if name is not None:
                return name
            name = f"ember_e2e_{self._next}"
            self._next += 1
            if self.pg is not None:
                # Byte order for listings, as README advises (and as SQLite lists).
                self.pg.psql(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE 'C'")
            self._names[key] = name
            return name

    def store_url(self, data_dir: Path) -> str | None:
        return self.pg.url(self._name(data_dir)) if self.pg is not None else None

    @staticmethod
    def chose_own(args: tuple[str, ...]) -> bool:
        """Whether a server's flags choose its store or blob store themselves."""
        return _has_flag(args, "--store") or _has_flag(args, "--blobs")

    def serve_args(self, data_dir: Path, args: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
        """The `ember serve` flags and environment that put `data_dir` on the shared backend,
        unless `args` choose a backend themselves."""
        more: list[str] = []
        env: dict[str, str] = {}
        if self.chose_own(args):
            with self._lock:
                self._own.add(Path(os.path.abspath(data_dir)))
            return (), {}
        if self.pg is not None:
            more += ["--store", self.store_url(data_dir)]
        if self.seaweed is not None:
            more += ["--blobs", self.seaweed.url(self._name(data_dir))]
            env.update(self.seaweed.env())
        return tuple(more), env

    def cli_env(self, args: tuple[str, ...]) -> dict[str, str]:
        """`EMBER_STORE` for an `ember` command that names a data dir and no store."""
        if self.pg is None or _has_flag(args, "--store"):
            return {}
        for i, a in enumerate(args):
            if a == "--data-dir" and i + 1 < len(args):
                data_dir = Path(args[i + 1])
            elif a.startswith("--data-dir="):
                data_dir = Path(a.split("=", 1)[1])
            else:
                continue
            with self._lock:
                if Path(os.path.abspath(data_dir)) in self._own:
                    return {}
            return {"EMBER_STORE": self.store_url(data_dir)}
        return {}

    def database_of(self, data_dir: Path) -> str | None:
        """The database of a data dir a server used on the shared PostgreSQL, if any."""
        if self.pg is None:
            return None
        with self._lock:
            return self._names.get(Path(os.path.abspath(data_dir)))

    def prefix_of(self, data_dir: Path, args: tuple[str, ...]) -> str | None:
        """The bucket prefix of a server on `data_dir` started with `args`, if its code is in
        the shared SeaweedFS."""
        if self.seaweed is None or self.chose_own(args):
            return None
        return self._name(data_dir)

    def release(self, under: Path) -> None:
        """Drops the databases and prefixes of the data dirs under `under` (a fixture's temp
        dir, once its servers have stopped), so that a long run does not pile them up."""
        root = Path(os.path.abspath(under))
        with self._lock:
            gone = {d: n for d, n in self._names.items() if d == root or root in d.parents}
            for d in gone:
                del self._names[d]
            self._own = {d for d in self._own if not (d == root or root in d.parents)}
        for name in gone.values():
            if self.pg is not None:
                self.pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", check=False)
            if self.seaweed is not None:
                s3 = self.seaweed.s3
                for page in s3.get_paginator("list_objects_v2").paginate(
                        Bucket="ember-e2e", Prefix=name + "/"):
                    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if keys:
                        s3.delete_objects(Bucket="ember-e2e", Delete={"Objects": keys})

    def describe(self) -> str:
        parts = []
        if self.pg is not None:
            parts.append(f"PostgreSQL on 127.0.0.1:{self.pg.port} ({self.pg.root})")
        if self.seaweed is not None:
            parts.append(f"SeaweedFS S3 at {self.seaweed.endpoint}")
        return ", ".join(parts)

    def close(self) -> None:
        if self.seaweed is not None:
            self.seaweed.close()
        if self._seaweed_dir is not None:
            shutil.rmtree(self._seaweed_dir, ignore_errors=True)
        if self.pg is not None:
            self.pg.close()


def store_scalar(data_dir: Path, sql: str) -> str:
    """The one value `sql` selects from the metadata store of the server on `data_dir` (run when
    no server writes, or read-only): its database on the shared PostgreSQL, else its SQLite file."""
    database = shared.database_of(data_dir) if shared is not None else None
    if database is not None:
        return shared.pg.psql(sql, db=database).stdout.strip()
    db = sqlite3.connect(f"file:{Path(data_dir) / 'ember.db'}?mode=ro", uri=True, timeout=10)
    try:
        return str(db.execute(sql).fetchone()[0])
    finally:
        db.close()


def check_own_backend(args: tuple[str, ...]) -> None:
    """Fails a test marked `own_backend` that starts a server on the default backend."""
    if own_backend_test is not None and not SharedBackend.chose_own(args):
        raise AssertionError(f"{own_backend_test} is marked own_backend but starts a server with "
                             f"neither --store nor --blobs ({' '.join(args)}): it would run on the "
                             "shared backend's pass too, so drop the mark or choose a backend")


def stored_blobs(data_dir: Path, args: tuple[str, ...] = ()) -> set[str]:
    """What the blob store of a server on `data_dir` (started with `args`) holds, as paths under
    its root (`sha256/ab/ab…`, `tmp/….part`): its keys under the data dir's prefix of the shared
    bucket, else the files under DATA_DIR/blobs (the file:// default)."""
    prefix = shared.prefix_of(data_dir, args) if shared is not None else None
    if prefix is not None:
        return {key.removeprefix(prefix + "/") for key in shared.seaweed.keys(prefix)}
    root = Path(data_dir) / "blobs"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# The test marked `own_backend` that is running, if any (conftest.py): it may start servers only
# with a backend of its own choosing.
own_backend_test: str | None = None

# The session's backend: None on the embedded default (conftest.py's pytest_sessionstart sets it).
shared: SharedBackend | None = None


def start() -> SharedBackend | None:
    """Starts what `EMBER_E2E_BACKEND` asks for (once per session)."""
    global shared
    kind = choice()
    if kind != "embedded" and shared is None:
        shared = SharedBackend(postgres="postgres" in kind, s3="s3" in kind)
    return shared


def stop() -> None:
    global shared
    if shared is not None:
        shared.close()
        shared = None
