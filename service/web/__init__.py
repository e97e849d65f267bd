"""The Flask receiver and the app that mounts it (``service.web.app.create_app``).

- ``hooks``: ``/hooks/virtualpbx/<token>`` and ``/hooks/crm/<token>``, queued raw, answered exactly 200;
- ``media``: ``/media/voicemail/<token>``, audio too large to attach;
- ``health``: ``/healthz``, ``/readyz``, ``/metrics``;
- ``receiver``: the Receiver (tokens, envelopes, queue, spool) the blueprints share; ``spool``, ``signing``;
- ``app``: ``create_app``, which also mounts the console (``/console``) and the REST API (``/api/v1``).

This package imports nothing itself, so the data modules that use the spool do not pull in the console.
"""
