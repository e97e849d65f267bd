"""Accounts, tokens and encrypted credentials on real SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from service import accounts
from service.secrets import SecretBox, SecretsError
from service.store.models import Connection, StoredEvent, migrate, session_factory, utcnow

ACCOUNT = "91eb05e5c68d7ca05e7618b6821d2d16"
BOX = SecretBox([Fernet.generate_key().decode()])


def opened(session, token: str, kind: str = "virtualpbx") -> str | None:
    """The id of the account ``token`` opens on the ``kind`` endpoint, as the receiver looks it up."""
    found = accounts.hook_account(session.connection(), token, kind)
    return found.account_id if found else None


@pytest.fixture
def sessions(database_url):
    """A session factory on a freshly migrated database."""
    migrate(database_url)
    factory = session_factory(database_url)
    yield factory
    factory.kw["bind"].dispose()


def test_migrations_create_every_table(database_url):
    """Alembic upgrade head creates the whole schema, and running it again is a no-op."""
    migrate(database_url)
    migrate(database_url)
    inspector = sa.inspect(sa.create_engine(database_url))
    assert {"accounts", "connections", "rulesets", "events", "quarantine", "deliveries",
            "alembic_version"} <= set(inspector.get_table_names())


def test_a_failed_transaction_keeps_nothing_from_its_released_savepoints(sessions):
    """Rows written in a savepoint are discarded with the transaction around it (pysqlite would commit them)."""

    class Failure(Exception):
        pass

    with pytest.raises(Failure):
        with sessions.begin() as session:
            session.execute(sa.select(1))
            with session.begin_nested():
                session.add(StoredEvent(account_id=ACCOUNT, key="k1", type="t", occurred_at=utcnow(), data={}))
            raise Failure()
    with sessions() as session:
        assert session.scalars(sa.select(StoredEvent)).all() == []
    with sessions.begin() as session:
        with session.begin_nested():
            session.add(StoredEvent(account_id=ACCOUNT, key="k2", type="t", occurred_at=utcnow(), data={}))
    with sessions() as session:
        assert session.scalars(sa.select(StoredEvent.key)).all() == ["k2"]


def test_add_account_and_find_it_by_token(sessions):
    """The token is returned once, stored only as a hash, and finds its account."""
    with sessions.begin() as session:
        created = accounts.add_account(session, ACCOUNT, name="Acme Dental", timezone="America/New_York", box=BOX)
    assert len(created.token) >= 32  # 24 random bytes, base64url: 192 bits
    with sessions() as session:
        assert opened(session, created.token) == ACCOUNT
        assert opened(session, created.token + "x") is None
        assert opened(session, "") is None
        stored = session.execute(sa.text("SELECT hook_token_hash FROM accounts")).scalar_one()
    assert created.token not in stored


@pytest.mark.parametrize("account_id, name, tz, message", [
    ("not-hex", "X", "UTC", "invalid account id"),
    (ACCOUNT.upper(), "X", "UTC", "invalid account id"),
    (ACCOUNT, "X", "Mars/Olympus", "unknown time zone"),
    (ACCOUNT, "   ", "UTC", "name must not be empty"),
], ids=["not-hex", "upper-case", "bad-timezone", "empty-name"])
def test_add_account_rejects_bad_input(sessions, account_id, name, tz, message):
    """Bad ids, names and zones get a clear AccountError."""
    with sessions.begin() as session, pytest.raises(accounts.AccountError, match=message):
        accounts.add_account(session, account_id, name=name, timezone=tz, box=BOX)


def test_adding_an_account_twice_is_an_error(sessions):
    """A second add of the same id is refused (the first token stays valid)."""
    with sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="A", box=BOX)
    with sessions.begin() as session, pytest.raises(accounts.AccountError, match="exists already"):
        accounts.add_account(session, ACCOUNT, name="A", box=BOX)


def test_rotate_token_invalidates_the_old_url(sessions):
    """After rotation only the new token authenticates."""
    with sessions.begin() as session:
        old = accounts.add_account(session, ACCOUNT, name="A", box=BOX).token
    with sessions.begin() as session:
        new = accounts.rotate_token(session, ACCOUNT, box=BOX)
    with sessions() as session:
        assert opened(session, old) is None
        assert opened(session, new) == ACCOUNT


def test_the_crm_token_is_a_different_secret_for_the_other_endpoint_only(sessions):
    """Each endpoint's token finds the account on that endpoint alone; rotating one keeps the other."""
    with sessions.begin() as session:
        created = accounts.add_account(session, ACCOUNT, name="A", box=BOX)
    assert created.crm_token != created.token and len(created.crm_token) >= 32
    with sessions() as session:
        assert opened(session, created.crm_token, "crm") == ACCOUNT
        assert opened(session, created.crm_token, "virtualpbx") is None
        assert opened(session, created.token, "crm") is None
        row = session.execute(
            sa.text("SELECT hook_token_hash, crm_token_hash, crm_token_encrypted FROM accounts")).one()
    assert created.crm_token not in "".join(row)
    with sessions.begin() as session:
        new_crm = accounts.rotate_token(session, ACCOUNT, box=BOX, kind="crm")
    with sessions() as session:
        assert opened(session, created.crm_token, "crm") is None
        assert opened(session, new_crm, "crm") == ACCOUNT
        assert opened(session, created.token) == ACCOUNT  # the Kazoo URL is untouched
        assert accounts.hook_token(session.get(accounts.Account, ACCOUNT), BOX, "crm") == new_crm
    with sessions.begin() as session, pytest.raises(accounts.AccountError, match="unknown hook kind 'sms'"):
        accounts.rotate_token(session, ACCOUNT, box=BOX, kind="sms")


