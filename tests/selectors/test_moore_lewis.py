"""Moore-Lewis selection with a GSM8K in-domain LM and a 20 Newsgroups general LM (real data)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate import Pipeline, read, read_output, write
from curate.core.errors import ConfigError
from curate.models.kenlm import LMTokenizer, train_lm
from curate.selectors.moore_lewis import MooreLewis

kenlm = pytest.importorskip("kenlm")


def _auc(low, high) -> float:
    """P(a value of ``low`` < a value of ``high``) (Mann-Whitney, ties count half)."""
    low, high = np.asarray(low)[:, None], np.asarray(high)[None, :]
    return float((low < high).mean() + 0.5 * (low == high).mean())


def _jsonl(path: Path) -> pl.DataFrame:
    data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    return pl.read_ndjson(data)


@pytest.fixture(scope="module")
def lms(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("ml")
    gsm_train = _jsonl(shared_data / "instructions" / "gsm8k" / "train.jsonl")["question"]
    news = _jsonl(shared_data / "web" / "20news-bydate.jsonl.gz")
    news_train = news.filter(pl.col("split") == "train").sample(2500, seed=0)["text"]
    train_lm(gsm_train, d / "gsm.arpa", order=3, use_lmplz="never")
    train_lm(news_train, d / "news.arpa", order=3, use_lmplz="never")
    gsm_test = _jsonl(shared_data / "instructions" / "gsm8k" / "test.jsonl")["question"].head(200).to_list()
    news_test = news.filter(pl.col("split") == "test").sample(200, seed=1)["text"].to_list()
    rows = [{"id": f"g{i}", "text": t, "gsm": True} for i, t in enumerate(gsm_test)]
    rows += [{"id": f"n{i}", "text": t, "gsm": False} for i, t in enumerate(news_test)]
    src = d / "eval.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "gsm.arpa", d / "news.arpa", src


def _run(src: Path, op, tmp_path: Path) -> pl.DataFrame:
    Pipeline(read(str(src), batch_size=100), op, write(str(tmp_path / "out"))).run(
        work_dir=str(tmp_path / "work"), workers=1, progress=False)
    return read_output(tmp_path / "out")


def test_gsm8k_ranked_above_newsgroups(lms, tmp_path):
    gsm, news, src = lms
    out = _run(src, MooreLewis(in_domain_model=str(gsm), general_model=str(news)), tmp_path)
    assert out.height == 400  # no selection mode: score only
    s = out["ml_score"].to_numpy()
    is_gsm = out["gsm"].to_numpy()
    auc = _auc(s[is_gsm], s[~is_gsm])
    assert auc > 0.97, auc
    # the score is H_in - H_gen in bits per token (one </s> per line), recomputed with kenlm directly
    m_in, m_gen, tok = kenlm.Model(str(gsm)), kenlm.Model(str(news)), LMTokenizer()
    for text, score in out.select("text", "ml_score").head(3).vstack(out.select("text", "ml_score").tail(3)).iter_rows():
        lines = tok.lines(pl.Series(text.split("\n")))["line"].to_list()
        n = sum(len(ln.split()) + 1 for ln in lines)
        h_in = -sum(m_in.score(ln) for ln in lines) * math.log2(10) / n
        h_gen = -sum(m_gen.score(ln) for ln in lines) * math.log2(10) / n
        assert score == pytest.approx(h_in - h_gen, rel=1e-9, abs=1e-12)


def test_fraction_keeps_in_domain(lms, tmp_path):
    gsm, news, src = lms
    out = _run(src, MooreLewis(in_domain_model=str(gsm), general_model=str(news), fraction=0.5), tmp_path)
    assert out.height == 200
    assert out["gsm"].mean() > 0.95
    rej = pl.concat([pl.read_ndjson(p) for p in (tmp_path / "work" / "rejects").rglob("*.jsonl")])
    assert rej.height == 200 and set(rej["reason"]) == {"not_selected"}
    assert rej["score"].min() >= out["ml_score"].max()


def test_identical_lms_score_zero(lms, tmp_path):
    gsm, _, src = lms
    out = _run(src, MooreLewis(in_domain_model=str(gsm), general_model=str(gsm)), tmp_path)
    assert np.abs(out["ml_score"].to_numpy()).max() == 0.0


def test_tokeniser_mismatch_is_an_error(lms, tmp_path):
    gsm, _, _ = lms
    train_lm(["some text here", "more text there"] * 20, tmp_path / "sp.arpa", order=2, tokenizer="sentencepiece",
             vocab_size=30, use_lmplz="never")
    op = MooreLewis(in_domain_model=str(gsm), general_model=str(tmp_path / "sp.arpa"))
    with pytest.raises(ConfigError, match="share normalisation and tokeniser"):
        op._check_models()


def test_yaml_pipeline_perplexity_then_moore_lewis(lms, tmp_path):
    from curate.cli import main

    gsm, news, src = lms
    yaml_text = f"""
input: {{path: "{src}", batch_size: 150}}
steps:
  - perplexity: {{model: "{news}", max_ppl: 1.0e12}}
  - perplexity_bucket: {{}}
  - moore_lewis: {{in_domain_model: "{gsm}", general_model: "{news}", top_k: 150}}
output: {{path: "{tmp_path / 'out'}"}}
work_dir: "{tmp_path / 'work'}"
"""
    (tmp_path / "p.yaml").write_text(yaml_text)
    assert main(["run", str(tmp_path / "p.yaml"), "--workers", "2", "--no-progress"]) == 0
    out = read_output(tmp_path / "out")
    assert out.height == 150
    assert {"ppl", "bucket", "ml_score"} <= set(out.columns)
    assert out["gsm"].mean() > 0.95
    assert set(out["bucket"]) <= {"head", "middle", "tail"}
