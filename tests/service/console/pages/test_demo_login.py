"""`pbxrelay sandbox` prints a console login: an operator with a random password, created once."""

from __future__ import annotations

from service import sandbox
from service.console import users
from service.store.models import session_factory


def test_sandbox_creates_its_console_operator_once(database_url, fast_hashing):
    """The first call creates an operator whose random password signs in; later calls create nothing."""
    password = sandbox.console_login(database_url)
    assert password and len(password) >= 12
    assert sandbox.console_login(database_url) is None
    with session_factory(database_url).begin() as db:
        user = users.authenticate(db, sandbox.CONSOLE_EMAIL, password)
        assert user is not None and user.is_operator