def test_migration_0003r_keeps_existing_accounts_and_gives_them_no_shared_crm_token(database_url):
    """An account stored at 0002 survives 0003r with its hook token; its old token does not open the CRM hook,
    and its first CRM token comes from rotate-token --crm (or applying rules with crm:)."""
    from alembic import command
    from alembic.config import Config

    from service.store.models import hash_token

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(accounts.__file__).parent / "store" / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(cfg, "0002")
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO accounts (id, name, timezone, hook_token_hash, created_at) "
                             "VALUES (:id, 'Old', 'UTC', :h, CURRENT_TIMESTAMP)"),
                     {"id": ACCOUNT, "h": hash_token("old-token")})
    engine.dispose()
    migrate(database_url)
    sessions = session_factory(database_url)
    with sessions.begin() as session:
        assert opened(session, "old-token") == ACCOUNT
        assert opened(session, "old-token", "crm") is None
        account = session.get(accounts.Account, ACCOUNT)
        assert account.crm_token_hash is None and account.crm_unsigned is False
        with pytest.raises(accounts.AccountError, match="rotate-token 91eb05e5c68d7ca05e7618b6821d2d16 --crm"):
            accounts.hook_token(account, BOX, "crm")
        first = accounts.ensure_crm_token(account, BOX)
        assert first and accounts.ensure_crm_token(account, BOX) is None  # issued once, then kept
    with sessions() as session:
        assert opened(session, first, "crm") == ACCOUNT
    sessions.kw["bind"].dispose()


def test_credentials_are_encrypted_at_rest_and_keys_rotate(sessions):
    """The stored row holds no plaintext; an old key still decrypts; rotate re-encrypts with the new key."""
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    box = SecretBox([old_key])
    with sessions.begin() as session:
        accounts.add_account(session, ACCOUNT, name="A", box=BOX)
        session.add(Connection(account_id=ACCOUNT, name="team-slack", integration="slack",
                               config_encrypted=box.encrypt({"bot_token": "xoxb-plain-secret-value"})))
    with sessions() as session:
        raw = session.execute(sa.text("SELECT config_encrypted FROM connections")).scalar_one()
    assert "xoxb-plain-secret-value" not in raw
    rotated_box = SecretBox([new_key, old_key])
    assert rotated_box.decrypt(raw) == {"bot_token": "xoxb-plain-secret-value"}
    rotated = rotated_box.rotate(raw)
    assert SecretBox([new_key]).decrypt(rotated)["bot_token"] == "xoxb-plain-secret-value"
    with pytest.raises(SecretsError, match="cannot be decrypted"):
        SecretBox([old_key]).decrypt(rotated)


@pytest.mark.parametrize("keys", [[], ["not-a-fernet-key"], [""]], ids=["none", "garbage", "empty"])
def test_bad_keys_are_a_clear_error(keys):
    """Missing or malformed PBXRELAY_SECRET_KEYS are reported, not crashed on."""
    with pytest.raises(SecretsError):
        SecretBox(keys)


def test_an_sqlite_too_old_for_returning_is_refused_with_the_reason(tmp_path, monkeypatch):
    """SQLite before 3.35 has no RETURNING, which the engine's claims and inserts use: a clear error at start."""
    import sqlite3

    from service.store import models

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    with pytest.raises(RuntimeError, match=r"SQLite 3\.35 or newer .* has 3\.34\.1"):
        models.make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
