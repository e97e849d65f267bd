"""Console fixtures: a migrated database with two accounts, and cheap password hashing."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from service import accounts
from service.console import passwords
from service.secrets import SecretBox
from service.store.models import migrate, session_factory

ACCOUNT_A = "a" * 32
ACCOUNT_B = "b" * 32
PASSWORD = "correct horse battery"


@pytest.fixture
def fast_hashing(monkeypatch):
    """scrypt at n=2**10: these tests are about access, not hashing cost (test_passwords uses the real one)."""
    monkeypatch.setattr(passwords, "N", 2**10)


@pytest.fixture
def sessions_for(database_url, fast_hashing):
    """A session factory on a migrated database holding accounts A and B (with cheap password hashing)."""
    migrate(database_url)
    factory = session_factory(database_url)
    box = SecretBox([Fernet.generate_key().decode()])
    with factory.begin() as session:
        accounts.add_account(session, ACCOUNT_A, name="Acme Dental", box=box)
        accounts.add_account(session, ACCOUNT_B, name="Bolt Plumbing", box=box)
    return factory
