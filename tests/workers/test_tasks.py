"""How a task tells a re-run from a first run: the decision that re-enqueues what a killed run planned."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from workers.tasks import is_rerun


@pytest.mark.parametrize(("retries", "delivery_info", "expected"), [
    (0, {"exchange": "", "routing_key": "pbxrelay.ingest", "redelivered": False}, False),
    (0, None, False),
    (1, {"redelivered": False}, True),  # Celery's retry, also the worker-lost re-send
    (0, {"redelivered": True}, True),  # kombu restored it: visibility timeout, or handed back at shutdown
])
def test_a_rerun_is_a_retry_or_a_broker_redelivery(retries, delivery_info, expected):
    """Either sign of an earlier run counts; a first delivery does not."""
    assert is_rerun(SimpleNamespace(retries=retries, delivery_info=delivery_info)) is expected
