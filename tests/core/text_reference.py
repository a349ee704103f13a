"""Pure-Python / step-by-step references of the text helpers in :mod:`curate.core.text`, for the tests.

The library keeps one public name per operation (the fast expression); these slower versions follow the
original definitions line by line, so the tests can check the fast ones against them.
"""

from __future__ import annotations

import re
import unicodedata

import polars as pl

from curate.core.text import NUMBER


def strip_accents_py(s: str) -> str:
    """Remove combining marks after NFD decomposition ("café" -> "cafe"), one character at a time."""
    return "".join(ch for ch in unicodedata.normalize("NFD", s) if unicodedata.category(ch) != "Mn")


def strip_accents_reference(text: pl.Expr) -> pl.Expr:
    """:func:`strip_accents_py` per row; ASCII-only rows skip the Python path."""
    return pl.when(text.str.contains(r"[^\x00-\x7f]")).then(
        text.map_elements(strip_accents_py, return_dtype=pl.String)
    ).otherwise(text)


def simplify_text_reference(text: pl.Expr) -> pl.Expr:
    """DataTrove's ``simplify_text`` step by step: lowercase, Python accent stripping, numbers to "0",
    each punctuation/symbol to a space, then whitespace runs collapsed, trimmed."""
    return (
        strip_accents_reference(text.str.to_lowercase())
        .str.replace_all(NUMBER, "0")
        .str.replace_all(r"[\p{P}\p{S}]", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def simplify_text_py(s: str) -> str:
    """:func:`simplify_text_reference` of one string."""
    return pl.select(simplify_text_reference(pl.lit(s, dtype=pl.String))).item()


def shingles_py(text: str, shingle: str = "word", ngram: int = 5, normalize: bool = True) -> list[str]:
    """The shingle strings of one text (reference for the MinHash kernels and for feeding datasketch)."""
    if normalize:
        text = simplify_text_py(text)
    if shingle == "char":
        return [text[i:i + ngram] for i in range(len(text) - ngram + 1)]
    w = [x for x in re.split(r"[ \t\n\v\f\r]+", text) if x]
    return [" ".join(w[i:i + ngram]) for i in range(len(w) - ngram + 1)]


# CCNet normalisation: a copy of cc_net/text_normalizer.py::normalize with punct=1 (facebookresearch/cc_net,
# MIT), with its own punctuation table so it checks curate's CCNET_UNICODE_PUNCT rather than reusing it.
_UNICODE_PUNCT = {"，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
                  "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
                  "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'",
                  "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-"}
_NON_PRINTING_RE = re.compile(f"[{''.join(map(chr, list(range(0, 32)) + list(range(127, 160))))}]")


def ccnet_normalize_line(line: str) -> str:
    """CCNet's own per-line normaliser, the reference for :func:`curate.core.text.ccnet_normalize`. Slow: one
    Python pass per character."""
    line = line.strip()
    if not line:
        return line
    line = line.lower()
    line = "".join(c for c in unicodedata.normalize("NFD", line) if unicodedata.category(c) != "Mn")
    line = re.sub(r"\d", "0", line)
    line = "".join(_UNICODE_PUNCT.get(c, c) for c in line)
    return _NON_PRINTING_RE.sub("", line)
