"""The end-to-end bench's accounting: percentiles, and each accepted hook's effect exactly once."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import e2e_stats  # noqa: E402


def test_percentile_is_nearest_rank():
    """p50 of 1..10 is 5, p90 is 9, p99 and p100 are 10; nothing gives NaN."""
    values = [float(v) for v in range(1, 11)]
    assert [e2e_stats.percentile(values, p) for p in (50, 90, 99, 100)] == [5.0, 9.0, 10.0, 10.0]
    assert e2e_stats.percentile([7.0], 1) == 7.0
    assert math.isnan(e2e_stats.percentile([], 50))


def test_lost_doubled_and_unexpected_are_told_apart():
    """A hook with no message is lost, one with two is doubled (latency from its first), an effect of a
    refused hook is unexpected, and other runs' messages are ignored."""
    sent = [("e1", 100.0, 200), ("e2", 100.5, 200), ("e3", 101.0, 200), ("e4", 101.5, 0)]
    messages = [{"text": "e1", "received_at": 100.25}, {"text": "e2", "received_at": 102.5},
                {"text": "e2", "received_at": 101.0}, {"text": "e4", "received_at": 103.0},
                {"text": "x9", "received_at": 101.0}]
    out = e2e_stats.account(sent, messages, prefix="e", load_start=100.0, load_end=102.0)
    assert (out["sent"], out["accepted"], out["refused"], out["effects"]) == (4, 3, 1, 4)
    assert (out["lost"], out["doubled"], out["unexpected"]) == (["e3"], ["e2"], ["e4"])
    assert out["latency_ms"]["count"] == 2
    assert out["latency_ms"]["p50"] == 250.0 and out["latency_ms"]["max"] == 500.0
    assert out["accepted_per_s"] == 1.5
    assert out["effects_per_s_during_load"] == 1.0  # 100.25 and 101.0 fall in the 2 s window
    assert out["last_effect_after_load_s"] == 1.0


def test_every_hook_once_is_clean():
    """Each accepted hook with exactly one message: nothing lost, doubled or unexpected."""
    sent = [(f"e{i}", float(i), 200) for i in range(100)]
    messages = [{"text": f"e{i}", "received_at": i + 0.01 * (i + 1)} for i in range(100)]
    out = e2e_stats.account(sent, messages, prefix="e", load_start=0.0, load_end=99.0)
    assert not (out["lost"] or out["doubled"] or out["unexpected"])
    assert round(out["latency_ms"]["p50"], 6) == 500.0 and round(out["latency_ms"]["p99"], 6) == 990.0
