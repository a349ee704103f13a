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
