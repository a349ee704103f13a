"""Process-tree probes over Linux's /proc, shared by the pool tests (tests/core): whether a process is
alive, its parent, and its descendants, and a poll until a condition holds. Each reads only /proc,
independently of curate's code."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is neither a zombie nor dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def ppid(pid: int) -> int | None:
    """The parent pid of ``pid``, or None when it has gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children of each of its threads, recursively)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for c in kids:
                if c not in out:
                    out.add(c)
                    todo.append(c)
    return out


def wait_until(cond: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``cond`` every 20 ms until it is true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
