"""The end-to-end bench's accounting: match each hook sent to the effect it caused, exactly once.

Standard library only; ``bench/e2e`` feeds it the load generator's ``[id, send time, status]`` records and
the messages the Slack stand-in recorded (``text`` is the hook's id, ``received_at`` its arrival time).
"""

from __future__ import annotations

from collections import Counter


def percentile(sorted_values: list[float], pct: float) -> float:
    """The nearest-rank ``pct`` percentile of sorted values (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-pct * len(sorted_values) // 100)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def account(sent: list[tuple[str, float, int]], messages: list[dict], *, prefix: str,
            load_start: float, load_end: float) -> dict:
    """Hooks accepted vs effects seen: lost and doubled ids, hook->effect latency percentiles (ms) of the
    first effect of each hook, and effect rates. Messages whose text does not start with ``prefix`` are
    someone else's and ignored; an effect of a hook that was not answered 200 counts as unexpected."""
    accepted = {uid: t for uid, t, status in sent if status == 200}
    arrivals: dict[str, list[float]] = {}
    for message in messages:
        text = message.get("text") or ""
        if text.startswith(prefix):
            arrivals.setdefault(text, []).append(float(message["received_at"]))
    counts = Counter({uid: len(times) for uid, times in arrivals.items()})
    latencies = sorted((min(arrivals[uid]) - t) * 1000.0 for uid, t in accepted.items() if uid in arrivals)
    all_arrivals = sorted(t for times in arrivals.values() for t in times)
    in_load = sum(1 for t in all_arrivals if load_start <= t <= load_end)
    load_seconds = max(1e-9, load_end - load_start)
    last = all_arrivals[-1] if all_arrivals else load_start
    return {
        "sent": len(sent), "accepted": len(accepted), "refused": len(sent) - len(accepted),
        "effects": sum(counts.values()),
        "lost": sorted(uid for uid in accepted if uid not in arrivals),
        "doubled": sorted(uid for uid, n in counts.items() if n > 1),
        "unexpected": sorted(uid for uid in arrivals if uid not in accepted),
        "accepted_per_s": len(accepted) / load_seconds,
        "effects_per_s_during_load": in_load / load_seconds,
        "effects_per_s_overall": len(all_arrivals) / max(1e-9, last - load_start),
        "last_effect_after_load_s": max(0.0, last - load_end),
        "latency_ms": {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90),
                       "p99": percentile(latencies, 99), "max": latencies[-1] if latencies else float("nan"),
                       "count": len(latencies)},
    }
