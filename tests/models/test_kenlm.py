"""The Kneser-Ney estimator against the reference trainer (shared/reference/kn_arpa.py), kenlm and CCNet."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from core.text_reference import ccnet_normalize_line

from curate.core.text import ccnet_normalize, ccnet_normalize_series, utf8_buffer
from curate.models.kenlm import (
    LMTokenizer,
    ccnet_line_table,
    estimate,
    read_meta,
    token_counts,
    train_lm,
    write_arpa,
)
from tests.conftest import golden_and_udhr_texts

kenlm = pytest.importorskip("kenlm")
REF = Path(__file__).resolve().parents[3] / "shared" / "reference" / "kn_arpa.py"


@pytest.fixture(scope="module")
def kn_arpa():
    """The slow pure-Python modified-KN oracle (checked against kenlm by its authors)."""
    if not REF.exists():
        pytest.skip(f"reference trainer {REF} not found")
    spec = importlib.util.spec_from_file_location("kn_arpa", REF)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def shakespeare(shared_data) -> pl.Series:
    raw = (shared_data / "books" / "tinyshakespeare.txt").read_text().split("\n")
    lines = LMTokenizer().lines(pl.Series(raw[:2500]))["line"]
    return lines.filter(lines.str.contains(r"\S"))


def _parse_arpa(path: Path) -> dict[str, tuple[float, float]]:
    out, inside = {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.fullmatch(r"\\\d+-grams:", line):
            inside = True
        elif line.startswith("\\"):
            inside = False
        elif inside and line:
            parts = line.split("\t")
            out[parts[1]] = (float(parts[0]), float(parts[2]) if len(parts) > 2 else 0.0)
    return out


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(max(abs(a[k][0] - b[k][0]), abs(a[k][1] - b[k][1])) for k in a)


def test_ccnet_normalize_matches_ccnet_on_real_text(shared_data):
    lines = []
    with gzip.open(shared_data / "books" / "gutenberg_slice.jsonl.gz", "rt") as f:
        for _, row in zip(range(6), f):
            lines += json.loads(row)["text"].split("\n")[:3000]
    lines += ["  Café ÉTÉ naïve 123 ١٢ “q” — x…\tY\x85 ", "", "（全角）：１２３！", "Ĳssel ﬁne Ångström", "\x00a\x9fb"]
    got = pl.select(ccnet_normalize(pl.lit(pl.Series(lines)))).to_series().to_list()
    want = [ccnet_normalize_line(s) for s in lines]
    assert sum(any(ord(c) > 127 for c in s) for s in lines) > 20  # the sample does exercise non-ASCII
    bad = [(s, g, w) for s, g, w in zip(lines, got, want) if g != w]
    assert not bad, bad[:5]
    assert ccnet_normalize_series(pl.Series(lines)).to_list() == want  # the ASCII fast path agrees


def test_ccnet_normalize_series_tiers_match_ccnet(shared_data):
    """Each path of the fast normaliser (printable ASCII; ASCII + mapped punctuation only; everything else)
    against CCNet's per-line normaliser, on real Gutenberg lines and on rows built to sit at the boundaries:
    U+FF11 is in the punctuation map but is a digit (CCNet makes it "0" first), control characters next
    to mapped punctuation, punctuation next to accents, whitespace that only strip removes."""
    with gzip.open(shared_data / "books" / "gutenberg_slice.jsonl.gz", "rt") as f:
        lines = [ln for _, row in zip(range(20), f) for ln in json.loads(row)["text"].split("\n")]
    mapped = [ln for ln in lines if any(c in "\u2019\u201c\u201d\u2014\u2026" for c in ln)]
    assert len(mapped) > 200  # the real sample exercises the punctuation-only path
    edge = ["\u201c\uff11\u201d", "\uff11", "a\u2014b\tc", "\u2014\x01\u2019", "caf\u00e9 \u2014 ok",
            "\u3000\u2019x\u3000", "  \u2026  ", "\r\nA\u2013B\r", "\u00a0\u201e1\u00bb\u00a0", "\x7f\u2019\x85",
            "\u0301\u2019", "\u00b4\u0301", "ΣΑΣ \u2019ΟΔΟΣ\u2019", "\ufe52\uff0e\uff5e", "",
            # U+001C-1F: Python's strip removes them, polars' default strip did not (" a" instead of "a")
            "\x1c a", "b \x1f", "\x1d caf\u00e9 \x1e", "\x1f\u2019x\u2019 \x1c"]
    rows = lines + edge
    got = ccnet_normalize_series(pl.Series(rows)).to_list()
    bad = [(s, g, w) for s, g, w in zip(rows, got, map(ccnet_normalize_line, rows)) if g != w]
    assert not bad, bad[:5]
    assert ccnet_normalize_series(pl.Series(["A", None, "\u201cB\u201d"])).to_list() == ["a", None, '"b"']
    full = pl.select(ccnet_normalize(pl.lit(pl.Series(edge)))).to_series().to_list()  # the expression too
    assert full == [ccnet_normalize_line(x) for x in edge]


def test_token_counts_match_regex_and_python_split(shared_data):
    """The numpy byte counter equals ``count_matches(r"\\S+")`` and CCNet's ``len(line.split())`` on real
    normalised lines, and falls back to the regex on rows with other whitespace (tab, NBSP, U+3000)."""
    with gzip.open(shared_data / "books" / "gutenberg_slice.jsonl.gz", "rt") as f:
        raw = [ln for _, row in zip(range(4), f) for ln in json.loads(row)["text"].split("\n")]
    lines = LMTokenizer().lines(pl.Series(raw))["line"]
    extra = pl.Series(["", " ", "a", " a  b ", "x\ty\n z", "a\u00a0b c", "\u3000a b\u3000", "caf\u00e9 au lait",
                       "\u2003", "a\x0bb\x0cc", "  lead", "trail  "])
    s = pl.concat([lines, extra])
    want = np.array([len(x.split()) for x in s.to_list()])
    assert s.str.count_matches(r"\S+").to_list() == want.tolist()  # the two references agree here
    assert token_counts(s).tolist() == want.tolist()
    assert token_counts(s[5:40]).tolist() == want[5:40].tolist()  # a slice: Arrow offsets not from 0
    assert token_counts(pl.Series(["a b", None, ""])).tolist() == [2, 0, 0]
    assert token_counts(pl.Series([], dtype=pl.String)).tolist() == []


#: rows at the kernel's boundaries: strip before the control characters are deleted (a control byte keeps
#: the spaces beside it inside the strip), mapped punctuation at the edges and next to other characters,
#: U+FF11 (mapped, but a digit first), C1 controls and unicode whitespace (the fallback), CRLF, empty lines
_KERNEL_EDGE = ["\x01 a \x02", " \x7f", "a\x01 ", "\x1c a\tb \x1f", "\u2014x\u2014", " \u2026 ", "\uff0e\uff0e",
                "\u201c\uff11\u201d", "\x85a\x85", "\u00a0b\u3000", "x\u0085y", "A\u2019B\u00e9", "\u00b4\u0301",
                "Line one\r\nLine TWO 42\r\n", "\n\n", "", "   ", "\t\u2013\t", "\U0001F600 smile", "ǅ ǈ Σ"]


def test_ccnet_line_table_is_ccnet_byte_for_byte_on_multilingual_text(shared_data):
    """The one-pass line kernel (split on "\\n", CCNet normalisation, token counts), with the polars
    expression for the lines it leaves, against CCNet's own per-line normaliser and ``len(line.split())``
    on real text in 300+ languages (DataTrove golden sample + UDHR) and real Gutenberg books: one byte
    different in one line fails."""
    from curate.models import _ccnet_kernel as K

    with gzip.open(shared_data / "books" / "gutenberg_slice.jsonl.gz", "rt") as f:
        books = [json.loads(row)["text"][:60_000] for _, row in zip(range(8), f)]
    texts = golden_and_udhr_texts(shared_data) + books + _KERNEL_EDGE
    table = ccnet_line_table(pl.Series(texts))
    raw = [ln for t in texts for ln in t.split("\n")]
    want = [ccnet_normalize_line(ln) for ln in raw]
    got = table.bytes_list()
    assert len(got) == len(want) == len(table)
    bad = [(r, g, w) for r, g, w in zip(raw, got, want) if g != w.encode()]
    assert not bad, bad[:5]
    assert table.ntok.tolist() == [len(w.split()) for w in want]
    assert table.doc.tolist() == [d for d, t in enumerate(texts) for _ in range(t.count("\n") + 1)]
    assert table.series().to_list() == want
    # both paths do real work here: most lines by the kernel, thousands (other scripts) by the fallback
    data, off = utf8_buffer(pl.Series(texts))
    n = len(off) - 1 + int((data == 10).sum())
    ntok = np.empty(n, dtype=np.int64)
    marked = K.normalize_lines(data, off, *K.ascii_tables(), *K.punct_tables(), np.empty(len(data), np.uint8),
                               np.empty(n + 1, np.int64), np.empty(n, np.int64), ntok, np.empty(n, np.int64),
                               np.empty(n, np.int64))
    assert 1000 < marked < n // 2 and marked == (ntok < 0).sum()
    mapped = sum(1 for r in raw if any(c in "\u2019\u201c\u201d\u2014" for c in r) and r.isascii() is False
                 and all(c.isascii() or c in "\u2019\u201c\u201d\u2014\u2026\u2013" for c in r))
    assert mapped > 100  # lines with curly quotes and dashes only, which the kernel maps itself


def test_ccnet_line_table_inputs_nulls_slices_chunks(shared_data):
    """Nulls are one empty line, like empty documents; a sliced Series (Arrow offsets not from 0) and a
    Series of several chunks give the same lines as the whole; an empty batch gives an empty table."""
    texts = ["A b\nC", None, "", "caf\u00e9\n\u201cq\u201d", "x"] * 3
    s = pl.Series(texts, dtype=pl.String)
    want = [ccnet_normalize_line(ln) for t in texts for ln in (t or "").split("\n")]
    assert ccnet_line_table(s).series().to_list() == want
    sl = ccnet_line_table(s[3:9])
    assert sl.series().to_list() == [ccnet_normalize_line(ln) for t in texts[3:9] for ln in (t or "").split("\n")]
    assert sl.doc.tolist() == [0, 0, 1, 2, 2, 3, 4, 5, 5]
    chunked = pl.concat([s[:4], s[4:]], rechunk=False)
    assert chunked.n_chunks() == 2
    assert ccnet_line_table(chunked).series().to_list() == want
    empty = ccnet_line_table(pl.Series([], dtype=pl.String))
    assert len(empty) == 0 and empty.bytes_list() == [] and len(empty.doc) == 0
    lines = LMTokenizer().lines(s)  # the frame form: the same lines, doc as a row index
    assert lines["line"].to_list() == want and lines["doc"].dtype == pl.UInt32


# ---- estimator vs the reference
@pytest.mark.parametrize("order", [2, 3, 5])
def test_matches_reference_trainer(kn_arpa, shakespeare, tmp_path, order):
    est = estimate(shakespeare, order, lmplz_discounts=False)
    write_arpa(est, tmp_path / "ours.arpa")
    ref = kn_arpa.train(shakespeare.to_list(), order=order)
    kn_arpa.write_arpa(ref, str(tmp_path / "ref.arpa"))
    assert est.discounts == [ref["disc"][n] for n in range(1, order + 1)]
    assert _max_diff(_parse_arpa(tmp_path / "ours.arpa"), _parse_arpa(tmp_path / "ref.arpa")) < 1e-6


def test_lmplz_discounts_and_probabilities(kn_arpa, shakespeare, tmp_path):
    """Default (lmplz) discounts: t_k of exactly k (k<=4) from the reference's adjusted counts, Chen &
    Goodman eq. 26; the probabilities then match the reference run with those discounts."""
    order = 4
    est = estimate(shakespeare, order)
    ref = kn_arpa.train(shakespeare.to_list(), order=order)
    for n in range(1, order + 1):
        t = Counter(v for v in ref["adj"][n].values() if v > 0)
        y = t[1] / (t[1] + 2 * t[2])
        want = tuple(k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3))
        if all(0 <= d <= k for k, d in zip((1, 2, 3), want)):
            assert est.discounts[n - 1] == pytest.approx(want, rel=1e-12)
        else:
            assert est.discounts[n - 1] == (0.5, 1.0, 1.5)
        ref["disc"][n] = est.discounts[n - 1]
    assert sum(d != (0.5, 1.0, 1.5) for d in est.discounts) >= 3  # real discounts, not the fallback
    write_arpa(est, tmp_path / "ours.arpa")
    kn_arpa.write_arpa(ref, str(tmp_path / "ref.arpa"))
    assert _max_diff(_parse_arpa(tmp_path / "ours.arpa"), _parse_arpa(tmp_path / "ref.arpa")) < 1e-6


def test_every_context_sums_to_one(shakespeare, tmp_path):
    est = estimate(shakespeare, 3)
    write_arpa(est, tmp_path / "m.arpa")
    model = kenlm.Model(str(tmp_path / "m.arpa"))
    vocab = [w for w in est.vocab if w != "<s>"]
    rng = np.random.default_rng(0)
    toks = [s.split() for s in shakespeare.to_list()]
    contexts = [[], ["zzzunseen"], ["the"], ["zzzunseen", "the"]]
    for i in rng.choice(len(toks), 12, replace=False):
        if len(toks[i]) >= 2:
            j = int(rng.integers(0, len(toks[i]) - 1))
            contexts += [toks[i][j:j + 1], toks[i][j:j + 2]]
    for ctx in contexts:
        st, out = kenlm.State(), kenlm.State()
        model.BeginSentenceWrite(st)
        for w in ctx:
            nxt = kenlm.State()
            model.BaseScore(st, w, nxt)
            st = nxt
        total = sum(10 ** model.BaseScore(st, w, out) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4), ctx
        own = sum(10 ** est.log10_prob(w, ("<s>", *ctx)) for w in vocab)
        assert own == pytest.approx(1.0, abs=1e-4), ctx


def test_kenlm_score_matches_own_computation(shared_data, shakespeare, tmp_path):
    est = estimate(shakespeare, 5)
    write_arpa(est, tmp_path / "m.arpa")
    model = kenlm.Model(str(tmp_path / "m.arpa"))
    raw = (shared_data / "books" / "tinyshakespeare.txt").read_text().split("\n")[5000:5300]
    held = LMTokenizer().lines(pl.Series(raw))["line"].to_list()
    sents = shakespeare.to_list()[:100] + held + ["", "zzz qqq unseen words", "the the the"]
    diffs = [abs(model.score(s) - est.score(s)) for s in sents]
    assert max(diffs) < 1e-4
    # own sentence score also equals the sum of interpolated conditional probabilities
    s = held[3].split()
    toks = ["<s>", *s, "</s>"]
    manual = sum(est.log10_prob(toks[i], tuple(toks[max(0, i - 4):i])) for i in range(1, len(toks)))
    assert manual == pytest.approx(model.score(held[3]), abs=1e-4)


def test_reserved_tokens_and_empty_lines(tmp_path):
    est = estimate(pl.Series(["a b <s> c", "", "   ", "a </s> b", "<unk> a"]), 3)
    assert est.vocab[:3] == ["<unk>", "<s>", "</s>"] and set(est.vocab[3:]) == {"a", "b", "c"}
    write_arpa(est, tmp_path / "m.arpa")
    assert kenlm.Model(str(tmp_path / "m.arpa")).order == 3


def test_train_lm_sentencepiece_and_cli(shared_data, tmp_path):
    from curate.cli import main

    out = tmp_path / "gsm.arpa"
    rc = main(["train-lm", str(shared_data / "instructions" / "gsm8k" / "train.jsonl"), "--text-field", "question",
               "--max-docs", "1500", "--order", "4", "--tokenizer", "sentencepiece", "--vocab-size", "800",
               "-o", str(out)])
    assert rc == 0
    meta = read_meta(out)
    assert meta["tokenizer"] == "sentencepiece" and (tmp_path / meta["sp_model"]).exists()
    assert meta["order"] == 4 and len(meta["ngram_counts"]) == 4
    tok = LMTokenizer.for_model(out)
    line = tok.lines(pl.Series(["Natalia sold clips to 48 of her friends in April."]))["line"][0]
    assert "▁" in line and "48" not in line  # pieces, digits normalised to 0
    model = kenlm.Model(str(out))
    q = "Tom has 3 apples and buys 5 more. How many apples does he have now?"
    words = q.split()
    shuffled = " ".join(words[i] for i in np.random.default_rng(1).permutation(len(words)))
    enc = tok.lines(pl.Series([q, shuffled]))["line"].to_list()
    assert model.perplexity(enc[0]) < model.perplexity(enc[1])
    # the Python API, whitespace tokens: 3 lines, 6 tokens
    rep = train_lm(["one line here", "two lines\nthere"], tmp_path / "w.arpa", order=2, use_lmplz="never")
    assert rep.backend == "curate" and rep.lines == 3 and rep.tokens == 6
    assert read_meta(tmp_path / "w.arpa")["sp_model"] is None
