"""Shared text helpers as polars expressions, so every operator splits and normalises the same way."""

from __future__ import annotations

import string
import unicodedata

import polars as pl

#: Punctuation as DataTrove's ``utils/text.py`` PUNCTUATION (ASCII + common unicode marks).
PUNCTUATION = (
    string.punctuation
    + "\u00a1\u00a7\u00ab\u00b6\u00b7\u00bb\u00bf\u037e\u0387\u055a-\u055f\u0589\u05be\u05c0\u05c3\u05c6\u05f3\u05f4"
    "\u2010-\u2027\u2030-\u2043\u2045-\u2051\u2053-\u205e\u207d\u207e\u208d\u208e\u2329\u232a\u3001-\u3003"
    "\u3008-\u3011\u3014-\u301f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\u2026\u201c\u201d"
)
#: Sentence-final marks across scripts (DataTrove ``TERMINAL_PUNCTUATION``, abridged to common ones).
TERMINAL_PUNCTUATION = (
    ".", "!", "?", "\u0589", "\u061f", "\u06d4", "\u0700", "\u0701", "\u0702", "\u0964", "\u0965", "\u104a",
    "\u104b", "\u1362", "\u1367", "\u1368", "\u166e", "\u1803", "\u1809", "\u203c", "\u203d", "\u2047", "\u2048",
    "\u2049", "\u3002", "\ufe52", "\ufe57", "\uff01", "\uff0e", "\uff1f", "\uff61",
)

#: Word tokens: runs of word characters (keeping inner apostrophes and hyphens), or runs of one
#: punctuation character. Close to spaCy's blank English tokenizer, which DataTrove's Gopher filters use:
#: punctuation becomes its own token ("end." -> "end", ".").
WORD_TOKEN = r"[\w]+(?:['\u2019][\w]+)*|[^\w\s]"


def words(text: pl.Expr) -> pl.Expr:
    """List of word tokens (see :data:`WORD_TOKEN`)."""
    return text.str.extract_all(WORD_TOKEN)


def whitespace_words(text: pl.Expr) -> pl.Expr:
    return text.str.split(" ").list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))


def normalize_for_dedup(text: pl.Expr) -> pl.Expr:
    """Lowercase, digits to 0, punctuation removed, whitespace collapsed, trimmed (DataTrove's
    ``simplify_text`` for exact/MinHash dedup, without its unicode NFD step, done by :func:`strip_accents`)."""
    return (
        text.str.to_lowercase()
        .str.replace_all(r"\d", "0")
        .str.replace_all(r"[\p{P}\p{S}]", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def strip_accents_py(s: str) -> str:
    """Remove combining marks after NFD decomposition ("café" -> "cafe")."""
    return "".join(ch for ch in unicodedata.normalize("NFD", s) if unicodedata.category(ch) != "Mn")


def strip_accents(text: pl.Expr) -> pl.Expr:
    """Vectorised accent stripping; ASCII-only rows skip the Python path entirely."""
    return pl.when(text.str.contains(r"[^\x00-\x7f]")).then(
        text.map_elements(strip_accents_py, return_dtype=pl.String)
    ).otherwise(text)


#: DataTrove ``simplify_text`` number pattern: a run of digits, optionally with one decimal/thousands
#: separator, becomes a single "0" ("3.14" -> "0", "1,000" -> "0", "2024" -> "0").
NUMBER = r"\p{Nd}+(?:[.,\u060c\u066b\u2396\u2397\u2398]\p{Nd}+)?"


def simplify_text(text: pl.Expr) -> pl.Expr:
    """DataTrove's ``simplify_text`` (``utils/text.py``, used by ``MinhashConfig``): lowercase, numbers to
    "0", punctuation and symbols to a space, diacritics stripped (NFD, drop Mn), whitespace collapsed to
    single spaces, trimmed. Words are then the single-space-separated tokens, so a word n-gram is a
    contiguous substring of the result (what :mod:`curate.filters.minhash` hashes)."""
    return (
        strip_accents(text.str.to_lowercase())
        .str.replace_all(NUMBER, "0")
        .str.replace_all(r"[\p{P}\p{S}]", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def simplify_text_py(s: str) -> str:
    """Reference (pure Python) of :func:`simplify_text` for tests and small inputs."""
    return pl.select(simplify_text(pl.lit(s, dtype=pl.String))).item()


#: CCNet's unicode punctuation map (``cc_net/text_normalizer.py::UNICODE_PUNCT``, facebookresearch/cc_net).
CCNET_UNICODE_PUNCT: dict[str, str] = {
    "\uff0c": ",", "\u3002": ".", "\u3001": ",", "\u201e": '"', "\u201d": '"', "\u201c": '"', "\u00ab": '"',
    "\u00bb": '"', "\uff11": '"', "\u300d": '"', "\u300c": '"', "\u300a": '"', "\u300b": '"', "\u00b4": "'",
    "\u2236": ":", "\uff1a": ":", "\uff1f": "?", "\uff01": "!", "\uff08": "(", "\uff09": ")", "\uff1b": ";",
    "\u2013": "-", "\u2014": " - ", "\uff0e": ". ", "\uff5e": "~", "\u2019": "'", "\u2026": "...", "\u2501": "-",
    "\u3008": "<", "\u3009": ">", "\u3010": "[", "\u3011": "]", "\uff05": "%", "\u25ba": "-",
}
#: codepoints 0-31 and 127-159, which CCNet's ``remove_non_printing_char`` deletes (this includes "\n", "\t").
_NON_PRINTING = r"[\x00-\x1f\x7f-\x9f]"


def ccnet_normalize(text: pl.Expr, accent: bool = True, case: bool = True, numbers: bool = True,
                    punct: bool = True) -> pl.Expr:
    """CCNet's text normalisation (``cc_net/text_normalizer.py::normalize`` with ``punct=1``) as one
    polars expression: strip, lowercase, NFD + drop combining marks (Mn), every unicode digit to "0",
    unicode punctuation mapped to ASCII (:data:`CCNET_UNICODE_PUNCT`), non-printing characters removed.

    As in CCNet, the accent step leaves text NFD-decomposed (CCNet's early return never fires), and the
    last step deletes newlines and tabs, so normalise line by line when line structure matters.
    """
    out = text.str.strip_chars()
    if case:
        out = out.str.to_lowercase()
    if accent:
        out = out.str.normalize("NFD").str.replace_all(r"\p{Mn}", "")
    if numbers:
        out = out.str.replace_all(r"\d", "0")
    if punct:
        out = out.str.replace_many(list(CCNET_UNICODE_PUNCT), list(CCNET_UNICODE_PUNCT.values()))
    return out.str.replace_all(_NON_PRINTING, "")
