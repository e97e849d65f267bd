"""The baseline of the ingest bench: a bare Flask hook endpoint under the same gunicorn settings as pbxrelay.

It does what any Flask receiver must do and nothing else: route ``/hooks/virtualpbx/<token>``, parse
the delivery (JSON body with ``json.loads``, form body or query string with werkzeug's parser) and
answer ``{"status": "ok"}``. No auth, no queue, no metrics.

    python bench/bare_app.py --port 8001 --workers 2 --threads 8

The gunicorn settings mirror ``pbxrelay web`` (service/cli.py): gthread, the given workers and threads,
timeout 30, no access log, ``limit_request_line`` 0 (Kazoo GETs carry ~5 KB query strings).
"""

from __future__ import annotations

import argparse
import json

from flask import Flask, jsonify, request


def create_app() -> Flask:
    """The bare endpoint."""
    app = Flask("bare")

    @app.route("/hooks/virtualpbx/<token>", methods=["GET", "POST"])
    def hook(token: str):
        if request.method == "POST" and request.mimetype == "application/json":
            json.loads(request.get_data(cache=False))
        elif request.method == "POST":
            request.form.to_dict()
        else:
            request.args.to_dict()
        return jsonify(status="ok"), 200

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()

    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("threads", args.threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 30)
            self.cfg.set("accesslog", None)
            self.cfg.set("limit_request_line", 0)

        def load(self):
            return create_app()

    _Gunicorn().run()


if __name__ == "__main__":
    main()
