"""Build benchmark corpora from ../shared/data (real text only), shared by the benchmark scripts."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_documents(n: int, seed: int = 0) -> list[dict]:
    """n real documents: 20 Newsgroups posts, IMDB reviews, DCLM web snippets and Gutenberg chunks
    (~3,000 characters), mixed in a fixed random order; 5% are exact copies of earlier ones (with other
    ids), so exact dedup has work to do."""
    pools: list[list[str]] = []
    with gzip.open(SHARED / "web/20news-bydate.jsonl.gz", "rt") as f:
        pools.append([json.loads(line)["text"] for line in f])
    with gzip.open(SHARED / "reviews/aclImdb_v1.jsonl.gz", "rt") as f:
        pools.append([json.loads(line)["text"] for line in f])
    with open(SHARED / "quality/majority_data.jsonl") as f:
        pools.append([json.loads(line)["text"] for line in f])
    books: list[str] = []
    with gzip.open(SHARED / "books/gutenberg_slice.jsonl.gz", "rt") as f:
        for line in f:
            paras, chunk = json.loads(line)["text"].replace("\r\n", "\n").split("\n\n"), []
            for p in paras:
                chunk.append(p)
                if sum(map(len, chunk)) > 3000:
                    books.append("\n\n".join(chunk))
                    chunk = []
            if len(books) > n:
                break
    pools.append(books)
    rng = random.Random(seed)
    weights = [0.3, 0.35, 0.05, 0.3]
    docs: list[dict] = []
    for i in range(n):
        if docs and rng.random() < 0.05:
            text = docs[rng.randrange(len(docs))]["text"]
        else:
            pool = pools[rng.choices(range(4), weights)[0]]
            text = pool[rng.randrange(len(pool))]
        docs.append({"id": f"doc-{i}", "text": text})
    return docs


def write_shards(docs: list[dict], folder: Path, shards: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(shards):
        p = folder / f"part-{k:03d}.jsonl"
        with p.open("w") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs[k::shards])
        paths.append(p)
    return paths
