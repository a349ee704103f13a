"""Shared by the pipeline tests in tests/core: the bundled real-text sample as a small multi-file corpus."""

from __future__ import annotations

import hashlib
from pathlib import Path

from curate import Pipeline, read, write
from curate.filters.c4 import C4Quality
from curate.filters.exact_dedup import ExactDedup
from curate.filters.gopher import GopherQuality, GopherRepetition
from curate.filters.length import LengthFilter

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "data" / "web_sample.jsonl.gz"


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def pipeline(corpus: Path, out: Path, fmt: str = "jsonl") -> Pipeline:
    return Pipeline(read(str(corpus / "*.jsonl"), batch_size=50), LengthFilter(min_words=20), GopherRepetition(),
                    GopherQuality(), ExactDedup(), C4Quality(filter_no_terminal_punct=False),
                    write(str(out), format=fmt))
