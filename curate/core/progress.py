"""Run progress that reads well on a terminal and in a log.

On a terminal: a rich progress bar (docs, docs/s, elapsed). Without one (CI, ``nohup``, ``| tee``): plain
lines on stderr every :data:`PLAIN_INTERVAL_S` seconds and at the end of each phase, no spinner glyphs
and no cursor tricks, e.g.::

    progress: segment 0: length_filter, gopher_quality | 12,000 docs | 3,410 docs/s | 3.5s | input 41.2 MB, 3 shards

Long global-stage fits report their own progress with :func:`report` (or ``FitContext.progress``), e.g.
``report(done=3_000, total=10_000, unit="docs")``; it is a no-op when no run is showing progress.

While a run is in progress, third-party progress bars (tqdm, Hugging Face hub / transformers) are
silenced through their environment variables, which spawned workers inherit: N workers' bars
interleaved in one log are unreadable, and curate's own line already says how far the run is.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

#: seconds between plain progress lines when stdout/stderr is not a terminal.
PLAIN_INTERVAL_S = 10.0

#: environment variables that turn off third-party progress bars (tqdm reads ``TQDM_*`` defaults at
#: import; huggingface_hub and transformers read theirs at import), set for the run's duration.
QUIET_ENV = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

_ACTIVE: Progress | None = None


def report(done: int, total: int | None = None, unit: str = "docs") -> None:
    """Progress of the current phase (e.g. a global stage's fit): ``done`` of ``total`` ``unit``.

    Safe to call from any fit at any rate; lines are throttled. Does nothing outside a run showing
    progress (and in worker processes, which have no progress display).
    """
    if _ACTIVE is not None:
        _ACTIVE.set(done, total, unit)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


class Progress:
    """Progress of one run: phases (``start``) counting documents (``advance``) or a fit's own units
    (``set``). ``enabled=False`` shows nothing; ``plain`` (default: when stderr is not a terminal)
    prints throttled plain lines to ``stream`` instead of a bar."""

    def __init__(self, enabled: bool = True, *, plain: bool | None = None, stream: IO[str] | None = None,
                 interval: float = PLAIN_INTERVAL_S, input_files: list[str] | None = None,
                 shards: int | None = None):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.plain = (not _isatty(self.stream)) if plain is None else plain
        self.interval = interval
        self.input_bytes, self.shards = _total_size(input_files), shards
        self._p: Any = None
        self._task: Any = None
        self._desc = ""
        self._unit = "docs"
        self._done = 0
        self._total: int | None = None
        self._t0 = self._last = time.perf_counter()
        self._env: dict[str, str | None] = {}

    # -- context ------------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        global _ACTIVE
        for k, v in QUIET_ENV.items():
            if k not in os.environ:
                self._env[k] = None
                os.environ[k] = v
        if not self.enabled:
            return self
        _ACTIVE = self
        if not self.plain:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[rate]}"),
                               TimeElapsedColumn(), console=Console(file=self.stream), transient=False)
            self._p.__enter__()
        elif self.input_bytes is not None:
            self._line(f"input {_mb(self.input_bytes)} in {self.shards} shard(s)")
        return self

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        self._finish()
        if self._p is not None:
            self._p.__exit__(*exc)
            self._p = None
        if _ACTIVE is self:
            _ACTIVE = None
        for k in self._env:
            os.environ.pop(k, None)
        self._env.clear()

    # -- phases -------------------------------------------------------------------------------
    def start(self, desc: str, total: int | None = None, unit: str = "docs") -> None:
        """Begin a phase (a segment's shards, a stage's fit); the previous one gets its final line."""
        if not self.enabled:
            return
        self._finish()
        self._desc, self._total, self._unit, self._done = desc, total, unit, 0
        self._t0 = self._last = time.perf_counter()
        if self._p is not None:
            self._task = self._p.add_task(desc, total=total, rate="", unit=unit)
        else:
            self._line(f"{desc} | started")

    def advance(self, n: int) -> None:
        """``n`` more documents done in the current phase (the executors' per-batch callback)."""
        if self.enabled:
            self.set(self._done + n, self._total, self._unit)

    def set(self, done: int, total: int | None = None, unit: str | None = None) -> None:
        if not self.enabled:
            return
        self._done, self._total = done, total if total is not None else self._total
        if unit is not None:
            self._unit = unit
        now = time.perf_counter()
        if self._p is not None and self._task is not None:
            self._p.update(self._task, completed=done, total=self._total, unit=self._unit, rate=self._rate(now))
        elif self._p is None and now - self._last >= self.interval:
            self._last = now
            self._line(self._status(now))

    # -- rendering ----------------------------------------------------------------------------
    def _rate(self, now: float) -> str:
        return f"{self._done / max(now - self._t0, 1e-9):,.0f} {self._unit}/s"

    def _status(self, now: float, final: bool = False) -> str:
        secs = f"{now - self._t0:.1f}s"
        if final and not self._done:
            return f"{self._desc} | done | {secs}"
        count = f"{self._done:,} of {self._total:,} {self._unit}" if self._total else f"{self._done:,} {self._unit}"
        parts = [self._desc, count + (" (done)" if final else ""), self._rate(now), secs]
        if self._total and not final:
            parts.insert(2, f"{100.0 * self._done / self._total:.0f}%")
        return " | ".join(parts)

    def _finish(self) -> None:
        if self.enabled and self._p is None and self._desc:
            self._line(self._status(time.perf_counter(), final=True))
        self._desc = ""

    def _line(self, text: str) -> None:
        print(f"progress: {text}", file=self.stream, flush=True)


def _total_size(files: list[str] | None) -> int | None:
    """Total bytes of the input files (the known total shown at the start), None when unknown."""
    if not files:
        return None
    try:
        return sum(os.path.getsize(f) for f in files)
    except OSError:
        return None


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
