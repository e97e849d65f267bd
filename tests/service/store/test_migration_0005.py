"""Migration 0005 (console history) on SQLite and PostgreSQL: backfills versions, matches the models, downgrades."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import service.store.access  # noqa: F401  (its tables are part of the metadata compared)
import service.store.models as models
from tests.service.store.test_migration_0003c import alembic_config


def test_0005_backfills_a_version_per_ruleset_and_downgrades(database_url):
    """Each rulesets row gets its version row; the new tables and indexes come and go with the revision."""
    cfg = alembic_config(database_url)
    command.upgrade(cfg, "0004")
    engine = models.make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO accounts (id, name, timezone, hook_token_hash, crm_unsigned, created_at) "
                             "VALUES ('acct', 'A', 'UTC', 'h', false, CURRENT_TIMESTAMP)"))
        conn.execute(sa.text("INSERT INTO rulesets (account_id, source, version, applied_at, supplied_by) "
                             "VALUES ('acct', 'rules: []', 7, CURRENT_TIMESTAMP, 'tenant')"))
    command.upgrade(cfg, "0005")
    with engine.begin() as conn:
        row = conn.execute(sa.text("SELECT account_id, version, source, actor, supplied_by "
                                   "FROM ruleset_versions")).one()
        assert tuple(row) == ("acct", 7, "rules: []", "migration", "tenant")
    inspector = sa.inspect(engine)
    tables = {"delivery_attempts", "ruleset_versions", "replay_jobs"}
    assert tables <= set(inspector.get_table_names())
    assert {"ix_deliveries_account_status_id", "ix_deliveries_account_connection_id"} <= {
        i["name"] for i in inspector.get_indexes("deliveries")}
    command.downgrade(cfg, "0004")
    inspector = sa.inspect(engine)
    assert not tables & set(inspector.get_table_names())
    assert "ix_deliveries_account_id" in {i["name"] for i in inspector.get_indexes("deliveries")}
    command.upgrade(cfg, "head")
    engine.dispose()


def test_migrated_schema_matches_the_models(database_url):
    """Alembic finds no difference between the migrated database and the SQLAlchemy models (tables, indexes)."""
    models.migrate(database_url)
    engine = models.make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), models.Base.metadata)
    engine.dispose()
    # Types and server defaults differ harmlessly between dialects; tables, columns and indexes must not.
    structural = [d for d in diff if isinstance(d, tuple) and d[0].split("_")[0] in ("add", "remove")]
    assert structural == []
