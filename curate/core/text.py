"""Shared text helpers as polars expressions, so every operator splits and normalises the same way."""

from __future__ import annotations

import numpy as np
import polars as pl

#: Punctuation characters: the same set as DataTrove's ``utils/text.py`` ``PUNCTUATION_SET`` (ASCII and
#: unicode punctuation, terminal marks of many scripts included).
PUNCTUATION = (
    "\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\u0008\u000b\u000c\u000d\u000e\u000f\u0010\u0011"
    "\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f!\u0022#$%&'"
    "()*+,-./:;<=>?@[\u005c]^_`{|}~\u007f\u0080\u0081\u0082\u0083\u0084\u0085\u0086\u0087\u0088\u0089"
    "\u008a\u008b\u008c\u008d\u008e\u008f\u0090\u0091\u0092\u0093\u0094\u0095\u0096\u0097\u0098\u0099"
    "\u009a\u009b\u009c\u009d\u009e\u009f\u00ab\u00b4\u00bb\u0589\u061d\u061e\u061f\u06d4\u0700\u0701"
    "\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736"
    "\u17d4\u17d5\u17d6\u17d9\u17da\u1803\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e"
    "\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u2013\u2014\u2019\u201c\u201d\u201e\u2026\u203c\u203d"
    "\u2047\u2048\u2049\u2236\u2501\u25ba\u2e2e\u2e3c\u2e53\u2e54\u3001\u3002\u3008\u3009\u300a\u300b"
    "\u300c\u300d\u3010\u3011\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9"
    "\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff05\uff08\uff09\uff0c\uff0e\uff11"
    "\uff1a\uff1b\uff1f\uff5e\uff61\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59"
    "\U00010f86\U00010f87\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0\U000110c1"
    "\U00011141\U00011142\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238\U00011239"
    "\U0001123b\U0001123c\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9\U000115ca\U000115cb"
    "\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5"
    "\U000115d6\U000115d7\U00011641\U00011642\U0001173c\U0001173d\U0001173e\U00011944\U00011946\U00011a42"
    "\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e"
    "\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44\U00016e98\U0001bc9f\U0001da88"
)
#: Sentence-final marks across scripts (DataTrove's ``TERMINAL_PUNCTUATION``; FineWeb's ``stop_chars``).
TERMINAL_PUNCTUATION = (
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965\u104a"
    "\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803\u1809\u1944\u1945"
    "\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c\u203d"
    "\u2047\u2048\u2049\u2e2e\u2e3c\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce"
    "\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e\uff1f"
    "\uff61\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86\U00010f87"
    "\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0\U000110c1\U00011141\U00011142"
    "\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238\U00011239\U0001123b\U0001123c"
    "\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd"
    "\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7"
    "\U00011641\U00011642\U0001173c\U0001173d\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b"
    "\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5"
    "\U00016b37\U00016b38\U00016b44\U00016e98\U0001bc9f\U0001da88"
)

#: Word tokens, tuned to agree with spaCy's blank English tokenizer, which DataTrove's Gopher and FineWeb
#: filters use: whitespace chunks with leading/trailing punctuation split off one character at a time,
#: inner punctuation kept ("a@b.com", "3.5"), clitics split ("do", "n't"), letter-hyphen-letter split,
#: runs of dots or dashes and dotted abbreviations ("U.S.") kept whole. On a real mixed sample, token
#: counts are within 3.5% of spaCy's on average (see tests/filters/test_rule_filters_vs_datatrove.py).
WORD_TOKEN = (r"n't|N'T|['\u2019](?:s|m|ve|re|ll|d|S|M)\b|(?:[^\W_]\.){2,}|\.{2,}|-{2,}"
              r"|[^\W_](?:\S*[^\W_])?|[^\w\s]|_")
_CLITIC = r"([^\W_])(n't|N'T|'s|'S|'m|'M|'ve|'re|'ll|'d|\u2019s)(\W|$)"


