"""The Slack stand-in as its own process for ``bench/e2e``::

    python bench/slack_standin.py --port P [--answer-delay-ms MS]

Serves ``service.sandbox.standins.slack`` with gunicorn (one process, so one in-memory workspace; a thread per
request, so a delayed answer holds no other one) with persistent HTTP/1.1 connections, as the real Slack keeps
them (Werkzeug's server closes every connection). No workspace is registered: the bench registers its token and
channels through ``POST /_standin/setup``. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gunicorn.app.base import BaseApplication  # noqa: E402

from service.sandbox.standins.slack import SlackStandin, create_app  # noqa: E402


class Standin(BaseApplication):
    """gunicorn serving one WSGI app object with the given settings."""

    def __init__(self, app, options: dict) -> None:
        self.application, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        """Apply the options."""
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        """The app."""
        return self.application


def main() -> None:
    """Parse the options and serve until killed."""
    parser = argparse.ArgumentParser(description="the Slack stand-in in its own process")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answer-delay-ms", type=float, default=0.0, help="every request waits this long")
    args = parser.parse_args()
    if args.answer_delay_ms < 0:
        parser.error("--answer-delay-ms must be >= 0")
    state = SlackStandin(rate_limit_max=None, answer_delay=args.answer_delay_ms / 1000.0)
    # Threads enough for 200 requests/s each held 150 ms (30 at once) with room; keep-alive longer than the
    # gaps between one worker's posts.
    Standin(create_app(state), {"bind": f"{args.host}:{args.port}", "workers": 1, "worker_class": "gthread",
                                "threads": 128, "keepalive": 75, "timeout": 120, "accesslog": None,
                                "loglevel": "warning"}).run()


if __name__ == "__main__":
    main()
