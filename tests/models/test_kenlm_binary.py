"""KenLM binary models (``curate binarize-lm`` / ``build_binary``): same scores as the ARPA model, the
tokeniser sidecar follows, nothing of the user's is replaced, and the perplexity step reads them."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curate import Pipeline, read, read_output, write
from curate.core.errors import ConfigError
from curate.models.kenlm import LMScorer, build_binary, kenlm_tool, train_lm
from curate.selectors.perplexity import Perplexity

pytest.importorskip("kenlm")
needs_tool = pytest.mark.skipif(kenlm_tool("build_binary") is None,
                                reason="KenLM's build_binary not built (bash scripts/build-kenlm-tools.sh)")


def _paragraphs(path: Path, n_books: int, per_book: int, skip: int = 0) -> list[str]:
    out: list[str] = []
    with gzip.open(path, "rt") as f:
        for i, row in enumerate(f):
            if i >= skip + n_books:
                break
            if i < skip:
                continue
            paras = [p.strip() for p in json.loads(row)["text"].split("\n\n") if len(p.split()) >= 20]
            out += paras[len(paras) // 10:][:per_book]
    return out


@pytest.fixture(scope="module")
def lm(shared_data, tmp_path_factory):
    books = shared_data / "books" / "gutenberg_slice.jsonl.gz"
    d = tmp_path_factory.mktemp("klm")
    arpa = d / "books.arpa"
    train_lm(_paragraphs(books, 6, 300), arpa, order=3, use_lmplz="never")
    return arpa, _paragraphs(books, 2, 40, skip=14)


@needs_tool
@pytest.mark.parametrize("structure", ["probing", "trie"])
def test_binary_scores_equal_the_arpa_models(lm, tmp_path, structure):
    arpa, held = lm
    out = build_binary(arpa, tmp_path / f"books.{structure}.binary", structure=structure)
    assert out.stat().st_size > 0
    ref_lp, ref_n = LMScorer(arpa).score_docs(_series(held))
    lp, n = LMScorer(out).score_docs(_series(held))
    np.testing.assert_array_equal(n, ref_n)
    # KenLM stores the ARPA's log10 values as float32 in both structures (the ARPA model too, once loaded)
    np.testing.assert_allclose(lp, ref_lp, rtol=0, atol=1e-4)
    assert json.loads(Path(str(out) + ".json").read_text())["structure"] == structure


@needs_tool
def test_sentencepiece_sidecar_is_repointed(shared_data, tmp_path):
    books = shared_data / "books" / "gutenberg_slice.jsonl.gz"
    texts = _paragraphs(books, 3, 200)
    arpa = tmp_path / "m" / "sp.arpa"
    train_lm(texts, arpa, order=3, tokenizer="sentencepiece", vocab_size=800, use_lmplz="never")
    out = build_binary(arpa, tmp_path / "elsewhere" / "sp.binary")
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert (out.parent / meta["sp_model"]).resolve() == (arpa.parent / "sp.sp.model").resolve()
    ref, _ = LMScorer(arpa).score_docs(_series(texts[:20]))
    got, _ = LMScorer(out).score_docs(_series(texts[:20]))
    np.testing.assert_allclose(got, ref, atol=1e-4)


@needs_tool
def test_an_existing_file_is_never_replaced_without_force(lm, tmp_path):
    arpa, _ = lm
    mine = tmp_path / "books.binary"
    mine.write_text("the user's file")
    with pytest.raises(ConfigError, match="exists"):
        build_binary(arpa, mine)
    assert mine.read_text() == "the user's file"
    with pytest.raises(ConfigError, match="replace its ARPA input"):
        build_binary(arpa, arpa, overwrite=True)
    build_binary(arpa, mine, overwrite=True)
    assert mine.read_bytes()[:4] != b"the "
    assert not list(tmp_path.glob(".*.tmp"))


@needs_tool
def test_a_failed_build_leaves_no_partial_model(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\tonly_one_line\n")
    with pytest.raises(ConfigError, match="build_binary failed"):
        build_binary(bad, tmp_path / "bad.binary")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.arpa"]


@needs_tool
def test_cli_binarize_and_perplexity_step_with_two_workers(lm, tmp_path):
    arpa, held = lm
    out = tmp_path / "cli.binary"
    r = subprocess.run([sys.executable, "-m", "curate.cli", "binarize-lm", str(arpa), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "KenLM binary (probing)" in r.stdout
    src = tmp_path / "docs"
    src.mkdir()
    for part in range(2):  # two files: one shard per worker
        rows = [{"id": f"{part}-{i}", "text": t} for i, t in enumerate(held * 3) if i % 2 == part]
        (src / f"{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = {}
    for name, model, workers in (("arpa", arpa, 1), ("bin", out, 2)):
        Pipeline(read(str(src / "*.jsonl"), batch_size=20), Perplexity(model=str(model)),
                 write(str(tmp_path / f"out-{name}"), format="parquet")).run(
            work_dir=str(tmp_path / f"work-{name}"), workers=workers, progress=False)
        res[name] = read_output(tmp_path / f"out-{name}").sort("id")
    assert res["bin"].height == len(held) * 3
    np.testing.assert_allclose(res["bin"]["ppl"].to_numpy(), res["arpa"]["ppl"].to_numpy(), rtol=1e-4)


def test_missing_tool_says_how_to_build_it(lm, tmp_path, monkeypatch):
    arpa, _ = lm
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CURATE_KENLM_BIN", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert kenlm_tool("build_binary") is None
    with pytest.raises(ConfigError, match="build-kenlm-tools.sh"):
        build_binary(arpa, tmp_path / "x.binary")


def _series(texts: list[str]):
    import polars as pl

    return pl.Series("text", texts)
