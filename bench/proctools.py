"""Process-tree helpers on /proc (psutil is not installed): descendants, RSS, CPU time.

Shared by ``bench/ingest`` and ``bench/loadgen.py``; standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the union over its threads' ``children`` files)."""
    found: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            found.update(int(x) for x in (task / "children").read_text().split())
        except OSError:
            continue
    return sorted(found)


def tree(pid: int) -> list[tuple[int, int]]:
    """``pid`` and its descendants as (pid, depth), parents before children."""
    out: list[tuple[int, int]] = []
    stack = [(pid, 0)]
    while stack:
        current, depth = stack.pop(0)
        if not Path(f"/proc/{current}").exists():
            continue
        out.append((current, depth))
        stack.extend((child, depth + 1) for child in children(current))
    return out


def rss_kib(pid: int) -> int | None:
    """Resident memory (VmRSS) in KiB, or None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return 0  # a zombie has no VmRSS line


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds consumed by ``pid`` so far (0 when gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def host_busy_seconds() -> float:
    """CPU seconds all CPUs of the host spent busy (not idle or iowait) since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS  # up to steal; minus idle, iowait


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a whole process tree (living processes only)."""
    return sum(cpu_seconds(p) for p, _ in tree(pid))


def cmdline(pid: int) -> str:
    """The command line of ``pid``, shortened."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
    if parts and parts[0].endswith(("python", "python3")) or (parts and "/python3" in parts[0]):
        parts = parts[1:]
    text = " ".join(parts)
    return text if len(text) <= 60 else text[:57] + "..."
