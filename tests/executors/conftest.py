"""Real documents with planted near-duplicate chains for the Ray executor's global-stage tests (the local
Ray instance, ``local_ray``, is in tests/conftest.py)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def near_dups(shared_data, tmp_path_factory) -> Path:
    """Real 20news posts and book paragraphs in three files, with near copies (a few words replaced) and
    chains of copies of copies planted across files, so clusters span shards and need transitive joins."""
    rng = random.Random(3)
    with gzip.open(shared_data / "web" / "20news-bydate.jsonl.gz", "rt") as fh:
        rows = [{"id": f"news-{i}", "text": json.loads(line)["text"]} for i, line in zip(range(300), fh)]
    with gzip.open(shared_data / "books" / "gutenberg_slice.jsonl.gz", "rt") as fh:
        body = json.loads(next(fh))["text"].replace("\r\n", "\n")
    rows += [{"id": f"book-{i}", "text": p.replace("\n", " ")}
             for i, p in enumerate(p for p in body.split("\n\n") if len(p.split()) >= 40)][:200]
    planted = []
    for c in range(40):
        w = rng.choice(rows)["text"].split()
        for step in range(4):  # a chain: each copy edits the previous one
            for _ in range(max(1, len(w) // 40)):
                w[rng.randrange(len(w))] = rng.choice(["alpha", "beta", "gamma"])
            planted.append({"id": f"near-{c}-{step}", "text": " ".join(w)})
    allrows = rows + planted
    rng.shuffle(allrows)
    d = tmp_path_factory.mktemp("near")
    for k in range(3):
        (d / f"part{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in allrows[k::3]))
    return d
