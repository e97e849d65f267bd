"""Fault injection: simulated calls through real Redis, web and workers; every call-level effect exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from service.sandbox.virtualpbx.simulator import SimulatedCall, Step
from tests.conftest import broker_url_for, database_url_for
from tests.faults.rig import ACCOUNT, SETTINGS, Rig, expected_effects
from tests.harness import wait_for

pytestmark = pytest.mark.faults
CALLS = 20


@pytest.fixture
def make_rig(tmp_path, request):
    """Build this test's Rig (``make_rig(seed=..., database="postgresql", ...)``); stop all of it afterwards.

    Scenarios run on SQLite (the embedded default) or PostgreSQL (production); kill -9 runs on both. The broker
    is the rig's private Redis, or RabbitMQ (``broker="rabbitmq"``: the machine's, skipped when absent, required on CI).
    """
    rigs: list[Rig] = []

    def make(*, database: str = "sqlite", broker: str = "redis", **kwargs) -> Rig:
        url = database_url_for(request, tmp_path, database) if database == "postgresql" else None
        rigs.append(Rig(tmp_path, database_url=url, broker_url=broker_url_for(request, broker), **kwargs))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def in_time_order(calls: list[SimulatedCall]) -> list[Step]:
    """Every hook of every call as the PBX would send them: by simulated time, calls overlapping."""
    return sorted((step for call in calls for step in call.steps), key=lambda step: step.at)


def a_leg_destroy(call: SimulatedCall) -> Step:
    """The step that ends the call (the A-leg's channel_destroy)."""
    return next(s for s in call.steps
                if s.hook_type == "channel_destroy" and s.payload["call_id"] == call.a_leg.call_id)


def finish(rig: Rig, report, scenario: str, expected: set[str], started: float) -> None:
    """Wait for the scenario to settle, report its row, and hold it to 0 lost and 0 duplicated."""
    rig.settle(expected, started)
    row, offending = rig.tally(scenario, expected, started)
    report(row)
    assert not rig.refused(), f"the receiver did not answer 200: {rig.refused()[:5]}"
    assert (row.lost, row.duplicated) == (0, 0), f"{offending}\n{rig.evidence()}"
    log = rig.service.deliveries(ACCOUNT)
    assert sorted(d["status"] for d in log) == ["succeeded"] * len(expected), rig.evidence()


def test_each_hook_delivered_two_to_five_times(make_rig, report):
    """Kazoo re-sends: 2-5 copies of every hook, some back to back, some after later legs."""
    rig = make_rig(seed=11)
    calls = rig.calls(CALLS)
    keyed = []
    for index, step in enumerate(in_time_order(calls)):
        copies = rig.rng.randint(2, 5)
        keyed.append((index, step))
        keyed += [(index + rig.rng.uniform(0, 8), step) for _ in range(copies - 1)]
    steps = [step for _, step in sorted(keyed, key=lambda pair: pair[0])]
    started = time.monotonic()
    rig.deliver(steps)
    expected = expected_effects(calls)
    finish(rig, report, "duplicates x2-5", expected, started)
    duplicates = [q for q in rig.service.quarantine(ACCOUNT) if q["reason"].startswith("duplicate")]
    assert len(duplicates) == len(steps) - sum(len(c.steps) for c in calls), "every extra copy is kept as a duplicate"


def test_legs_shuffled_a_leg_destroy_last(make_rig, report):
    """Legs of overlapping calls in random order; each call's A-leg destroy still comes after its other hooks."""
    rig = make_rig(seed=12, hook_format="form-data", database="postgresql")
    calls = rig.calls(CALLS)
    others = [step for call in calls for step in call.steps if step is not a_leg_destroy(call)]
    rig.rng.shuffle(others)
    call_of = {id(step): call for call in calls for step in call.steps}
    last_position = {id(call_of[id(step)]): position for position, step in enumerate(others)}
    ends_after = {position: [a_leg_destroy(call) for call in calls if last_position[id(call)] == position]
                  for position in last_position.values()}
    steps = [s for position, step in enumerate(others) for s in [step, *ends_after.get(position, [])]]
    started = time.monotonic()
    rig.deliver(steps)
    finish(rig, report, "out of order, A-destroy last", expected_effects(calls), started)


def test_a_leg_destroy_first_late_legs_within_settle_window(make_rig, report):
    """The A-leg's destroy arrives first; its other legs follow at once, well inside call_settle_seconds.

    The documented bound: call.ended/call.missed are decided call_settle_seconds after the A-leg's destroy is
    ingested, so legs ingested later than that are not reflected (an answered call would be reported missed).
    """
    settle = 3.0
    rig = make_rig(seed=13, env={"PBXRELAY_CALL_SETTLE_SECONDS": str(settle)})
    calls = rig.calls(CALLS)
    started = time.monotonic()
    for call in calls:
        end = a_leg_destroy(call)
        rest = [s for s in call.steps if s is not end]
        rig.rng.shuffle(rest)
        sent_at = time.monotonic()
        rig.deliver([end, *rest])
        assert time.monotonic() - sent_at < settle / 2, "the late legs must arrive well within the settle window"
    finish(rig, report, "out of order, A-destroy first", expected_effects(calls), started)


def test_vendor_storm_of_429_5xx_timeouts_and_lost_replies(make_rig, report):
    """Slack answers 429 (Retry-After 1), 500, 503, hangs past the timeout (posts late or never), or posts then 500s."""
    rig = make_rig(seed=14, database="postgresql")
    storm = ([{"status": 429, "retry_after": 1}] * 10 + [{"status": 500}] * 8 + [{"status": 503}] * 8
             + [{"delay": 6}] * 6 + [{"delay": 6, "status": 503}] * 4 + [{"status": 500, "commit": True}] * 8
             + [{}] * 30)
    rig.rng.shuffle(storm)
    # Open with timeouts while the queue is still short, so retries come back fast: a timed-out post that
    # commits after the client gave up must not be posted again by a retry that checked history too early.
    rig.push_faults([{"delay": 6}] + [{}] * 6 + storm)
    calls = rig.calls(CALLS)
    started = time.monotonic()
    rig.deliver(in_time_order(calls))
    finish(rig, report, "vendor storm", expected_effects(calls), started)
    assert not rig.slack.faults, "the whole storm was served"
    deduplicated = [d for d in rig.service.deliveries(ACCOUNT) if (d["error"] or "").startswith("deduplicated")]
    assert deduplicated, "posts whose reply was lost were found again instead of re-posted"


def pool_children(pid: int) -> list[int]:
    """The pool processes of a Celery worker (children of its main process)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


@contextmanager
def killing_pool_children(rig: Rig, name: str, every: float):
    """SIGKILL worker ``name``'s pool processes every ``every`` seconds while the block runs; yields the kills."""
    # Killed before the worker is ready, a pool child takes the whole worker down ("Could not start worker processes").
    wait_for(lambda: " ready." in rig.service.log(name), timeout=60, message=f"worker {name} ready")
    main, stop, kills = rig.service.processes[name].pid, threading.Event(), []

    def loop():
        while not stop.wait(every):
            for child in pool_children(main):
                with suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
                    kills.append(child)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield kills
    finally:
        stop.set()
        thread.join()


# Known limit of the Redis broker, not of pbxrelay's bookkeeping: the whole second worker is killed while
# hooks still arrive, and kombu's Redis transport pops a message (BRPOP) before recording it as unacked
# (kombu#305). A hook popped in that instant is gone (seen in 1 of 4 runs this round: the private Redis's
# append-only file showed one ingest message LPUSHed and popped but never in `unacked`, at the moment w2
# was killed). Every other loss fails the assertion just the same; RabbitMQ closes this window (README,
# "Broker"), and the whole-worker scenario below runs strictly on both brokers.
REDIS_RECEIVE_WINDOW = pytest.mark.xfail(strict=False, reason="Redis broker: a hook being received when its worker "
                                                             "dies can be lost (kombu#305); use RabbitMQ in production")


@pytest.mark.parametrize("database,broker", [
    pytest.param("sqlite", "redis", marks=REDIS_RECEIVE_WINDOW),
    pytest.param("postgresql", "redis", marks=REDIS_RECEIVE_WINDOW),
    # Strict: RabbitMQ hands a dead consumer's unacknowledged messages back the moment its connection closes.
    ("postgresql", "rabbitmq"),
])
def test_kill_9_in_the_middle_of_actions(make_rig, report, database, broker):
    """SIGKILL pool children over and over while hooks are ingested, then one worker's children and a whole
    second worker while Slack posts are in flight."""
    # INFO logs show each WorkerLostError re-send and its countdown: the evidence when this scenario fails.
    rig = make_rig(seed=15, workers=("w1", "w2"), env={"PBXRELAY_LOG_LEVEL": "INFO"}, database=database,
                   broker=broker)
    # Slow replies (still inside the 2 s client timeout) keep actions in flight when the kill lands.
    rig.push_faults([{"delay": 1.5}] * 40)
    calls = rig.calls(CALLS)
    with killing_pool_children(rig, "w1", every=0.5) as kills:
        started = time.monotonic()
        rig.deliver(in_time_order(calls))
        time.sleep(2.0)  # the queued hooks are still being ingested
    assert kills, "pool processes were killed during ingest"

    def post_in_flight():
        with rig.slack.lock:
            recent = [c for c in rig.slack.calls if c["endpoint"] == "chat.postMessage" and c["at"] > time.time() - 0.7]
        return len(rig.slack.messages_in("C0STARTED")) >= 3 and recent

    wait_for(post_in_flight, timeout=60, interval=0.05, message="a Slack post in flight")
    w1 = rig.service.processes["w1"].pid
    for child in pool_children(w1):
        os.kill(child, signal.SIGKILL)
    killed_at = time.monotonic()
    rig.service.stop("w2", signal.SIGKILL)
    assert rig.service.processes["w1"].poll() is None, "the main process survives its children"
    if broker == "redis":
        # kombu hands out a dead consumer's unacked messages once they are visibility_timeout old, on a
        # consumer's first poll (then only every ~100 s): a replacement started after that window takes them.
        time.sleep(max(0.0, killed_at + float(SETTINGS["PBXRELAY_VISIBILITY_TIMEOUT_SECONDS"]) + 1 - time.monotonic()))
    rig.service.start_worker("w3", concurrency=2)
    finish(rig, report, "kill -9 mid-action", expected_effects(calls), started)
    log = rig.service.deliveries(ACCOUNT)
    assert any(d["attempts"] > 1 for d in log), "some action was interrupted and run again"
    assert any((d["error"] or "").startswith("deduplicated") for d in log), \
        "a killed attempt's post landed and its re-run found it instead of posting again"


# Every effect must arrive within this many seconds of the replacement worker starting.
REPLACEMENT_BOUND_SECONDS = 60.0


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
@pytest.mark.parametrize("split", [False, True], ids=["one worker", "ingest and actions workers"])
def test_kill_9_of_a_whole_worker_while_actions_wait_for_tokens_and_retries(make_rig, report, broker, split):
    """Every worker (main processes and pool children; the default's ingest prefork and actions threads workers, or
    one worker for all) SIGKILLed while Slack answers 429s and 500s, so actions wait for rate-limit tokens and
    retries; replacements start. Nothing of that waiting was in the dead workers' memory: every effect arrives
    within 60 s of the replacements starting, none doubled."""
    rig = make_rig(seed=18, broker=broker, env={"PBXRELAY_LOG_LEVEL": "INFO"}, split=split)
    # 429s shut a channel's bucket for Retry-After (3 s): the channel's next posts wait for a token. 500s are real
    # failures with backoff. Calls share five channels paced at one post a second, so posts queue for tokens anyway.
    storm = [{"status": 429, "retry_after": 3}] * 8 + [{"status": 500}] * 12 + [{}] * 12
    rig.rng.shuffle(storm)
    rig.push_faults(storm)
    calls = rig.calls(CALLS)
    expected = expected_effects(calls)
    started = time.monotonic()
    rig.deliver(in_time_order(calls))

    def waiting():
        log = rig.service.deliveries(ACCOUNT)
        waits = [d for d in log if d["status"] == "retrying" and d["next_attempt_at"]]
        for_token = [d for d in waits if d["attempts"] == 0]  # paced: never attempted, waiting for a token
        for_retry = [d for d in waits if d["attempts"] >= 1 and d["error"]]  # failed, waiting out its backoff
        # Every action planned (hooks ingested, calls finalised), both kinds of wait, most effects still to come.
        return (len(log) == len(expected) and for_token and for_retry
                and len(rig.observed()) < len(expected) - 10)

    wait_for(waiting, timeout=90, interval=0.5, message="all actions planned, waiting for tokens and retries")
    for name in ("worker", "actions") if split else ("worker",):
        rig.service.stop(name, signal.SIGKILL)  # the whole process group: main process and pool children
    before = len(rig.observed())
    replaced_at = time.time()
    if split:
        rig.start_split_workers("replacement", "replacement-actions")
    else:
        rig.service.start_worker("replacement", concurrency=2)
    finish(rig, report, "split workers -9 while waiting" if split else "worker -9 while waiting", expected, started)
    took = rig.last_vendor_call() - replaced_at
    print(f"\n[{broker}] {len(expected) - before} of {len(expected)} effects came after the kill; "
          f"the last vendor call {took:.1f} s after the replacement started")
    assert took <= REPLACEMENT_BOUND_SECONDS, f"the last effect came {took:.1f} s after the replacement started"


def test_redis_restart_during_ingest(make_rig, report):
    """Redis stops (SIGTERM, append-only file kept) while hooks arrive, and comes back on the same socket."""
    rig = make_rig(seed=16)
    calls = rig.calls(CALLS)
    steps = in_time_order(calls)
    third = len(steps) // 3
    started = time.monotonic()
    rig.deliver(steps[:third])
    rig.redis.stop()
    down_at = time.monotonic()
    for step in steps[third:2 * third]:
        rig.deliver([step])
        time.sleep(0.03)  # spread the outage's hooks over a few seconds, as real calls would be
    time.sleep(max(0.0, down_at + 4 - time.monotonic()))
    spooled = len(list((rig.service.var_dir / "spool").glob("*.json")))
    rig.redis.start()
    rig.deliver(steps[2 * third:])
    assert spooled > 0, "hooks received while Redis was away were spooled"
    finish(rig, report, "redis restart during ingest", expected_effects(calls), started)


def test_sigterm_mid_action_loses_nothing(make_rig, report):
    """Deploys: SIGTERM two workers while posts and countdown retries are in flight; a new worker takes over at once.

    w1 gets it as `docker stop` sends it: to the main process only (PID 1 in the container), which starts a
    warm shutdown: running tasks finish, the rest is handed back to Redis. w2 gets it as systemd's default
    KillMode=control-group sends it: to the whole process group, so its pool children die mid-task.
    """
    rig = make_rig(seed=17, workers=("w1", "w2"), env={"PBXRELAY_LOG_LEVEL": "INFO"}, database="postgresql")
    rig.push_faults([{"delay": 1.5}] * 20 + [{"status": 503}] * 10)
    calls = rig.calls(CALLS)
    started = time.monotonic()
    rig.deliver(in_time_order(calls))
    wait_for(lambda: len(rig.slack.messages_in("C0STARTED")) >= 3, timeout=60, interval=0.05,
             message="some posts done")
    stopping = time.monotonic()
    main_only, whole_group = rig.service.processes.pop("w1"), rig.service.processes.pop("w2")
    main_only.send_signal(signal.SIGTERM)
    os.killpg(whole_group.pid, signal.SIGTERM)
    main_only.wait(timeout=60)
    whole_group.wait(timeout=60)
    stopped_in = time.monotonic() - stopping
    rig.service.start_worker("w3", concurrency=2)
    finish(rig, report, "SIGTERM mid-action", expected_effects(calls), started)
    assert stopped_in < float(SETTINGS["PBXRELAY_VISIBILITY_TIMEOUT_SECONDS"]), "the old workers shut down promptly"
    # Not asserted, because it is not guaranteed: whether every task the old workers held came back at once
    # or only after the visibility timeout (seen in 1 of 4 runs). Nothing is lost either way.
