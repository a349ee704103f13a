"""The CCNet perplexity filter and buckets, on a KenLM model trained on real book text."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate import Pipeline, read, read_output, write
from curate.models.kenlm import LMTokenizer, train_lm
from curate.selectors.perplexity import Perplexity, PerplexityBucket, bucket_expr

kenlm = pytest.importorskip("kenlm")


def _book_paragraphs(path: Path, books: range, per_book: int) -> list[str]:
    """Paragraphs of at least 20 words from the middle of each book (skipping PG header and footer)."""
    out: list[str] = []
    with gzip.open(path, "rt") as f:
        for i, row in enumerate(f):
            if i >= books.stop:
                break
            if i < books.start:
                continue
            paras = [p.strip() for p in json.loads(row)["text"].split("\n\n")]
            paras = [p for p in paras if len(p.split()) >= 20]
            lo, hi = len(paras) // 10, len(paras) - len(paras) // 10
            out += paras[lo:hi][:per_book]
    return out


def _spam(path: Path) -> list[str]:
    rows = [ln.split("\t", 1) for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]]
    return [t for lab, t in rows if lab == "spam"]


def _auc(low: np.ndarray, high: np.ndarray) -> float:
    """P(a value of ``low`` < a value of ``high``) (Mann-Whitney, ties count half)."""
    low, high = np.asarray(low)[:, None], np.asarray(high)[None, :]
    return float((low < high).mean() + 0.5 * (low == high).mean())


@pytest.fixture(scope="module")
def book_lm(shared_data, tmp_path_factory):
    books = shared_data / "books" / "gutenberg_slice.jsonl.gz"
    train = _book_paragraphs(books, range(0, 12), 400)
    held = _book_paragraphs(books, range(14, 18), 60)
    path = tmp_path_factory.mktemp("lm") / "books.arpa"
    train_lm(train, path, order=3, use_lmplz="never")
    return path, held, _spam(shared_data / "spam" / "SMSSpamCollection")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ppl_is_ccnet_doclm_formula(book_lm):
    path, held, _ = book_lm
    docs = [held[0] + "\n" + held[1], "", "Ünïcode — TEXT with 42 numbers\n\n  second   line  ", held[2]]
    op = Perplexity(model=str(path), per_paragraph=True)
    out = op.score(pl.DataFrame({"text": docs}))
    model = kenlm.Model(str(path))
    tok = LMTokenizer()
    for doc, ppl, per in zip(docs, out["ppl"].to_list(), out["ppl_paragraphs"].to_list()):
        lines = tok.lines(pl.Series(doc.split("\n")))["line"].to_list()  # one normalised line per line
        assert len(lines) == doc.count("\n") + 1
        scores = [model.score(ln) for ln in lines]
        lengths = [len(ln.split()) + 1 for ln in lines]
        assert ppl == pytest.approx(10 ** (-sum(scores) / sum(lengths)), rel=1e-9)
        assert per == pytest.approx([10 ** (-s / n) for s, n in zip(scores, lengths)], rel=1e-9)
        assert per == pytest.approx([model.perplexity(ln) for ln in lines], rel=1e-9)
    assert out["ppl"][1] == pytest.approx(10 ** -model.score(""), rel=1e-9)  # empty doc: length 1


def test_book_lm_prefers_held_out_books(book_lm):
    path, held, spam = book_lm
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(p.split())) for p in held]
    op = Perplexity(model=str(path))
    ppl = {k: op.score(pl.DataFrame({"text": v}))["ppl"].to_numpy() for k, v in
           [("book", held), ("shuffled", shuffled), ("spam", spam[:300])]}
    assert _auc(ppl["book"], ppl["shuffled"]) > 0.97
    assert _auc(ppl["book"], ppl["spam"]) > 0.9
    assert np.median(ppl["shuffled"]) > 2 * np.median(ppl["book"])


def test_bucket_boundaries_fixed_cutoffs():
    vals = pl.Series("ppl", [339.9, 340.0, 519.9, 520.0, None, -1.0, float("nan"), 0.0])
    got = pl.select(bucket_expr(pl.lit(vals), 340.0, 520.0)).to_series().to_list()
    assert got == ["head", "middle", "middle", "tail", "all", "all", "all", "head"]


def test_max_ppl_and_percentile_buckets_pipeline(book_lm, tmp_path):
    path, held, spam = book_lm
    texts = held[:120] + spam[:80]
    src = _write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    probe = Perplexity(model=str(path)).score(pl.DataFrame({"text": texts}))["ppl"].to_numpy()
    max_ppl = float(np.percentile(probe, 90))
    Pipeline(read(str(src), batch_size=64), Perplexity(model=str(path), max_ppl=max_ppl),
             PerplexityBucket(keep_buckets=["head", "middle"]), write(str(tmp_path / "out"))).run(
        work_dir=str(tmp_path / "work"), workers=1, progress=False)
    out = read_output(tmp_path / "out")
    rejects = pl.concat([pl.read_ndjson(p) for p in sorted((tmp_path / "work" / "rejects").rglob("*.jsonl"))],
                        how="diagonal_relaxed")
    by_reason = dict(rejects.group_by("reason").len().iter_rows())
    survivors = probe[probe <= max_ppl]
    assert by_reason["max_perplexity"] == int((probe > max_ppl).sum())
    head, tail = np.percentile(survivors, 30), np.percentile(survivors, 60)
    assert by_reason["perplexity_bucket"] == int((survivors >= tail).sum())
    assert out.height == int((survivors < tail).sum())
    expect = np.where(out["ppl"].to_numpy() < head, "head", "middle")
    assert out["bucket"].to_list() == expect.tolist()
    assert (out["ppl"].to_numpy() < tail).all() and "__bucket_drop" not in out.columns


def test_fixed_cutoffs_from_metadata(tmp_path):
    rows = [{"id": str(i), "text": "x", "ppl": v} for i, v in enumerate([339.9, 340.0, 520.0, None])]
    src = _write_jsonl(tmp_path / "in.jsonl", rows)
    Pipeline(read(str(src)), PerplexityBucket(cutoffs=[340, 520]), write(str(tmp_path / "out"))).run(
        work_dir=str(tmp_path / "work"), workers=1, progress=False)
    out = read_output(tmp_path / "out").sort("id")
    assert out["bucket"].to_list() == ["head", "middle", "tail", "all"]


_STARTUP_SCRIPT = r'''
import json, sys
import curate.selectors.perplexity  # the import a worker does to unpickle the operator
imported = [m for m in ("numba", "scipy", "pyarrow.compute", "kenlm", "torch") if m in sys.modules]
from curate import Pipeline, read, write
from curate.selectors.perplexity import Perplexity

inp, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
Pipeline(read(inp), Perplexity(model=model), write(out + "/out", format="jsonl")).run(
    work_dir=out + "/work", workers=1, progress=False)
print(json.dumps({"imported": imported, "numba_after_run": "numba" in sys.modules,
                  "loaded": [m for m in ("scipy.linalg", "pyarrow.compute", "torch") if m in sys.modules]}))
'''


def test_perplexity_import_and_run_load_no_heavy_modules(book_lm, tmp_path):
    """Importing the operator (what every worker does) loads neither numba nor kenlm (numba comes with the
    first scored batch, kenlm with setup); a scoring run loads neither scipy.linalg (numba's BLAS probe,
    0.3-0.4 CPU s, hidden by curate.core.jit), nor pyarrow.compute (polars' pa.Array import path), nor torch."""
    import os
    import subprocess
    import sys

    path, held, _ = book_lm
    docs = held[:50] + ["Ünï — x"]
    _write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(docs)])
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", _STARTUP_SCRIPT, str(tmp_path / "in.jsonl"), str(path), str(tmp_path)],
                       capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res == {"imported": [], "numba_after_run": True, "loaded": []}
    assert len(read_output(tmp_path / "out")) == len(docs)
