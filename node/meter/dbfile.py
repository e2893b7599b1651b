"""The meter's database file: created private, opened only if it exists, watched for swaps.

Only the first open (`llm-node serve` starting, a CLI command) may create the file. Every later
connection opens it with SQLite's `mode=rw`, so a deleted file is never silently recreated
empty. The file's identity (device and inode) is taken at the first open; while the meter's
connections hold the file open its inode cannot be reused, so a path that no longer leads to
that inode means the file was deleted or replaced, and any row written now would be lost.

SQLite keeps the -wal of a moved database when its last connection closes, and finds -wal and
-shm by name: a file put in the old one's place would take our WAL's frames as its own (a
restored backup would be corrupted at the next start). So when the file is found gone, the
guard's `on_lost` hook empties our WAL at once (see `Checkpointer.forget_wal`).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from node.meter.errors import MeterUnavailable

log = logging.getLogger(__name__)

PRIVATE_MODE = 0o600  # key hashes, orgs, user labels, billing: for the node's user only


class FileGone(MeterUnavailable):
    """The path no longer leads to the file the meter opened (deleted or replaced)."""


def create_private(path: str) -> None:
    """Create an empty database file 0600 if none exists; never touch an existing one.

    SQLite creates -wal, -shm and -journal files with the mode of the database file, so they are
    0600 too. SQLite itself would create the file 0644 less the umask. An empty file is an empty
    database to SQLite.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_MODE)
    except FileExistsError:
        _warn_if_shared(path)
        return
    try:
        os.fchmod(fd, PRIVATE_MODE)  # a umask such as 0277 would have left it unwritable
    finally:
        os.close(fd)


def _warn_if_shared(path: str) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return  # SQLite's own open reports the problem
    if mode & 0o077:
        log.warning(
            "meter database %s is readable by other users (mode %04o); `chmod 600` it", path, mode
        )


def open_uri(path: str) -> str:
    """An SQLite URI that opens `path` read-write and fails if it does not exist."""
    return Path(path).as_uri() + "?mode=rw"


class FileGuard:
    """Checks that `path` still leads to the file it led to when the guard was made."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity = _identity(path)
        self._lost: str | None = None
        self._lock = threading.Lock()
        self.on_lost: Callable[[], None] | None = None  # run once, by the thread that noticed

    def check(self) -> None:
        """Raise FileGone when the file was deleted or replaced; one stat, a few µs."""
        if self._lost is None:
            try:
                same = _identity(self.path) == self._identity
            except FileNotFoundError:
                self._note_lost("was deleted")
            except OSError as exc:
                raise FileGone(f"meter database {self.path} cannot be checked: {exc}") from exc
            else:
                if not same:
                    self._note_lost("was replaced by another file")
        if self._lost is not None:
            raise FileGone(self._lost)

    @property
    def lost(self) -> bool:
        """Checks now; True once the file was found deleted or replaced."""
        try:
            self.check()
        except FileGone:
            return self._lost is not None
        return False

    def _note_lost(self, what: str) -> None:
        # Final: the inode we hold can never come back at this path. Logged once.
        with self._lock:
            if self._lost is not None:
                return
            self._lost = (
                f"meter database {self.path} {what} while the node was running;"
                " nothing can be metered until the node restarts"
            )
        log.error("%s", self._lost)
        if self.on_lost is not None:
            self.on_lost()  # outside the lock: other threads fail fast meanwhile


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino
