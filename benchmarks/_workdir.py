"""Scratch folders of the benchmarks: emptied between runs, but only when a benchmark made them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

MARK = ".curate-benchmark"  # written into every folder clear_work made; only those are deleted


def clear_work(work: Path) -> None:
    """Empty ``work`` for the next run: delete it only if a benchmark made it (its marker file is there),
    and refuse a folder that holds anything else, so a mistyped ``--work`` cannot delete a user's files."""
    if work.exists():
        if not (work / MARK).is_file() and any(work.iterdir()):
            sys.exit(f"{work} exists and was not made by a curate benchmark (no {MARK}); pick another folder")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARK).write_text("made by a curate benchmark (benchmarks/_workdir.py)\n")
