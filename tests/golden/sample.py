"""A fixed, mixed sample of real documents from ../shared/data for comparing curate's rule filters with
DataTrove's. Pure standard library, so the golden-file script can run in DataTrove's own environment."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path


def build_sample(data: Path) -> list[dict]:
    docs: list[dict] = []

    def add(src: str, i: int, text: str) -> None:
        if text and text.strip():
            docs.append({"key": f"{src}:{i}", "text": text})

    with gzip.open(data / "web/20news-bydate.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 1200:
                break
            add("20news", i, json.loads(line)["text"])
    with gzip.open(data / "reviews/aclImdb_v1.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i % 250 == 0:
                add("imdb", i, json.loads(line)["text"])
            if i >= 100_000:
                break
    with open(data / "quality/majority_data.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            add("dclm", i, json.loads(line)["text"])
    for name in ("cc_en_head-0091.jsonl", "cc_en_head-0174.jsonl"):
        with open(data / "web/dolma_fixtures/multiple_files" / name, encoding="utf-8") as f:
            for i, line in enumerate(f):
                add(f"dolma-{name[11:15]}", i, json.loads(line)["text"])
    with open(data / "quality/fineweb_edu_llm_scored.csv", encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            add("fwedu", i, row["text"])
    with gzip.open(data / "books/gutenberg_slice.jsonl.gz", "rt", encoding="utf-8") as f:
        for b, line in enumerate(f):
            if b >= 4:
                break
            paras = json.loads(line)["text"].split("\n\n")
            chunk: list[str] = []
            n = 0
            for p in paras:
                chunk.append(p)
                if sum(map(len, chunk)) > 3000:
                    add(f"book{b}", n, "\n\n".join(chunk))
                    chunk, n = [], n + 1
                    if n >= 60:
                        break
    return docs
