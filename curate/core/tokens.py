"""Word tokens of a whole batch in one pass: :func:`curate.core.text.words` as a numba kernel.

:func:`curate.core.text.words` (three regex replacements and a regex ``extract_all``) was the largest cost
of the rule filters (about 2.3 s per 20k documents each time, and Gopher repetition, Gopher quality and
FineWeb quality each ran it). :func:`word_table` gives the same tokens, as flat per-token arrays (a 64-bit
hash, the length in characters, two class flags) with per-document offsets, from one pass over the UTF-8
bytes of the batch, and :func:`batch_word_table` shares one table between the filters of a batch (see
:mod:`curate.core.batch_cache`).

Exactness: the kernel replays the regex engine's leftmost-first semantics alternative by alternative
(the clitic and hyphen replacements of :func:`~curate.core.text.words` become inserted spaces, the
``WORD_TOKEN`` alternatives are tried in their order). Character classes (``\\w``, ``\\s``, ``[^\\W\\d_]``
and DataTrove's punctuation set) are not re-implemented: each code point a batch contains is classified
once per process by polars' own regex engine, the engine :func:`~curate.core.text.words` runs on, so the
two agree on every code point. ``tests/core/test_tokens.py`` checks token-for-token equality with
:func:`~curate.core.text.words` on the shared real corpora.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl
from numba import njit

from curate.core.jit import prepare
from curate.core.text import PUNCTUATION

prepare()  # numba's registries without SciPy, before any kernel loads (curate/core/jit.py)

#: class bits of a code point (``_CLASS`` table): \\w, \\s, [^\\W\\d_] (a letter-like word character),
#: in DataTrove's PUNCTUATION set, \\d (C4's citation markers), "non-ASCII whose lowercase has an ASCII
#: character" (U+0130, the Kelvin sign: C4's phrase checks send such text to the polars path), and
#: "classified already"
W, S, A, P, D, LA, KNOWN = 1, 2, 4, 8, 16, 32, 128
#: flag bits of a token: every character is punctuation (Gopher's "symbol" word); it has a letter
TOK_PUNCT, TOK_ALPHA = 1, 2

_PUNCT_CLASS = "^[" + re.escape(PUNCTUATION) + "]$"
_CLASS = np.zeros(0x110000, dtype=np.uint8)


def _classify(cps: np.ndarray) -> None:
    """Set the class bits of code points ``cps`` with polars' regex engine (the one ``words()`` uses)."""
    cps = cps[(cps < 0xD800) | (cps > 0xDFFF)]  # surrogates never occur in valid UTF-8
    if not len(cps):
        return
    s = pl.Series("c", [chr(int(c)) for c in cps], dtype=pl.String)
    bits = pl.DataFrame({"c": s}).select(
        (pl.col("c").str.contains(r"^\w$").cast(pl.UInt8) * W
         + pl.col("c").str.contains(r"^\s$").cast(pl.UInt8) * S
         + pl.col("c").str.contains(r"^[^\W\d_]$").cast(pl.UInt8) * A
         + pl.col("c").str.contains(_PUNCT_CLASS).cast(pl.UInt8) * P
         + pl.col("c").str.contains(r"^\d$").cast(pl.UInt8) * D
         + (~pl.col("c").str.contains(r"^[\x00-\x7F]$")
            & pl.col("c").str.to_lowercase().str.contains(r"[\x00-\x7F]")).cast(pl.UInt8) * LA
         + KNOWN).alias("b")).to_series()
    _CLASS[cps] = bits.to_numpy().astype(np.uint8)


@njit(cache=True, inline="always")
def longest_row(offsets: np.ndarray, first: int = 0) -> int:
    """The largest ``offsets[d + 1] - offsets[d]`` for rows ``first..`` (0 when there are none): the size of
    the per-row scratch arrays the byte kernels allocate once per batch."""
    longest = 0
    for d in range(first, offsets.shape[0] - 1):
        longest = max(longest, offsets[d + 1] - offsets[d])
    return longest