def words(text: pl.Expr) -> pl.Expr:
    """List of word tokens (see :data:`WORD_TOKEN`). The definition; the filters use the same tokens from
    :mod:`curate.core.tokens` (one numba pass per batch, shared between filters, tested equal to this)."""
    t = text.str.replace_all(_CLITIC, "$1 $2$3")
    for _ in range(2):  # "a-b-c": matches cannot overlap, so a second pass catches every other hyphen
        t = t.str.replace_all(r"([A-Za-z])-([A-Za-z])", "$1 - $2")
    return t.str.extract_all(WORD_TOKEN)


def split_lines(text: pl.Expr) -> pl.Expr:
    """List of lines with Python's ``str.splitlines()`` rules: every line break (``\\r\\n``, ``\\r``,
    ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85``, U+2028/2029) ends a line, no trailing empty line,
    ``[]`` for empty text (DataTrove's Gopher and C4 filters split this way). FineWeb's filter splits on
    ``"\\n"`` alone, as its reference does, and does not use this."""
    t = text.str.replace_all(r"\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]", "\n")
    return pl.when(t == "").then(pl.lit([], dtype=pl.List(pl.String))).otherwise(
        t.str.replace(r"\n$", "").str.split("\n"))


def normalize_for_dedup(text: pl.Expr) -> pl.Expr:
    """Exact-dedup normaliser: lowercase, every digit to 0, punctuation and symbols to a space, whitespace
    collapsed, trimmed. Accents are kept.

    It differs from :func:`simplify_text` (MinHash's normaliser) on purpose: exact dedup finds copies, so
    it keeps what distinguishes two texts beyond formatting (accents: "resume" and "résumé" stay apart;
    each digit maps to one 0, so "1,000" and "10,000" stay apart), while MinHash follows DataTrove's
    ``simplify_text`` exactly (numbers collapsed to one "0", accents stripped) so that its near-duplicate
    clusters match DataTrove's. Changing either would change which documents a pipeline drops, hence
    two functions.
    """
    return (
        text.str.to_lowercase()
        .str.replace_all(r"\d", "0")
        .str.replace_all(r"[\p{P}\p{S}]", " ")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def strip_accents(text: pl.Expr) -> pl.Expr:
    """Accents removed: NFD decomposition (polars' Rust Unicode tables), then combining marks (``\\p{Mn}``)
    deleted ("café" -> "cafe"). The output stays NFD, as CCNet's and DataTrove's normalisers leave it.

    Notes: the same output as the per-character Python reference (``unicodedata`` NFD, drop category Mn,
    kept in ``tests/core/text_reference.py``) on the 38k non-ASCII documents of the shared corpora, about
    8x faster; the two could differ only on code points whose Unicode data differs between Python's and
    Rust's table versions.
    """
    return text.str.normalize("NFD").str.replace_all(r"\p{Mn}", "")


#: DataTrove ``simplify_text`` number pattern: a run of digits, optionally with one decimal/thousands
#: separator, becomes a single "0" ("3.14" -> "0", "1,000" -> "0", "2024" -> "0").
NUMBER = r"\p{Nd}+(?:[.,\u060c\u066b\u2396\u2397\u2398]\p{Nd}+)?"


def simplify_text(text: pl.Expr) -> pl.Expr:
    """DataTrove's ``simplify_text`` (``utils/text.py``, used by ``MinhashConfig``): lowercase, numbers to
    "0", punctuation and symbols to a space, diacritics stripped (:func:`strip_accents`), whitespace
    collapsed to single spaces, trimmed. Words are then the single-space-separated tokens, so a word
    n-gram is a contiguous substring of the result (what :mod:`curate.filters.minhash` hashes).

    Notes: one regex pass handles punctuation, symbols and whitespace (a run of them becomes one space:
    the same result as replacing each punctuation/symbol by a space and then collapsing whitespace runs,
    checked against the step-by-step reference in ``tests/core/text_reference.py``).
    """
    return (
        strip_accents(text.str.to_lowercase())
        .str.replace_all(NUMBER, "0")
        .str.replace_all(r"[\p{P}\p{S}\s]+", " ")
        .str.strip_chars()
    )


#: CCNet's unicode punctuation map (``cc_net/text_normalizer.py::UNICODE_PUNCT``, facebookresearch/cc_net).
CCNET_UNICODE_PUNCT: dict[str, str] = {
    "\uff0c": ",", "\u3002": ".", "\u3001": ",", "\u201e": '"', "\u201d": '"', "\u201c": '"', "\u00ab": '"',
    "\u00bb": '"', "\uff11": '"', "\u300d": '"', "\u300c": '"', "\u300a": '"', "\u300b": '"', "\u00b4": "'",
    "\u2236": ":", "\uff1a": ":", "\uff1f": "?", "\uff01": "!", "\uff08": "(", "\uff09": ")", "\uff1b": ";",
    "\u2013": "-", "\u2014": " - ", "\uff0e": ". ", "\uff5e": "~", "\u2019": "'", "\u2026": "...", "\u2501": "-",
    "\u3008": "<", "\u3009": ">", "\u3010": "[", "\u3011": "]", "\uff05": "%", "\u25ba": "-",
}
#: The characters Python's ``str.strip()`` removes (``str.isspace``), which CCNet's ``line.strip()`` strips.
#: polars' ``strip_chars()`` without arguments strips Unicode White_Space, which lacks U+001C-U+001F.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                 "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
#: codepoints 0-31 and 127-159, which CCNet's ``remove_non_printing_char`` deletes (this includes "\n", "\t").
_NON_PRINTING = r"[\x00-\x1f\x7f-\x9f]"


def ccnet_normalize(text: pl.Expr, *, accent: bool = True, case: bool = True, numbers: bool = True,
                    punct: bool = True) -> pl.Expr:
    """CCNet's text normalisation (``cc_net/text_normalizer.py::normalize`` with ``punct=1``) as one
    polars expression: strip, lowercase, NFD + drop combining marks (Mn), every unicode digit to "0",
    unicode punctuation mapped to ASCII (:data:`CCNET_UNICODE_PUNCT`), non-printing characters removed.

    As in CCNet, the accent step leaves text NFD-decomposed (CCNet's early return never fires), and the
    last step deletes newlines and tabs, so normalise line by line when line structure matters.
    """
    out = text.str.strip_chars(PY_WHITESPACE)  # Python's strip, as CCNet's (polars' default keeps U+001C-1F)
    if case:
        out = out.str.to_lowercase()
    if accent:
        out = strip_accents(out)
    if numbers:
        out = out.str.replace_all(r"\d", "0")
    if punct:
        out = out.str.replace_many(list(CCNET_UNICODE_PUNCT), list(CCNET_UNICODE_PUNCT.values()))
    return out.str.replace_all(_NON_PRINTING, "")


#: NLTK's ``WordPunctTokenizer`` pattern: runs of word characters or runs of other non-space characters
#: ("can't!!" -> "can", "'", "t", "!!"). DSIR (p-lambda/dsir ``hashed_ngram_dsir.py``) tokenises with it.
WORDPUNCT_TOKEN = r"\w+|[^\w\s]+"


def wordpunct_tokens(text: pl.Expr, lowercase: bool = True) -> pl.Expr:
    """List of NLTK-``wordpunct`` tokens of the (lowercased, as DSIR does) text."""
    return (text.str.to_lowercase() if lowercase else text).str.extract_all(WORDPUNCT_TOKEN)


def utf8_buffer(s: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a String Series as one ``uint8`` array and ``int64`` offsets: row ``i`` is
    ``data[off[i]:off[i + 1]]``, nulls are empty. A view of Arrow's ``large_string`` buffers (one copy when
    polars converts its string views), so byte-level scans are numpy passes over the whole batch."""
    arr = s.cast(pl.String).fill_null("").to_arrow(compat_level=pl.CompatLevel.oldest())
    off = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    buf = arr.buffers()[2]
    data = np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.zeros(0, np.uint8)
    return data[off[0]:off[-1]], off - off[0]


def utf8_arrow(data: np.ndarray, off: np.ndarray, *, binary: bool = False):  # noqa: ANN201 (pyarrow is lazy)
    """The inverse of :func:`utf8_buffer` as an Arrow ``large_string`` (``large_binary`` with ``binary``)
    array whose row ``i`` is ``data[off[i]:off[i + 1]]``: the two arrays become its buffers (no copy, no
    per-row Python). ``data`` must be valid UTF-8 for a string array (it is not checked)."""
    import pyarrow as pa

    bufs = [None, pa.py_buffer(np.ascontiguousarray(off, dtype=np.int64)), pa.py_buffer(np.ascontiguousarray(data))]
    return pa.Array.from_buffers(pa.large_binary() if binary else pa.large_string(), len(off) - 1, bufs)


class _ArrowCArray:
    """An Arrow array offered to polars only through the Arrow PyCapsule interface: polars' ``pa.Array``
    path imports ``pyarrow.compute`` (0.1 CPU s at start-up) for a dictionary-chunk cast plain strings
    never need; the capsule path hands the same buffers over."""

    __slots__ = ("arr",)

    def __init__(self, arr) -> None:  # noqa: ANN001 (a pyarrow array; pyarrow is imported lazily)
        self.arr = arr

    def __arrow_c_array__(self, requested_schema: object | None = None) -> object:
        return self.arr.__arrow_c_array__(requested_schema)


def utf8_series(data: np.ndarray, off: np.ndarray, name: str = "", *, binary: bool = False) -> pl.Series:
    """:func:`utf8_arrow` as a polars String (or Binary) Series."""
    return pl.Series(name, _ArrowCArray(utf8_arrow(data, off, binary=binary))).alias(name)


def rows_with_bytes(off: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Sorted row indices (of :func:`utf8_buffer`'s offsets ``off``) holding at least one byte where the
    boolean array ``hit`` is true; cheap when such bytes are rare."""
    pos = np.flatnonzero(hit)
    return np.unique(np.searchsorted(off, pos, side="right") - 1) if len(pos) else pos


#: The keys of :data:`CCNET_UNICODE_PUNCT` that nothing before the punctuation step changes (no case, no
#: canonical decomposition, not a digit; U+FF11 FULLWIDTH DIGIT ONE is a digit, so CCNet turns it into "0").
_PLAIN_PUNCT = {k: v for k, v in CCNET_UNICODE_PUNCT.items() if k != "\uff11"}


def ccnet_normalize_series(s: pl.Series) -> pl.Series:
    """:func:`ccnet_normalize` of a Series, faster, with polars alone (the KenLM trainer and scorer split and
    normalise whole batches in one numba pass instead: :func:`curate.models.kenlm.ccnet_line_table`).

    Every row is stripped, lowercased and gets ASCII digits to "0"; that is all a row needs when it is
    printable ASCII once stripped (most lines of English text). Rows whose other bytes are only mapped
    unicode punctuation (curly quotes, dashes, ellipses) then get the punctuation map alone. The rest (other
    non-ASCII characters or control characters, found by numpy passes over the batch's bytes) get the full
    expression. ``tests/models/test_kenlm.py`` checks the result against CCNet's per-line normaliser."""
    s = s.cast(pl.String)
    stripped = pl.select(pl.lit(s).str.strip_chars(PY_WHITESPACE)).to_series()
    out = pl.select(pl.lit(stripped).str.to_lowercase().str.replace_all(r"[0-9]", "0")).to_series().alias(s.name)
    data, off = utf8_buffer(stripped)
    odd = rows_with_bytes(off, (data - np.uint8(0x20)) > 0x5e)  # uint8: below 0x20 or above 0x7e
    if not len(odd):
        return out
    mapped = pl.select(pl.lit(out.gather(odd)).str.replace_many(list(_PLAIN_PUNCT), list(_PLAIN_PUNCT.values())))
    mapped = mapped.to_series()
    out = out.scatter(odd, mapped)
    data, off = utf8_buffer(mapped)
    full = odd[rows_with_bytes(off, (data - np.uint8(0x20)) > 0x5e)]
    if len(full):
        out = out.scatter(full, pl.select(ccnet_normalize(pl.lit(s.gather(full)))).to_series())
    return out
