"""Migration 0003c (console people and access) on SQLite and PostgreSQL: upgrade keeps audit rows, downgrade works."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import service.store.models as models

SCRIPTS = Path(models.__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for the project's migrations at ``url`` (as service.store.models.migrate builds it)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def test_0003c_upgrades_existing_audit_rows_and_downgrades(database_url):
    """Audit rows written before 0003c get actor "service"; the console tables come and go with the revision."""
    cfg = alembic_config(database_url)
    command.upgrade(cfg, "0002")
    engine = models.make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO audit_log (account_id, kind, detail, at) "
                             "VALUES ('acct', 'reconciled', 'before', CURRENT_TIMESTAMP)"))
    command.upgrade(cfg, "0003c")
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT actor FROM audit_log")).scalar_one() == "service"
        conn.execute(sa.text("INSERT INTO audit_log (account_id, kind, detail, at, actor) "
                             "VALUES (NULL, 'operator_added', 'x', CURRENT_TIMESTAMP, 'operator-cli')"))
        conn.execute(sa.text("DELETE FROM audit_log WHERE account_id IS NULL"))
    tables = {"users", "memberships", "sessions", "invites", "api_keys"}
    assert tables <= set(sa.inspect(engine).get_table_names())
    command.downgrade(cfg, "0002")
    inspector = sa.inspect(engine)
    assert not tables & set(inspector.get_table_names())
    assert "actor" not in {c["name"] for c in inspector.get_columns("audit_log")}
    command.upgrade(cfg, "0003c")
    engine.dispose()
