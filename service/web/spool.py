"""A local durable spool for events received while Redis is unreachable.

Each event is one file, written to a temporary name, fsync'd, renamed into place and the directory
fsync'd, all before the receiver answers 200. File names sort by arrival (nanosecond clock, pid,
sequence), and the drainer publishes them in that order, claiming each by an atomic rename so that
several web processes can drain one spool without publishing a file twice.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from service.datafiles import private_dir, process_alive

log = logging.getLogger(__name__)
_sequence = itertools.count()


class SpoolFull(Exception):
    """The spool reached its bound; the event cannot be kept."""


class Spool:
    """An append-only directory of JSON envelopes."""

    def __init__(self, directory: Path, *, max_events: int) -> None:
        self.directory = private_dir(Path(directory))
        self.max_events = max_events

    def pending(self) -> list[Path]:
        """Spooled envelopes in arrival order."""
        return sorted(p for p in self.directory.iterdir() if p.suffix == ".json")

    def depth(self) -> int:
        """How many envelopes wait in the spool."""
        return sum(1 for p in self.directory.iterdir() if p.suffix == ".json")

    def put(self, envelope: dict[str, Any]) -> Path:
        """Write an envelope durably; SpoolFull past the bound. Logs an alarm from 80 % full."""
        depth = self.depth()
        if depth >= self.max_events:
            raise SpoolFull(f"spool holds {depth} events (bound {self.max_events})")
        if depth >= 0.8 * self.max_events:
            log.error("ALARM: spool at %d of %d events; Redis has been unreachable for a while", depth,
                      self.max_events)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):08d}"
        tmp = self.directory / f".{name}.tmp"
        final = self.directory / f"{name}.json"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(envelope, separators=(",", ":")).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        self._fsync_dir()
        return final

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def drain(self, publish: Callable[[dict[str, Any]], None], *, limit: int = 1000) -> int:
        """Publish spooled envelopes in order and delete each once published; stop at the first failure."""
        done = 0
        for path in self.pending()[:limit]:
            claimed = path.with_suffix(f".draining-{os.getpid()}")
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another process took it
            try:
                envelope = json.loads(claimed.read_bytes())
                publish(envelope)
            except Exception:
                os.rename(claimed, path)  # keep it, in place, for the next round
                raise
            claimed.unlink()
            done += 1
        return done

    def recover_claims(self) -> int:
        """Put back files a crashed drainer had claimed (their publish may or may not have happened)."""
        recovered = 0
        for path in self.directory.iterdir():
            if ".draining-" in path.name:
                pid = int(path.name.rsplit("-", 1)[1])
                if not process_alive(pid):
                    os.rename(path, path.with_name(path.name.split(".draining-")[0] + ".json"))
                    recovered += 1
        return recovered

