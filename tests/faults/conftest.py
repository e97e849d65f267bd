"""Collects each fault scenario's row and prints the summary table at the end of the session (CI shows it)."""

from __future__ import annotations

import pytest

from tests.faults.rig import TABLE_HEADER, Row

ROWS = pytest.StashKey[list]()


@pytest.fixture
def report(request):
    """Record a scenario's Row for the session table, and print it at once (visible with -s)."""
    rows = request.config.stash.setdefault(ROWS, [])

    def add(row: Row) -> None:
        rows.append(row)
        print(f"\n{TABLE_HEADER}\n{row.line()}")

    return add


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The fault suite's table: events sent, actions expected, effects observed, lost, duplicated."""
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    terminalreporter.section("fault injection: 0 lost and 0 duplicated is the target")
    terminalreporter.write_line(TABLE_HEADER)
    for row in rows:
        terminalreporter.write_line(row.line())
    terminalreporter.write_line(f"{'total':<34}{sum(r.events_sent for r in rows):>8}"
                                f"{sum(r.actions_expected for r in rows):>10}"
                                f"{sum(r.effects_observed for r in rows):>10}"
                                f"{sum(r.lost for r in rows):>7}{sum(r.duplicated for r in rows):>7}"
                                f"{sum(r.seconds for r in rows):>9.1f}")
