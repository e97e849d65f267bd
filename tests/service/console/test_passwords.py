"""Password policy and scrypt hashing (the real parameters)."""

from __future__ import annotations

import pytest

from service.console import passwords
from service.console.errors import ConsoleError


@pytest.mark.parametrize("password, message", [
    ("short", "at least 12"),
    ("x" * 1025, "at most 1024"),
    (" " * 12, "only spaces"),
])
def test_policy_refuses_with_a_message_naming_the_field(password, message):
    """Too short, too long and blank passwords are refused, and the error names the password field."""
    with pytest.raises(ConsoleError, match=message) as caught:
        passwords.check_policy(password)
    assert str(caught.value).startswith("password:")


def test_hash_verifies_only_the_same_password_and_is_salted():
    """A hash matches its password and nothing else; two hashes of one password differ (salt)."""
    first = passwords.hash_password("correct horse battery")
    second = passwords.hash_password("correct horse battery")
    assert first != second and first.startswith("scrypt$32768,8,3$")
    assert passwords.verify_password(first, "correct horse battery")
    assert passwords.verify_password(second, "correct horse battery")
    assert not passwords.verify_password(first, "correct horse batterY")


@pytest.mark.parametrize("stored", ["", "plain", "scrypt$x$y$z", "bcrypt$1,1,1$AA$AA", "scrypt$16,8,1$!!$AA"])
def test_malformed_stored_hashes_never_match(stored):
    """A corrupt or foreign hash is a non-match, not an exception."""
    assert passwords.verify_password(stored, "correct horse battery") is False


def test_old_parameters_need_a_rehash(monkeypatch):
    """A hash made with other parameters still verifies, and is flagged for rehashing."""
    monkeypatch.setattr(passwords, "N", 2**12)
    weak = passwords.hash_password("correct horse battery")
    monkeypatch.undo()
    assert passwords.verify_password(weak, "correct horse battery")
    assert passwords.needs_rehash(weak)
    assert not passwords.needs_rehash(passwords.hash_password("correct horse battery"))