@njit(cache=True, inline="always")
def decode_utf8(data: np.ndarray, i: int) -> tuple[np.int64, int]:
    """The code point at byte ``i`` of valid UTF-8 ``data`` and the index of the next one."""
    b = np.int64(data[i])
    if b < 0x80:
        return b, i + 1
    if b < 0xE0:
        return ((b & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), i + 2
    if b < 0xF0:
        return (((b & 0x0F) << 12) | ((np.int64(data[i + 1]) & 0x3F) << 6) | (np.int64(data[i + 2]) & 0x3F)), i + 3
    return (((b & 0x07) << 18) | ((np.int64(data[i + 1]) & 0x3F) << 12) | ((np.int64(data[i + 2]) & 0x3F) << 6)
            | (np.int64(data[i + 3]) & 0x3F)), i + 4


@njit(cache=True)
def _first_unknown_at(data: np.ndarray, words: np.ndarray, cls: np.ndarray) -> int:
    """Byte index of the first code point whose class is not known yet, -1 if none (the common case).
    ``words``: ``data``'s first ``8 * len(words)`` bytes as uint64; once every ASCII code point is known,
    a word without a byte >= 0x80 is skipped whole."""
    n = data.shape[0]
    ascii_known = True
    for c in range(128):
        if (cls[c] & 128) == 0:
            ascii_known = False
    high = np.uint64(0x8080808080808080)
    n8 = words.shape[0]
    i = 0
    while i < n:
        if ascii_known and (i & 7) == 0:
            k = i >> 3
            while k < n8 and (words[k] & high) == 0:
                k += 1
            if k > i >> 3:
                i = k << 3
                continue
        cp, j = decode_utf8(data, i)
        if (cls[cp] & 128) == 0:
            return i
        i = j
    return -1


def _first_unknown(data: np.ndarray, cls: np.ndarray) -> int:
    """:func:`_first_unknown_at` of the UTF-8 ``data`` for the class table ``cls`` (bit 128: known)."""
    n8 = len(data) // 8
    return _first_unknown_at(data, data[:8 * n8].view(np.uint64), cls)


@njit(cache=True)
def _unknown_codepoints(data: np.ndarray, start: int, cls: np.ndarray) -> np.ndarray:
    """Distinct code points of ``data[start:]`` whose class is not known yet."""
    mark = np.zeros(0x110000, dtype=np.uint8)
    n = data.shape[0]
    k = 0
    i = start
    while i < n:
        cp, i = decode_utf8(data, i)
        if (cls[cp] & 128) == 0 and mark[cp] == 0:
            mark[cp] = 1
            k += 1
    out = np.empty(k, dtype=np.int64)
    k = 0
    for cp in range(0x110000):
        if mark[cp]:
            out[k] = cp
            k += 1
    return out


@njit(cache=True, inline="always")
def _is_ascii_letter(c: np.int64) -> bool:
    return (65 <= c <= 90) or (97 <= c <= 122)


@njit(cache=True, inline="always")
def _clitic_len(c: np.ndarray, i: int, m: int) -> int:
    """Length of the clitic of ``_CLITIC`` (n't|N'T|'s|'S|'m|'M|'ve|'re|'ll|'d|\u2019s) starting at ``i``,
    0 if none: the alternatives differ in their first two characters, so at most one matches."""
    if i >= m:
        return 0
    x = c[i]
    if x == 110 or x == 78:  # n't / N'T
        if i + 2 < m and c[i + 1] == 39 and ((x == 110 and c[i + 2] == 116) or (x == 78 and c[i + 2] == 84)):
            return 3
        return 0
    if x == 0x2019:
        return 2 if i + 1 < m and c[i + 1] == 115 else 0
    if x != 39 or i + 1 >= m:
        return 0
    y = c[i + 1]
    if y == 115 or y == 83 or y == 109 or y == 77 or y == 100:  # s S m M d
        return 2
    if i + 2 < m and ((y == 118 and c[i + 2] == 101) or (y == 114 and c[i + 2] == 101)
                      or (y == 108 and c[i + 2] == 108)):  # ve re ll
        return 3
    return 0


@njit(cache=True)
def _tokenize(data: np.ndarray, offsets: np.ndarray, cls: np.ndarray, first_doc: int, nt: int,
              tok_off: np.ndarray, hashes: np.ndarray, lengths: np.ndarray, flags: np.ndarray,
              bstart: np.ndarray, bend: np.ndarray, spans: bool) -> tuple[int, int]:
    """Tokens of documents ``first_doc``.. into the output arrays from token ``nt`` on: per document the end
    offset (``tok_off[d + 1]``), per token its hash, characters, flags and (``spans``) byte start and end.
    Stops before a document that might not fit the arrays; returns (next document, tokens written).

    Per document: decode to code points; insert a space between ``$1`` and the clitic of each ``_CLITIC``
    match (``replace_all`` order: a match consumes the following non-word character) and around every
    hyphen between ASCII letters (what the two hyphen passes of ``words()`` do: the first pass replaces
    every other hyphen of a chain, the second the rest); then match ``WORD_TOKEN`` leftmost-first.
    Byte spans (``spans``) map tokens back to the original text, for tests.
    """
    n_docs = offsets.shape[0] - 1
    cap = hashes.shape[0]
    max_len = longest_row(offsets, first_doc)
    cp = np.empty(max_len, dtype=np.int64)
    src = np.empty(max_len + 1, dtype=np.int64)  # byte offset of each code point, and the end
    c1 = np.empty(2 * max_len + 1, dtype=np.int64)
    s1 = np.empty(2 * max_len + 1, dtype=np.int64)
    c2 = np.empty(4 * max_len + 1, dtype=np.int64)
    s2 = np.empty(4 * max_len + 1, dtype=np.int64)
    mult = np.uint64(0x100000001B3)
    for d in range(first_doc, n_docs):
        i = offsets[d]
        e = offsets[d + 1]
        if nt + (e - i) > cap:  # a document has at most one token per byte
            return d, nt
        m = 0
        while i < e:
            if spans:
                src[m] = i
            cp[m], i = decode_utf8(data, i)
            m += 1
        src[m] = e
        # clitics: "do" + " " + "n't" (-1 marks an inserted space). A tight scan for the few candidate
        # positions (only n, N and the two quotes start a clitic), the text between them copied in bulk:
        # a per-character copy loop was ~40% of the tokeniser
        k = 0
        seg = 0  # first code point not copied to c1 yet
        i = 0
        while i + 1 < m:
            y = cp[i + 1]
            if not (y == 110 or y == 78 or y == 39 or y == 0x2019):
                i += 1
                continue
            x = cp[i]
            L = 0
            if x != 95 and (cls[x] & 1) != 0:
                L = _clitic_len(cp, i + 1, m)
            if L > 0 and (i + 1 + L == m or (cls[cp[i + 1 + L]] & 1) == 0):
                n_copy = i + 1 - seg
                c1[k:k + n_copy] = cp[seg:i + 1]
                if spans:
                    for j in range(n_copy):
                        s1[k + j] = seg + j
                k += n_copy
                c1[k] = 32
                s1[k] = -1
                k += 1
                seg = i + 1
                i = min(m, i + 2 + L)  # the clitic and the non-word character it consumed
            else:
                i += 1
        n_copy = m - seg
        c1[k:k + n_copy] = cp[seg:m]
        if spans:
            for j in range(n_copy):
                s1[k + j] = seg + j
        k += n_copy
        # hyphens between ASCII letters: " - " (most documents have none: then c1 is the text matched)
        m1 = k
        first_h = -1
        for i in range(1, m1 - 1):
            if c1[i] == 45 and _is_ascii_letter(c1[i - 1]) and _is_ascii_letter(c1[i + 1]):
                first_h = i
                break
        t = c2
        k = 0
        if first_h < 0:
            t = c1
            k = m1
            if spans:
                s2[:m1] = s1[:m1]
        for i in range(m1 if first_h >= 0 else 0):
            x = c1[i]
            if x == 45 and 0 < i < m1 - 1 and _is_ascii_letter(c1[i - 1]) and _is_ascii_letter(c1[i + 1]):
                c2[k] = 32
                c2[k + 1] = 45
                c2[k + 2] = 32
                if spans:
                    s2[k] = -1
                    s2[k + 1] = s1[i]
                    s2[k + 2] = -1
                k += 3
            else:
                c2[k] = x
                if spans:
                    s2[k] = s1[i]
                k += 1
        m2 = k
        # WORD_TOKEN, leftmost-first
        p = 0
        while p < m2:
            x = t[p]
            cx = cls[x]
            if cx & 2:
                p += 1
                continue
            L = 0
            if p + 2 < m2 and ((x == 110 and t[p + 1] == 39 and t[p + 2] == 116)
                               or (x == 78 and t[p + 1] == 39 and t[p + 2] == 84)):
                L = 3
            if L == 0 and (x == 39 or x == 0x2019) and p + 1 < m2:
                y = t[p + 1]
                q = 0
                if y == 115 or y == 109 or y == 100 or y == 83 or y == 77:
                    q = 2
                elif p + 2 < m2 and ((y == 118 and t[p + 2] == 101) or (y == 114 and t[p + 2] == 101)
                                     or (y == 108 and t[p + 2] == 108)):
                    q = 3
                if q > 0 and (p + q == m2 or (cls[t[p + q]] & 1) == 0):
                    L = q
            if L == 0:  # (?:[^\W_]\.){2,}
                r = 0
                while (p + 2 * r + 1 < m2 and t[p + 2 * r + 1] == 46 and t[p + 2 * r] != 95
                       and (cls[t[p + 2 * r]] & 1) != 0):
                    r += 1
                if r >= 2:
                    L = 2 * r
            if L == 0 and (x == 46 or x == 45) and p + 1 < m2 and t[p + 1] == x:  # \.{2,} | -{2,}
                L = 2
                while p + L < m2 and t[p + L] == x:
                    L += 1
            h = np.uint64(0xCBF29CE484222325)
            all_p = True
            any_a = False
            if L == 0 and x != 95 and (cx & 1) != 0:  # [^\W_](?:\S*[^\W_])?
                # the token's hash and flags as the scan goes, taken at its last word character (one pass
                # over the token instead of a scan and a second hashing loop)
                L = 1
                hs = (h ^ np.uint64(x)) * mult
                ps = (cx & 8) != 0
                as_ = (cx & 4) != 0
                h, all_p, any_a = hs, ps, as_
                j = p + 1
                while j < m2:
                    y = t[j]
                    cy = cls[y]
                    if cy & 2:
                        break
                    hs = (hs ^ np.uint64(y)) * mult
                    ps = ps and (cy & 8) != 0
                    as_ = as_ or (cy & 4) != 0
                    if y != 95 and (cy & 1) != 0:
                        L = j - p + 1
                        h, all_p, any_a = hs, ps, as_
                    j += 1
            else:
                if L == 0:  # [^\w\s] | _
                    L = 1
                for j in range(p, p + L):
                    y = t[j]
                    h = (h ^ np.uint64(y)) * mult
                    cy = cls[y]
                    all_p = all_p and (cy & 8) != 0
                    any_a = any_a or (cy & 4) != 0
            hashes[nt] = h ^ (h >> np.uint64(31))
            lengths[nt] = L
            flags[nt] = (1 if all_p else 0) | (2 if any_a else 0)
            if spans:
                bstart[nt] = src[s2[p]]
                bend[nt] = src[s2[p + L - 1] + 1]
            nt += 1
            p += L
        tok_off[d + 1] = nt
    return n_docs, nt


@njit(cache=True)
def _hash_codepoints(c: np.ndarray) -> np.uint64:
    h = np.uint64(0xCBF29CE484222325)
    mult = np.uint64(0x100000001B3)
    for y in c:
        h = (h ^ np.uint64(y)) * mult
    return h ^ (h >> np.uint64(31))


@njit(cache=True)
def _hash_tokens(cps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = np.empty(offsets.shape[0] - 1, dtype=np.uint64)
    for t in range(out.shape[0]):
        out[t] = _hash_codepoints(cps[offsets[t]:offsets[t + 1]])
    return out


def token_hash(token: str) -> int:
    """The hash :func:`word_table` gives a token equal to ``token`` (to look up stop words)."""
    return int(_hash_codepoints(np.array([ord(ch) for ch in token], dtype=np.int64)))


@dataclass(frozen=True)
class WordTable:
    """Word tokens of a column, flattened: tokens of row ``i`` are ``offsets[i]:offsets[i + 1]``."""

    offsets: np.ndarray  # int64, rows + 1
    hashes: np.ndarray  # uint64 per token (equal tokens, equal hashes)
    lengths: np.ndarray  # int64: characters (code points) per token
    flags: np.ndarray  # uint8: TOK_PUNCT | TOK_ALPHA

    @property
    def counts(self) -> np.ndarray:
        """Tokens per row."""
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> WordTable:
        """The table of rows ``rows`` (in that order)."""
        return WordTable(*_gather_rows(self.offsets, rows.astype(np.int64), self.hashes, self.lengths, self.flags))

    @staticmethod
    def concat(parts: list[WordTable]) -> WordTable:
        offs = [np.zeros(1, dtype=np.int64)]
        base = 0
        for t in parts:
            offs.append(t.offsets[1:] + base)
            base += int(t.offsets[-1])
        return WordTable(np.concatenate(offs), np.concatenate([t.hashes for t in parts]),
                         np.concatenate([t.lengths for t in parts]), np.concatenate([t.flags for t in parts]))


@njit(cache=True)
def _gather_rows(offsets: np.ndarray, rows: np.ndarray, hashes: np.ndarray, lengths: np.ndarray,
                 flags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The token arrays of rows ``rows`` (in that order) and their offsets: each row's tokens copied as
    one block (an index of every token and three fancy-indexing passes cost twice as much)."""
    out_off = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    for k in range(rows.shape[0]):
        r = rows[k]
        out_off[k + 1] = out_off[k] + offsets[r + 1] - offsets[r]
    n = out_off[-1]
    h = np.empty(n, dtype=hashes.dtype)
    ln = np.empty(n, dtype=lengths.dtype)
    fl = np.empty(n, dtype=flags.dtype)
    for k in range(rows.shape[0]):
        r = rows[k]
        a, b = offsets[r], offsets[r + 1]
        o = out_off[k]
        h[o:o + b - a] = hashes[a:b]
        ln[o:o + b - a] = lengths[a:b]
        fl[o:o + b - a] = flags[a:b]
    return out_off, h, ln, fl


def _utf8_buffers(text: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes and row offsets of a String Series (nulls as empty)."""
    import pyarrow as pa

    arr = text.cast(pl.String).fill_null("").rechunk().to_arrow()
    if arr.type != pa.large_string():  # the layout read below: int64 offsets, one data buffer
        arr = arr.cast(pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, dtype=np.uint8)
    return data, offsets


def utf8_buffers(text: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a String Series and its row offsets (nulls as empty), for numba kernels."""
    return _utf8_buffers(text)


def char_classes(data: np.ndarray) -> np.ndarray:
    """The per-code-point class table (bits ``W``, ``S``, ``A``, ``P``), every code point of the UTF-8
    ``data`` classified in it."""
    if not (_CLASS[:128] & KNOWN).all():  # every ASCII code point first: lets the scan skip ASCII words
        _classify(np.flatnonzero((_CLASS[:128] & KNOWN) == 0))
    at = _first_unknown(data, _CLASS)
    if at >= 0:
        _classify(_unknown_codepoints(data, at, _CLASS))
    return _CLASS


def _tokens(text: pl.Series, spans: bool = False):
    data, offsets = _utf8_buffers(text)
    char_classes(data)
    n_docs = len(offsets) - 1
    cap = max(1024, len(data) // 4)  # about 5 bytes per token in English text; grown when short
    tok_off = np.zeros(n_docs + 1, dtype=np.int64)
    arrays = [np.empty(cap, dtype=np.uint64), np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.uint8),
              np.empty(cap if spans else 0, dtype=np.int64), np.empty(cap if spans else 0, dtype=np.int64)]
    d = nt = 0
    while True:
        d, nt = _tokenize(data, offsets, _CLASS, d, nt, tok_off, *arrays, spans)
        if d == n_docs:
            break
        need = nt + int(offsets[d + 1] - offsets[d])
        cap = max(2 * cap, need)
        arrays = [np.concatenate((a[:nt], np.empty(cap - nt, dtype=a.dtype))) if len(a) else a for a in arrays]
    h, ln, fl, bs, be = (a[:nt] for a in arrays)
    return tok_off, h, ln, fl, bs, be


def word_table(text: pl.Series) -> WordTable:
    """:func:`curate.core.text.words` of every row of ``text``, as a :class:`WordTable`."""
    off, h, ln, fl, _, _ = _tokens(text)
    return WordTable(off, h, ln, fl)


def word_tokens(text: pl.Series) -> pl.Series:
    """The tokens :func:`word_table` finds, as a List(String) Series (for tests and debugging)."""
    off, _, _, _, bs, be = _tokens(text, spans=True)
    data, offsets = _utf8_buffers(text)
    raw = data.tobytes()
    out = []
    for d in range(len(offsets) - 1):
        out.append([raw[bs[t]:be[t]].decode() for t in range(off[d], off[d + 1])])
    return pl.Series(text.name, out, dtype=pl.List(pl.String))


def batch_word_table(batch: pl.DataFrame, column: str = "text") -> WordTable:
    """The :class:`WordTable` of ``batch[column]``, shared by every filter of the batch (computed once per
    batch while the runner holds a :func:`curate.core.batch_cache.batch_scope`, else computed here)."""
    from curate.core.batch_cache import cached

    return cached(batch, column, "words", word_table)


def word_table_regex(text: pl.Series) -> WordTable:
    """The same :class:`WordTable` built from :func:`curate.core.text.words` with polars' regex engine
    (the path the filters took before the kernel; slower, kept as the reference the tests compare with)."""
    from curate.core.text import words

    toks = pl.select(words(pl.lit(text.cast(pl.String).fill_null(""))).alias("w")).to_series()
    offsets = np.zeros(len(toks) + 1, dtype=np.int64)
    np.cumsum(toks.list.len().to_numpy(), out=offsets[1:])
    flat = toks.explode(empty_as_null=False).drop_nulls()
    # code points of every token, flattened (UTF-32 bytes), hashed per token by the kernel's hash
    lens = flat.str.len_chars().cast(pl.Int64).to_numpy()
    cps = np.frombuffer("".join(flat.to_list()).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    tok_off = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=tok_off[1:])
    hashes = _hash_tokens(cps, tok_off)
    lengths = flat.str.len_chars().cast(pl.Int64).to_numpy()
    punct = flat.str.contains("^[" + re.escape(PUNCTUATION) + "]+$").to_numpy()
    alpha = flat.str.contains(r"[^\W\d_]").to_numpy()
    flags = (punct.astype(np.uint8) * TOK_PUNCT) | (alpha.astype(np.uint8) * TOK_ALPHA)
    return WordTable(offsets, hashes, lengths, flags.astype(np.uint8))
