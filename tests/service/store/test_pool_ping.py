"""Pooled PostgreSQL connections are pinged only after sitting idle, and a dropped one is replaced, not used."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service.store import models
from tests.conftest import database_url_for


@pytest.fixture
def pg_engine(request, tmp_path):
    """make_engine on PostgreSQL, with one pooled connection whose backend another connection can terminate."""
    engine = models.make_engine(database_url_for(request, tmp_path, "postgresql"))
    yield engine
    engine.dispose()


def _backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(engine: sa.Engine, pid: int) -> None:
    """End backend ``pid`` from a connection outside the engine's pool (as a server restart would)."""
    killer = sa.create_engine(engine.url, poolclass=sa.NullPool)
    with killer.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    killer.dispose()


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(pg_engine, monkeypatch):
    """Idle past the threshold: the checkout pings, finds the connection dead, and hands out a new one."""
    pid = _backend_pid(pg_engine)
    _terminate(pg_engine, pid)
    monkeypatch.setattr(models, "PING_AFTER_IDLE_SECONDS", 0.0)
    assert _backend_pid(pg_engine) != pid


def test_a_connection_used_a_moment_ago_is_not_pinged(pg_engine, monkeypatch):
    """Within the threshold there is no ping (no round trip): the dropped connection fails its first statement,
    the pool is invalidated, and the next checkout works."""
    pid = _backend_pid(pg_engine)
    _terminate(pg_engine, pid)
    monkeypatch.setattr(models, "PING_AFTER_IDLE_SECONDS", 3600.0)
    with pytest.raises(sa.exc.OperationalError):
        _backend_pid(pg_engine)
    assert _backend_pid(pg_engine) != pid
