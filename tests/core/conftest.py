"""Fixtures of the core tests: a corpus of four input files of real text."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pipeline_corpus import EXAMPLE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four input files of real text (the bundled sample, with planted exact duplicates across files)."""
    d = tmp_path_factory.mktemp("corpus")
    rows = [json.loads(line) for line in gzip.open(EXAMPLE, "rt")]
    for k in range(4):
        part = rows[k::4] + [dict(rows[j], id=f"copy-{k}-{j}") for j in range(0, 40, 4)]
        with open(d / f"part{k}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    return d
