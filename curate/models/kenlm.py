"""KenLM n-gram models: train (interpolated modified Kneser-Ney, written as an ARPA file kenlm loads) and load
(:class:`LMScorer`, a kenlm model with the tokeniser it was trained with).

The pip ``kenlm`` package queries models but cannot build them (no ``lmplz``), so this module estimates
them itself, vectorised: every n-gram gets a dense integer id per order (an order-n id is the dense rank
of ``(order-(n-1) id of its prefix) * |V| + last word``), so counting, adjusted counts, count-of-counts,
discounts and interpolation are ``np.unique`` / ``np.bincount`` over id arrays - no per-n-gram Python loop.
When ``lmplz`` is on PATH it is used instead (``use_lmplz="auto"``). :func:`build_binary` turns an ARPA file
into KenLM's mmap-able binary format with KenLM's ``build_binary`` (``scripts/build-kenlm-tools.sh`` builds it).

Estimation (Chen & Goodman 1998, as KenLM's lmplz; reference: ``shared/reference/kn_arpa.py``):

* adjusted count a(g): raw count at the highest order; below it, the number of distinct left extensions,
  except n-grams starting with ``<s>``, which keep raw counts;
* per order, count-of-counts t_k of adjusted counts, Y = t1/(t1+2 t2), D_k = k - (k+1) Y t_{k+1}/t_k
  (k = 1, 2, 3+); out-of-range discounts fall back to (0.5, 1, 1.5) like ``lmplz --discount_fallback``.
  By default (``lmplz_discounts=True``) t4 counts adjusted counts of exactly 4 and D_k must lie in
  [0, k], as lmplz does (``lm/builder/adjust_counts.cc``, ``StatCollector``). ``lmplz_discounts=False``
  reproduces the reference script, whose t4 counts "4 or more": on real text that makes D3 negative
  almost always, so every order falls back to the fixed discounts;
* p(w|h) = (a(hw) - D(a(hw))) / sum_x a(hx) + gamma(h) p(w|h[1:]), gamma(h) = (D1 N1 + D2 N2 + D3 N3+)/sum;
  unigrams interpolate with the uniform distribution over the vocabulary (all words, ``</s>``, ``<unk>``).

Sentences are lines; each is padded with one ``<s>`` and one ``</s>`` (as the reference; lmplz's
multiple-``<s>`` padding of higher orders is not reproduced). Tokenisation: CCNet normalisation
(:func:`curate.core.text.ccnet_normalize`) then whitespace tokens or a SentencePiece model trained on the
same corpus. A JSON sidecar ``<model>.json`` records the tokeniser so scorers tokenise the same way.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from curate.core.errors import ConfigError
from curate.core.text import ccnet_normalize, rows_with_bytes, utf8_arrow, utf8_buffer, utf8_series

log = logging.getLogger("curate.lm")

UNK, BOS, EOS = 0, 1, 2
SPECIALS = ("<unk>", "<s>", "</s>")
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
_TOKEN = r"\S+"


# --------------------------------------------------------------------------------------------- tokeniser
@dataclass
class LMTokenizer:
    """How text becomes LM tokens: lines, CCNet normalisation, then whitespace or SentencePiece pieces.

    The same object (read from a model's sidecar with :meth:`for_model`) is used to train and to score.
    """

    normalize: bool = True
    sp_model: str | None = None
    _sp: object = field(default=None, repr=False, compare=False)

    @classmethod
    def for_model(cls, model_path: str | Path, normalize: bool | None = None,
                  sp_model: str | None = None) -> LMTokenizer:
        """The tokeniser recorded next to ``model_path`` (``<model>.json``), overridable by arguments."""
        meta = read_meta(model_path)
        sp = sp_model if sp_model is not None else meta.get("sp_model")
        if sp is not None and not Path(sp).is_absolute():
            sp = str(Path(model_path).parent / sp)
        norm = normalize if normalize is not None else bool(meta.get("normalize", True))
        return cls(normalize=norm, sp_model=sp)

    def _processor(self):
        if self._sp is None and self.sp_model is not None:
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_file=str(self.sp_model))
        return self._sp

    def lines(self, texts: pl.Series) -> pl.DataFrame:
        """One row per line of every document: ``doc`` (row index in ``texts``) and ``line`` (tokens joined
        by single spaces for SentencePiece, normalised text otherwise). Empty and null documents give one
        empty line, so every document has at least one row (CCNet counts one ``</s>`` per line)."""
        if self.normalize:
            table = ccnet_line_table(texts)
            df = pl.DataFrame({"doc": pl.Series(table.doc, dtype=pl.UInt32), "line": table.series()})
        else:
            df = (pl.DataFrame({"text": texts.cast(pl.String)}).with_row_index("doc")
                  .select("doc", pl.col("text").fill_null("").str.split("\n").alias("line")).explode("line"))
            df = df.with_columns(df["line"].fill_null(""))
        sp = self._processor()
        if sp is not None:
            pieces = sp.encode(df["line"].to_list(), out_type=str)
            df = df.with_columns(pl.Series("line", pieces, dtype=pl.List(pl.String)).list.join(" "))
        return df

    def line_table(self, texts: pl.Series) -> LineTable:
        """:meth:`lines` as a :class:`LineTable` (UTF-8 bytes, per-line document and token count): what the
        scorer uses. CCNet-normalised whitespace tokens come from one kernel pass (:func:`ccnet_line_table`)."""
        if self.normalize and self.sp_model is None:
            return ccnet_line_table(texts)
        df = self.lines(texts)
        data, off = utf8_buffer(df["line"])
        return LineTable(data, off, df["doc"].to_numpy().astype(np.int64), token_counts(df["line"]))


@dataclass
class LineTable:
    """The lines of a batch: line ``i`` is ``data[off[i]:off[i + 1]]`` (UTF-8), from document ``doc[i]``,
    with ``ntok[i]`` whitespace (``\\S+``) tokens."""

    data: np.ndarray
    off: np.ndarray
    doc: np.ndarray
    ntok: np.ndarray

    def __len__(self) -> int:
        return len(self.off) - 1

    def series(self, *, binary: bool = False) -> pl.Series:
        """The lines as a ``line`` String Series (Binary with ``binary``)."""
        return utf8_series(self.data, self.off, "line", binary=binary)

    def bytes_list(self) -> list[bytes]:
        """The lines as ``bytes`` objects (made by Arrow in C), what ``kenlm.Model.score`` takes."""
        return utf8_arrow(self.data, self.off, binary=True).to_pylist()


_TABLES: tuple[np.ndarray, ...] | None = None


def ccnet_line_table(texts: pl.Series) -> LineTable:
    """Every document split on ``"\\n"``, each line CCNet-normalised (as :func:`curate.core.text.ccnet_normalize`
    and CCNet's per-line normaliser) with its whitespace token count, in one numba pass over the batch's
    UTF-8 bytes (:mod:`curate.models._ccnet_kernel`). Lines holding characters other than ASCII and
    CCNet's mapped punctuation (accents, other scripts) are normalised by the polars expression and
    spliced in; ``tests/models/test_kenlm.py`` checks the table byte for byte against CCNet's normaliser
    on real multilingual text. Null documents are one empty line, like empty ones."""
    from curate.models import _ccnet_kernel as K  # numba: loaded on first use, not on import

    global _TABLES
    if _TABLES is None:
        _TABLES = (*K.ascii_tables(), *K.punct_tables())
    data, off = utf8_buffer(texts)
    n = len(off) - 1 + int(np.count_nonzero(data == 10))
    out = np.empty(len(data), dtype=np.uint8)
    line_off = np.empty(n + 1, dtype=np.int64)
    doc, ntok, raw_start, raw_end = (np.empty(n, dtype=np.int64) for _ in range(4))
    if K.normalize_lines(data, off, *_TABLES, out, line_off, doc, ntok, raw_start, raw_end):
        rows = np.flatnonzero(ntok < 0)  # the kernel left them empty: normalise their raw bytes with polars
        lens = raw_end[rows] - raw_start[rows]
        raw_off = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=raw_off[1:])
        raw = data[np.repeat(raw_start[rows] - raw_off[:-1], lens) + np.arange(raw_off[-1])]
        sub = pl.select(ccnet_normalize(pl.lit(utf8_series(raw, raw_off)))).to_series()
        ntok[rows] = sub.str.count_matches(_TOKEN).to_numpy()
        sub_data, sub_off = utf8_buffer(sub)
        sub_lens = np.diff(sub_off)
        # insert each row's bytes where its empty line sits (np.insert keeps equal positions in order)
        out = np.insert(out[:line_off[-1]], np.repeat(line_off[rows], sub_lens), sub_data)
        grow = np.zeros(n + 1, dtype=np.int64)
        grow[rows + 1] = sub_lens
        line_off = line_off + np.cumsum(grow)
    return LineTable(out[:line_off[-1]], line_off, doc, ntok)


def token_counts(lines: pl.Series) -> np.ndarray:
    """Whitespace tokens per line: the number of ``\\S+`` matches (CCNet's ``len(line.split())`` on
    normalised text), counted by numpy over the batch's bytes as the starts of runs of non-space bytes.
    Rows holding a byte outside ASCII or an ASCII whitespace other than " " (tab, CR, ...: normalised
    lines have none) are counted by polars' Unicode regex instead, so the result is ``count_matches``'s."""
    data, off = utf8_buffer(lines)
    space = data == 0x20
    start = ~space
    start[1:] &= space[:-1]  # a token starts at a non-space byte after a space ...
    first = off[:-1][off[:-1] < off[1:]]
    start[first] = ~space[first]  # ... or at the first byte of its line
    counts = np.diff(np.searchsorted(np.flatnonzero(start), off))
    odd = rows_with_bytes(off, (data > 0x7f) | (data - np.uint8(0x09) < 5))  # uint8: 0x09-0x0d
    if len(odd):
        counts[odd] = lines.gather(odd).str.count_matches(_TOKEN).fill_null(0).to_numpy()
    return counts


def read_meta(model_path: str | Path) -> dict:
    """The JSON sidecar written by :func:`train_lm` (empty for models made elsewhere)."""
    p = Path(str(model_path) + ".json")
    return json.loads(p.read_text()) if p.exists() else {}


# --------------------------------------------------------------------------------------------- estimator
@dataclass
class KNEstimate:
    """An estimated model as arrays, one entry per order (index 0 = unigrams).

    Order-n n-gram ``i`` has ``prefix[n][i]`` (order n-1 id of its first n-1 words; unigrams: none),
    ``last[n][i]`` (word id), ``log10p[n][i]`` and ``log10bo[n][i]`` (NaN when it is no context).
    """

    order: int
    vocab: list[str]
    prefix: list[np.ndarray]
    last: list[np.ndarray]
    log10p: list[np.ndarray]
    log10bo: list[np.ndarray]
    discounts: list[tuple[float, float, float]]
    _table: dict | None = field(default=None, repr=False)

    def counts(self) -> list[int]:
        return [len(x) for x in self.last]

    # -- an independent query path (standard ARPA back-off arithmetic), used to check kenlm's reading
    def table(self) -> dict[tuple[str, ...], tuple[float, float]]:
        """{n-gram words: (log10 p, log10 backoff)} - builds Python tuples, so only for small models."""
        if self._table is None:
            grams: list[list[tuple[str, ...]]] = []
            tab: dict[tuple[str, ...], tuple[float, float]] = {}
            for n in range(self.order):
                words = [self.vocab[w] for w in self.last[n].tolist()]
                g = [(w,) for w in words] if n == 0 else [grams[n - 1][p] + (w,)
                                                          for p, w in zip(self.prefix[n].tolist(), words)]
                grams.append(g)
                for key, lp, bo in zip(g, self.log10p[n].tolist(), self.log10bo[n].tolist()):
                    tab[key] = (lp, 0.0 if math.isnan(bo) else bo)
            self._table = tab
        return self._table

    def log10_prob(self, word: str, context: tuple[str, ...]) -> float:
        """log10 p(word | context) with back-off through the listed n-grams (as ARPA readers do)."""
        tab = self.table()
        word = word if (word,) in tab else "<unk>"
        context = tuple(w if (w,) in tab else "<unk>" for w in context)[-(self.order - 1):] if self.order > 1 else ()
        bo = 0.0
        for k in range(len(context), -1, -1):
            h = context[len(context) - k:]
            if h + (word,) in tab:
                return tab[h + (word,)][0] + bo
            if k and h in tab:
                bo += tab[h][1]
        raise AssertionError("unreachable: every word has a unigram")

    def score(self, sentence: str) -> float:
        """log10 p(sentence </s> | <s>) over whitespace tokens - the contract of ``kenlm.Model.score``."""
        toks = ["<s>"] + sentence.split() + ["</s>"]
        return sum(self.log10_prob(toks[i], tuple(toks[max(0, i - self.order + 1):i])) for i in range(1, len(toks)))


def _dense(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq, inv.astype(np.int64, copy=False)


def _discounts(a: np.ndarray, lmplz_discounts: bool) -> tuple[float, float, float]:
    a = a[a > 0]
    t = np.bincount(np.minimum(a, 5) if lmplz_discounts else np.minimum(a, 4), minlength=6).astype(np.float64)
    try:
        with np.errstate(divide="raise", invalid="raise"):
            y = t[1] / (t[1] + 2 * t[2])
            d = tuple(float(k - (k + 1) * y * t[k + 1] / t[k]) for k in (1, 2, 3))
    except (FloatingPointError, ZeroDivisionError):
        return FALLBACK_DISCOUNTS
    ok = all((0 <= x <= k) if lmplz_discounts else (0 < x < k + 1) for k, x in zip((1, 2, 3), d))
    return d if ok and all(math.isfinite(x) for x in d) else FALLBACK_DISCOUNTS


def encode_corpus(lines: pl.Series) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Tokenised lines -> (token ids with ``<s>``/``</s>`` per line, tokens left in each line incl. the
    current one, vocabulary). Ids: 0 ``<unk>``, 1 ``<s>``, 2 ``</s>``, then words by first occurrence."""
    toks = lines.str.extract_all(_TOKEN)
    if lines.str.contains(r"(?:^|\s)(?:<s>|</s>|<unk>)(?:\s|$)").any():  # reserved words are not data
        toks = toks.list.eval(pl.element().filter(~pl.element().is_in(list(SPECIALS))))
    lens = toks.list.len().to_numpy().astype(np.int64)
    flat = toks.explode().drop_nulls().rename("w")
    words = flat.unique(maintain_order=True)
    vocab_df = pl.DataFrame({"w": words, "id": np.arange(3, 3 + len(words), dtype=np.int64)})
    ids = flat.to_frame().join(vocab_df, on="w", how="left", maintain_order="left")["id"].to_numpy()
    plen = lens + 2
    ends = np.cumsum(plen)
    starts = ends - plen
    t = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
    inner = np.ones(len(t), dtype=bool)
    inner[starts] = False
    inner[ends - 1] = False
    t[inner] = ids
    t[starts] = BOS
    t[ends - 1] = EOS
    dist = np.repeat(ends, plen) - np.arange(len(t))
    return t, dist, list(SPECIALS) + words.to_list()


def estimate(lines: pl.Series, order: int = 5, lmplz_discounts: bool = True) -> KNEstimate:
    """Estimate an interpolated modified Kneser-Ney model from tokenised lines (tokens split on spaces)."""
    if order < 2:
        raise ConfigError("order must be at least 2 (kenlm loads no unigram-only model)")
    lines = lines.filter(lines.str.contains(r"\S"))
    if lines.len() == 0:
        raise ConfigError("no training text: every line is empty after tokenisation")
    t, dist, vocab = encode_corpus(lines)
    V = len(vocab)
    # ---- n-gram ids per order: count[n], prefix[n], suffix[n], first[n], last[n]
    count = [np.bincount(t, minlength=V)]
    prefix = [np.zeros(0, np.int64)]
    suffix = [np.zeros(0, np.int64)]
    first = [np.arange(V, dtype=np.int64)]
    last = [np.arange(V, dtype=np.int64)]
    prev = t
    for n in range(2, order + 1):
        idx = np.flatnonzero(dist >= n)
        if len(idx) == 0:
            order = n - 1
            break
        uniq, inv = _dense(prev[idx] * V + t[idx + n - 1])
        rep = np.empty(len(uniq), dtype=np.int64)
        rep[inv] = idx
        count.append(np.bincount(inv, minlength=len(uniq)))
        prefix.append(uniq // V)
        last.append(uniq % V)
        suffix.append(prev[rep + 1])
        first.append(t[rep])
        cur = np.full(len(t), -1, dtype=np.int64)
        cur[idx] = inv
        prev = cur
    del prev
    # ---- adjusted counts
    adj: list[np.ndarray] = [np.zeros(0, np.int64)] * order
    adj[order - 1] = count[order - 1].copy()
    for n in range(order - 2, -1, -1):
        a = np.bincount(suffix[n + 1], minlength=len(last[n]))
        bos = first[n] == BOS
        a[bos] = count[n][bos]
        adj[n] = a
    adj[0][BOS] = 0
    adj[0][UNK] = 0
    discounts = [_discounts(a, lmplz_discounts) for a in adj]
    # ---- interpolation, lowest order first
    log10p: list[np.ndarray] = []
    log10bo: list[np.ndarray] = []
    p_lower = None
    for n in range(order):
        a = adj[n].astype(np.float64)
        d = np.array((0.0,) + discounts[n])
        k = np.minimum(adj[n], 3)
        if n == 0:
            tot = a.sum()
            nk = np.bincount(k, minlength=4)
            gamma = (d[1] * nk[1] + d[2] * nk[2] + d[3] * nk[3]) / tot
            p = np.where(adj[n] > 0, (a - d[k]) / tot, 0.0) + gamma / (V - 1)
        else:
            ctx = prefix[n]
            m = len(last[n - 1])
            tot = np.bincount(ctx, weights=a, minlength=m)
            nk = [np.bincount(ctx, weights=(k == j).astype(np.float64), minlength=m) for j in (1, 2, 3)]
            with np.errstate(divide="ignore", invalid="ignore"):
                gamma = (d[1] * nk[0] + d[2] * nk[1] + d[3] * nk[2]) / tot
            p = (a - d[k]) / tot[ctx] + gamma[ctx] * p_lower[suffix[n]]
            with np.errstate(divide="ignore"):
                log10bo[n - 1] = np.where(tot > 0, np.log10(gamma), np.nan)
        with np.errstate(divide="ignore"):
            lp = np.log10(p)
        if n == 0:
            lp[BOS] = -99.0
        log10p.append(lp)
        log10bo.append(np.full(len(lp), np.nan))
        p_lower = p
    return KNEstimate(order, vocab, prefix[:order], last[:order], log10p, log10bo, discounts)


# --------------------------------------------------------------------------------------------- ARPA
def write_arpa(est: KNEstimate, path: str | Path) -> None:
    """Write ``est`` as an ARPA file (log10 probabilities and back-offs, 7 decimals)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vocab = pl.Series("g", est.vocab, dtype=pl.String)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\\data\\\n")
        for n, c in enumerate(est.counts(), 1):
            f.write(f"ngram {n}={c}\n")
        grams = vocab
        for n in range(est.order):
            if n > 0:
                grams = pl.select(pl.concat_str([grams.gather(est.prefix[n]), vocab.gather(est.last[n])],
                                                separator=" ")).to_series()
            bo = pl.Series("bo", est.log10bo[n]).fill_nan(None).round(7)
            df = pl.DataFrame({"lp": pl.Series(est.log10p[n]).round(7), "g": grams, "bo": bo})
            out = df.select(pl.concat_str([
                pl.col("lp").cast(pl.String), pl.col("g"),
                pl.when(pl.col("bo").is_not_null()).then(pl.col("bo").cast(pl.String))], separator="\t",
                ignore_nulls=True).alias("row"))
            f.write(f"\n\\{n + 1}-grams:\n")
            f.flush()
            out.write_csv(f, include_header=False, quote_style="never")
        f.write("\n\\end\\\n")


# --------------------------------------------------------------------------------------------- training
@dataclass
class TrainReport:
    path: Path
    order: int
    ngram_counts: list[int]
    discounts: list[tuple[float, float, float]]
    vocab_size: int
    lines: int
    tokens: int
    backend: str


def _as_series(texts: Iterable[str] | pl.Series) -> pl.Series:
    return texts if isinstance(texts, pl.Series) else pl.Series("text", list(texts), dtype=pl.String)


def train_sentencepiece(lines: pl.Series, prefix: Path, vocab_size: int, *, max_lines: int = 2_000_000,
                        seed: int = 0) -> Path:
    """A unigram SentencePiece model on normalised lines (CCNet: ``--character_coverage=0.9995
    --model_type=unigram``); the vocabulary is a soft limit so small corpora do not fail."""
    import sentencepiece as spm

    lines = lines.filter(lines.str.contains(r"\S"))
    if lines.len() > max_lines:
        lines = lines.sample(max_lines, seed=seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines.to_list()), model_prefix=str(prefix), vocab_size=vocab_size,
        model_type="unigram", character_coverage=0.9995, hard_vocab_limit=False, minloglevel=2,
        num_threads=2)
    return Path(str(prefix) + ".model")


def _run_lmplz(lines: pl.Series, out: Path, order: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        txt = Path(tmp) / "corpus.txt"
        lines.filter(lines.str.contains(r"\S")).to_frame().write_csv(txt, include_header=False, quote_style="never")
        subprocess.run(["lmplz", "-o", str(order), "--discount_fallback", "-S", "20%", "-T", tmp,
                        "--text", str(txt), "--arpa", str(out)], check=True, capture_output=True)


def train_lm(texts: Iterable[str] | pl.Series, out: str | Path, *, order: int = 5,
             tokenizer: Literal["whitespace", "sentencepiece"] = "whitespace", vocab_size: int = 32_000,
             sp_model: str | Path | None = None, normalize: bool = True,
             use_lmplz: Literal["auto", "never", "always"] = "auto", lmplz_discounts: bool = True) -> TrainReport:
    """Train an n-gram LM on documents (each line a sentence) and write ``out`` (ARPA) + ``out.json``.

    ``tokenizer="sentencepiece"`` trains a SentencePiece model on the same normalised corpus into
    ``<out stem>.sp.model`` unless ``sp_model`` names one to reuse (give two LMs the same one when their
    scores are compared, as Moore-Lewis does).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    norm = LMTokenizer(normalize=normalize)
    lines = norm.lines(_as_series(texts))["line"]
    sp_path: Path | None = None
    if tokenizer == "sentencepiece":
        if sp_model is None:
            sp_path = train_sentencepiece(lines, out.with_suffix(".sp"), vocab_size)
        else:
            sp_path = Path(sp_model)
        tok = LMTokenizer(normalize=False, sp_model=str(sp_path))
        lines = tok.lines(lines)["line"]
    elif tokenizer != "whitespace":
        raise ConfigError(f"tokenizer must be 'whitespace' or 'sentencepiece', not {tokenizer!r}")
    if use_lmplz not in ("auto", "never", "always"):
        raise ConfigError("use_lmplz must be auto, never or always")
    lmplz = shutil.which("lmplz") if use_lmplz != "never" else None
    if use_lmplz == "always" and lmplz is None:
        raise ConfigError("use_lmplz='always' but lmplz is not on PATH")
    if lmplz is not None:
        _run_lmplz(lines, out, order)
        counts, discounts, vsize, backend = _arpa_counts(out), [], -1, "lmplz"
    else:
        est = estimate(lines, order=order, lmplz_discounts=lmplz_discounts)
        write_arpa(est, out)
        counts, discounts, vsize, backend = est.counts(), est.discounts, len(est.vocab), "curate"
    ntok = int(lines.str.count_matches(_TOKEN).sum())
    meta = {"order": order, "tokenizer": tokenizer, "normalize": normalize, "backend": backend,
            "sp_model": None if sp_path is None else _rel(sp_path, out.parent),
            "ngram_counts": counts, "discounts": discounts, "vocab_size": vsize,
            "lines": int(lines.str.contains(r"\S").sum()), "tokens": ntok}
    Path(str(out) + ".json").write_text(json.dumps(meta, indent=1))
    return TrainReport(out, order, counts, discounts, vsize, meta["lines"], ntok, backend)


def _rel(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p.resolve())


def _arpa_counts(path: Path) -> list[int]:
    counts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("ngram "):
                counts.append(int(line.split("=")[1]))
            elif line.startswith("\\1-grams"):
                break
    return counts


# --------------------------------------------------------------------------------------------- binary
def kenlm_tool(name: str) -> str | None:
    """Path of KenLM's command-line tool ``name`` (``build_binary``, ``query``, ``lmplz``): in
    ``$CURATE_KENLM_BIN``, on PATH, or next to the running Python (a venv's ``bin/``, where
    ``scripts/build-kenlm-tools.sh`` puts them); None when absent. The pip ``kenlm`` wheel ships none."""
    import os
    import sys

    for d in (os.environ.get("CURATE_KENLM_BIN"), None, str(Path(sys.executable).parent)):
        found = shutil.which(name, path=d) if d is not None else shutil.which(name)
        if found:
            return found
    return None


def build_binary(arpa: str | Path, out: str | Path | None = None, *, structure: Literal["probing", "trie"] = "probing",
                 overwrite: bool = False) -> Path:
    """Convert an ARPA model into KenLM's binary format with KenLM's ``build_binary``; returns the path.

    A binary model loads by mmap (milliseconds, not a text parse) and its pages are shared by every worker
    process that opens it, so ``perplexity`` with several workers loads it once per machine. ``probing``
    (KenLM's default, a hash table) is the fastest to query; ``trie`` is smaller and slower. Both store the
    ARPA's probabilities unquantised, so scores equal the ARPA model's. The ``<model>.json`` tokeniser
    sidecar is copied next to the output (``sp_model`` re-pointed), so scorers tokenise the same way.
    ``out`` defaults to the ARPA path with suffix ``.binary``; an existing ``out`` is replaced only with
    ``overwrite``. Written to a temporary name and renamed, so a failed build leaves no partial model.
    """
    arpa = Path(arpa)
    if not arpa.is_file():
        raise ConfigError(f"ARPA model {arpa} not found")
    dst = Path(out) if out is not None else arpa.with_suffix(".binary")
    if dst.resolve() == arpa.resolve():
        raise ConfigError(f"the binary model would replace its ARPA input {arpa}: give another output path")
    if dst.exists() and not overwrite:
        raise ConfigError(f"{dst} exists: pass overwrite (--force) to replace it")
    tool = kenlm_tool("build_binary")
    if tool is None:
        raise ConfigError("KenLM's build_binary was not found (the pip kenlm wheel has no tools): run "
                          "`bash scripts/build-kenlm-tools.sh` (about 1.5 min with g++), or set CURATE_KENLM_BIN")
    if structure not in ("probing", "trie"):
        raise ConfigError(f"structure must be 'probing' or 'trie', not {structure!r}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        res = subprocess.run([tool, "-S", "20%", "-T", str(dst.parent), structure, str(arpa), str(tmp)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise ConfigError(f"build_binary failed on {arpa}: {(res.stderr or res.stdout).strip()[-500:]}")
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    meta = read_meta(arpa)
    if meta:
        meta = dict(meta, binary_of=str(arpa.resolve()), structure=structure)
        if meta.get("sp_model") and not Path(meta["sp_model"]).is_absolute():
            meta["sp_model"] = _rel(arpa.parent / meta["sp_model"], dst.parent)
        Path(str(dst) + ".json").write_text(json.dumps(meta, indent=1))
    return dst


# --------------------------------------------------------------------------------------------- loading
class LMScorer:
    """A kenlm model and the tokeniser it was trained with; scores documents line by line.

    ``score_docs`` returns, per document, the sum of ``model.score(line)`` (log10, ``<s>``/``</s>`` per
    line) and the token count sum(len(line.split()) + 1), as CCNet's ``DocLM`` (``cc_net/perplexity.py``).
    The only per-line Python work is the kenlm call itself (``map`` over the lines as ``bytes``, which kenlm
    takes without re-encoding); splitting, CCNet normalisation and token counting are one numba pass over
    the batch's bytes (:func:`ccnet_line_table`), per-document sums numpy (ratio to a bare kenlm loop and
    worker scaling: ``benchmarks/bench_lm.py``). numba loads with the first batch, not on import.
    """

    def __init__(self, model: str | Path, normalize: bool | None = None, sp_model: str | None = None):
        import kenlm

        if not Path(model).exists():
            raise ConfigError(f"language model {model} not found (train one with `curate train-lm`)")
        self.path = str(model)
        self.tokenizer = LMTokenizer.for_model(model, normalize=normalize, sp_model=sp_model)
        self.model = kenlm.Model(self.path)

    def lines(self, texts: pl.Series) -> pl.DataFrame:
        return self.tokenizer.lines(texts)

    def line_table(self, texts: pl.Series) -> LineTable:
        return self.tokenizer.line_table(texts)

    def score_table(self, table: LineTable) -> tuple[np.ndarray, np.ndarray]:
        """Per line of ``table``: log10 p(line </s> | <s>) and its token count + 1."""
        # bytes, not str: kenlm encodes every str to UTF-8 again; Arrow makes the bytes objects in C
        lp = np.fromiter(map(self.model.score, table.bytes_list()),
                         dtype=np.float64, count=len(table))
        return lp, table.ntok.astype(np.float64) + 1.0

    def score_lines(self, lines: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Per line of a :meth:`lines` frame: log10 p(line </s> | <s>) and its token count + 1."""
        text = lines["line"]
        data, off = utf8_buffer(text)
        return self.score_table(LineTable(data, off, np.zeros(0, np.int64), token_counts(text)))

    def score_docs(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """Per document: the sum of its lines' log10 probabilities and of their token counts + 1."""
        table = self.line_table(texts)
        lp, ntok = self.score_table(table)
        n = texts.len()
        return np.bincount(table.doc, weights=lp, minlength=n), np.bincount(table.doc, weights=ntok, minlength=n)
