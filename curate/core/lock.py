"""Run locks: one curate run at a time per folder it writes (work dir, output, rejects).

An exclusive ``fcntl.flock`` held for the whole run on a file in the folder. The kernel drops it when
the holding process dies, however it dies (SIGKILL, power loss of a node aside), so a lock never
outlives its run and there is nothing stale to clean. The work dir's lock file also records who holds
it (pid, host, start time) so a second run can say whom it collided with.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from curate.core.errors import ConfigError, CurateError

LOCK_NAME = ".curate-lock"


def _describe(holder: dict) -> str:
    if not holder:
        return "another curate run (it has just started and not yet recorded itself)"
    return (f"another curate run: pid {holder.get('pid')} on host {holder.get('host')}, "
            f"started {holder.get('started')}")


def flock_or_fail(fd: int, what: str, *, holder_fd: int | None = None) -> None:
    """Take an exclusive lock on ``fd`` now or raise a :class:`CurateError` naming ``what``; the holder
    is read from ``holder_fd`` (a lock file written by :func:`hold_run_lock`) when given."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder: dict = {}
        if holder_fd is not None:
            try:
                holder = json.loads(os.pread(holder_fd, 4096, 0).decode() or "{}")
            except (OSError, ValueError):
                holder = {}
        raise CurateError(f"{what} is in use by {_describe(holder)}; wait for it to finish or use another "
                          "work_dir/output (two runs on one folder would overwrite each other)") from None


class RunLock:
    """``<folder>/<name>`` (default ``.curate-lock``): held from :meth:`acquire` to :meth:`release`, holder
    recorded inside. ``what`` names the guarded thing in the error (default: the work dir, ``folder``)."""

    def __init__(self, folder: Path, *, name: str = LOCK_NAME, what: str | None = None):
        self.path = Path(folder) / name
        self.what = what or f"work dir '{self.path.parent}'"
        self.fd: int | None = None

    def acquire(self, is_foreign: Callable[[Path], bool] | None = None) -> None:
        """Take the lock now or fail naming the holder. ``is_foreign(path)`` is asked, once the lock is
        held, whether a lock file that was already there is someone else's file (then nothing is written
        to it and a :class:`ConfigError` says so)."""
        existed = self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # no truncation: read before it is ours
        except OSError as e:
            raise CurateError(f"cannot create the run lock '{self.path}': {e.strerror or e}") from None
        try:
            flock_or_fail(fd, self.what, holder_fd=fd)
            if existed and is_foreign is not None and is_foreign(self.path):
                raise ConfigError(f"'{self.path}' exists and was not written by curate: curate will not replace "
                                  "it; move it away or choose another work_dir")
        except BaseException:
            os.close(fd)
            raise
        info = json.dumps({"pid": os.getpid(), "host": platform.node(),
                           "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode()
        os.pwrite(fd, info, 0)
        os.ftruncate(fd, len(info))
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
