"""The Slack stand-in as its own process for ``bench/e2e``::

    python bench/slack_standin.py --port P [--answer-delay-ms MS]

Serves ``service.sandbox.standins.slack`` (threaded Werkzeug server, a thread per connection, so a delayed
answer holds no other request) with no workspace registered: the bench registers its token and channels
through ``POST /_standin/setup``. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from werkzeug.serving import make_server  # noqa: E402

from service.sandbox.standins.slack import SlackStandin, create_app  # noqa: E402


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
    server = make_server(args.host, args.port, create_app(state), threaded=True)
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
