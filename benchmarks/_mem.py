"""One memory (and wall-time) method for every benchmark: each process's own peak, never an inherited one.

Why not ``ru_maxrss``: a forked child starts with its parent's high-water mark, and ``RUSAGE_CHILDREN``
reports the largest waited-for descendant, so a big driver process inflates the figure of a small child
(1,632 vs 950 MiB for the same KD run, issue 18). Summed RSS counts shared pages (libraries, forked
copy-on-write data) once per process (914 MB summed RSS vs 674 MB PSS for the same run). So:

* ``max_hwm_mb``: the largest ``VmHWM`` (peak RSS since that process's exec) of the measured process or any
  descendant, read from ``/proc/<pid>/status`` every ``interval`` seconds while it lives (and the root's
  last reading just before it is reaped);
* ``peak_pss_mb``: the peak over samples of the summed ``Pss`` of ``/proc/<pid>/smaps_rollup`` over the
  process tree (shared pages split between the processes that map them).

A process that lives less than one interval can be missed by the sampler; benchmarks that time whole
pipelines last seconds, and the in-process figure (``self_hwm_mb``) gives the exact value for one process.
Linux only (``/proc``); no third-party package needed.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path


def _status_kb(pid: int | str, field: str) -> int:
    """One ``kB`` field (``VmRSS``, ``VmHWM``) of /proc/<pid>/status; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int | str) -> int:
    """Summed ``Pss`` of /proc/<pid>/smaps_rollup in kB (0 when gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    """pid and all its live descendants, through /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return out


def self_hwm_mb() -> float:
    """This process's own peak RSS since exec (or since :func:`reset_peak`), in MB."""
    return _status_kb("self", "VmHWM") / 1024


def self_pss_mb() -> float:
    """This process's current PSS, in MB."""
    return _pss_kb("self") / 1024


def reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0), so that a later
    :func:`self_hwm_mb` is the peak of the steady-state part alone. False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Sampler:
    """Samples a running process tree: per-pid max ``VmHWM`` and the peak of the summed PSS."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.hwm: dict[int, int] = {}
        self.peak_pss = 0
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        total = 0
        for q in tree(self.pid):
            self.hwm[q] = max(self.hwm.get(q, 0), _status_kb(q, "VmHWM"))
            total += _pss_kb(q)
        self.peak_pss = max(self.peak_pss, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._th.join()

    def result(self) -> dict:
        return {"max_hwm_mb": max(self.hwm.values(), default=0) / 1024, "peak_pss_mb": self.peak_pss / 1024,
                "processes": len(self.hwm)}


def measure(cmd: list[str], *, env: dict | None = None, log: Path | None = None, cwd: str | Path | None = None,
            interval: float = 0.1, capture: bool = False) -> dict:
    """Run ``cmd`` to its end; wall seconds, exit code, ``cpu_s`` (user + system CPU seconds of the child and
    its waited-for descendants: the robust figure on a shared, loaded machine), ``max_hwm_mb`` and
    ``peak_pss_mb`` (see the module docstring) and, with ``capture``, its stdout text. Memory is sampled:
    a child that knows its own end should also print :func:`self_hwm_mb` (an exited process's /proc entry no longer holds its memory figures)."""
    out = open(log, "w") if log else None  # noqa: SIM115 -- closed below, after the child ends
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE if capture else out,
                         stderr=subprocess.STDOUT if out else None, text=capture)
    with Sampler(p.pid, interval) as s:
        stdout = p.stdout.read() if capture and p.stdout else ""
        _, status, ru = os.wait4(p.pid, 0)  # CPU seconds of the child and the descendants it waited for
        wall = time.perf_counter() - t
    rc = p.returncode = os.waitstatus_to_exitcode(status)
    if out:
        out.close()
    return {"wall": wall, "rc": rc, "cpu_s": ru.ru_utime + ru.ru_stime, **s.result(),
            **({"stdout": stdout} if capture else {})}


def load() -> str:
    """The 1/5/15-minute load average, for the report line of every run."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
