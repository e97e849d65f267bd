"""HTTP and SDK loggers are capped at WARNING: at DEBUG, a credential in a request URL is never logged."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import requests
from click.testing import CliRunner
from flask import Flask

from service.logcaps import SDK_LOGGERS, cap_sdk_loggers
from service.sandbox.standins.base import serve_in_thread

SECRET = "trello-token-0123456789abcdef"


class Collect(logging.Handler):
    """Keeps every record of the client side (the local test server's own access log is not ours)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("werkzeug"):
            return
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def debug_root():
    """The root logger at DEBUG with a collecting handler; SDK logger levels restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, {name: logging.getLogger(name).level for name in SDK_LOGGERS})
    handler = Collect()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield handler
    root.removeHandler(handler)
    root.setLevel(saved[0])
    for name, level in saved[1].items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="module")
def server():
    """A local HTTP server answering anything."""
    app = Flask("echo")
    app.add_url_rule("/1/cards", view_func=lambda: "{}", methods=["GET", "POST"])
    running = serve_in_thread(app)
    yield running
    running.stop()


def request_with_secret_in_url(url: str) -> None:
    """What the Trello client did: key and token in the query string."""
    requests.post(f"{url}/1/cards", params={"key": "k", "token": SECRET}, timeout=5)


def test_at_debug_a_secret_in_a_url_is_logged_unless_capped(debug_root, server):
    """Uncapped, urllib3 logs the request line with the token; capped, nothing at any level names it."""
    request_with_secret_in_url(server.url)
    assert any(line.startswith("urllib3") and SECRET in line for line in debug_root.lines), \
        "urllib3 at DEBUG logs the URL (the leak)"
    debug_root.lines.clear()
    cap_sdk_loggers()
    request_with_secret_in_url(server.url)
    assert not [line for line in debug_root.lines if SECRET in line]


def test_the_cli_caps_the_sdk_loggers_even_at_debug(debug_root, monkeypatch, tmp_path):
    """`pbxrelay ...` with PBXRELAY_LOG_LEVEL=DEBUG still holds urllib3, requests and the SDKs at WARNING."""
    from service.cli import main

    monkeypatch.setenv("PBXRELAY_LOG_LEVEL", "DEBUG")
    previous_umask = os.umask(0o022)
    try:
        result = CliRunner().invoke(main, ["secrets", "generate-key"])
    finally:
        os.umask(previous_umask)
    assert result.exit_code == 0, result.output
    assert {name: logging.getLogger(name).level for name in SDK_LOGGERS} == dict.fromkeys(SDK_LOGGERS,
                                                                                           logging.WARNING)


def test_the_worker_caps_them_again_after_celery_sets_up_logging(debug_root):
    """Importing the Celery app caps the loggers, and Celery's after_setup_logger signal re-applies the caps."""
    from celery.signals import after_setup_logger

    # In a fresh process, as a worker starts (in this one another test may have imported it already).
    fresh = subprocess.run([sys.executable, "-c", "import logging; logging.getLogger('urllib3').setLevel(10); "
                            "import workers.celery_app; print(logging.getLogger('urllib3').level)"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert fresh.stdout.strip() == str(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    after_setup_logger.send(sender=None, logger=logging.getLogger(), loglevel=logging.DEBUG, logfile=None,
                            format="%(message)s", colorize=False)
    assert logging.getLogger("urllib3").level == logging.WARNING
