"""The engine: hooks in, events, planned deliveries, actions run; plain functions on a Runtime, no Celery.

- ``ingest``: a received hook or CRM call becomes stored events and planned deliveries (one transaction);
- ``planning``: an account's rules and the delivery rows an event creates;
- ``delivery``: one attempt of one planned action, its claim and its recorded outcome;
- ``operations``: onboarding, reconciliation, re-enabling hooks, resume, replay, the stale sweep;
- ``dryrun``: what payloads would do, derived by the same correlator, with no side effect.

Functions return the delivery ids to enqueue; the caller (a Celery task, the CLI) sends them.
"""

from service.engine.delivery import IN_DOUBT_CODES, WAITING_CODES, execute_delivery, follow_ups, retry_delay
from service.engine.dryrun import derive_events, dry_run
from service.engine.ingest import IngestOutcome, emit_events, envelope_body, finalize_call, ingest, quarantine
from service.engine.operations import (connect_account, pbx_accounts, reconcile_account, reenable_account_hooks,
                                       replay, resume_connection, stale_deliveries)

__all__ = ["IN_DOUBT_CODES", "WAITING_CODES", "IngestOutcome", "connect_account", "derive_events", "dry_run",
           "emit_events", "envelope_body", "execute_delivery", "finalize_call", "follow_ups", "ingest",
           "pbx_accounts", "quarantine", "reconcile_account", "reenable_account_hooks", "replay",
           "resume_connection", "retry_delay", "stale_deliveries"]
