"""The engine: hooks in, events, planned deliveries, actions run; plain functions on a Runtime, no Celery.

- ``ingest``: a received hook or CRM call becomes stored events and planned deliveries (one transaction);
- ``planning``: an account's rules and the delivery rows an event creates;
- ``delivery``: one attempt of one planned action, its claim and its recorded outcome;
- ``operations``: onboarding, reconciliation, re-enabling hooks, resume, replay;
- ``scheduling``: what is due now (deliveries to attempt, calls to finalise), handed out with a lease;
- ``dryrun``: what payloads would do, derived by the same correlator, with no side effect.

Functions return the delivery ids to enqueue; the caller (a Celery task, the CLI) sends them.
"""

from service.engine.delivery import IN_DOUBT_CODES, WAITING_CODES, execute_delivery, follow_ups, retry_delay
from service.engine.dryrun import derive_events, dry_run
from service.engine.ingest import IngestOutcome, emit_events, envelope_body, finalize_call, ingest, quarantine
from service.engine.operations import (
                                       REPLAYABLE_STATUSES,
                                       ReplayBatch,
                                       connect_account,
                                       fail_replay_job,
                                       pbx_accounts,
                                       reconcile_account,
                                       reenable_account_hooks,
                                       replay,
                                       replay_in,
                                       replay_job_batch,
                                       resume_connection,
)
from service.engine.scheduling import due_deliveries, due_finalizations, finalized, schedule_finalize

__all__ = ["IN_DOUBT_CODES", "REPLAYABLE_STATUSES", "WAITING_CODES", "IngestOutcome", "ReplayBatch", "connect_account",
           "derive_events", "dry_run", "due_deliveries", "due_finalizations", "emit_events", "envelope_body",
           "execute_delivery", "fail_replay_job", "finalize_call", "finalized", "follow_ups", "ingest", "pbx_accounts",
           "quarantine", "reconcile_account", "reenable_account_hooks", "replay", "replay_in", "replay_job_batch",
           "resume_connection", "retry_delay", "schedule_finalize"]
