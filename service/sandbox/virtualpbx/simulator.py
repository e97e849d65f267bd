"""A call simulator: realistic calls as Kazoo's per-leg hook sequences, CDRs and voicemails.

Kazoo conventions followed (call_direction is relative to the switch):

* the A-leg (entering the switch) is always "inbound"; an external inbound call carries
  ``inception`` and caller = the outside number, callee = the dialled DID;
* B-legs Kazoo originates are "outbound" with ``other_leg_call_id`` = the A-leg on every hook;
  legs to phones have authorizing_type "device", owner_id the user, callee = the user's name and
  extension; a leg to the carrier has authorizing_type "resource" and local_resource_used true;
* each leg ends with one channel_destroy carrying hangup_cause, hangup_code and integer
  duration/billing/ringing seconds; its CDR (one per leg, sharing an interaction_id) is written
  right after, and a voicemail is stored before its ``voicemail_new`` notification goes out.

Everything random comes from ``random.Random(seed)``; timestamps are simulated Gregorian seconds,
so no real waiting happens unless ``pace`` asks for it.
"""

from __future__ import annotations

import base64
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from integrations.virtualpbx.gregorian import GREGORIAN_UNIX_OFFSET, datetime_to_gregorian

from .sender import WebhookSender
from .state import StandinState

SCENARIOS = ("inbound_answered", "inbound_missed", "ring_group", "voicemail", "outbound", "internal")
# Roughly a dental office's hour: mostly inbound, a fifth unanswered or to voicemail.
_MIX = {"inbound_answered": 40, "inbound_missed": 12, "ring_group": 10, "voicemail": 15, "outbound": 18,
        "internal": 5}
_CARRIER_RESOURCE_ID = "d88c4e753d18755ca71adbae784e5f10"
_CALLER_NAMES = ("Pat Patient", "Sam Smith", "Jordan Lee", "Taylor Brown", "Morgan Diaz", "WIRELESS CALLER")


@dataclass
class Leg:
    """One channel of a call, with everything its hook payloads and CDR need."""

    call_id: str
    call_direction: str
    caller_id_name: str
    caller_id_number: str
    callee_id_name: str
    callee_id_number: str
    from_uri: str
    to_uri: str
    request: str
    created: int
    authorizing_type: str | None = None
    authorizing_id: str | None = None
    owner_id: str | None = None
    inception: str | None = None
    other_leg_call_id: str | None = None
    local_resource_used: bool = False
    answered: int | None = None
    ended: int | None = None
    hangup_cause: str | None = None
    hangup_code: str | None = None


@dataclass
class Step:
    """One hook event at simulated time ``at``; ``before``/``after`` store documents around its delivery."""

    at: int
    hook_type: str
    payload: dict[str, Any]
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None


