"""Loggers of HTTP and vendor SDK libraries, capped at WARNING wherever pbxrelay configures logging.

At DEBUG, urllib3 logs every request line with its query string, and SDKs log request URLs and
bodies: some vendors take credentials in the URL (Trello's key and token), so no level of ours may
let those records through.
"""

from __future__ import annotations

import logging

SDK_LOGGERS = ("urllib3", "requests", "slack_sdk", "gspread", "google.auth", "google.oauth2")


def cap_sdk_loggers(level: int = logging.WARNING) -> None:
    """Hold the HTTP and SDK loggers at ``level`` or above, whatever the root level is."""
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(level)
