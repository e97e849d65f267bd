"""Where pbxrelay keeps data on local disk, created readable by the service's user alone.

The SQLite file, the spool, generated keys and Celery beat's schedule hold tenant data or secrets,
so ``var/`` is 0700 and files in it 0600, set when they are created (and tightened when found looser).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def restrict_umask() -> None:
    """Make every file this process (and its children) creates private to the service's user."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing and make ``path`` itself 0700."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != DIR_MODE:
        try:
            path.chmod(DIR_MODE)
        except PermissionError:  # a mount point owned by someone else: say so, but keep serving
            log.warning("%s is mode %o and not ours to change; make it 0700", path, stat.S_IMODE(path.stat().st_mode))
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if missing, else tighten it to 0600; its directory must exist."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) != FILE_MODE:
            path.chmod(FILE_MODE)
    return path


def write_private(path: Path, text: str) -> bool:
    """Write ``text`` to a new file of mode 0600; False (nothing written) when it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return True


def process_alive(pid: int) -> bool:
    """Whether a process of this host is alive, so a dead process's files (spool claims, metrics) can go."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True