@dataclass
class SimulatedCall:
    """A generated call: its legs, the ordered hook steps and (for voicemail) the stored message."""

    scenario: str
    interaction_id: str
    a_leg: Leg
    b_legs: list[Leg]
    steps: list[Step] = field(default_factory=list)
    voicemail: dict[str, Any] | None = None

    def sequence(self) -> list[tuple[str, str]]:
        """(event, call_id) in emission order, event being hook_event or the notification name."""
        return [(s.payload.get("hook_event") or s.payload["event_name"], s.payload["call_id"]) for s in self.steps]

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly description for the control API."""
        return {"scenario": self.scenario, "interaction_id": self.interaction_id, "a_leg": self.a_leg.call_id,
                "b_legs": [leg.call_id for leg in self.b_legs], "events": len(self.steps),
                "voicemail_id": self.voicemail["media_id"] if self.voicemail else None}


class CallSimulator:
    """Generates calls for one account of an StandinState and plays them through a WebhookSender."""

    def __init__(self, state: StandinState, account_id: str, *, sender: WebhookSender | None = None,
                 seed: int = 0, start: datetime | None = None, did: str = "+15551230000", pace: float = 0.0) -> None:
        self.state = state
        self.account = state.accounts[account_id]
        self.sender = sender
        self.rng = random.Random(seed)
        self.now = datetime_to_gregorian(start) if start else state.gregorian_now()
        self.did = did
        # Real seconds slept per simulated second between steps; 0 compresses time completely.
        self.pace = pace
        if not self.account.users or not self.account.devices:
            raise ValueError("the account needs users with devices before calls can be simulated")

    # ------------------------------------------------------------------------------- public API

    def run(self, scenario: str) -> SimulatedCall:
        """Generate one call of ``scenario`` (see SCENARIOS) starting now, and play it."""
        call = self.build(scenario, self.now)
        self.play(call.steps)
        self.now = max(step.at for step in call.steps) + 1
        return call

    def build(self, scenario: str, start: int) -> SimulatedCall:
        """Generate one call without delivering it."""
        builders = {"inbound_answered": self._inbound_answered, "inbound_missed": self._inbound_missed,
                    "ring_group": self._ring_group, "voicemail": self._voicemail, "outbound": self._outbound,
                    "internal": self._internal}
        if scenario not in builders:
            raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
        return builders[scenario](start)

    def mixed_hour(self, *, calls: int = 30, shuffle: bool = False, duplicate_rate: float = 0.0) -> list[SimulatedCall]:
        """Play ``calls`` calls spread over one simulated hour; optionally shuffle or duplicate deliveries."""
        starts = sorted(self.now + self.rng.randrange(3600) for _ in range(calls))
        scenarios = self.rng.choices(list(_MIX), weights=list(_MIX.values()), k=calls)
        generated = [self.build(scenario, start) for scenario, start in zip(scenarios, starts)]
        steps = sorted((step for call in generated for step in call.steps), key=lambda s: s.at)
        if duplicate_rate:
            steps = [copy for step in steps
                     for copy in ([step, step] if self.rng.random() < duplicate_rate else [step])]
        if shuffle:
            self.rng.shuffle(steps)
        self.play(steps)
        self.now += 3600
        return generated

    def play(self, steps: list[Step]) -> None:
        """Deliver steps in the given order, storing CDRs/voicemails around them."""
        previous = steps[0].at if steps else 0
        for step in steps:
            if self.pace and step.at > previous:
                time.sleep((step.at - previous) * self.pace)
            previous = max(previous, step.at)
            if step.before:
                step.before()
            if self.sender is not None:
                self.sender.dispatch(self.account.id, step.hook_type, step.payload)
            if step.after:
                step.after()

    # ---------------------------------------------------------------------------------- parties

    def _hex(self, digits: int = 32) -> str:
        return f"{self.rng.getrandbits(digits * 4):0{digits}x}"

    def _carrier_call_id(self) -> str:
        return base64.b64encode(self._hex().encode()).decode().rstrip("=")

    def _outside_number(self) -> str:
        return f"+1555{self.rng.randrange(10**7):07d}"

    def _user_and_device(self, exclude: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        devices = sorted((d for d in self.account.devices.values() if d["owner_id"] != exclude), key=lambda d: d["id"])
        device = self.rng.choice(devices)
        return self.account.users[device["owner_id"]], device

    @staticmethod
    def _name(user: dict[str, Any]) -> str:
        return f"{user['first_name']} {user['last_name']}"

    # ---------------------------------------------------------------------------------- leg shapes

    def _external_a_leg(self, start: int) -> Leg:
        caller = self._outside_number()
        realm = self.account.realm
        return Leg(call_id=self._carrier_call_id(), call_direction="inbound",
                   caller_id_name=self.rng.choice(_CALLER_NAMES), caller_id_number=caller,
                   callee_id_name=self.did, callee_id_number=self.did, from_uri=f"{caller}@{realm}",
                   to_uri=f"{self.did}@{realm}", request=f"{self.did}@{realm}", created=start,
                   inception=f"{self.did}@{realm}")

    def _device_a_leg(self, user: dict[str, Any], device: dict[str, Any], dialled: str, start: int) -> Leg:
        realm = self.account.realm
        return Leg(call_id=self._hex(), call_direction="inbound", caller_id_name=self._name(user),
                   caller_id_number=user["presence_id"], callee_id_name=dialled, callee_id_number=dialled,
                   from_uri=f"{user['presence_id']}@{realm}", to_uri=f"{dialled}@{realm}",
                   request=f"{dialled}@{realm}", created=start, authorizing_type="device",
                   authorizing_id=device["id"], owner_id=user["id"])

    def _device_b_leg(self, a_leg: Leg, user: dict[str, Any], device: dict[str, Any], start: int) -> Leg:
        realm = self.account.realm
        return Leg(call_id=self._hex(), call_direction="outbound", caller_id_name=a_leg.caller_id_name,
                   caller_id_number=a_leg.caller_id_number, callee_id_name=self._name(user),
                   callee_id_number=user["presence_id"], from_uri=a_leg.from_uri,
                   to_uri=f"{user['presence_id']}@{realm}", request=f"{device['sip']['username']}@{realm}",
                   created=start, authorizing_type="device", authorizing_id=device["id"], owner_id=user["id"],
                   other_leg_call_id=a_leg.call_id)

    def _carrier_b_leg(self, a_leg: Leg, number: str, start: int) -> Leg:
        realm = self.account.realm
        return Leg(call_id=self._hex(), call_direction="outbound", caller_id_name=self.account.name,
                   caller_id_number=self.account.caller_id_number, callee_id_name=number, callee_id_number=number,
                   from_uri=f"{self.account.caller_id_number}@{realm}", to_uri=f"{number}@{realm}",
                   request=f"{number}@carrier.virtualpbx.test", created=start, authorizing_type="resource",
                   authorizing_id=_CARRIER_RESOURCE_ID, other_leg_call_id=a_leg.call_id, local_resource_used=True)

    # ---------------------------------------------------------------------------------- scenarios

    def _inbound_answered(self, start: int) -> SimulatedCall:
        a_leg = self._external_a_leg(start)
        user, device = self._user_and_device()
        return self._answered_call("inbound_answered", a_leg, self._device_b_leg(a_leg, user, device, start + 1))

    def _outbound(self, start: int) -> SimulatedCall:
        user, device = self._user_and_device()
        number = self._outside_number()
        a_leg = self._device_a_leg(user, device, number, start)
        return self._answered_call("outbound", a_leg, self._carrier_b_leg(a_leg, number, start + 1))

    def _internal(self, start: int) -> SimulatedCall:
        user, device = self._user_and_device()
        callee, callee_device = self._user_and_device(exclude=user["id"]) if len(self.account.users) > 1 \
            else (user, device)
        a_leg = self._device_a_leg(user, device, callee["presence_id"], start)
        return self._answered_call("internal", a_leg, self._device_b_leg(a_leg, callee, callee_device, start + 1))

    def _answered_call(self, scenario: str, a_leg: Leg, b_leg: Leg) -> SimulatedCall:
        """A create, B create, A answer, B answer, bridge A and B, B destroy, A destroy (NORMAL_CLEARING)."""
        call = self._new_call(scenario, a_leg, [b_leg])
        answered = b_leg.created + self.rng.randint(3, 15)
        ended = answered + self.rng.randint(20, 600)
        self._emit(call, a_leg, "channel_create", a_leg.created)
        self._emit(call, b_leg, "channel_create", b_leg.created)
        self._answer(call, a_leg, answered)
        self._answer(call, b_leg, answered)
        a_leg.other_leg_call_id = b_leg.call_id
        self._emit(call, a_leg, "channel_bridge", answered)
        self._emit(call, b_leg, "channel_bridge", answered)
        self._destroy(call, b_leg, ended, "NORMAL_CLEARING", "sip:200")
        self._destroy(call, a_leg, ended, "NORMAL_CLEARING", "sip:200")
        return call

    def _inbound_missed(self, start: int) -> SimulatedCall:
        """The caller gives up while the phone rings: both legs ORIGINATOR_CANCEL, billing 0."""
        a_leg = self._external_a_leg(start)
        user, device = self._user_and_device()
        b_leg = self._device_b_leg(a_leg, user, device, start + 1)
        call = self._new_call("inbound_missed", a_leg, [b_leg])
        ended = b_leg.created + self.rng.randint(5, 25)
        self._emit(call, a_leg, "channel_create", start)
        self._emit(call, b_leg, "channel_create", b_leg.created)
        self._destroy(call, b_leg, ended, "ORIGINATOR_CANCEL", "sip:487")
        self._destroy(call, a_leg, ended, "ORIGINATOR_CANCEL", "sip:487")
        return call

    def _ring_group(self, start: int) -> SimulatedCall:
        """Three phones ring; one wins and bridges, the others end with LOSE_RACE."""
        a_leg = self._external_a_leg(start)
        devices = sorted(self.account.devices.values(), key=lambda d: d["id"])
        chosen = self.rng.sample(devices, k=min(3, len(devices)))
        b_legs = [self._device_b_leg(a_leg, self.account.users[d["owner_id"]], d, start + 1) for d in chosen]
        call = self._new_call("ring_group", a_leg, b_legs)
        winner = self.rng.choice(b_legs)
        answered = start + 1 + self.rng.randint(3, 15)
        ended = answered + self.rng.randint(20, 600)
        self._emit(call, a_leg, "channel_create", start)
        for leg in b_legs:
            self._emit(call, leg, "channel_create", leg.created)
        self._answer(call, a_leg, answered)
        self._answer(call, winner, answered)
        for leg in b_legs:
            if leg is not winner:
                self._destroy(call, leg, answered, "LOSE_RACE", "sip:487")
        a_leg.other_leg_call_id = winner.call_id
        self._emit(call, a_leg, "channel_bridge", answered)
        self._emit(call, winner, "channel_bridge", answered)
        self._destroy(call, winner, ended, "NORMAL_CLEARING", "sip:200")
        self._destroy(call, a_leg, ended, "NORMAL_CLEARING", "sip:200")
        return call

    def _voicemail(self, start: int) -> SimulatedCall:
        """No answer, voicemail answers the A-leg (no bridge), message stored, voicemail_new, A hangs up."""
        a_leg = self._external_a_leg(start)
        user, device = self._user_and_device()
        b_leg = self._device_b_leg(a_leg, user, device, start + 1)
        call = self._new_call("voicemail", a_leg, [b_leg])
        no_answer = b_leg.created + 20
        length_ms = self.rng.randint(2000, 45000)
        left = no_answer + 1 + 5 + length_ms // 1000  # greeting, then the message
        self._emit(call, a_leg, "channel_create", start)
        self._emit(call, b_leg, "channel_create", b_leg.created)
        self._destroy(call, b_leg, no_answer, "NO_ANSWER", "sip:480")
        self._answer(call, a_leg, no_answer + 1)
        box = next((b for b in self.account.vmboxes.values() if b.get("owner_id") == user["id"]), None) \
            or next(iter(self.account.vmboxes.values()), None)
        if box is None:
            raise ValueError("the account needs a voicemail box for the voicemail scenario")
        when = datetime.fromtimestamp(left - GREGORIAN_UNIX_OFFSET, tz=timezone.utc)
        msg_id = f"{when:%Y%m}-{self._hex()}"
        transcription = "Hi, this is a message about my appointment." if box.get("transcribe") else None
        call.voicemail = {"media_id": msg_id, "box_id": box["id"], "length": length_ms, "timestamp": left}

        def store_message() -> None:
            # Kazoo saves the message (with audio) before publishing voicemail_new.
            self.state.add_message(self.account.id, box["id"], caller_id_number=a_leg.caller_id_number,
                                   caller_id_name=a_leg.caller_id_name, call_id=a_leg.call_id,
                                   length_ms=length_ms, timestamp=left, transcription=transcription, msg_id=msg_id)

        notification = {
            "account_id": self.account.id, "app_name": "crossbar", "app_version": "4.3.0", "call_id": a_leg.call_id,
            "caller_id_name": a_leg.caller_id_name, "caller_id_number": a_leg.caller_id_number,
            "event_category": "notification", "event_name": "voicemail_new",
            "from_realm": self.account.realm, "from_user": a_leg.caller_id_number, "msg_id": self._hex(16),
            "node": "kazoo_apps@virtualpbx.test", "server_id": self._hex(16), "system_log_id": self._hex(16),
            "to_realm": self.account.realm, "to_user": box["mailbox"], "voicemail_box": box["id"],
            "voicemail_id": msg_id, "voicemail_length": length_ms, "voicemail_timestamp": left}
        if transcription:
            notification["voicemail_transcription"] = transcription
        call.steps.append(Step(at=left, hook_type="notifications", payload=notification, before=store_message))
        self._destroy(call, a_leg, left + 1, "NORMAL_CLEARING", "sip:200")
        return call

    # ---------------------------------------------------------------------------------- plumbing

    def _new_call(self, scenario: str, a_leg: Leg, b_legs: list[Leg]) -> SimulatedCall:
        return SimulatedCall(scenario=scenario, interaction_id=f"{a_leg.created}-{self._hex(8)}", a_leg=a_leg,
                             b_legs=b_legs)

    def _answer(self, call: SimulatedCall, leg: Leg, at: int) -> None:
        leg.answered = at
        self._emit(call, leg, "channel_answer", at)

    def _destroy(self, call: SimulatedCall, leg: Leg, at: int, cause: str, code: str) -> None:
        leg.ended, leg.hangup_cause, leg.hangup_code = at, cause, code
        payload = self._payload(leg, "channel_destroy", at)
        payload.update(self._durations(leg), hangup_cause=cause, hangup_code=code)
        cdr = self._cdr(call, leg)
        call.steps.append(Step(at=at, hook_type="channel_destroy", payload=payload,
                               after=lambda: self.state.add_cdr(self.account.id, cdr)))

    def _emit(self, call: SimulatedCall, leg: Leg, hook_event: str, at: int) -> None:
        payload = self._payload(leg, hook_event, at)
        if hook_event == "channel_bridge":
            payload["original_number"] = leg.caller_id_number
            payload["other_leg_destination_number"] = leg.callee_id_number
        call.steps.append(Step(at=at, hook_type=hook_event, payload=payload))

    @staticmethod
    def _durations(leg: Leg) -> dict[str, int]:
        assert leg.ended is not None
        duration = leg.ended - leg.created
        ringing = (leg.answered if leg.answered is not None else leg.ended) - leg.created
        billing = leg.ended - leg.answered if leg.answered is not None else 0
        return {"duration_seconds": duration, "billing_seconds": billing, "ringing_seconds": ringing}

    def _payload(self, leg: Leg, hook_event: str, at: int) -> dict[str, Any]:
        """The channel hook payload; keys Kazoo would leave undefined are omitted, as Kazoo does."""
        payload: dict[str, Any] = {
            "account_id": self.account.id, "authorizing_id": leg.authorizing_id,
            "authorizing_type": leg.authorizing_type, "call_direction": leg.call_direction, "call_forwarded": False,
            "call_id": leg.call_id, "callee_id_name": leg.callee_id_name, "callee_id_number": leg.callee_id_number,
            "caller_id_name": leg.caller_id_name, "caller_id_number": leg.caller_id_number,
            "custom_application_vars": {}, "custom_channel_vars": {}, "emergency_resource_used": False,
            "from": leg.from_uri, "hook_event": hook_event, "inception": leg.inception, "is_internal_leg": False,
            "local_resource_id": _CARRIER_RESOURCE_ID if leg.local_resource_used else None,
            "local_resource_used": leg.local_resource_used, "other_leg_call_id": leg.other_leg_call_id,
            "owner_id": leg.owner_id, "request": leg.request, "reseller_id": self.account.reseller_id,
            "timestamp": at, "to": leg.to_uri}
        return {k: v for k, v in payload.items() if v is not None}

    def _cdr(self, call: SimulatedCall, leg: Leg) -> dict[str, Any]:
        """The leg's full CDR document, written when the leg ends."""
        assert leg.ended is not None
        when = datetime.fromtimestamp(leg.ended - GREGORIAN_UNIX_OFFSET, tz=timezone.utc)
        ccv = {"account_id": self.account.id, "authorizing_id": leg.authorizing_id,
               "authorizing_type": leg.authorizing_type, "owner_id": leg.owner_id,
               "bridge_id": call.a_leg.call_id, "call_interaction_id": call.interaction_id}
        if leg.local_resource_used:
            ccv.update(resource_id=_CARRIER_RESOURCE_ID, resource_type="offnet-termination", global_resource="false")
        elif leg.inception:
            ccv.update(resource_type="offnet-origination")
        return {
            "id": f"{when:%Y%m}-{leg.call_id}", "call_id": leg.call_id, "call_direction": leg.call_direction,
            "caller_id_name": leg.caller_id_name, "caller_id_number": leg.caller_id_number,
            "callee_id_name": leg.callee_id_name, "callee_id_number": leg.callee_id_number,
            **self._durations(leg), "hangup_cause": leg.hangup_cause, "hangup_code": leg.hangup_code,
            "timestamp": leg.ended, "channel_created_time": (leg.created - GREGORIAN_UNIX_OFFSET) * 1_000_000,
            "from": leg.from_uri, "to": leg.to_uri, "request": leg.request, "from_uri": leg.from_uri,
            "to_uri": leg.to_uri, "other_leg_call_id": leg.other_leg_call_id, "interaction_id": call.interaction_id,
            "media_server": "fs1.virtualpbx.test",
            "custom_channel_vars": {k: v for k, v in ccv.items() if v is not None},
        }
