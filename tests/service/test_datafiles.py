"""Data files are private: var/ 0700; the SQLite file (and its WAL), keys, spool and beat's schedule 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.config import Settings
from service.secrets import load_keys, load_media_link_keys
from service.store.models import make_engine
from service.web.spool import Spool
from tests.harness import Service, wait_for


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask():
    """Run with the permissive umask most shells have, so only the code's own care makes files private."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_the_sqlite_database_and_its_wal_are_0600_in_a_0700_directory(tmp_path, open_umask):
    """A new database file, its -wal and -shm, and the directory made for it are the service user's alone."""
    path = tmp_path / "new" / "pbxrelay.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x TEXT)"))
        conn.execute(sa.text("INSERT INTO t VALUES ('tenant data')"))
        wal = [p for p in path.parent.iterdir() if p.name.endswith(("-wal", "-shm"))]
        assert wal, "WAL mode creates the -wal and -shm files"
        assert {p.name: mode(p) for p in [path, *wal]} == {p.name: 0o600 for p in [path, *wal]}
    engine.dispose()
    assert mode(path.parent) == 0o700


def test_an_existing_world_readable_database_is_tightened(tmp_path, open_umask):
    """A database left 0644 by an older version becomes 0600 when the service opens it."""
    path = tmp_path / "old.sqlite3"
    path.touch(mode=0o644)
    path.chmod(0o644)
    make_engine(f"sqlite:///{path}").dispose()
    assert mode(path) == 0o600


def test_generated_keys_and_the_spool_are_private(tmp_path, open_umask):
    """The generated credential and media-link keys are 0600 in a 0700 var/; the spool directory is 0700."""
    settings = Settings(var_dir=tmp_path / "var")
    load_keys(settings)
    load_media_link_keys(settings)
    assert mode(tmp_path / "var") == 0o700
    assert mode(tmp_path / "var" / "secret.key") == 0o600
    assert mode(tmp_path / "var" / "media-link.key") == 0o600
    spool = Spool(tmp_path / "var" / "spool", max_events=10)
    entry = spool.put({"account_id": "a"})
    assert mode(spool.directory) == 0o700 and mode(entry) == 0o600


def test_the_processes_create_private_files_whatever_the_callers_umask(tmp_path, redis_url, namespace, redis_client,
                                                                       open_umask):
    """`pbxrelay migrate` and `pbxrelay scheduler`, started with umask 022, leave var/ 0700 and every file 0600."""
    service = Service(tmp_path, redis_url=redis_url, namespace=namespace)
    service.env.pop("PBXRELAY_SECRET_KEYS")  # so the local key is generated, as on a fresh install
    service.cli("migrate")
    service.start_scheduler()
    try:  # the scheduler is at work once it holds its lock
        wait_for(lambda: redis_client.exists(f"{namespace}:scheduler:lock"), timeout=60, message="the scheduler")
    finally:
        service.stop()
    files = {p.name: mode(p) for p in service.var_dir.iterdir() if p.is_file()}
    assert "pbxrelay.sqlite3" in files
    assert files == {name: 0o600 for name in files}
    assert mode(service.var_dir) == 0o700
